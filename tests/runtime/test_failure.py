"""Death is a typed terminal state: pending calls fail at once, nothing hangs, no orphans."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from rlhfless.runtime import CallTimeout, FunctionDied, RemoteError, Runtime, SpawnError
from tests.runtime.conftest import ECHO

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def _gone(pid: int) -> bool:
    """True when the process no longer exists (or is a zombie nobody can call)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


async def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if not _gone(p)]
        if not left:
            return []
        await asyncio.sleep(0.05)
    return [p for p in pids if not _gone(p)]


async def test_kill_9_fails_pending_calls_at_once(rt: Runtime) -> None:
    h = await rt.spawn(ECHO)
    pending = [asyncio.create_task(h.sleep(30)) for _ in range(3)]
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    os.kill(h.pid, signal.SIGKILL)
    for task in pending:
        with pytest.raises(FunctionDied) as info:
            await task
    assert time.monotonic() - t0 < 2.0
    err = info.value
    assert err.exit_code == -9 and err.function_id == h.function_id and err.actor == ECHO
    assert "signal 9" in str(err)
    with pytest.raises(FunctionDied, match="exit code -9"):  # later calls fail the same way
        await h.echo(1)
    assert rt.stats.deaths == 1
    h2 = await rt.spawn(ECHO)  # the runtime stays usable
    assert await h2.echo(2) == 2


async def test_exit_code_and_stderr_tail(rt: Runtime) -> None:
    h = await rt.spawn(ECHO)
    with pytest.raises(FunctionDied) as info:
        await h.die(3)
    assert info.value.exit_code == 3
    assert "about to die" in info.value.stderr_tail
    assert "about to die" in str(info.value)


async def test_segfault_reports_signal_and_traceback(rt: Runtime) -> None:
    h = await rt.spawn(ECHO)
    with pytest.raises(FunctionDied) as info:
        await h.segfault()
    assert info.value.exit_code == -signal.SIGSEGV
    text = "\n".join(info.value.stderr_tail)
    assert "about to segfault" in text and "Segmentation fault" in text


async def test_memory_error_is_remote_and_function_survives(rt: Runtime) -> None:
    # An allocation refused by the address-space limit is an exception, not a death; the
    # kernel's OOM killer instead sends SIGKILL, which test_kill_9 covers.
    h = await rt.spawn(ECHO)
    with pytest.raises(RemoteError, match="MemoryError"):
        await h.oom()
    assert await h.echo("still here") == "still here"


async def test_call_deadline(rt: Runtime) -> None:
    h = await rt.spawn(ECHO)
    with pytest.raises(CallTimeout, match="sleep"):
        await h.call_timeout(0.2, "sleep", 2.0)


async def test_no_orphans_after_close() -> None:
    async with Runtime(preload=("torch",), keep_alive_s=30) as rt:
        hs = [await rt.spawn(ECHO, str(i)) for i in range(3)]
        busy = asyncio.create_task(hs[0].sleep(60))  # a function stuck in a call at shutdown
        await hs[1].release()  # one warm in the pool
        await asyncio.sleep(0.2)
        pids = rt.pids()
        assert len(pids) == 4  # three functions and the zygote
    assert await _wait_gone(pids) == []
    with pytest.raises(FunctionDied):
        await busy


async def test_no_orphans_when_the_controller_is_killed(tmp_path) -> None:
    script = tmp_path / "controller.py"
    script.write_text(
        textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {os.getcwd()!r})
        from rlhfless.runtime import Runtime
        async def main():
            async with Runtime(preload=("torch",)) as rt:
                hs = [await rt.spawn("{ECHO}", str(i)) for i in range(2)]
                print(" ".join(map(str, rt.pids())), flush=True)
                await asyncio.sleep(120)
        asyncio.run(main())
    """)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        pids = [int(p) for p in line.split()]
        assert len(pids) == 3
        proc.kill()
        proc.wait()
        assert await _wait_gone(pids) == []
    finally:
        proc.kill()


async def test_a_failed_start_leaves_nothing_behind(tmp_path) -> None:
    """``async with Runtime(...)`` whose start fails (here: an agent that never answers) closes
    what it had started: no zygote process, no thread (the CURVE authenticator's included)."""
    import threading

    from rlhfless.runtime.auth import keys_init

    keys = keys_init(tmp_path / "keys")
    before = {t.ident for t in threading.enumerate()}
    rt = Runtime(
        preload=("torch",), agents=("127.0.0.1:9",), keys_dir=str(keys),
        join_timeout_s=1, local_node=False,
    )  # fmt: skip
    with pytest.raises(SpawnError, match="no agent answered"):
        async with rt:
            pass
    assert rt.functions() == {}
    await asyncio.sleep(0.3)
    for pid in rt.pids():  # the zygote, if it is still known, must be gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    left = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert left == [], left
