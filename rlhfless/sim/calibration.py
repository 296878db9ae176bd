"""``cpu-tiny``: this project's 2-core CPU machine, calibrated on recorded runs of ``rlhfless train``.

A slot of this machine is one core, and a function holds one slot: the ``cpu-tiny`` "GPU" is
one core. Two rates of a core, measured (2026-12-06, idle, torch 2.13 CPU, one thread, float32;
``python benchmarks/sim_calibration.py --machine`` measures them again):

* :data:`MATMUL_FLOPS` - a [512, 768] x [768, 2048] matmul: 226 GFLOP/s (two threads: 330);
* :data:`WEIGHT_STREAM_BYTES_PER_S` - the linear layers of a decoder (``F.linear``, weights
  stored [out, in] as transformers stores them) applied to 4-8 rows, as one decode step does:
  9.1 GB/s of weights in SmolLM2's shapes (4 rows), 7.4 GB/s in the 75M model's (8 rows);
  8.2 GB/s between them.

Why one core: two rollout functions decode side by side, one thread each. A bare forward step
at one thread takes what the engine's step takes in a run (75M model, 8 rows: 43 ms alone, 46
ms in the run; SmolLM2, 4 rows: 73 ms and ~80 ms; at two threads 22 and 40 ms).

The fixed costs are what a small model on a CPU spends outside the FLOPs and the bytes: Python,
eager operator dispatch, tiny matmuls. :func:`calibrate` fits them by least squares on the
relative error, over the recorded runs it is given (``tests/sim/data/measured_*.json``):

* a decode step of a function holding ``b`` sequences:
  ``step_overhead + L * layer_pass + weight bytes / stream + b * 2 P / flops``
  (``step_overhead_seconds``, ``layer_pass_seconds``), from each iteration's rollout stage over
  the decode steps of its slowest function (continuous batching: every sequence of a function
  in one batch);
* training on ``N`` tokens with ``k`` optimiser steps:
  ``train_overhead + N * L * layer_token + 6 P N / (s * flops * eta) + k * P * step_param`` on
  ``s`` slots (``train_overhead_seconds``, ``layer_token_seconds``, ``train_efficiency`` = eta,
  ``step_param_seconds``: AdamW, clipping and the weights written, per parameter; GRPO's trainer
  has both cores, PPO's policy and critic one each);
* ``stage_overhead_seconds``: the median of the scoring stage (an RPC and Python).

:data:`CPU_TINY` is the fit on :data:`CALIBRATION_RUNS`, four sizes recorded on 2026-12-06 on the
idle machine (load 0.0-0.3) by ``benchmarks/sim_estimate.py``, ``rlhfless train`` and
``benchmarks/sim_calibration.py --record``: the odd iterations 1-11 of the default run (tiny:
2 layers, hidden 64; GRPO 16 x 8, 4 epochs, 12 iterations), the odd iterations 1-7 of the same
job on ``model.tiny_size=small`` (4 layers, hidden 128), iterations 1-5 of the 75M size (12
layers, hidden 768; 4 x 4, 1 epoch) and iterations 1-2 of SmolLM2-135M on gsm_symbolic
(``configs/smollm2-gsm.toml``). Held out: the even iterations of the tiny run, the PPO run
(reference, critic, two trainers), a model directory of a shape none of them has (6 layers,
hidden 384, 9.5M parameters: ``tinymid-grpo``), and fresh runs of each job
(``benchmarks/sim_estimate.py``). Recordings made under load are not calibration data: the
2026-12-05 runs at load 1.1-5 put SmolLM2's training at 66 s an iteration, where the idle
machine takes 6.4 s.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import msgspec
import numpy as np

from rlhfless.sim.profiles import GpuProfile, ModelProfile

MATMUL_FLOPS = 2.26e11  # one core, measured (module docstring)
WEIGHT_STREAM_BYTES_PER_S = 8.2e9  # one core, measured (module docstring)
# (recording, iterations fitted); iteration 0 starts processes. Interleaved for the tiny run:
# the machine's load drifts.
CALIBRATION_RUNS = (
    ("tiny-grpo", (1, 3, 5, 7, 9, 11)),
    ("tinysmall-grpo", (1, 3, 5, 7)),
    ("tiny75m-grpo", (1, 2, 3, 4, 5)),
    ("smollm2-grpo", (1, 2)),
)
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
        peak_flops=MATMUL_FLOPS,
        hbm_bytes_per_s=WEIGHT_STREAM_BYTES_PER_S,
        memory_bytes=16e9,
        intra_node_bytes_per_s=10e9,
        network_bytes_per_s=1e9,
        gpus_per_node=2,
        compute_efficiency=1.0,
        memory_efficiency=1.0,
        **fit,
        source="calibrated on this project's 2-core CPU machine (rlhfless/sim/calibration.py)",
    )


class Recorded(msgspec.Struct, frozen=True):
    """One recorded run to fit on: its data (``record_run``'s JSON), its model, the iterations."""

    data: dict
    model: ModelProfile
    iterations: tuple[int, ...]


def _relative_lstsq(rows: list[list[float]], ys: list[float], ws: list[float]) -> list[float]:
    """Weighted least squares on the relative error (each row divided by its measured value),
    with no negative cost: a coefficient the free fit puts below zero is held at zero and the
    rest refitted (a fixed cost cannot be negative)."""
    a = np.array([[w * x / y for x in r] for r, y, w in zip(rows, ys, ws, strict=True)])
    target = np.array(ws)
    free = list(range(a.shape[1]))
    while True:
        sol, *_ = np.linalg.lstsq(a[:, free], target, rcond=None)
        if (sol >= 0).all() or len(free) == 1:
            break
        free = [j for j, x in zip(free, sol, strict=True) if x > 0]
    out = [0.0] * a.shape[1]
    for j, x in zip(free, sol, strict=True):
        out[j] = max(float(x), 0.0)
    return out


def trained_tokens(data: dict, it: dict) -> float:
    tokens = sum(pt * len(ls) + sum(ls) for pt, ls in zip(it["prompt_tokens"], it["lengths"],
                                                            strict=True))  # fmt: skip
    return float(tokens * data["config"]["train_epochs"])


def calibrate(runs: list[Recorded]) -> dict[str, float]:
    """The fixed costs that fit ``runs`` (module docstring)."""
    overhead = statistics.median(
        r.data["iterations"][i]["stage_seconds"]["score"] for r in runs for i in r.iterations
    )
    step_rows, step_ys, train_rows, train_ys, ws = [], [], [], [], []
    for r in runs:
        m = r.model
        for i in r.iterations:
            it = r.data["iterations"][i]
            k = r.data["config"]["rollout_functions"]
            f = max(range(k), key=lambda f: max(x for ls in it["lengths"][f::k] for x in ls))
            slowest = [x for ls in it["lengths"][f::k] for x in ls]
            prefill = sum(it["prompt_tokens"][f::k]) * 2 * m.params / MATMUL_FLOPS  # shared
            known = m.weight_bytes / WEIGHT_STREAM_BYTES_PER_S
            known += len(slowest) * 2 * m.params / MATMUL_FLOPS
            step = (it["stage_seconds"]["rollout"] - overhead - prefill) / max(slowest)
            ws.append(1 / math.sqrt(len(r.iterations)))  # each run weighs the same
            step_rows.append([1.0, float(m.layers)])
            step_ys.append(max(step - known, 1e-6))
            n = trained_tokens(r.data, it)
            slots = r.data["config"]["slots"]  # a GRPO trainer's threads: every slot's core
            steps = r.data["config"]["train_epochs"]  # one optimiser step per epoch
            train_rows.append([1.0, n * m.layers, 6 * m.params * n / (slots * MATMUL_FLOPS),
                               steps * m.params])  # fmt: skip
            train_ys.append(it["stage_seconds"]["train"])
    c0, c_layer = _relative_lstsq(step_rows, step_ys, ws)
    a, c_token, inv_eta, c_param = _relative_lstsq(train_rows, train_ys, ws)
    if inv_eta <= 0:
        raise ValueError("the runs do not tell the FLOP rate of training: add a larger model's run")
    return {
        "step_overhead_seconds": c0,
        "layer_pass_seconds": c_layer,
        "stage_overhead_seconds": overhead,
        "train_overhead_seconds": a,
        "layer_token_seconds": c_token,
        "train_efficiency": 1.0 / inv_eta,
        "step_param_seconds": c_param,
    }


# calibrate(CALIBRATION_RUNS), rounded; tests check it is what the recordings give.
CPU_TINY: dict[str, float] = {
    "step_overhead_seconds": 1.77e-3,
    "layer_pass_seconds": 8.44e-5,
    "stage_overhead_seconds": 1.48e-3,
    "train_overhead_seconds": 0.0,
    "layer_token_seconds": 1.816e-5,
    "train_efficiency": 0.631,
    "step_param_seconds": 7.59e-9,
}


def cpu_tiny_gpu() -> GpuProfile:
    return _base(**CPU_TINY)


def load_profile(path: str | Path) -> dict:
    data: dict = json.loads(Path(path).read_text())
    return data
