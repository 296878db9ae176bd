"""The 20 x 8 H100 tables of docs/simulate.md, as markdown rows.

    python benchmarks/sim_tables.py            # GRPO, gsm8k-like, 256 x 8, 7B (4 it.) and 70B (3 it.)
    python benchmarks/sim_tables.py --minibatches 1   # one optimiser step per iteration
    python benchmarks/sim_tables.py --train-gpus 160  # rlhfless trains on every GPU
    python benchmarks/sim_tables.py --iterations 6    # longer jobs (the start weighs less)

rlhfless's training gang is chosen per iteration by default (``--train-gpus 0``: the cheapest
within 3% of the fastest, ``Rlhfless.choose_gang``). The reports go to
``benchmarks/results/sim_tables_<minibatches>mb_<gang>[_<iterations>it].json``.

Same as `rlhfless simulate --nodes 20 --gpu h100 --model 7b --cost aws,onprem` (and
`--model 70b --iterations 3`), with speedups and reductions against serverful-colocated.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rlhfless.sim import SimConfig, Workload, simulate
from rlhfless.sim.report import cost_cell, gang_range, to_json
from rlhfless.sim.run import SimReport, SystemReport

COSTS = ("aws", "onprem")


def rows(
    model: str, iterations: int, minibatches: int, train_gpus: int, reports: list[SimReport]
) -> tuple[list[str], str]:
    """The table's rows for one model, and its row of the against-each-peer table."""
    w = Workload(algo="grpo", dataset="gsm8k-like", batch_prompts=256, group_size=8,
                 iterations=iterations, minibatches=minibatches)  # fmt: skip
    r = simulate(
        SimConfig(nodes=20, gpu="h100", model=model, workload=w, costs=COSTS, train_gpus=train_gpus)
    )
    reports.append(r)
    base = r.systems["serverful-colocated"]
    out = []
    for name, s in r.systems.items():
        cells = [model.upper(), name, f"{s.mean_iteration_seconds:.1f}",
                 f"{base.mean_iteration_seconds / s.mean_iteration_seconds:.2f}x",
                 gang_range(s.train_gpus),
                 f"{s.busy_gpu_hours:.2f} / {s.idle_gpu_hours:.2f} / {s.cold_gpu_hours:.2f}"]  # fmt: skip
        for m in COSTS:
            cells.append(cost_cell(s.usd[m], base.usd[m]))
        cells.append(cost_cell(s.steady_usd["onprem"], base.steady_usd["onprem"]))
        out.append("| " + " | ".join(cells) + " |")
    return out, peer_row(model, minibatches, r.systems)


def saving(d: float | None, ref: float | None) -> str:
    """The reduction of ``d`` against the baseline's ``ref``."""
    return f"{1 - d / ref:.1%}" if d is not None and ref else "n/a"


def peer_row(model: str, minibatches: int, systems: dict[str, SystemReport]) -> str:
    """Each rlhfless system's speedup and ``onprem`` saving against each serverful peer: per
    steady iteration (the speedup's iterations), then over the whole job."""
    cells = [str(minibatches), model.upper()]
    for ours in ("rlhfless", "rlhfless-staged"):
        for peer in ("serverful-colocated", "serverful-fused"):
            a, b = systems[ours], systems[peer]
            steady = saving(a.steady_usd["onprem"], b.steady_usd["onprem"])
            job = saving(a.usd["onprem"], b.usd["onprem"])
            speedup = b.mean_iteration_seconds / a.mean_iteration_seconds
            cells.append(f"{speedup:.2f}x ({steady} / it; {job} job)")
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minibatches", type=int, default=Workload().minibatches,
                    help="optimiser steps per iteration (verl's mini-batches; default 4)")  # fmt: skip
    ap.add_argument("--train-gpus", type=int, default=0,
                    help="rlhfless's training gang (0: chosen per iteration)")  # fmt: skip
    ap.add_argument("--iterations", type=int, default=0,
                    help="iterations of both jobs (0: 4 at 7B, 3 at 70B)")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None,
                    help="default: benchmarks/results/sim_tables_<minibatches>mb_<train-gpus>.json")  # fmt: skip
    args = ap.parse_args()
    its = f"_{args.iterations}it" if args.iterations else ""
    out = args.json or Path(
        f"benchmarks/results/sim_tables_{args.minibatches}mb_{args.train_gpus or 'chosen'}{its}.json"
    )
    print(
        "| model | system | s/iter | speedup | train GPUs | GPU-h busy/idle/cold "
        "| aws $ job (saved) | onprem $ job (saved) | onprem $ / steady iteration (saved) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    peers: list[str] = []
    reports: list[SimReport] = []
    for model, its in (("7b", args.iterations or 4), ("70b", args.iterations or 3)):
        table, peer = rows(model, its, args.minibatches, args.train_gpus, reports)
        print("\n".join(table))
        peers.append(peer)
    print()
    print("| steps/iter | model | rlhfless (streamed) vs colocated | vs fused "
          "| rlhfless-staged vs colocated | vs fused |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    print("\n".join(peers))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(to_json(reports))
    print(f"\nwrote {out}")
