"""`rlhfless train` across 3 hosts: network namespaces on this machine, one agent in each."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from rlhfless.runtime.auth import keys_init
from rlhfless.runtime.messages import BillingEvent
from rlhfless.stages.config import load_config
from rlhfless.stages.run import Job
from tests.runtime import netns

_WHY = netns.why_not()
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(300),
    pytest.mark.skipif(_WHY is not None, reason=f"no network namespaces here: {_WHY}"),
]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[list[netns.Host], str]]:
    keys = str(keys_init(tmp_path / "keys"))
    hosts = netns.make_hosts(3, tmp_path)
    try:
        for i, h in enumerate(hosts):
            h.start_agent(keys, f"host{i}", slots=2)
        yield hosts, keys
    finally:
        netns.remove_hosts(hosts)


async def test_three_iterations_across_three_hosts(tmp_path: Path, cluster) -> None:
    hosts, keys = cluster
    agents = ", ".join(f'"{h.address}"' for h in hosts)
    cfg = load_config(None, [
        "train.iterations=3", "train.batch_prompts=4", "train.group_size=4",
        "rollout.max_new_tokens=16", "rollout.functions=3",
        "runtime.provider=static", f"runtime.agents=[{agents}]", f"runtime.keys_dir={keys}",
        "runtime.local_node=false", f"run.run_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    job = Job(cfg)
    summary = await job.run()
    assert [m.version for m in job.metrics] == [1, 2, 3]
    assert all(m.samples == 16 and math.isfinite(m.loss) for m in job.metrics)
    lines = (tmp_path / "run" / "billing.jsonl").read_bytes().splitlines()
    events = [msgspec.json.decode(line, type=BillingEvent) for line in lines]
    nodes = {e.node for e in events}
    assert nodes <= {"host0", "host1", "host2"} and len(nodes) >= 2  # really spread out
    assert {e.stage for e in events} >= {"rollout", "reward", "train"}
    assert summary["deaths"] == 0
