"""Spot reclaims in the simulator: what they cost each system, over seeds.

    python benchmarks/sim_spot.py                       # 2 x 8 H100, 1.5B, GRPO, 3 seeds
    python benchmarks/sim_spot.py --nodes 4 --model 7b --seeds 3

For each mean time between reclaims of one node (``--mtbi`` hours; "none" is on-demand), the
same job on ``serverful-colocated`` (verl-like) and ``rlhfless``, one simulation per seed (the
seed draws the reclaims; the workload is the same). Reported per system: the mean over seeds of
seconds per iteration, reclaims, GPU-hours thrown away, and dollars under ``onprem`` (GPU-seconds)
and the spot table's cloud; the worst seed's seconds per iteration beside the mean. Prints a
table and writes benchmarks/results/sim_spot.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from rlhfless.sim import SimConfig, simulate
from rlhfless.sim.interruptions import Interruptions
from rlhfless.sim.workload import Workload

OUT = Path(__file__).resolve().parent / "results" / "sim_spot.json"
SYSTEMS = ("serverful-colocated", "rlhfless")


def one(args: argparse.Namespace, mtbi: float | None, seed: int) -> dict[str, dict[str, float]]:
    w = Workload(batch_prompts=args.batch, group_size=8, iterations=args.iterations, seed=1)
    spot = None if mtbi is None else Interruptions(mtbi_hours=mtbi, seed=seed)
    cfg = SimConfig(
        nodes=args.nodes, gpu="h100", model=args.model, workload=w, systems=SYSTEMS,
        costs=("onprem", args.cloud), interruptions=spot,
    )  # fmt: skip
    r = simulate(cfg)
    return {
        name: {
            "s_per_iter": s.mean_iteration_seconds,
            "reclaims": s.interruptions,
            "lost_gpu_h": s.lost_gpu_hours,
            "onprem_usd": s.usd["onprem"] or 0.0,
            "cloud_usd": s.usd[args.cloud] or 0.0,
        }
        for name, s in r.systems.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--model", default="1.5b")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--mtbi", default="none,1,0.25", help="hours per node, comma list")
    ap.add_argument("--cloud", default="gcp-spot", help="the spot table priced beside onprem")
    args = ap.parse_args()
    rows, out = [], {}
    for text in args.mtbi.split(","):
        mtbi = None if text == "none" else float(text)
        runs = []
        for seed in range(args.seeds if mtbi else 1):
            t0 = time.perf_counter()
            runs.append(one(args, mtbi, seed))
            print(f"mtbi {text} seed {seed}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for name in SYSTEMS:
            per = [r[name] for r in runs]
            mean = {k: statistics.fmean(p[k] for p in per) for k in per[0]}
            mean["worst_s_per_iter"] = max(p["s_per_iter"] for p in per)
            out[f"{text}/{name}"] = mean
            rows.append((text, name, mean))
    head = f"{'mtbi h':>7} {'system':20} {'s/iter':>7} {'worst':>7} {'reclaims':>9} "
    print(head + f"{'GPU-h lost':>11} {'$ onprem':>9} {'$ ' + args.cloud:>11}")
    for text, name, m in rows:
        print(
            f"{text:>7} {name:20} {m['s_per_iter']:7.2f} {m['worst_s_per_iter']:7.2f} "
            f"{m['reclaims']:9.1f} {m['lost_gpu_h']:11.4f} {m['onprem_usd']:9.3f} "
            f"{m['cloud_usd']:11.3f}"
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"args": vars(args), "results": out}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
