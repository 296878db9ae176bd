"""Functions on demand: spawn, calls, the typed proxy, concurrency, binding, bad actors."""

import asyncio
import os
import time

import pytest
import torch

from rlhfless.runtime import ActorInitError, RemoteError, Runtime, RuntimeClosed, SpawnError
from rlhfless.runtime.function import slot_cores
from tests.runtime.actors import Echo
from tests.runtime.conftest import ECHO

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_spawn_call_and_proxy(rt: Runtime) -> None:
    h = await rt.spawn(ECHO, "hi ")
    assert await h.call("hello", "ann") == "hi ann"
    assert await h.hello("bob") == "hi bob"  # typed proxy
    assert await h.echo({"a": [1, 2.5, None, b"x"]}) == {"a": [1, 2.5, None, b"x"]}
    assert h.pid > 0 and h.alive
    await h.release()
    assert not h.alive


async def test_spawn_by_class_with_kwargs(rt: Runtime) -> None:
    h = await rt.spawn(Echo, "p:", init_kwargs={"mode": "x"})
    assert await h.hello("q") == "p:q"


async def test_tensors_in_and_out(rt: Runtime) -> None:
    h = await rt.spawn(ECHO)
    t = torch.randn(64, 33, dtype=torch.bfloat16)[:, ::2]
    out = await h.double(t)
    assert out.dtype == torch.bfloat16 and torch.equal(out, t * 2)


async def test_proxy_rejects_unknown_method_locally(rt: Runtime) -> None:
    h = await rt.spawn(ECHO)
    with pytest.raises(AttributeError, match="no public method 'helo'"):
        h.helo  # noqa: B018
    with pytest.raises(RemoteError, match="AttributeError"):
        await h.call("helo")
    with pytest.raises(RemoteError, match="private method"):
        await h.call("__init__")


async def test_concurrent_calls(rt: Runtime) -> None:
    h = await rt.spawn(ECHO)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(h.asleep(0.5) for _ in range(8)))
    assert results == [0.5] * 8
    assert time.perf_counter() - t0 < 2.0  # eight async sleeps overlap in one function
    assert await asyncio.gather(*(h.echo(i) for i in range(200))) == list(range(200))


async def test_method_exception_keeps_function_alive(rt: Runtime) -> None:
    h = await rt.spawn(ECHO)
    with pytest.raises(RemoteError) as info:
        await h.fail("boom")
    err = info.value
    assert err.remote_type == "ValueError" and err.method == "fail" and "boom" in str(err)
    assert "raise ValueError(msg)" in err.remote_traceback
    with pytest.raises(RemoteError, match="TypeError.*cannot send a object"):
        await h.unsendable()
    assert await h.echo(5) == 5


async def test_binding_env_and_threads(rt: Runtime) -> None:
    h = await rt.spawn(
        ECHO, slot=1 if rt.devices.slots > 1 else 0, threads=1, env={"MY_FLAG": "on"}
    )
    assert await h.env("CUDA_VISIBLE_DEVICES") == ""  # no GPU here: CUDA hidden from CPU slots
    assert await h.env("OMP_NUM_THREADS") == "1"
    assert await h.env("MY_FLAG") == "on"
    assert await h.threads() == 1


async def test_pinned_functions_keep_to_their_slots_cores(rt: Runtime) -> None:
    """``pin_cores``: each CPU slot's function on its own share of the cores, unpinned ones on
    all of them; a pinned warm function serves only pinned spawns."""
    every = sorted(os.sched_getaffinity(0))
    slots = rt.devices.slots  # one per core here
    pinned = [await rt.spawn(ECHO, slot=s, pin_cores=True) for s in range(slots)]
    per = len(every) // slots
    for s, h in enumerate(pinned):
        assert await h.cores() == every[s * per : (s + 1) * per]
    pids = {await h.getpid() for h in pinned}
    for h in pinned:
        await h.release()
    assert rt.warm_count(ECHO, pin_cores=True) == slots and rt.warm_count(ECHO) == 0
    plain = await rt.spawn(ECHO, slot=0)  # not one of the pinned warm functions: a new one
    assert await plain.getpid() not in pids
    assert await plain.cores() == every
    again = await rt.spawn(ECHO, slot=0, pin_cores=True)
    assert await again.getpid() in pids  # warm, reused


def test_slot_cores_split_the_cores_evenly() -> None:
    assert slot_cores(1, 2, {0, 1, 2, 3, 4}) == {2, 3}  # the remainder (4) belongs to none
    assert slot_cores(0, 3, {5, 7}) == set()  # under one core each: no pinning


async def test_bad_actor_paths_fail_at_spawn(rt: Runtime) -> None:
    with pytest.raises(SpawnError, match="form 'package.module:ClassName'"):
        await rt.spawn("no_colon_here")
    with pytest.raises(SpawnError, match="cannot import module 'nosuchpkg_xyz.mod'"):
        await rt.spawn("nosuchpkg_xyz.mod:Cls")
    with pytest.raises(SpawnError, match="slot 99 does not exist"):
        await rt.spawn(ECHO, slot=99)
    with pytest.raises(ActorInitError, match="AttributeError.*NoSuchClass") as info:
        await rt.spawn("tests.runtime.actors:NoSuchClass")
    assert info.value.exit_code == 1
    with pytest.raises(SpawnError, match="cannot send its arguments"):
        await rt.spawn(ECHO, object())


async def test_exception_in_init_names_everything(rt: Runtime) -> None:
    with pytest.raises(ActorInitError) as info:
        await rt.spawn("tests.runtime.actors:BadInit")
    err = info.value
    assert err.exit_code == 1 and err.actor == "tests.runtime.actors:BadInit"
    assert err.remote_type == "RuntimeError" and "refuses to start" in str(err)
    assert any("constructing BadInit" in line for line in err.stderr_tail)
    h = await rt.spawn(ECHO)  # the runtime stays usable
    assert await h.echo(1) == 1


async def test_calls_after_release_and_close_are_refused() -> None:
    async with Runtime(preload=("torch",)) as runtime:
        h = await runtime.spawn(ECHO)
        await h.release()
        with pytest.raises(RuntimeClosed, match="released"):
            await h.echo(1)
        await h.release()  # twice is harmless
    with pytest.raises(RuntimeClosed, match="closed"):
        await runtime.spawn(ECHO)


async def test_fresh_interpreter_mode() -> None:
    async with Runtime(zygote=False) as runtime:
        h = await runtime.spawn(ECHO, "x")
        assert await h.hello("y") == "xy"
        assert await h.env("OMP_NUM_THREADS") == str(runtime.threads)


async def test_optional_and_required_preloads() -> None:
    async with Runtime(preload=("torch", "?no_such_module_xyz")) as runtime:
        h = await runtime.spawn(ECHO, "o")
        assert await h.hello("k") == "ok"
    async with Runtime(preload=("no_such_module_xyz",)) as runtime:
        with pytest.raises(SpawnError, match="zygote exited with code 1"):
            await runtime.spawn(ECHO)
