"""Which signals ``ocrd run`` acts on, which it ignores on purpose, and holding all of them back
until its handlers exist.

A signal whose default action is to terminate (SIGHUP, SIGUSR1, SIGALRM, SIGPWR …) would kill the
daemon with no ``daemon_stopped`` and the engine not freed, if it arrived before the handlers
are installed (interpreter start, imports, the .NET runtime's import) or if no handler were ever
installed for it. So they are blocked as the first thing ``ocrd run`` does, and unblocked once
every handler is in place: what arrived meanwhile is then delivered, not lost. Threads started
while they are blocked (watchdog's, the .NET runtime's) keep them blocked, so every signal
reaches the main thread, where Python runs handlers anyway.
"""

from __future__ import annotations

import signal

STOP = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
RELOAD = (signal.SIGHUP,)
# Terminating by default, and meaning nothing to ocrd: ignored (SIG_IGN), never acted on.
# SIGUSR1 in particular reopens nothing: logs go to stdout. Not a Python handler that logs
# them: with the .NET runtime loaded, a burst of signals taken by Python handlers crashed the
# process (SIGSEGV in 2 of 3 runs of USR1 USR2 ALRM PWR USR1), and SIG_IGN did not (0 of 3).
IGNORED = (
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGPWR,
    signal.SIGSTKFLT,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGTSTP,
    signal.SIGXCPU,
)
# Already harmless: SIGPIPE and SIGXFSZ (Python ignores them; writes fail with an error
# instead), SIGIO (ignored before any file lease, see ocrd.ops.delete), SIGCHLD, SIGURG, SIGWINCH
# and SIGCONT (ignored by default). SIGKILL and SIGSTOP cannot be caught. The faults (SIGSEGV,
# SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS) and the real-time signals belong to the
# .NET runtime, which uses them itself.
HELD = (*STOP, *RELOAD, *IGNORED)


def hold() -> None:
    """Block every signal ocrd will handle, until release()."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD)


def release() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)
