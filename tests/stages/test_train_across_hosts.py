"""`rlhfless train` across 3 hosts: network namespaces on this machine, one agent in each."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from rlhfless.adapters.tiny import build_tiny_model
from rlhfless.runtime import Runtime
from rlhfless.runtime.auth import keys_init
from rlhfless.runtime.messages import BillingEvent
from rlhfless.stages.config import load_config
from rlhfless.stages.pipeline import Pipeline
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


# Slow tier: training across agents runs in the default run in the launch and fault tests below.
@pytest.mark.slow
async def test_three_iterations_across_three_hosts(tmp_path: Path, cluster) -> None:
    hosts, keys = cluster
    agents = ", ".join(f'"{h.address}"' for h in hosts)
    cfg = load_config(None, [
        "train.iterations=3", "train.batch_prompts=6", "train.group_size=4",
        "rollout.max_new_tokens=16", "rollout.functions=6",
        "cluster.provider=static", f"cluster.agents=[{agents}]", f"cluster.keys_dir={keys}",
        "cluster.local_node=false", f"run.run_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    job = Job(cfg)
    summary = await job.run()
    assert [m.version for m in job.metrics] == [1, 2, 3]
    assert all(m.samples == 24 and math.isfinite(m.loss) for m in job.metrics)
    lines = (tmp_path / "run" / "billing.jsonl").read_bytes().splitlines()
    events = [msgspec.json.decode(line, type=BillingEvent) for line in lines]
    nodes = {e.node for e in events}
    assert nodes <= {"host0", "host1", "host2"} and len(nodes) >= 2  # really spread out
    assert {e.stage for e in events} >= {"rollout", "reward", "train"}
    assert summary["deaths"] == 0 and summary["nodes_lost"] == 0
    # Weights: each version crosses the network at most once per node (rollouts of iterations
    # 2 and 3 use versions 1 and 2), however many rollout functions that node ran (6 on 3).
    size = _model_bytes(tmp_path / "run" / "model")
    sent = summary["weight_bytes_sent"]
    assert sum(sent.values()) > 0
    for node, nbytes in sent.items():  # a delta (runtime/delta.py) sends less than a version
        assert 0 < nbytes <= 2 * size, (node, nbytes, size)
    whole = [m.weight_bytes["whole"] for m in job.metrics]
    assert whole[0] == 0 and all(w % size == 0 for w in whole)  # v1 goes out in iteration 2
    assert sum(m.weight_bytes["sent"] for m in job.metrics) == sum(sent.values())
    rollouts_on = [sum(e.stage == "rollout" and e.node == n for e in events) for n in sent]
    assert max(rollouts_on) >= 2  # a node with several rollout functions still got one copy


def _model_bytes(model_dir: Path) -> int:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _netns_inode(path: str) -> int:
    return os.stat(path).st_ino


async def test_agent_killed_and_link_down_mid_rollout_lose_no_sample(
    tmp_path: Path, cluster
) -> None:
    """kill -9 one host's agent and take another's link down while their rollouts run."""
    hosts, keys = cluster
    cfg = load_config(None, [
        "train.iterations=3", "train.batch_prompts=4", "train.group_size=4",
        "rollout.max_new_tokens=16", "rollout.functions=3", f"run.run_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    model_dir = build_tiny_model(tmp_path / "model", seed=0)
    # Which host a pid runs in: its network namespace's inode (no subprocess in the event loop).
    by_ns = {_netns_inode(f"/run/netns/{h.ns}"): h for h in hosts}
    hit: dict[str, float] = {}

    def strike(pids: list[int]) -> None:
        if hit:
            return  # once, in the first rollout
        spaces = dict.fromkeys(_netns_inode(f"/proc/{pid}/ns/net") for pid in pids)
        holding = [by_ns[ino] for ino in spaces if ino in by_ns]
        victims = holding + [h for h in hosts if h not in holding]  # rollout holders first
        assert victims[0].agent is not None
        victims[0].agent.kill()  # kill -9 the agent: its zygote and functions go with it
        hit["killed"] = time.time()
        victims[1].link(up=False)
        hit["link_down"] = time.time()
        hit["holders"] = len(holding)
        hit["down_host"] = hosts.index(victims[1])

    async with Runtime(
        slots=2, keep_alive_s=5, preload=("torch", "transformers"),
        agents=tuple(h.address for h in hosts), keys_dir=keys, local_node=False,
        node_timeout_s=2.0, node_heartbeat_s=0.25,
    ) as rt:  # fmt: skip
        p = Pipeline(rt, cfg, model_dir, tmp_path / "run")
        p.on_rollout_started = strike
        m0 = await p.run_iteration(0)
        assert rt.cluster is not None and rt.cluster.lost_events == 2
        assert m0.samples == 16 and m0.retries >= 1 and all(p.last_lengths)
        assert len(rt.nodes()) == 1  # only the third host is left
        hosts[hit["down_host"]].link(up=True)
        t0 = time.monotonic()
        while len(rt.nodes()) < 2:
            assert time.monotonic() - t0 < 20, "the host whose link came back is not re-admitted"
            await asyncio.sleep(0.1)
        assert rt.cluster.readmitted == 1
        later = [await p.run_iteration(i) for i in (1, 2)]
        assert [m.version for m in later] == [2, 3]
        assert all(m.samples == 16 and math.isfinite(m.loss) for m in [m0, *later])
        lost = [e for e in rt.billing_events if e.exit_code is None and e.exited_at is not None]
    # Billing of the lost hosts' functions stops at the loss (node_timeout_s after the strike),
    # not when their processes finally go.
    assert hit["holders"] >= 1 and lost
    for e in lost:
        assert e.exited_at is not None
        assert hit["killed"] <= e.exited_at <= hit["link_down"] + 2.0 + 1.5, e


@pytest.mark.slow  # the default run trains on agents in the test above (the API, not the CLI)
def test_launch_static_runs_train_on_the_agents(tmp_path: Path, cluster) -> None:
    hosts, keys = cluster
    agents = [arg for h in hosts for arg in ("--agent", h.address)]
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "rlhfless.cli", "launch", "--provider", "static", *agents,
         "--keys", keys, "--", "train", "--run-dir", str(run), "--set", "train.iterations=1",
         "--set", "train.batch_prompts=2", "--set", "rollout.max_new_tokens=8"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert all(f"agent: {h.ip}:{h.port}" in out.stdout for h in hosts)
    lines = (run / "billing.jsonl").read_bytes().splitlines()
    nodes = {msgspec.json.decode(line, type=BillingEvent).node for line in lines}
    assert nodes and nodes <= {"host0", "host1", "host2"}  # nothing ran on this machine
