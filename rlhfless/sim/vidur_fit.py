"""Fit the GPU efficiency factors of :mod:`rlhfless.sim.hardware` to Vidur's measured operator times.

Source: ``/work/shared/data/vidur-profiling/compute/<gpu>/<org>/<model>/mlp.csv`` (microsoft/vidur
commit 7d47513, ``data/profiling``, MIT licence). Each row is one transformer layer's operators,
timed in ms for ``num_tokens`` tokens on ``num_tensor_parallel_workers`` GPUs. We use the four
linear layers (``attn_pre_proj`` = QKV, ``attn_post_proj`` = O, ``mlp_up_proj``, ``mlp_down_proj``),
whose weights we can count from the row's ``n_embd``, ``n_head``, ``n_kv_head``, ``n_expanded_embd``
and ``use_gated_mlp``:

* **compute efficiency** = achieved / datasheet dense bf16 FLOP/s, where achieved =
  ``2 * tokens * weights / time``, median over rows with ``num_tokens >= 2048`` (compute bound);
* **memory efficiency** = achieved / datasheet HBM bandwidth, where achieved = ``2 bytes *
  weights / time``, median over rows with ``num_tokens <= 16`` (one decode step of a small batch:
  the weights are read once and the FLOPs are negligible).

Fitted per GPU over every model and TP degree in the folder. The attention kernels are not in the
data, so attention is modelled from first principles (see :mod:`rlhfless.sim.perf`). The numbers
this produced are committed in :data:`rlhfless.sim.hardware.VIDUR_FIT`; ``tests/sim`` refits them
when the data folder is present and checks they still agree.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

DEFAULT_ROOT = Path("/work/shared/data/vidur-profiling")
# Datasheet dense bf16 FLOP/s and HBM bytes/s of the GPUs Vidur profiled (NVIDIA datasheets:
# H100 SXM5 80 GB, A100 SXM4 80 GB as Vidur's A100 rows, A40 48 GB GDDR6).
PROFILED = {
    "h100": (989.4e12, 3.35e12),
    "a100": (312e12, 2.039e12),
    "a40": (149.7e12, 696e9),
}
_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")


def _weights(row: dict[str, str]) -> float:
    """Weights of the four linear layers of one layer on one TP worker."""
    d, h, kv = int(row["n_embd"]), int(row["n_head"]), int(row["n_kv_head"])
    ff, tp = int(row["n_expanded_embd"]), int(row["num_tensor_parallel_workers"])
    head = d // h
    gated = row["use_gated_mlp"].strip().lower() == "true"
    qkv = d * (h + 2 * kv) * head
    out = h * head * d
    up = d * ff * (2 if gated else 1)
    down = ff * d
    return (qkv + out + up + down) / tp


def fit(root: Path = DEFAULT_ROOT) -> dict[str, dict[str, float]]:
    """``{gpu: {"compute_efficiency": x, "memory_efficiency": y, "rows": n}}`` from the folder."""
    out: dict[str, dict[str, float]] = {}
    for gpu, (flops, bandwidth) in PROFILED.items():
        compute: list[float] = []
        memory: list[float] = []
        for path in sorted((root / "compute" / gpu).glob("*/*/mlp.csv")):
            with path.open(newline="") as fh:
                for row in csv.DictReader(fh):
                    seconds = sum(float(row[f"time_stats.{op}.median"]) for op in _OPS) / 1e3
                    if seconds <= 0:
                        continue
                    w, tokens = _weights(row), int(row["num_tokens"])
                    if tokens >= 2048:
                        compute.append(2 * tokens * w / seconds / flops)
                    elif tokens <= 16:
                        memory.append(2 * w / seconds / bandwidth)
        if compute and memory:
            out[gpu] = {
                "compute_efficiency": round(statistics.median(compute), 3),
                "memory_efficiency": round(statistics.median(memory), 3),
                "rows": float(len(compute) + len(memory)),
            }
    return out


if __name__ == "__main__":  # python -m rlhfless.sim.vidur_fit
    for name, values in fit().items():
        print(name, values)
