"""rlhfless's training gang in the simulator: the GPUs a real run's ``train.slots`` trains on."""

from __future__ import annotations

import pytest

from rlhfless.sim import SimConfig
from rlhfless.sim import simulate as run_sim
from rlhfless.sim.errors import BadSetting
from rlhfless.sim.estimate import JobSpec
from rlhfless.sim.estimate_gpu import estimate_gpu
from rlhfless.sim.gang import gang_sizes
from rlhfless.sim.hardware import get_gpu, get_model_profile
from rlhfless.sim.perf import ADAM_STATE_BYTES_PER_PARAM
from rlhfless.sim.workload import Workload


def config(
    train_gpus: int, system: str = "rlhfless-staged", model: str = "1.5b", nodes: int = 2
) -> SimConfig:
    w = Workload(batch_prompts=32 * nodes // 2, group_size=4, iterations=3, seed=1)
    return SimConfig(
        nodes=nodes, gpu="h100", model=model, workload=w, systems=(system,),
        costs=("onprem",), train_gpus=train_gpus,
    )  # fmt: skip


@pytest.mark.parametrize("system", ["rlhfless-staged", "rlhfless"])
def test_a_smaller_gang_trains_longer_on_fewer_gpus(system: str) -> None:
    whole, node, part = (run_sim(config(n, system)).systems[system] for n in (16, 8, 4))
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


@pytest.mark.parametrize("system", ["rlhfless-staged", "rlhfless"])
def test_a_chosen_gang_is_smaller_where_fsdp_traffic_bounds_the_step(system: str) -> None:
    # 70B on 4 nodes of H100: each step moves 3 x 140 GB per GPU over the network whatever the
    # gang's size, so fewer GPUs train about as fast and hold fewer GPU-seconds
    chosen, every = (run_sim(config(n, system, "70b", 4)).systems[system] for n in (0, 32))
    assert every.train_gpus == [32, 32, 32]
    assert all(g < 32 for g in chosen.train_gpus)
    assert chosen.samples_trained == every.samples_trained
    assert chosen.usd["onprem"] < 0.95 * every.usd["onprem"]
    # the rule: the cheapest within the scaler's 3% of the fastest (planned on predictions)
    assert chosen.mean_iteration_seconds <= 1.03 * every.mean_iteration_seconds


def test_a_chosen_gang_is_every_gpu_where_compute_bounds_the_step() -> None:
    chosen = run_sim(config(0, "rlhfless")).systems["rlhfless"]  # 1.5B: halving doubles it
    assert chosen.train_gpus == [16, 16, 16]


def test_gang_sizes_hold_the_training_state() -> None:
    h100 = get_gpu("h100")
    state = ADAM_STATE_BYTES_PER_PARAM * get_model_profile("70b").params  # about 1.1 TB
    sizes = gang_sizes(160, 8, 8, state, h100.memory_bytes)
    assert sizes[0] == 16 and sizes[-1] == 160  # 8 H100s hold 640 GB: too little
    assert all(n % 8 == 0 for n in sizes)
    assert gang_sizes(16, 8, 2, 0.0, h100.memory_bytes) == [2, 4, 6, 8, 16]  # part of a node
    assert gang_sizes(8, 8, 8, state, h100.memory_bytes) == []  # one node cannot hold it
