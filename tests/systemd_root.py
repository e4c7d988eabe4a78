"""A minimal Debian 12 root that boots a real systemd under systemd-nspawn; built once, cached.

The live unit test (tests/test_systemd_live.py) boots this root in its own pid, mount, network
and cgroup namespaces; the host's own systemd (if any) and root filesystem are never involved.

    python -m tests.systemd_root [build|path|clean]      # build: idempotent; prints the root

Cache: ``$OCRD_TEST_ROOT`` or ``/var/cache/ocrd-test-root``, one directory per root_key() (the
suite, ROOT_VERSION and a digest of the package list; bump ROOT_VERSION when _configure()
changes), and beside it a wheelhouse per wheels_key() (the files requirements/run.lock names,
hashes checked, and pyproject's build requirements, fetched with this interpreter's pip): the
container has no network, and its pip installs from there. Old roots and wheelhouses are
left alone; ``clean`` removes them. The root is never booted writable: the test boots it with
``--volatile=overlay`` (a tmpfs over the read-only tree), so a test run cannot alter the cache.

The Debian mirror is the one this machine's apt already uses (``/etc/apt/sources.list*``), or
``$OCRD_TEST_MIRROR``; no host name is written here.

Needs root, ``debootstrap`` and ``systemd-nspawn`` (Debian: ``apt-get install debootstrap
systemd-container``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

# Bump on any change to _configure(): a new version builds a new root. (A change to SUITE,
# PACKAGES or MASKED changes the cache key by itself, see root_key().)
ROOT_VERSION = "3"
SUITE = "bookworm"
DEFAULT_CACHE = Path("/var/cache/ocrd-test-root")
COMPLETE = ".ocrd-test-root-complete"  # written last: a root without it is not used
# systemd as PID 1, plus the shared libraries the bundled .NET runtime of aspose-ocr-python-net
# loads (measured from /proc/PID/maps of a running daemon: libssl/libcrypto, libnuma, libuuid,
# libstdc++). procps gives /bin/kill, which the unit's ExecReload= runs (minbase leaves it out;
# every real server has it). make, python3-venv, jq, gcc and python3-dev are what
# systemd/README.md's install step asks of a fresh Debian 12 (the test checks its apt-get line
# against this list; the last two build ocrd's compiled steps); sudo runs the README's commands
# as written.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "procps",
    "sudo",
    "make",
    "python3",
    "python3-venv",
    "jq",
    "gcc",
    "python3-dev",
    "libffi8",
    "libssl3",
    "libnuma1",
    "libuuid1",
    "libbz2-1.0",
    "liblzma5",
    "zlib1g",
    "libsqlite3-0",
    "libncursesw6",
    "libreadline8",
    "libstdc++6",
)
# Units a throw-away test container never needs; masking them makes the boot quicker and quieter.
MASKED = (
    "systemd-timesyncd.service",
    "systemd-networkd.service",
    "systemd-resolved.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "dpkg-db-backup.timer",
    "systemd-tmpfiles-clean.timer",
    "console-getty.service",
    "getty@.service",
    "container-getty@.service",
)
# Mount points the test binds into (created here, because the lower tree is read-only at boot):
# the source tree the README's install command runs in, and the wheelhouse pip installs from.
SOURCE = "usr/local/src/ocrd"
WHEELS = "var/cache/ocrd-wheels"
MOUNT_POINTS = (SOURCE, WHEELS)


class RootUnavailable(Exception):
    """The root cannot be built on this machine (not root, tools missing, no mirror, ...)."""


def cache_dir() -> Path:
    return Path(os.environ.get("OCRD_TEST_ROOT") or DEFAULT_CACHE)


def root_key() -> str:
    """The cache key: suite, ROOT_VERSION and a digest of the package and mask lists."""
    digest = hashlib.sha256(" ".join((*PACKAGES, "|", *MASKED)).encode()).hexdigest()[:8]
    return f"{SUITE}-v{ROOT_VERSION}-{digest}"


def root_path() -> Path:
    return cache_dir() / root_key() / "rootfs"


def is_built() -> bool:
    return (root_path() / COMPLETE).is_file()


def missing_prerequisites() -> str | None:
    """Why the root can't be built or booted here, or None."""
    if sys.platform != "linux":
        return "not Linux"
    if os.geteuid() != 0:
        return "needs root (debootstrap and systemd-nspawn)"
    need = ["systemd-nspawn", "nsenter"] + ([] if is_built() else ["debootstrap"])
    missing = [tool for tool in need if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install debootstrap systemd-container)"
    return None


# -- the mirror -----------------------------------------------------------------------------------


def _apt_sources() -> Iterator[tuple[str, list[str], list[str]]]:
    """(uri, suites, components) of each apt source on this machine, one-line and deb822 forms."""
    etc = Path("/etc/apt")
    files = [etc / "sources.list"]
    if (etc / "sources.list.d").is_dir():
        files += sorted((etc / "sources.list.d").iterdir())
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    yield (
                        uri,
                        fields.get("suites", "").split(),
                        fields.get("components", "").split(),
                    )
        elif path.name == "sources.list" or path.suffix == ".list":
            for line in text.splitlines():
                words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    yield words[1], [words[2]], words[3:]


def mirror() -> str:
    """The Debian archive apt uses here for SUITE/main (or $OCRD_TEST_MIRROR)."""
    if os.environ.get("OCRD_TEST_MIRROR"):
        return os.environ["OCRD_TEST_MIRROR"]
    for uri, suites, components in _apt_sources():
        if SUITE in suites and "main" in components:
            return uri
    raise RootUnavailable(f"no apt source for {SUITE}/main in /etc/apt; set OCRD_TEST_MIRROR")


# -- building -------------------------------------------------------------------------------------


def _run(argv: list[str], log: Path, timeout: float) -> None:
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "LANG": "C"},
        )
    if result.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise RootUnavailable(f"{argv[0]} failed ({result.returncode}); log {log}:\n{tail}")


def _configure(root: Path, log: Path) -> None:
    """The mount points, quiet boot; no network configuration and no service user at all (the
    install under test creates the user with systemd-sysusers, as on a fresh host)."""
    for unit in MASKED:
        link = root / "etc/systemd/system" / unit
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to("/dev/null")
    for rel in MOUNT_POINTS:
        (root / rel).mkdir(parents=True, exist_ok=True)
    (root / "etc/hostname").write_text("ocrd-test\n", encoding="utf-8")
    # systemd generates the machine id at boot (the volatile overlay keeps it out of the cache).
    (root / "etc/machine-id").write_text("", encoding="utf-8")
    # A small, bounded journal; no forwarding to a console that nobody reads.
    conf = root / "etc/systemd/journald.conf.d"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "ocrd-test.conf").write_text(
        "[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\nForwardToConsole=no\n",
        encoding="utf-8",
    )
    # The apt lists are useless in a test root; drop them to keep the cache small.
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build(*, verbose: bool = False) -> Path:
    """The cached root, built first if needed. Idempotent and safe against concurrent callers;
    a half-built root (interrupted run) is discarded and rebuilt."""
    reason = missing_prerequisites()
    if reason:
        raise RootUnavailable(reason)
    version_dir = cache_dir() / root_key()
    if is_built():  # written last, under the lock: a complete root needs no waiting
        return root_path()
    with _locked(cache_dir()):
        if is_built():
            return root_path()
        url = mirror()
        staging = cache_dir() / f"{root_key()}.building"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        log = staging / "build.log"
        rootfs = staging / "rootfs"
        started = time.monotonic()
        if verbose:
            print(f"debootstrap {SUITE} from {url} into {rootfs} (log: {log})", file=sys.stderr)
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                "--components=main",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(rootfs),
                url,
            ],
            log,
            1800,
        )
        _configure(rootfs, log)
        (rootfs / COMPLETE).write_text(
            f"{root_key()} built in {time.monotonic() - started:.0f}s\n", encoding="utf-8"
        )
        shutil.rmtree(version_dir, ignore_errors=True)
        staging.rename(version_dir)
        return root_path()


# -- the wheelhouse --------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements" / "run.lock"


def build_requirements() -> list[str]:
    """What building ocrd (``pip install --no-deps .``) and the lock's sdists needs: the build
    backend, and ``wheel``, which pip adds for an sdist without pyproject.toml (sdnotify)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return [*project["build-system"]["requires"], "wheel"]


def wheels_key() -> str:
    """The wheelhouse's cache key: the lock, the build requirements and this interpreter's
    version (the root's python3 is Debian 12's 3.11: the same wheel tags)."""
    parts = [f"{sys.version_info.major}.{sys.version_info.minor}", *build_requirements()]
    text = " ".join(parts) + "\n" + LOCK.read_text(encoding="utf-8")
    return f"wheels-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def wheelhouse(*, verbose: bool = False) -> Path:
    """The files of requirements/run.lock, exactly (``pip download --require-hashes``: the
    very wheels and sdists whose hashes the lock holds), and the build requirements, fetched
    once with this interpreter's pip and cached beside the root (its own key: a new lock needs
    new files, not a new Debian). The container has no network; its pip installs from here, so
    the README's `make install` installs from the lock for real without fetching anything."""
    target = cache_dir() / wheels_key()
    if (target / COMPLETE).is_file():
        return target
    with _locked(cache_dir()):
        if (target / COMPLETE).is_file():
            return target
        staging = cache_dir() / f"{wheels_key()}.building"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if verbose:
            wanted = f"{LOCK} {' '.join(build_requirements())}"
            print(f"pip download {wanted} into {target}", file=sys.stderr)
        log = staging / "build.log"
        download = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(staging)]
        for args in (["--require-hashes", "-r", str(LOCK)], build_requirements()):
            with log.open("a", encoding="utf-8") as out:
                result = subprocess.run(
                    [*download, *args],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=1800,
                    check=False,
                )
            if result.returncode != 0:
                tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
                raise RootUnavailable(
                    f"pip download failed ({result.returncode}); log {log}:\n{tail}"
                )
        log.unlink()
        (staging / COMPLETE).write_text(LOCK.read_text(encoding="utf-8"), encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return target


def clean() -> None:
    """Remove every cached root but the current one."""
    with _locked(cache_dir()):
        for entry in cache_dir().iterdir():
            if entry.is_dir() and entry.name not in (root_key(), wheels_key()):
                shutil.rmtree(entry)


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "build"
    try:
        if command == "build":
            print(build(verbose=True))
            print(wheelhouse(verbose=True))
        elif command == "path":
            print(root_path() if is_built() else "")
            return 0 if is_built() else 1
        elif command == "clean":
            clean()
        else:
            print(f"usage: {argv[0]} [build|path|clean]", file=sys.stderr)
            return 2
    except RootUnavailable as exc:
        print(f"systemd_root: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
