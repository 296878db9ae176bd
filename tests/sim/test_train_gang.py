"""rlhfless's training gang in the simulator: the GPUs a real run's ``train.slots`` trains on."""

from __future__ import annotations

import pytest

from rlhfless.sim import SimConfig
from rlhfless.sim import simulate as run_sim
from rlhfless.sim.errors import BadSetting
from rlhfless.sim.estimate import JobSpec
from rlhfless.sim.estimate_gpu import estimate_gpu
from rlhfless.sim.workload import Workload


def config(train_gpus: int, system: str = "rlhfless-staged") -> SimConfig:
    w = Workload(batch_prompts=32, group_size=4, iterations=3, seed=1)
    return SimConfig(
        nodes=2, gpu="h100", model="1.5b", workload=w, systems=(system,),
        costs=("onprem",), train_gpus=train_gpus,
    )  # fmt: skip


@pytest.mark.parametrize("system", ["rlhfless-staged", "rlhfless"])
def test_a_smaller_gang_trains_longer_on_fewer_gpus(system: str) -> None:
    whole, node, part = (run_sim(config(n, system)).systems[system] for n in (0, 8, 4))
    assert whole.samples_trained == node.samples_trained == part.samples_trained
    # Training on 16, 8, 4 GPUs: each halving makes the step longer...
    assert whole.mean_iteration_seconds < node.mean_iteration_seconds
    assert node.mean_iteration_seconds < part.mean_iteration_seconds
    # ...and rents fewer GPUs: the gang's, not every GPU of the cluster.
    assert whole.functions > node.functions > part.functions
    assert whole.gpu_hours > node.gpu_hours > part.gpu_hours


def test_gang_sizes_that_no_run_could_have_are_refused() -> None:
    for bad in (24, 12):  # more than the cluster's 16; more than a node but not whole nodes
        with pytest.raises(BadSetting, match="train_gpus"):
            run_sim(config(bad))
    # 70B needs tp 8 on an H100: a one-GPU trainer (train.slots = 1) cannot hold it.
    job = JobSpec(model="70b", device="h100", device_kind="h100", nodes=1, gpus_per_node=8,
                  iterations=2, batch_prompts=8, group_size=2, train_slots=1)  # fmt: skip
    with pytest.raises(BadSetting, match=r"train\.slots = 1"):
        estimate_gpu(job, ["onprem"])
