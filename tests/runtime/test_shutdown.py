"""Stopping is quick and leaves nothing behind: a runtime closed while its zygote still imports,
an agent stopped while its zygote still imports, and a runtime closed after a spawn neither wait
out a timeout for a message nobody could hear, nor for an interpreter's teardown."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhfless.runtime import Runtime
from rlhfless.runtime.auth import keys_init
from tests.runtime.conftest import ECHO
from tests.runtime.test_failure import _wait_gone

pytestmark = pytest.mark.anyio

# Far above what any of these stops takes: a stop that waited for this timeout fails.
TIMEOUT_S = 20.0


async def test_a_runtime_closed_while_its_zygote_imports_closes_at_once() -> None:
    rt = Runtime(shutdown_timeout_s=TIMEOUT_S)  # the default preloads: torch and transformers
    async with rt:
        pids = rt.pids()
        assert len(pids) == 1  # the zygote, importing
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 3.0
    assert await _wait_gone(pids) == []


async def test_a_runtime_closed_after_a_spawn_closes_without_the_zygotes_teardown() -> None:
    async with Runtime(shutdown_timeout_s=TIMEOUT_S) as rt:
        h = await rt.spawn(ECHO, "p:")
        assert await h.hello("x") == "p:x"
        pids = rt.pids()
        t0 = time.monotonic()
    # Interpreter teardown with torch and transformers loaded took about 1.1 s here.
    assert time.monotonic() - t0 < 0.8
    assert await _wait_gone(pids) == []


@pytest.mark.parametrize("ready", [False, True], ids=["importing", "ready"])
def test_an_agent_stops_at_once_and_takes_its_zygote(tmp_path: Path, ready: bool) -> None:
    keys = str(keys_init(tmp_path / "keys"))
    log = tmp_path / "agent.log"
    agent = subprocess.Popen(
        [sys.executable, "-m", "rlhfless.runtime.agent", "--listen", "tcp://127.0.0.1:*",
         "--keys", keys, "--slots", "1", "--node", "a"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        zygote = _child_of(agent.pid, deadline=30.0)
        if ready:
            _wait_for_line(log, "zygote ready", 90.0)
        t0 = time.monotonic()
        agent.terminate()
        assert agent.wait(TIMEOUT_S) == 0
        assert time.monotonic() - t0 < 1.0, log.read_text()  # was 2.1 s ready, 5.7 s importing
        assert asyncio.run(_wait_gone([zygote])) == []
    finally:
        agent.kill()


def _child_of(pid: int, deadline: float) -> int:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        if out.split():
            return int(out.split()[0])
        time.sleep(0.05)
    raise AssertionError(f"process {pid} started no child within {deadline}s")


def _wait_for_line(log: Path, text: str, deadline: float) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if text in log.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the agent's log within {deadline}s: {log.read_text()}")
