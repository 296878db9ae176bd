"""A gang across real hosts: one agent per network namespace, the controller in the root one.

The hosts reach each other through the root namespace (a route each, forwarding on for the
test's duration), as machines on one cluster network would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from rlhfless.runtime import GangMemberDied, Runtime
from rlhfless.runtime.auth import keys_init
from tests.runtime import netns
from tests.runtime.test_failure import _wait_gone

_WHY = netns.why_not()
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(180),
    pytest.mark.skipif(_WHY is not None, reason=f"no network namespaces here: {_WHY}"),
]
ALL_REDUCE = "tests.runtime.gang_actors:AllReduce"


@pytest.fixture
def keys(tmp_path: Path) -> str:
    return str(keys_init(tmp_path / "keys"))


@pytest.fixture
def hosts(tmp_path: Path, keys: str) -> Iterator[list[netns.Host]]:
    """host0 with 2 slots, host1 with 1, routed to each other through the root namespace."""
    with netns.routed_hosts(tmp_path, keys, slots=[2, 1]) as hs:
        yield hs


@pytest.fixture
async def rt(hosts: list[netns.Host], keys: str) -> AsyncIterator[Runtime]:
    async with Runtime(
        preload=("torch",),
        agents=tuple(h.address for h in hosts),
        keys_dir=keys,
        local_node=False,
        join_timeout_s=60,
    ) as runtime:
        yield runtime


async def test_gang_packs_on_one_host_or_spans_two(
    rt: Runtime, hosts: list[netns.Host], caplog: pytest.LogCaptureFixture
) -> None:
    packed = await rt.spawn_gang(ALL_REDUCE, 2, timeout=90)
    assert packed.nodes == ["host0", "host0"] and not packed.spans_nodes
    assert packed.address.startswith(hosts[0].ip + ":")  # the agent's listed address
    assert await packed.call("all_reduce", [1.0]) == [[3.0], [3.0]]
    await packed.release()
    caplog.set_level("INFO", logger="rlhfless.runtime")
    spread = await rt.spawn_gang(ALL_REDUCE, 3, timeout=90)  # 2 + 1 slots: must span
    assert spread.nodes == ["host0", "host0", "host1"] and spread.spans_nodes
    assert "spans nodes ['host0', 'host1']" in caplog.text
    infos = await spread.call("info")
    assert infos[0]["interface"] == infos[1]["interface"] != "lo"  # host0's veth end
    assert await spread.call("all_reduce", [1.0, 2.0]) == [[6.0, 12.0]] * 3


async def test_kill_a_remote_rank_mid_collective(rt: Runtime, hosts: list[netns.Host]) -> None:
    g = await rt.spawn_gang(ALL_REDUCE, 3, timeout=90)
    assert g.spans_nodes
    infos = await g.call("info")
    pids = [i["pid"] for i in infos]  # pids inside the namespaces (same pid space here)
    call = asyncio.create_task(g.call("all_reduce", [1.0], hold_rank=2, hold_s=60))
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    os.kill(pids[2], signal.SIGKILL)
    with pytest.raises(GangMemberDied) as info:
        await call
    assert time.monotonic() - t0 < 2.0 and info.value.rank == 2
    assert await _wait_gone(pids, timeout=3.0) == []  # the ranks on host0 too
