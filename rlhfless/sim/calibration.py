"""``cpu-tiny``: this repository's tiny model on the project's 2-core CPU machine, calibrated.

The profile is fitted to a recorded run (``tests/sim/data/measured_tiny-grpo.json``: the default
``rlhfless train`` — tiny model, GRPO, 16 prompts x 8 samples, 2 rollout functions, 4 training
epochs — run on 2026-12-05 with ``--set train.iterations=12``, load 1.1-1.2, recorded by
``benchmarks/sim_calibration.py --record``). On a CPU the roofline terms are negligible and fixed
per-call costs dominate, so the fit sets:

* ``step_overhead_seconds`` = median over iterations of (rollout seconds - stage overhead) /
  decode steps of the slower function (its longest response; continuous batching, all of a
  function's 64 samples in one batch);
* ``stage_overhead_seconds`` = median of the reward and scoring stages (RPC + Python);
* training: least squares ``seconds = a + b * trained tokens``: ``train_overhead_seconds = a``
  and ``peak_flops`` so that ``6 P / (2 slots * peak * train_efficiency) = b``.

:data:`CPU_TINY` holds the result of :func:`calibrate` on the odd iterations 1-11 (iteration 0
includes process starts); the even ones 2-10 are held out for the validation test (a 1-6 / 7-11
split mixed the load other work put on the shared machine into the split: training at the same
token count took 0.30 s in iterations 3-6 and 0.23 s in 7-11), and the PPO and SmolLM2
runs beside it for ``benchmarks/sim_calibration.py``. (``tiny_profile.json`` is an earlier
recording of the same run, kept for its prompt ids.)
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from rlhfless.sim.profiles import GpuProfile, ModelProfile

CALIBRATION_ITERATIONS = (1, 3, 5, 7, 9, 11)  # interleaved: the machine's load drifts
CALIBRATION_FILE = "measured_tiny-grpo.json"
TINY_PARAMS = 124_000  # 2 layers of hidden 64 (q/o 64x64, k/v 64x32, MLP 3 x 64x256) + embeddings


def tiny_model() -> ModelProfile:
    return ModelProfile(
        name="tiny", params=TINY_PARAMS, layers=2, hidden=64, kv_heads=2, head_dim=16, tp=1,
        dtype_bytes=4, source="rlhfless/adapters/tiny.py SIZES['tiny'] (float32)",
    )  # fmt: skip


def smollm2_model() -> ModelProfile:
    """SmolLM2-135M-Instruct as ``rlhfless train`` runs it on the CPU (float32; FACTS.md)."""
    return ModelProfile(
        name="smollm2", params=134.5e6, layers=30, hidden=576, kv_heads=3, head_dim=64, tp=1,
        vocab=49152, dtype_bytes=4, source="SmolLM2-135M-Instruct config.json (float32 on CPU)",
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
        source="calibrated on this project's 2-core CPU machine (tests/sim/data/measured_tiny-grpo.json)",
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


# calibrate(tests/sim/data/measured_tiny-grpo.json), rounded; tests check it is what the file gives.
CPU_TINY = {
    "step_overhead_seconds": 0.00274,
    "stage_overhead_seconds": 0.00163,
    "train_overhead_seconds": 0.0690,
    "peak_flops": 1.377e10,
}


def cpu_tiny_gpu() -> GpuProfile:
    return _base(**CPU_TINY)


def load_profile(path: str | Path) -> dict:
    data: dict = json.loads(Path(path).read_text())
    return data
