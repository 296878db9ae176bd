"""The 20 x 8 H100 tables of docs/simulate.md, as markdown rows.

    python benchmarks/sim_tables.py            # GRPO, gsm8k-like, 256 x 8, 7B (4 it.) and 70B (3 it.)
    python benchmarks/sim_tables.py --minibatches 1   # one optimiser step per iteration

Same as `rlhfless simulate --nodes 20 --gpu h100 --model 7b --cost aws,onprem` (and
`--model 70b --iterations 3`), with speedups and reductions against serverful-colocated.
"""

from __future__ import annotations

import argparse

from rlhfless.sim import SimConfig, Workload, simulate
from rlhfless.sim.report import usd

COSTS = ("aws", "onprem")


def rows(model: str, iterations: int, minibatches: int) -> list[str]:
    w = Workload(algo="grpo", dataset="gsm8k-like", batch_prompts=256, group_size=8,
                 iterations=iterations, minibatches=minibatches)  # fmt: skip
    r = simulate(SimConfig(nodes=20, gpu="h100", model=model, workload=w, costs=COSTS))
    base = r.systems["serverful-colocated"]
    out = []
    for name, s in r.systems.items():
        cells = [model.upper(), name, f"{s.mean_iteration_seconds:.1f}",
                 f"{base.mean_iteration_seconds / s.mean_iteration_seconds:.2f}x",
                 f"{s.busy_gpu_hours:.2f} / {s.idle_gpu_hours:.2f} / {s.cold_gpu_hours:.2f}"]  # fmt: skip
        for m in COSTS:
            d, ref = s.usd[m], base.usd[m]
            cells.append(
                "n/a" if d is None else f"{usd(d)} ({1 - d / ref:+.1%})" if ref else usd(d)
            )
        out.append("| " + " | ".join(cells) + " |")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minibatches", type=int, default=Workload().minibatches,
                    help="optimiser steps per iteration (verl's mini-batches; default 4)")  # fmt: skip
    args = ap.parse_args()
    print(
        "| model | system | s/iter | speedup | GPU-h busy/idle/cold | aws $ (saved) | onprem $ (saved) |"
    )
    print("|---|---|---|---|---|---|---|")
    for model, its in (("7b", 4), ("70b", 3)):
        print("\n".join(rows(model, its, args.minibatches)))
