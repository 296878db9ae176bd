"""Ctrl-C in a terminal: SIGINT reaches the whole foreground process group at once.

The controller decides what an interrupt means (it releases and reaps its functions); the
zygote and the functions must not react to the terminal's SIGINT themselves, or each prints
its own traceback into the controller's stderr.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.runtime.conftest import ECHO

pytestmark = [pytest.mark.timeout(120)]


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[-1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # After the command name: state, ppid, pgrp.
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def _wait_group_gone(pgid: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _controller_script(path: Path, zygote: bool) -> Path:
    script = path / "controller.py"
    script.write_text(
        textwrap.dedent(f"""
        import asyncio, signal, sys
        # SIGINT at its default, as in a terminal's foreground job: a background job of a
        # non-interactive shell (CI started with `&`) inherits it ignored, and Ctrl-C then
        # reaches nothing (the controller slept out its 120 s: both variants failed so).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.path.insert(0, {os.getcwd()!r})
        from rlhfless.runtime import Runtime
        async def main():
            async with Runtime(preload=("torch",), zygote={zygote!r}) as rt:
                hs = [await rt.spawn("{ECHO}", str(i)) for i in range(2)]
                busy = asyncio.create_task(hs[0].call("asleep", 60))  # one call in flight
                busy.add_done_callback(lambda t: t.cancelled() or t.exception())  # dies at exit
                print(" ".join(map(str, rt.pids())), flush=True)
                await asyncio.sleep(120)
        try:
            asyncio.run(main())
        except KeyboardInterrupt:  # the controller's own answer to Ctrl-C: quiet, code 130
            sys.exit(130)
    """)
    )
    return script


@pytest.mark.parametrize(
    "zygote",
    # Fresh interpreters (runtime.zygote = false) run in the slow tier: the same signal path,
    # 9 s more of the default run's 15-minute budget.
    [True, pytest.param(False, marks=pytest.mark.slow)],
    ids=["zygote", "fresh-interpreter"],
)
def test_group_sigint_leaves_no_child_tracebacks(tmp_path: Path, zygote: bool) -> None:
    script = _controller_script(tmp_path, zygote)
    # Its own session and process group, so that a signal to the group reaches exactly what a
    # terminal's Ctrl-C would reach: the controller and everything it started.
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert len(line.split()) >= 2, line  # functions (and the zygote) are running
        time.sleep(0.5)  # let the in-flight call reach its function
        os.killpg(proc.pid, signal.SIGINT)
        # The busy function cannot finish its call: the runtime waits shutdown_timeout_s (5 s)
        # for it, then kills it: ~6 s at load 5 here.
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "Traceback" not in err, err
        assert not [ln for ln in err.splitlines() if ln.startswith(("[vm-", "[fn-"))], err
        assert _wait_group_gone(proc.pid) == []
    finally:
        if _group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.kill()
        proc.wait()
