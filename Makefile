# Two entry points, each doing all of its own set-up: `make run` and `make test`.
# And the operator's: `sudo make install` / `sudo make uninstall` (systemd/README.md).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin

# Where `make install` puts things. The unit's ExecStart= is $(BINDIR)/ocrd: change BINDIR
# and you edit the unit too.
PREFIX   ?= /opt/ocrd
BINDIR   ?= /usr/local/bin
UNITDIR  ?= /etc/systemd/system
LIBDIR   ?= /usr/local/lib
CONFDIR  ?= /etc/ocrd
PIP_ARGS ?=

.PHONY: run test lint bench bench-quick fresh-resolve lock clean install uninstall

run: $(VENV)/.run
	mkdir -p models
	$(BIN)/ocrd run -c config.toml

test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(VENV)/.dev
	$(BIN)/python -m bench.run

bench-quick: $(VENV)/.dev
	$(BIN)/python -m bench.run --quick

# The newest releases pyproject.toml's ranges allow, in a new venv with no cache: what a user
# who runs `pip install .` today gets. CI runs it beside `make test` (which uses the lock).
fresh-resolve: | need-python
	PYTHON=$(PYTHON) .ci/fresh-resolve

# Dependencies come from the lock (exact versions and hashes), then ocrd itself without them:
# what was tested is what is installed. Installing ocrd builds its optional compiled step
# (setup.py), so a change to it makes the venv again. `make lock` writes the locks anew from pyproject.toml.
$(VENV)/.run: requirements/run.lock pyproject.toml setup.py ocrd/ops/sweep.c ocrd/fs/records.c | need-python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/run.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.dev: requirements/dev.lock pyproject.toml setup.py ocrd/ops/sweep.c ocrd/fs/records.c | need-python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@ $(VENV)/.run

LOCK_ARGS := --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-find-links --no-emit-index-url --no-emit-trusted-host
lock: | need-python
	tools=$$(mktemp -d) && trap 'rm -rf "$$tools"' EXIT && \
		$(PYTHON) -m venv "$$tools" && "$$tools/bin/pip" install --quiet pip-tools && \
		PIP_FIND_LINKS= "$$tools/bin/pip-compile" $(LOCK_ARGS) -o requirements/run.lock pyproject.toml && \
		PIP_FIND_LINKS= "$$tools/bin/pip-compile" $(LOCK_ARGS) --extra dev -o requirements/dev.lock pyproject.toml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build

.PHONY: need-python need-root need-bindir
need-python:
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON): apt-get install python3 python3-venv" >&2; exit 1; }
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { echo "need venv support: apt-get install python3-venv" >&2; exit 1; }

need-root:
	@test "$$(id -u)" = 0 || { echo "run it as root: sudo make $(MAKECMDGOALS)" >&2; exit 1; }

# ocrd in its own venv (Debian's Python is "externally managed": no pip install into it), the
# `ocrd` command on PATH, the unit, its user (sysusers.d) and model directory (tmpfiles.d), and
# a default /etc/ocrd/config.toml only if there is none (its [state] path in the state directory,
# so that `ocrd list` run by an operator reads the daemon's last use); then `ocrd check` on it, and
# a running ocrd.service is restarted onto the new code (or it says why not). Run it again to
# upgrade. PIP_ARGS is passed to pip, e.g. PIP_ARGS="--no-index --find-links /srv/wheels" on a
# host without an index.
install: need-root need-python need-bindir
	@command -v systemd-sysusers >/dev/null || { echo "need systemd (systemd-sysusers, systemd-tmpfiles)" >&2; exit 1; }
	$(PYTHON) -m venv $(PREFIX)/venv
	$(PREFIX)/venv/bin/python -m pip install --quiet --disable-pip-version-check $(PIP_ARGS) \
		--require-hashes -r requirements/run.lock
	stage=$$(mktemp -d) && trap 'rm -rf "$$stage"' EXIT && \
		cp -r pyproject.toml setup.py README.md ocrd "$$stage"/ && \
		$(PREFIX)/venv/bin/python -m pip install --quiet --disable-pip-version-check $(PIP_ARGS) \
			--no-deps "$$stage"
	install -d $(BINDIR)
	ln -sfn $(PREFIX)/venv/bin/ocrd $(BINDIR)/ocrd
	install -D -m 0644 systemd/ocrd.sysusers $(LIBDIR)/sysusers.d/ocrd.conf
	install -D -m 0644 systemd/ocrd.tmpfiles $(LIBDIR)/tmpfiles.d/ocrd.conf
	systemd-sysusers ocrd.conf
	systemd-tmpfiles --create ocrd.conf
	install -d $(UNITDIR)
	sed -e 's|^ExecStart=/usr/local/bin/ocrd |ExecStart=$(BINDIR)/ocrd |' systemd/ocrd.service \
		> $(UNITDIR)/ocrd.service.new
	chmod 0644 $(UNITDIR)/ocrd.service.new && mv $(UNITDIR)/ocrd.service.new $(UNITDIR)/ocrd.service
	install -d -m 0755 $(CONFDIR)
	test -e $(CONFDIR)/config.toml || { \
		sed -e 's|^model_dir = "models"  |model_dir = "/var/lib/ocrd/models"|' \
		    -e 's|^format = "auto"  |format = "json"  |' \
		    -e 's|^# \[state\]  |[state]    |' -e 's|^# path = "/var/lib/ocrd/state.db"|path = "/var/lib/ocrd/state.db"  |' \
		    config.toml > $(CONFDIR)/config.toml.new && \
		chmod 0644 $(CONFDIR)/config.toml.new && mv $(CONFDIR)/config.toml.new $(CONFDIR)/config.toml; }
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@$(BINDIR)/ocrd check -c $(CONFDIR)/config.toml || { \
		echo "$(CONFDIR)/config.toml is invalid: ocrd.service was not restarted; fix it, then: systemctl restart ocrd" >&2; \
		exit 1; }
	@if [ ! -d /run/systemd/system ]; then \
		echo "systemd is not running here (no /run/systemd/system): nothing restarted; restart a running ocrd yourself"; \
	elif systemctl is-active --quiet ocrd.service; then \
		systemctl try-restart ocrd.service && echo "ocrd.service restarted: it runs the code just installed"; \
	else \
		echo "ocrd.service is not running, so not restarted: systemctl enable --now ocrd"; \
	fi

# The OCR-D framework ships a command named ocrd too: a $(BINDIR)/ocrd that is not our link is
# never replaced (and uninstall removes only our link).
need-bindir:
	@if { [ -e $(BINDIR)/ocrd ] || [ -L $(BINDIR)/ocrd ]; } && \
		[ "$$(readlink $(BINDIR)/ocrd)" != "$(PREFIX)/venv/bin/ocrd" ]; then \
		echo "$(BINDIR)/ocrd exists and is not this install's link to $(PREFIX)/venv/bin/ocrd (another program of that name?): left alone, nothing installed. Put ocrd's command elsewhere, e.g. sudo make install BINDIR=/usr/local/sbin (the unit's ExecStart= follows BINDIR)" >&2; \
		exit 1; \
	fi

# Removes what install and the metrics opt-in (systemd/README.md) put in place: the unit and
# its metrics.conf drop-in, the metrics file the config names (ocrd wrote it; node_exporter
# would serve it, stale, forever), the link (only if it is ours), the venv, the sysusers and
# tmpfiles entries. Keeps the operator's data and choices: /etc/ocrd, the model directory
# /var/lib/ocrd, the user ocrd, other drop-ins, and the textfile directory's owner.
uninstall: need-root
	if [ -d /run/systemd/system ]; then systemctl disable --now ocrd.service 2>/dev/null || true; fi
	@prom=$$($(PYTHON) -c "$$METRICS_TEXTFILE" $(CONFDIR)/config.toml 2>/dev/null) || prom=; \
	if [ -n "$$prom" ] && [ -f "$$prom" ] && [ ! -L "$$prom" ]; then echo "rm -f $$prom"; rm -f "$$prom"; fi
	rm -f $(UNITDIR)/ocrd.service $(UNITDIR)/ocrd.service.d/metrics.conf
	rmdir $(UNITDIR)/ocrd.service.d 2>/dev/null || true
	rm -f $(LIBDIR)/sysusers.d/ocrd.conf $(LIBDIR)/tmpfiles.d/ocrd.conf
	if [ "$$(readlink $(BINDIR)/ocrd)" = "$(PREFIX)/venv/bin/ocrd" ]; then rm -f $(BINDIR)/ocrd; fi
	rm -rf $(PREFIX)/venv
	rmdir $(PREFIX) 2>/dev/null || true
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "kept $(CONFDIR), /var/lib/ocrd and the user ocrd"

# The config's [metrics] textfile, resolved as ocrd resolves it (against the config's
# directory), if it ends in .prom; else nothing. Plain tomllib: the venv may be broken.
define METRICS_TEXTFILE
import os, sys, tomllib
path = sys.argv[1]
with open(path, "rb") as fh:
    value = tomllib.load(fh).get("metrics", {}).get("textfile", "")
if isinstance(value, str) and value.endswith(".prom"):
    print(os.path.normpath(os.path.join(os.path.dirname(path), os.path.expanduser(value))))
endef
export METRICS_TEXTFILE
