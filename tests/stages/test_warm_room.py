"""Room for one iteration's functions to stay warm: PPO on 2 slots used to cold-start its critic
or trainer every iteration, because the runtime keeps 2 warm functions per slot by default."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rlhfless.stages.config import functions_per_iteration, load_config, warm_functions_per_slot
from rlhfless.stages.run import Job
from tests.stages.test_pipeline import SMALL


def test_the_warm_room_fits_every_function_of_an_iteration() -> None:
    grpo = load_config(None, [])
    assert functions_per_iteration(grpo) == 4  # 2 rollouts, reward, trainer
    assert warm_functions_per_slot(grpo) == 2  # the runtime's default: nothing changes
    ppo = load_config(None, ["train.algo=ppo", "train.kl_coef=0.1"])
    assert functions_per_iteration(ppo) == 6  # + reference, critic
    assert warm_functions_per_slot(ppo) == 3
    one_slot = load_config(None, ["train.algo=ppo", "runtime.slots=1", "rollout.functions=1"])
    assert warm_functions_per_slot(one_slot) == functions_per_iteration(one_slot)
    pinned = load_config(None, ["train.algo=ppo", "runtime.max_warm_per_slot=1"])
    assert warm_functions_per_slot(pinned) == 1


@pytest.mark.timeout(180)
def test_ppo_starts_each_function_cold_once(tmp_path: Path) -> None:
    cfg = load_config(
        None, [*SMALL, f"run.run_dir={tmp_path}", "train.algo=ppo", "train.iterations=3"]
    )
    summary = asyncio.run(Job(cfg).run())
    n = functions_per_iteration(cfg)
    assert summary["functions_started"] == n, summary  # was 8 of 5 before the warm room
    assert summary["warm_starts"] >= 2 * n
