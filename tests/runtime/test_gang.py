"""Gangs for real: gloo all_reduce across member processes, shared death, warm reuse, billing."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest

from rlhfless.runtime import GangMemberDied, GangStartError, RemoteError, Runtime, RuntimeClosed
from tests.runtime.test_failure import _wait_gone

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]
ALL_REDUCE = "tests.runtime.gang_actors:AllReduce"


@pytest.fixture
async def rt() -> AsyncIterator[Runtime]:
    async with Runtime(preload=("torch",), slots=2, keep_alive_s=30.0) as runtime:
        yield runtime


def _member_pids(rt: Runtime) -> list[int]:
    zygote = rt._zygote.pid if rt._zygote is not None else 0
    return [p for p in rt.pids() if p != zygote]


async def test_all_reduce_across_two_ranks(rt: Runtime) -> None:
    g = await rt.spawn_gang(ALL_REDUCE, 2, timeout=60)
    infos = await g.call("info")
    assert [i["rank"] for i in infos] == [0, 1]
    assert {i["world_size"] for i in infos} == {2}
    assert {i["address"] for i in infos} == {g.address}
    assert g.address.startswith("127.0.0.1:") and not g.spans_nodes
    assert {i["interface"] for i in infos} == {"lo"}  # gloo bound to loopback
    assert [i["pid"] for i in infos] == g.pids and len(set(g.pids)) == 2
    assert sorted(h.slot for h in g.members) == [0, 1]  # one slot each
    # Rank r contributes values * (r + 1): every rank ends with values * 3.
    assert await g.call("all_reduce", [1.0, 2.5]) == [[3.0, 7.5], [3.0, 7.5]]


async def test_nothing_listens_beyond_loopback(rt: Runtime) -> None:
    psutil = pytest.importorskip("psutil")
    g = await rt.spawn_gang(ALL_REDUCE, 2, timeout=60)
    await g.call("all_reduce", [1.0])
    listening = [
        c.laddr.ip
        for pid in g.pids
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening, "rank 0 hosts the rendezvous store"
    assert set(listening) == {"127.0.0.1"}, listening


async def test_sigkill_mid_collective_fails_the_call_and_tears_down(rt: Runtime) -> None:
    g = await rt.spawn_gang(ALL_REDUCE, 2, timeout=60)
    pids = g.pids
    # Rank 0 waits in the all_reduce for rank 1, which is held back; then rank 1 is killed.
    call = asyncio.create_task(g.call("all_reduce", [1.0], hold_rank=1, hold_s=60))
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    with pytest.raises(GangMemberDied) as info:
        await call
    assert time.monotonic() - t0 < 2.0
    err = info.value
    assert (err.rank, err.world_size, err.gang_id) == (1, 2, g.gang_id)
    assert err.function_id == g.function_ids[1] and err.exit_code == -9
    assert "rank 1 of 2 starting" in err.stderr_tail and "rank 1 of gang" in str(err)
    assert await _wait_gone(pids, timeout=0.1) == []  # rank 0 is gone too, already
    with pytest.raises(GangMemberDied):  # later calls fail the same way
        await g.call("info")


async def test_a_raising_rank_fails_the_call_and_tears_down(rt: Runtime) -> None:
    g = await rt.spawn_gang(ALL_REDUCE, 2, init_kwargs={"fail_rank": 1}, timeout=60)
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match="rank 1 refuses"):
        await g.call("all_reduce", [1.0])  # rank 0 would wait for rank 1 forever
    assert time.monotonic() - t0 < 2.0
    assert await _wait_gone(g.pids, timeout=0.1) == []
    with pytest.raises(RuntimeClosed, match="torn down"):
        await g.call("info")


async def test_idle_member_death_takes_the_gang(rt: Runtime) -> None:
    g = await rt.spawn_gang(ALL_REDUCE, 2, timeout=60)
    os.kill(g.pids[0], signal.SIGKILL)
    assert await _wait_gone(g.pids, timeout=2.0) == []
    with pytest.raises(GangMemberDied, match="rank 0 of gang"):
        await g.call("info")


async def test_member_never_ready_fails_start_within_deadline(rt: Runtime) -> None:
    t0 = time.monotonic()
    # Rank 0 waits for rank 1 in its rendezvous, so both miss the deadline: either may be the
    # one told first, and the error names every rank not started.
    with pytest.raises(GangStartError, match=r"sent no READY.*ranks not started by then: 0, 1"):
        await rt.spawn_gang(ALL_REDUCE, 2, init_kwargs={"hang_rank": 1}, timeout=3.0)
    assert time.monotonic() - t0 < 3.0 + 1.0
    pids = _member_pids(rt)
    assert len(pids) == 2 and await _wait_gone(pids, timeout=0.1) == []
    assert set(rt.functions().values()) == {"dead"}


async def test_release_keeps_the_gang_warm_and_reuses_it(rt: Runtime) -> None:
    g = await rt.spawn_gang(ALL_REDUCE, 2, timeout=60)
    ids = g.function_ids
    await g.release()
    assert set(rt.functions().values()) == {"warm"}
    with pytest.raises(RuntimeClosed, match="released"):
        await g.call("info")
    assert rt.warm_count(ALL_REDUCE) == 0  # a plain spawn never takes one member of it
    again = await rt.spawn_gang(ALL_REDUCE, 2, timeout=60)
    assert again.function_ids == ids and again.warm
    assert await again.all_reduce([2.0]) == [[6.0], [6.0]]  # same process group
    other = await rt.spawn_gang(ALL_REDUCE, 1, timeout=60)  # another size: a new gang
    assert other.function_ids[0] not in ids


async def test_billing_has_one_event_per_member() -> None:
    async with Runtime(preload=("torch",), slots=2) as rt:
        g = await rt.spawn_gang(ALL_REDUCE, 2, stage="train", timeout=60)
        await g.call("all_reduce", [1.0])
        ids = g.function_ids
    events = [e for e in rt.billing_events if e.function_id in ids]
    assert sorted(e.function_id for e in events) == sorted(ids)
    assert {e.stage for e in events} == {"train"} and sorted(e.slot for e in events) == [0, 1]
    assert all(e.ready_at is not None and e.busy for e in events)
