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

.PHONY: run test lint bench bench-quick clean install uninstall

run: $(VENV)/.installed
	mkdir -p models
	$(BIN)/ocrd run -c config.toml

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(VENV)/.installed
	$(BIN)/python -m bench.run

bench-quick: $(VENV)/.installed
	$(BIN)/python -m bench.run --quick

$(VENV)/.installed: pyproject.toml | need-python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build

.PHONY: need-python need-root
need-python:
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON): apt-get install python3 python3-venv" >&2; exit 1; }
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { echo "need venv support: apt-get install python3-venv" >&2; exit 1; }

need-root:
	@test "$$(id -u)" = 0 || { echo "run it as root: sudo make $(MAKECMDGOALS)" >&2; exit 1; }

# ocrd in its own venv (Debian's Python is "externally managed": no pip install into it), the
# `ocrd` command on PATH, the unit, its user (sysusers.d) and model directory (tmpfiles.d), and
# a default /etc/ocrd/config.toml only if there is none; then `ocrd check` on that config.
# Run it again to upgrade; then `systemctl restart ocrd`. PIP_ARGS is passed to pip, e.g.
# PIP_ARGS="--no-index --find-links /srv/wheels" on a host without an index.
install: need-root need-python
	@command -v systemd-sysusers >/dev/null || { echo "need systemd (systemd-sysusers, systemd-tmpfiles)" >&2; exit 1; }
	$(PYTHON) -m venv $(PREFIX)/venv
	stage=$$(mktemp -d) && trap 'rm -rf "$$stage"' EXIT && \
		cp -r pyproject.toml README.md ocrd "$$stage"/ && \
		$(PREFIX)/venv/bin/python -m pip install --quiet --disable-pip-version-check $(PIP_ARGS) "$$stage"
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
		    -e 's|^format = "auto"  |format = "json"  |' config.toml > $(CONFDIR)/config.toml.new && \
		chmod 0644 $(CONFDIR)/config.toml.new && mv $(CONFDIR)/config.toml.new $(CONFDIR)/config.toml; }
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	$(BINDIR)/ocrd check -c $(CONFDIR)/config.toml

# Removes what install put in place. Keeps the operator's data and choices: /etc/ocrd, the
# model directory /var/lib/ocrd and the user ocrd (remove them by hand if wanted).
uninstall: need-root
	if [ -d /run/systemd/system ]; then systemctl disable --now ocrd.service 2>/dev/null || true; fi
	rm -f $(UNITDIR)/ocrd.service $(LIBDIR)/sysusers.d/ocrd.conf $(LIBDIR)/tmpfiles.d/ocrd.conf
	if [ "$$(readlink $(BINDIR)/ocrd)" = "$(PREFIX)/venv/bin/ocrd" ]; then rm -f $(BINDIR)/ocrd; fi
	rm -rf $(PREFIX)/venv
	rmdir $(PREFIX) 2>/dev/null || true
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "kept $(CONFDIR), /var/lib/ocrd and the user ocrd"
