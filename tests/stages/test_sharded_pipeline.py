"""The whole iteration with a sharded trainer (train.slots = 2): staged and streamed, it gives the
single-process trainer's samples, rewards, metrics and weights (float summation order), and the
hand-over state it persists is sharded (DCP).

Real rollout, reward and reference functions and a real trainer gang (gloo), the tiny model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rlhfless.adapters.tiny import build_tiny_model
from rlhfless.runtime import Runtime
from rlhfless.stages.config import load_config
from rlhfless.stages.handover import is_sharded
from rlhfless.stages.pipeline import Pipeline
from tests.stages.sharded_helpers import assert_same_weights

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]
BASE = [
    "train.batch_prompts=4", "train.group_size=4", "train.epochs=2", "train.kl_coef=0.05",
    "rollout.max_new_tokens=16", "runtime.slots=2",
]  # fmt: skip


async def _run(tmp: Path, model_dir: Path, slots: int, stream: bool) -> dict[str, Any]:
    cfg = load_config(
        None,
        [*BASE, f"train.slots={slots}", f"pipeline.stream={str(stream).lower()}",
         f"run.run_dir={tmp}"],
    )  # fmt: skip
    async with Runtime(slots=2, keep_alive_s=30) as rt:
        p = Pipeline(rt, cfg, model_dir, tmp)
        metrics = [await p.run_iteration(i) for i in range(2)]
        await p.persist_state()
        lengths = p.last_lengths
        weights = p.weights
    assert isinstance(weights, dict)
    return {"metrics": metrics, "lengths": lengths, "weights": weights}


async def test_sharded_trainer_in_the_pipeline(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "model", seed=0)
    one = await _run(tmp_path / "one", model_dir, 1, stream=False)
    runs = {
        "staged": await _run(tmp_path / "staged", model_dir, 2, stream=False),
        "streamed": await _run(tmp_path / "streamed", model_dir, 2, stream=True),
    }
    assert not is_sharded(tmp_path / "one" / "state" / "policy")
    for name, run in runs.items():
        assert is_sharded(tmp_path / name / "state" / "policy")
        assert run["lengths"] == one["lengths"], name  # the same samples
        for a, b in zip(one["metrics"], run["metrics"], strict=True):
            assert b.reward_mean == a.reward_mean and b.functions["train"] == 2
            assert b.loss == pytest.approx(a.loss, rel=1e-4, abs=1e-6)
            assert b.kl == pytest.approx(a.kl, rel=1e-4, abs=1e-6)
            assert b.version == a.version
        # as tests/stages/test_streamed.py: the streamed step adds chunks in arrival order too
        worst = assert_same_weights(one["weights"], run["weights"], atol=1e-4)
        print(f"{name}, 2 ranks vs 1 process: max |diff| {worst:.2e}")
