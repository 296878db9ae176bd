"""Warm pool: reuse, keep-alive expiry (scale to zero), pool limits."""

import asyncio

import pytest

from rlhfless.runtime import Runtime, SpawnError
from tests.runtime.conftest import ECHO

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_released_function_is_reused_warm(rt: Runtime) -> None:
    h1 = await rt.spawn(ECHO, "a", slot=0)
    pid = await h1.getpid()
    await h1.release()
    h2 = await rt.spawn(ECHO, "a", slot=0)
    assert await h2.getpid() == pid and h2.warm
    assert rt.stats.warm_starts == 1 and rt.stats.functions_started == 1
    h3 = await rt.spawn(ECHO, "b", slot=0)  # other constructor arguments: a new process
    assert await h3.getpid() != pid and not h3.warm


async def test_warm_count_is_what_a_spawn_would_reuse() -> None:
    # What the rollout stage asks before planning: functions it can count on not cold-starting.
    async with Runtime(preload=("torch",), keep_alive_s=0.8, slots=2) as rt:
        a, b = await rt.spawn(ECHO, "a"), await rt.spawn(ECHO, "a")
        assert rt.warm_count(ECHO, "a") == 0  # leased, not warm
        await a.release()
        await b.release()
        assert rt.warm_count(ECHO, "a") == 2
        assert rt.warm_count(ECHO, "b") == 0  # other constructor arguments: no reuse
        assert rt.warm_count(ECHO, "a", threads=rt.threads + 1) == 0
        h = await rt.spawn(ECHO, "a")
        assert h.warm and rt.warm_count(ECHO, "a") == 1
        await asyncio.sleep(1.6)  # the other one's keep-alive ran out
        assert rt.warm_count(ECHO, "a") == 0
        await h.release()
        assert rt.warm_count(ECHO, "a") == 1


async def test_keep_alive_expiry_scales_to_zero() -> None:
    async with Runtime(preload=("torch",), keep_alive_s=0.5) as rt:
        h = await rt.spawn(ECHO)
        await h.release()
        assert list(rt.functions().values()) == ["warm"]
        await asyncio.sleep(1.5)
        assert list(rt.functions().values()) == ["dead"]
        (event,) = rt.billing_events
        assert event.exit_code == 0 and event.exited_at - event.released_at >= 0.5


async def test_keep_alive_zero_exits_at_once() -> None:
    async with Runtime(preload=("torch",), keep_alive_s=0) as rt:
        h = await rt.spawn(ECHO)
        await h.release()
        for _ in range(50):
            if list(rt.functions().values()) == ["dead"]:
                break
            await asyncio.sleep(0.05)
        assert list(rt.functions().values()) == ["dead"]


async def test_max_warm_per_slot() -> None:
    async with Runtime(preload=("torch",), max_warm_per_slot=1, slots=1) as rt:
        a = await rt.spawn(ECHO, "a")
        b = await rt.spawn(ECHO, "b")
        await a.release()
        await b.release()  # the slot already keeps one warm function: b exits
        await asyncio.sleep(0.5)
        states = rt.functions()
        assert sorted(states.values()) == ["dead", "warm"]


async def test_max_functions_per_slot_waits_then_fails() -> None:
    async with Runtime(preload=("torch",), max_functions_per_slot=1, slots=1) as rt:
        a = await rt.spawn(ECHO, "a")
        with pytest.raises(SpawnError, match="max_functions_per_slot"):
            await rt.spawn(ECHO, "b", timeout=0.5)
        waiter = asyncio.create_task(rt.spawn(ECHO, "b", timeout=20))
        await asyncio.sleep(0.3)
        assert not waiter.done()
        await a.release()  # a goes warm; the waiting spawn evicts it to make room
        b = await waiter
        assert await b.hello("!") == "b!"


async def test_release_hook_runs_before_the_process_exits(tmp_path) -> None:
    """A released function runs its actor's ``rlhfless_on_release()`` before exiting (the
    trainer lands its hand-over state there); the hook is not callable remotely; one that
    raises makes the exit code 1."""
    hook = "tests.runtime.actors:ReleaseHook"
    async with Runtime(preload=("torch",), keep_alive_s=0.2) as rt:
        done = tmp_path / "done"
        h = await rt.spawn(hook, str(done))
        pid = await h.ping()
        with pytest.raises(AttributeError):
            h.rlhfless_on_release  # noqa: B018 - not among the remote methods
        await h.release()
        assert not done.exists()  # warm: the hook waits for the real release
        for _ in range(100):
            if list(rt.functions().values()) == ["dead"]:
                break
            await asyncio.sleep(0.05)
        assert done.read_text() == str(pid)
        (event,) = rt.billing_events
        assert event.exit_code == 0 and event.exited_at - event.released_at >= 0.2 + 0.3
        bad = await rt.spawn(hook, str(done), True)
        await bad.release()
        for _ in range(100):
            if len(rt.billing_events) == 2:
                break
            await asyncio.sleep(0.05)
        assert rt.billing_events[1].exit_code == 1
