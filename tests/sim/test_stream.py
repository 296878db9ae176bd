"""The streamed iteration in the simulator: the fluid pool by hand, and the system beside staged."""

from __future__ import annotations

import random

import pytest

from rlhfless.cost_models import get_model
from rlhfless.scaling import GroupWork, Scaler
from rlhfless.sim.cluster import Cluster
from rlhfless.sim.hardware import get_gpu, get_model_profile
from rlhfless.sim.perf import PerfModel
from rlhfless.sim.plan import POLICY, RolloutPlanner
from rlhfless.sim.run import SimConfig
from rlhfless.sim.run import simulate as run_sim
from rlhfless.sim.serverless import Rlhfless
from rlhfless.sim.stream import Freed, group_finish_times, stream
from rlhfless.sim.workload import Batch, Workload, lengths_of

TWO = [Freed(1.0, 1, 2.0, 0), Freed(3.0, 1, 2.0, 1)]


def test_groups_are_worked_on_released_gpus_while_the_tail_decodes() -> None:
    # f0 frees its GPU at 1 with 2 GPU-s of work: done 1..3 on one GPU; f1 at 3: 2 GPUs, 3..4.
    r = stream(TWO, rollout_end=3.0, barrier_work=0.0, join_seconds=0.0)
    assert r.end == pytest.approx(4.0)
    assert r.busy == {0: [(1.0, 4.0)], 1: [(3.0, 4.0)]}


def test_barrier_work_waits_for_the_rollout_and_the_streamed_work() -> None:
    r = stream(TWO, rollout_end=3.0, barrier_work=4.0, join_seconds=0.0)
    assert r.end == pytest.approx(6.0)  # 4 GPU-s on 2 GPUs after t = 4


def test_a_joining_gpu_pays_its_start() -> None:
    # f0 works from 1.5 (1.5 GPU-s by 3), f1 from 3.5: 0.5 left + 2 new = 2.5 -> 3..3.5 one GPU
    # (0.5), then 2.0 on two GPUs -> 4.5
    r = stream(TWO, rollout_end=3.0, barrier_work=0.0, join_seconds=0.5)
    assert r.end == pytest.approx(4.5)
    assert r.busy[1] == [(3.5, 4.5)]


def test_never_used_gpus_join_as_pacing_needs_them() -> None:
    more = [*TWO, Freed(0.0, 2, 0.0, 2)]
    # paced: at 1, 2 GPU-s by the rollout's end at 3 needs 1 GPU: f0's; the idle pair joins
    # only when the rollout ends: 3..3.5 on 4 GPUs
    r = stream(more, rollout_end=3.0, barrier_work=0.0, join_seconds=0.0)
    assert r.end == pytest.approx(3.5)
    assert r.busy[2] == [(3.0, 3.5)] and r.busy[0] == [(1.0, 3.5)]
    # unpaced: every free GPU joins at once: 2 GPU-s on 3 GPUs from 1, then 3..3.5 on 4
    r = stream(more, rollout_end=3.0, barrier_work=0.0, join_seconds=0.0, pace=False)
    assert r.end == pytest.approx(3.5)
    assert r.busy[2] == [(1.0, pytest.approx(5 / 3)), (3.0, 3.5)]


def test_groups_are_dated_inside_a_function() -> None:
    # two one-sample groups of lengths 1 and 3; step s costs 1 + 0.5 x running:
    # 2.0 (both), then 1.5, 1.5 -> the short group is done 3.0 s before the function's finish
    assert group_finish_times([[1], [3]], 10.0, 1.0, 0.5, 4) == [7.0, 10.0]
    assert group_finish_times([[1], [3]], 10.0, 1.0, 0.5, 1) is None  # they queue: undated


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_streamed_is_no_slower_than_staged_and_trains_every_sample(algo: str) -> None:
    w = Workload(algo=algo, batch_prompts=32, group_size=4 if algo == "grpo" else 1,
                 iterations=3, seed=1)  # fmt: skip
    r = run_sim(SimConfig(nodes=2, model="1.5b", workload=w, costs=("onprem",),
                          systems=("rlhfless", "rlhfless-staged")))  # fmt: skip
    streamed, staged = r.systems["rlhfless"], r.systems["rlhfless-staged"]
    assert streamed.samples_trained == staged.samples_trained == streamed.samples
    assert streamed.mean_iteration_seconds <= staged.mean_iteration_seconds + 1e-6
    if algo == "grpo":  # PPO's backward waits for whitening: only its forward passes overlap
        assert streamed.mean_iteration_seconds < staged.mean_iteration_seconds - 0.1


def _system(algo: str, minibatches: int) -> tuple[Rlhfless, Batch]:
    w = Workload(algo=algo, batch_prompts=16, group_size=4 if algo == "grpo" else 1,
                 minibatches=minibatches, iterations=1)  # fmt: skip
    perf = PerfModel(get_gpu("h100"), get_model_profile("7b"), 120.0, 260.0)
    system = Rlhfless(perf, w, Cluster(2, 8, "h100"), get_model("onprem"))
    return system, next(iter(w.batches()))


@pytest.mark.parametrize("minibatches", [1, 4])
def test_only_the_first_optimiser_steps_compute_streams(minibatches: int) -> None:
    # the real trainer steps once after the last group; a later step needs that step's weights
    system, batch = _system("grpo", minibatches)
    gpus = system.cluster.gpus
    streamable, barrier = system.stream_work(batch, gpus)
    staged = (system.forward_seconds(batch, gpus) + system.train_seconds(batch, gpus)) * gpus
    assert streamable + barrier == pytest.approx(staged)  # moved earlier, never dropped
    first = system.first_step_compute_seconds(batch, gpus) * gpus
    assert streamable == pytest.approx(system.forward_seconds(batch, gpus) * gpus + first)
    one, _ = _system("grpo", 1)
    assert first == pytest.approx(one.first_step_compute_seconds(batch, gpus) * gpus / minibatches)


def test_ppo_training_waits_for_the_last_group() -> None:
    system, batch = _system("ppo", 1)
    gpus = system.cluster.gpus
    assert system.stream_work(batch, gpus) == pytest.approx(
        (system.forward_seconds(batch, gpus) * gpus, system.train_seconds(batch, gpus) * gpus)
    )


def test_the_simulated_plan_is_the_real_scalers() -> None:
    # same predictor history, same throughput: the k, groups and cut Scaler.plan picks (4 slots:
    # the coarse and fine k grids cover every k)
    w = Workload(batch_prompts=24, group_size=4, iterations=3, seed=3)
    batches = list(w.batches())
    perf = PerfModel(get_gpu("h100"), get_model_profile("7b"), 120.0, 260.0)
    params, transfer, model = perf.throughput_params(), perf.transfer_params(), get_model("aws")
    limit = lengths_of(w).max_response
    planner = RolloutPlanner(4, "h100", model, transfer, limit, 1)
    scaler = Scaler(POLICY, 4, "h100", throughput=params, transfer=transfer, cost_model=model,
                    max_new_tokens=limit)  # fmt: skip
    for b in batches:
        works = [
            GroupWork(group_id=i, prefill_tokens=float(p), lengths=tuple(ls))
            for i, (p, ls) in enumerate(zip(b.prompt_tokens, planner.predict(
                b.prompt_ids, [len(x) for x in b.lengths]), strict=True))
        ]  # fmt: skip
        ours = planner.plan(b.prompt_ids, works, params)
        real = scaler.plan(b.prompt_ids, b.prompt_tokens, 4)
        assert (ours.k, ours.assignment.groups) == (real.functions, real.groups)
        assert POLICY.cut_in_force((ours.cut, ours.cut_threshold)) == (real.cut, real.cut_threshold)
        planner.observe(b.prompt_ids, b.lengths)
        scaler.observe(b.prompt_ids, b.lengths)


@pytest.mark.timeout(60)
def test_the_pool_ends_when_leftover_work_is_below_the_clocks_resolution() -> None:
    """Work split over many GPUs late in a long iteration: pending / GPUs can fall under the
    clock's last bit, where the pool once spun forever (a 32-node 70B simulation never ended)."""
    rng = random.Random(0)
    for _ in range(300):
        work, at = rng.uniform(0.01, 50.0), rng.uniform(10.0, 5000.0)
        r = stream([Freed(at=at, gpus=256, work=work, key=0)], at, 0.0, 0.0)
        assert r.end == pytest.approx(at + work / 256, abs=1e-9)
        assert sum(e - s for s, e in r.busy[0]) == pytest.approx(work / 256, abs=1e-9)
