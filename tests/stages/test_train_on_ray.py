"""`Job` training across a Ray cluster: `cluster.provider=ray` places one agent per Ray node.

Two Ray nodes on this machine (tests/runtime/test_ray_provider.py's local cluster), two slots
each; nothing runs on the controller's own slots (`cluster.local_node=false`).
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from rlhfless.runtime.auth import keys_init
from rlhfless.runtime.messages import BillingEvent
from rlhfless.stages.config import load_config
from rlhfless.stages.run import Job

ray = pytest.importorskip("ray", reason="training on Ray needs Ray: pip install 'rlhfless[ray]'")

from tests.runtime.test_ray_provider import local_ray_cluster, pids_mentioning, weight_caches  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")  # both tests' jobs take their agents down: one cluster serves
def ray_cluster() -> Iterator[str]:
    with local_ray_cluster(nodes=2, cpus=2) as address:
        yield address


# Slow tier: the launch test below trains on both Ray nodes in the default run and checks that
# nothing is left behind.
@pytest.mark.slow
async def test_two_iterations_across_two_ray_nodes(tmp_path: Path, ray_cluster: str) -> None:
    keys = str(keys_init(tmp_path / "keys"))
    cfg = load_config(None, [
        "train.iterations=2", "train.batch_prompts=4", "train.group_size=4",
        "rollout.max_new_tokens=16", "rollout.functions=2",
        "cluster.provider=ray", f"cluster.ray_address={ray_cluster}", f"cluster.keys_dir={keys}",
        "cluster.local_node=false", f"run.run_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    job = Job(cfg)
    summary = await job.run()
    assert [m.version for m in job.metrics] == [1, 2]
    assert all(m.samples == 16 and math.isfinite(m.loss) for m in job.metrics)
    lines = (tmp_path / "run" / "billing.jsonl").read_bytes().splitlines()
    events = [msgspec.json.decode(line, type=BillingEvent) for line in lines]
    nodes = {e.node for e in events}
    assert len(nodes) == 2 and all(n.startswith("ray-") for n in nodes), nodes  # both Ray nodes
    assert {e.stage for e in events} >= {"rollout", "reward", "train"}
    assert summary["deaths"] == 0 and summary["nodes_lost"] == 0
    # The run took its agents down: Ray left, no agent (or janitor) and no weight cache behind.
    assert not ray.is_initialized()
    deadline = time.monotonic() + 5  # a janitor looks every 0.5 s
    while pids_mentioning(keys) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert pids_mentioning(keys) == []
    assert not [c for n in nodes for c in weight_caches(n)]


def test_launch_on_ray_prints_the_agents_and_trains_on_them(
    tmp_path: Path, ray_cluster: str
) -> None:
    """`rlhfless launch --provider ray`: agents placed by Ray, `train` run against them."""
    keys = str(keys_init(tmp_path / "keys"))
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "rlhfless.cli", "launch", "--provider", "ray",
         "--ray-address", ray_cluster, "--keys", keys, "--", "train", "--run-dir", str(run),
         "--set", "train.iterations=1", "--set", "train.batch_prompts=2",
         "--set", "rollout.max_new_tokens=8"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    placed = [line for line in out.stdout.splitlines() if line.startswith("agent: ")]
    assert len(placed) == 2, out.stdout  # one line per Ray node: where each agent runs
    lines = (run / "billing.jsonl").read_bytes().splitlines()
    nodes = {msgspec.json.decode(line, type=BillingEvent).node for line in lines}
    assert nodes and all(n.startswith("ray-") for n in nodes), nodes  # nothing ran locally
    assert pids_mentioning(keys) == [] or _gone_soon(keys)


def _gone_soon(keys: str) -> bool:
    deadline = time.monotonic() + 5  # launch stopped its agents; janitors look every 0.5 s
    while pids_mentioning(keys) and time.monotonic() < deadline:
        time.sleep(0.1)
    return pids_mentioning(keys) == []
