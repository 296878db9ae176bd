"""``cpu-tiny``: this repository's tiny model on the project's 2-core CPU machine, calibrated.

The profile is fitted to a recorded run (``tests/sim/data/tiny_profile.json``: the tiny-model
GRPO run of ``rlhfless train`` with its defaults — 16 prompts x 8 samples, 2 rollout functions,
4 training epochs — measured on this machine; the file says how it was made). On a CPU the
roofline terms are negligible and fixed per-call costs dominate, so the fit sets:

* ``step_overhead_seconds`` = median over iterations of (rollout seconds - stage overhead) /
  decode steps of the slower function (its longest response; continuous batching, all of a
  function's 64 samples in one batch);
* ``stage_overhead_seconds`` = median of the reward and scoring stages (RPC + Python);
* training: least squares ``seconds = a + b * trained tokens``: ``train_overhead_seconds = a``
  and ``peak_flops`` so that ``6 P / (2 slots * peak * train_efficiency) = b``.

:data:`CPU_TINY` holds the result of :func:`calibrate` on iterations 1-4 (iteration 0 includes
process starts); iterations 5-9 are held out for the validation test.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from rlhfless.sim.hardware import GpuProfile, ModelProfile

CALIBRATION_ITERATIONS = (1, 2, 3, 4)
TINY_PARAMS = 124_000  # 2 layers of hidden 64 (q/o 64x64, k/v 64x32, MLP 3 x 64x256) + embeddings


def tiny_model() -> ModelProfile:
    return ModelProfile(
        name="tiny", params=TINY_PARAMS, layers=2, hidden=64, kv_heads=2, head_dim=16, tp=1,
        dtype_bytes=4, source="rlhfless/adapters/tiny.py SIZES['tiny'] (float32)",
    )  # fmt: skip


def _base(**fit: float) -> GpuProfile:
    return GpuProfile(
        name="cpu-tiny",
        device_kind="cpu",
        peak_flops=fit["peak_flops"],
        hbm_bytes_per_s=20e9,  # DDR bandwidth, irrelevant at 0.5 MB of weights
        memory_bytes=16e9,
        intra_node_bytes_per_s=10e9,
        network_bytes_per_s=1e9,
        gpus_per_node=2,
        compute_efficiency=1.0,
        memory_efficiency=1.0,
        train_efficiency=1.0,
        step_overhead_seconds=fit["step_overhead_seconds"],
        stage_overhead_seconds=fit["stage_overhead_seconds"],
        train_overhead_seconds=fit["train_overhead_seconds"],
        source="calibrated on this project's 2-core CPU machine (tests/sim/data/tiny_profile.json)",
    )


def calibrate(profile: dict, iterations: tuple[int, ...] = CALIBRATION_ITERATIONS) -> dict:
    cfg = profile["config"]
    rows = [profile["iterations"][i] for i in iterations]
    overhead = statistics.median(
        v for r in rows for k, v in r["stage_seconds"].items() if k in ("reward", "score")
    )
    steps = []
    for r in rows:
        k = cfg["rollout_functions"]
        per_fn = [max(x for p in r["lengths"][f::k] for x in p) for f in range(k)]
        steps.append((r["stage_seconds"]["rollout"] - overhead) / max(per_fn))
    xs, ys = [], []
    for r in rows:
        tokens = sum(
            pt * len(ls) + sum(ls) for pt, ls in zip(r["prompt_tokens"], r["lengths"], strict=True)
        )
        xs.append(tokens * cfg["train_epochs"])
        ys.append(r["stage_seconds"]["train"])
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    b = max(b, 1e-9)
    a = max(0.0, my - b * mx)
    return {
        "step_overhead_seconds": statistics.median(steps),
        "stage_overhead_seconds": overhead,
        "train_overhead_seconds": a,
        "peak_flops": 6 * TINY_PARAMS / (cfg["slots"] * b),
    }


# calibrate(tests/sim/data/tiny_profile.json), rounded; tests check it is still what the file gives.
CPU_TINY = {
    "step_overhead_seconds": 0.00103,
    "stage_overhead_seconds": 0.00095,
    "train_overhead_seconds": 0.0973,
    "peak_flops": 2.78e10,
}


def cpu_tiny_gpu() -> GpuProfile:
    return _base(**CPU_TINY)


def load_profile(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
