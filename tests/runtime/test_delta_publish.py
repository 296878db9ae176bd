"""Publishing weights by delta through the real runtime: real agents (two, on loopback: no root
needed), real CURVE links, real functions that read the node caches back.

The numbers of bytes and GB/s on real links are benchmarks/publish.py's; here it is exactness.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from rlhfless.runtime import Runtime
from rlhfless.runtime import weights as cache
from rlhfless.runtime.auth import keys_init
from rlhfless.runtime.delta import diff
from tests.runtime.test_delta import bitwise_equal, model, step

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]
ROOT = Path(__file__).resolve().parents[2]
CACHED = "tests.runtime.delta_actors:CachedWeights"
HELD = "tests.runtime.delta_actors:HeldWeights"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[tuple[str, Path]]]:
    """Two agents on this machine, each with 1 slot: (address, log path)."""
    keys = str(keys_init(tmp_path / "keys"))
    procs, out = [], []
    try:
        for i in range(2):
            address, log = f"127.0.0.1:{free_port()}", tmp_path / f"agent{i}.log"
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "rlhfless.runtime.agent", "--listen", f"tcp://{address}",
                 "--keys", keys, "--slots", "1", "--node", f"host{i}", "--preload", "torch"],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
            ))  # fmt: skip
            out.append((address, log))
        yield out
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


@pytest.fixture
async def rt(agents: list[tuple[str, Path]], tmp_path: Path) -> AsyncIterator[Runtime]:
    async with Runtime(
        preload=("torch",), agents=tuple(a for a, _ in agents), keys_dir=str(tmp_path / "keys"),
        local_node=False, join_timeout_s=60, keep_alive_s=30.0,
    ) as runtime:  # fmt: skip
        yield runtime


def versions_of_two_dtypes() -> tuple[dict[str, Any], dict[str, Any]]:
    v1 = {**model(torch.float32), **{f"bf16.{k}": t for k, t in model(torch.bfloat16).items()}}
    v2 = step(v1, seed=5)
    v2["norm"] = v1["norm"] + 1  # all changed: whole
    v2["added"] = torch.tensor(2.5)  # 0-d, new
    del v2["bf16.norm"]  # removed
    return v1, v2


async def read_cache(rt: Runtime, node: str, version: int) -> dict[str, Any]:
    h = await rt.spawn(CACHED, node=node)
    try:
        return dict(await h.tensors(version))
    finally:
        await h.release()


async def test_second_version_goes_as_delta_and_equals_the_whole(rt: Runtime) -> None:
    v1, v2 = versions_of_two_dtypes()
    rt.publish_weights(1, v1)
    assert bitwise_equal(await read_cache(rt, "host0", 1), v1)  # host0 holds v1; host1 nothing
    rt.publish_weights(2, v2)
    on0 = await read_cache(rt, "host0", 2)  # a delta against v1 (a warm function: refreshed)
    on1 = await read_cache(rt, "host1", 2)  # no base there: whole
    assert bitwise_equal(on0, v2) and bitwise_equal(on1, v2)
    traffic = rt.weight_traffic()
    full = sum(t.numel() * t.element_size() for t in v2.values())
    assert traffic["host0"].deltas == 1 and traffic["host0"].fulls == 1  # v1 whole, v2 delta
    assert traffic["host1"].deltas == 0 and traffic["host1"].fulls == 1
    assert traffic["host1"].sent_bytes == traffic["host1"].full_bytes == full
    assert traffic["host0"].saved_bytes > 0.5 * full
    assert rt.weight_bytes_sent()["host0"] == traffic["host0"].sent_bytes


async def test_a_node_whose_base_differs_refuses_and_gets_the_whole_version(
    rt: Runtime, agents: list[tuple[str, Path]], caplog: pytest.LogCaptureFixture
) -> None:
    v1, v2 = versions_of_two_dtypes()
    rt.publish_weights(1, v1)
    await read_cache(rt, "host0", 1)
    # The node's v1 is not the controller's v1 (as if left by another run).
    agent_cache = re.search(r"weight cache (\S+)", agents[0][1].read_text())
    assert agent_cache is not None
    cache.save(agent_cache.group(1), 1, step(v1, seed=77))
    caplog.set_level(logging.INFO, logger="rlhfless.nodes")
    rt.publish_weights(2, v2)
    assert bitwise_equal(await read_cache(rt, "host0", 2), v2)
    traffic = rt.weight_traffic()["host0"]
    assert traffic.refused == 1 and traffic.deltas == 0
    v2_bytes = sum(t.numel() * t.element_size() for t in v2.values())
    assert traffic.sent_bytes > traffic.full_bytes  # v1 and v2 whole, and the refused delta
    assert traffic.full_bytes == v2_bytes + sum(t.numel() * t.element_size() for t in v1.values())
    refusal = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusal) == 1 and "is not the sender's v1 (crc" in refusal[0], refusal
    assert "send the full version" in refusal[0]


async def test_deltas_off_sends_whole_versions(
    agents: list[tuple[str, Path]], tmp_path: Path
) -> None:
    v1, v2 = versions_of_two_dtypes()
    async with Runtime(
        preload=("torch",), agents=(agents[0][0],), keys_dir=str(tmp_path / "keys"),
        local_node=False, join_timeout_s=60, weight_deltas=False,
    ) as rt:  # fmt: skip
        rt.publish_weights(1, v1)
        await read_cache(rt, "host0", 1)
        rt.publish_weights(2, v2)
        assert bitwise_equal(await read_cache(rt, "host0", 2), v2)
        assert rt.weight_traffic()["host0"].deltas == 0


async def test_a_function_holding_the_base_takes_a_delta_in_place() -> None:
    """On one machine: a function that holds v1 in memory (as an engine does) gets v2 as a
    call argument carrying only the changes, and ends up with v2 exactly."""
    v1 = model(torch.bfloat16)
    v2 = step(v1, seed=4)
    async with Runtime(preload=("torch",), slots=1) as rt:
        h = await rt.spawn(HELD)
        await h.load_full(v1, 1)
        t0 = time.perf_counter()
        assert await h.load_delta(diff(v1, v2, 2, 1)) == 2
        assert time.perf_counter() - t0 < 10
        assert bitwise_equal(dict(await h.tensors()), v2)
        with pytest.raises(Exception, match="made against v1, this receiver holds v2"):
            await h.load_delta(diff(v1, v2, 3, 1))


async def test_a_new_controller_never_takes_an_earlier_runs_versions(
    agents: list[tuple[str, Path]], tmp_path: Path
) -> None:
    """Two runs one after the other on the same agent, both numbering their versions from 1:
    the second run's v1 must reach the node whole, not be taken as already held there."""
    first, second = versions_of_two_dtypes()
    second = step(second, seed=11)
    for weights in (first, second):
        async with Runtime(
            preload=("torch",), agents=(agents[0][0],), keys_dir=str(tmp_path / "keys"),
            local_node=False, join_timeout_s=60,
        ) as rt:  # fmt: skip
            rt.publish_weights(1, weights)
            assert bitwise_equal(await read_cache(rt, "host0", 1), weights)
            assert rt.weight_traffic()["host0"].fulls == 1
