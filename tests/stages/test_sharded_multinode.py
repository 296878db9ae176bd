"""The 2-rank sharded trainer split over two hosts (network namespaces, one slot each): the same
weights as one process, gloo between the hosts on their veth links, DCP state on the run dir
both hosts see (here: one file system, as shared storage would be across machines).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rlhfless.adapters.tiny import build_tiny_model
from rlhfless.runtime import Runtime
from rlhfless.runtime.auth import keys_init
from rlhfless.stages.handover import is_sharded
from tests.runtime import netns
from tests.stages.sharded_helpers import assert_same_weights, batch, train_cfg, trainer

_WHY = netns.why_not()
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(240),
    pytest.mark.skipif(_WHY is not None, reason=f"no network namespaces here: {_WHY}"),
]
STEPS = 2


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[list[netns.Host], str]]:
    """host0 and host1 with one slot each, routed to each other through the root namespace."""
    keys = str(keys_init(tmp_path / "keys"))
    with netns.routed_hosts(tmp_path, keys, slots=[1, 1]) as hs:
        yield hs, keys


async def test_two_ranks_on_two_hosts_train_to_the_single_process_weights(
    hosts: tuple[list[netns.Host], str], tmp_path: Path
) -> None:
    hs, keys = hosts
    model = build_tiny_model(tmp_path / "model", seed=0)
    cfg = train_cfg("grpo")
    out = {}
    async with Runtime(
        agents=tuple(h.address for h in hs), keys_dir=keys, local_node=False, join_timeout_s=60,
        threads_per_function=1,
    ) as rt:  # fmt: skip
        for slots in (1, 2):
            h = await trainer(rt, slots, model, cfg, tmp_path / f"state{slots}")
            if slots == 2:
                assert h.gang.spans_nodes and sorted(h.gang.nodes) == ["host0", "host1"]
            for step in range(STEPS):
                await h.step(**batch(step, "grpo"), expected_version=step)
            out[slots] = (await h.weights())["state_dict"]
            await h.persist(STEPS)
            await h.release()
    assert is_sharded(tmp_path / "state2")
    worst = assert_same_weights(out[1], out[2], atol=5e-5)
    print(f"2 ranks on 2 hosts vs 1 process: max |diff| {worst:.2e}")
