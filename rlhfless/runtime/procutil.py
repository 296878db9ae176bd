"""Small process helpers: die with the parent, kill by pid, process liveness."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (no orphans).

    ``parent`` is the pid that started us, when known: a parent that died before this call
    (we are already init's child) is only detectable against it.
    Elsewhere this is a no-op; the heartbeat and the parent's shutdown still reap functions.
    """
    if not sys.platform.startswith("linux"):
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # the parent is already gone
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def ignore_terminal_interrupt() -> None:
    """Ignore SIGINT in a process the runtime started (the zygote, a function).

    A terminal's Ctrl-C signals the whole foreground process group, so every child gets it
    alongside the controller. The controller decides what an interrupt means and releases and
    reaps its functions; a child that raised KeyboardInterrupt itself would only die mid-call
    and print a traceback into the controller's stderr. SIG_IGN survives fork and exec, so the
    zygote's forked functions inherit it too.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def exit_now(code: int) -> None:
    """Exit with ``code`` once the process has released what it made, skipping interpreter
    teardown: with torch and transformers imported that teardown alone takes about a second,
    which every shutdown that waits for this process (a runtime's close, an agent's stop)
    would wait out. Standard streams are flushed first; nothing else is left to run."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
