"""Spot interruptions in the simulator: reclaimed nodes' work re-runs, and the bill shows it."""

from __future__ import annotations

import math
import statistics

import msgspec
import pytest

from rlhfless.sim import SimConfig
from rlhfless.sim import simulate as run_sim
from rlhfless.sim.errors import BadSetting
from rlhfless.sim.interruptions import Interrupter, Interruptions
from rlhfless.sim.workload import Workload

SYSTEMS = ("serverful-colocated", "rlhfless", "rlhfless-staged")


def config(mtbi_hours: float | None, seed: int = 0) -> SimConfig:
    w = Workload(batch_prompts=32, group_size=4, iterations=4, seed=1)
    spot = None if mtbi_hours is None else Interruptions(mtbi_hours=mtbi_hours, seed=seed)
    return SimConfig(
        nodes=2, gpu="h100", model="1.5b", workload=w, systems=SYSTEMS,
        costs=("onprem",), interruptions=spot,
    )  # fmt: skip


def test_a_units_time_follows_the_restart_formula() -> None:
    # Restart from scratch at rate lam, r seconds per replacement: the classic expectation
    # E[wall] = (e^(lam d) - 1)(1/lam + r). 20 000 draws put the mean within ~2% of it.
    d, r, nodes, mtbi_h = 600.0, 30.0, 4, 1.0
    lam = nodes / (mtbi_h * 3600)
    lose = Interrupter(Interruptions(mtbi_hours=mtbi_h, seed=3), replace_seconds=r)
    walls = [d + lose.attempts(d, nodes, 8).extra_seconds for _ in range(20_000)]
    assert statistics.fmean(walls) == pytest.approx(
        (math.exp(lam * d) - 1) * (1 / lam + r), rel=0.03
    )
    # The lost GPU-seconds are the failed attempts' running time on the unit's GPUs.
    assert lose.interruptions > 0 and lose.lost_gpu_seconds > 0


def test_without_interruptions_nothing_changes() -> None:
    lose = Interrupter(None, replace_seconds=30.0)
    assert lose.attempts(1e6, 100, 8).extra_seconds == 0.0
    plain, spot = run_sim(config(None)), run_sim(config(1e9))  # a reclaim every 114 000 years
    for name in SYSTEMS:
        a, b = plain.systems[name], spot.systems[name]
        assert b.interruptions == 0 and b.lost_gpu_hours == 0.0
        assert msgspec.structs.replace(b, interruptions=0) == a


def test_reclaimed_work_reruns_loses_no_sample_and_is_billed() -> None:
    plain = run_sim(config(None))
    spot = run_sim(config(0.003, seed=2))  # a node reclaimed every 11 s: many per job
    for name in SYSTEMS:
        a, b = plain.systems[name], spot.systems[name]
        assert b.interruptions > 0, name
        assert b.samples_trained == b.samples == a.samples, name  # every sample re-run
        assert b.lost_gpu_hours > 0 and b.job_seconds > a.job_seconds, name
        assert b.usd["onprem"] > a.usd["onprem"], name  # the lost work is paid for
    # Losing a node costs an SPMD job the stage on every GPU; a rollout function only itself.
    colo, ours = spot.systems["serverful-colocated"], spot.systems["rlhfless-staged"]
    assert colo.lost_gpu_hours / colo.interruptions > ours.lost_gpu_hours / ours.interruptions


def test_the_same_seed_gives_the_same_job_and_bad_rates_are_refused() -> None:
    assert run_sim(config(0.003, seed=4)) == run_sim(config(0.003, seed=4))
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(BadSetting, match="spot_mtbi_hours"):
            Interruptions(mtbi_hours=bad)
    lose = Interrupter(Interruptions(mtbi_hours=1e-4), replace_seconds=1.0)
    with pytest.raises(BadSetting, match="attempts expected"):
        lose.attempts(3600.0, 20, 160)
