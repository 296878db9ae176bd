"""Cut-and-migrate as the rollout stage executes it: real functions, no cut vs cuts.

    python benchmarks/cut_stage.py                          # tiny config, 2 functions
    python benchmarks/cut_stage.py --functions 3 --rounds 5 --max-new-tokens 384

One Runtime; one Pipeline per setting over the same model, all sampling the same prompts with
the same seeds, so every setting decodes the same sequences (the cut moves them; it does not
change them beyond a joiner's own seeded generator). The tiny model samples EOS with a small
probability per step, so response lengths are roughly geometric, capped at
``--max-new-tokens``: a long tail, the workload cuts are for.

Settings (``scaling.*``; all ``policy = rlhfless``, k fixed at ``--functions``, LPT assignment):

* ``none``: no cut: every function runs to its own last sequence.
* ``paper@τ``: per-function cut at τ without the horizon guard (``cut_guard = false``): a
  function whose finished share reaches τ is cut and its stragglers join a running function.
* ``guarded@τ``: the same with the guard (the default rule): a move only where the receiver
  is predicted to finish within the current horizon.
* ``auto``: ``cut = "auto"`` with the error margin on: the plan cuts (at τ 0.9 or 0.95, guarded)
  only where its simulated scenarios say the cut is cheapest within the makespan bound.

Each round runs every setting once, in rotated order, after one warm-up rollout per setting
(cold starts). Reported per setting, medians over rounds: the stage's makespan, its function
seconds (leases from spawn to release, added up), sequences moved, receivers, and resume
functions started for stragglers no running function took; ratios against ``none`` from the
same rounds. Prints a table; writes ``benchmarks/results/cut_stage.json``.

On this 2-core CPU a function per core is the honest setting (``--functions 2``): with more
functions than cores they share CPU, and a cut that frees one speeds up the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rlhfless.adapters.tiny import build_tiny_model  # noqa: E402
from rlhfless.runtime import Runtime  # noqa: E402
from rlhfless.stages.config import load_config  # noqa: E402
from rlhfless.stages.pipeline import Pipeline  # noqa: E402
from rlhfless.stages.tasks import batch_for_step  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "cut_stage.json"


def settings(taus: list[float]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {
        "none": ["scaling.cut=none"],
        # The scaler decides: a cut at 0.9 or 0.95 only where its error scenarios say it pays.
        "auto": ["scaling.cut=auto", "scaling.margin_scenarios=16"],
    }
    for tau in taus:
        cut = ["scaling.cut=per_function", f"scaling.cut_threshold={tau}"]
        out[f"paper@{tau}"] = [*cut, "scaling.cut_guard=false"]
        out[f"guarded@{tau}"] = [*cut, "scaling.cut_guard=true"]
    return out


async def measure(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    base = [
        f"train.batch_prompts={args.prompts}",
        f"train.group_size={args.group}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"rollout.functions={args.functions}",
        "scaling.policy=rlhfless",
        f"scaling.k_min={args.functions}",
        f"scaling.k_max={args.functions}",
        "scaling.assign=lpt",
        "scaling.margin_scenarios=0",
        f"scaling.cut_poll_s={args.poll}",
    ]
    runs: dict[str, list[dict[str, float]]] = {}
    work = Path(tempfile.mkdtemp(prefix="cut-stage-"))
    async with Runtime(slots=args.functions, keep_alive_s=120) as rt:
        pipes = {}
        for name, extra in settings(args.taus).items():
            cfg = load_config(None, [*base, *extra, f"run.run_dir={work / name}"])
            pipes[name] = Pipeline(rt, cfg, model_dir, work / name)
            runs[name] = []
        names = list(pipes)
        for r in range(args.rounds + 1):  # round 0: warm-up (cold starts), not reported
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                p = pipes[name]
                cfg = p.cfg
                prompts = batch_for_step(p.task, r, cfg.train.batch_prompts, cfg.run.seed)
                ids = [p.tokenizer.encode_prompt(q.text) for q in prompts]
                t0 = time.perf_counter()
                out = await p.rollout_stage.run(r, prompts, ids)
                wall = time.perf_counter() - t0
                print(
                    f"round {r} {name:>14}: {out.seconds:6.2f} s, {out.function_seconds:6.2f} "
                    f"fn-s, moved {out.migrated:3d}, receivers "
                    f"{out.resumed - out.resume_functions}, resume fns {out.resume_functions}",
                    flush=True,
                )
                if r == 0:
                    continue
                runs[name].append(
                    {
                        "seconds": out.seconds,
                        "wall": wall,
                        "function_seconds": out.function_seconds,
                        "migrated": out.migrated,
                        "receivers": out.resumed - out.resume_functions,
                        "resume_functions": out.resume_functions,
                        "decode_tokens": out.decode_tokens,
                        "predicted_seconds": out.predicted_seconds,
                    }
                )
    summary = {}
    for name, rows in runs.items():
        med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
        ratio_s = [a["seconds"] / b["seconds"] for a, b in zip(rows, runs["none"], strict=True)]
        ratio_f = [
            a["function_seconds"] / b["function_seconds"]
            for a, b in zip(rows, runs["none"], strict=True)
        ]
        med["makespan_vs_none"] = statistics.median(ratio_s)
        med["function_seconds_vs_none"] = statistics.median(ratio_f)
        med["makespan_vs_none_range"] = [min(ratio_s), max(ratio_s)]
        med["function_seconds_vs_none_range"] = [min(ratio_f), max(ratio_f)]
        summary[name] = med
    return {"runs": runs, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="tiny", choices=["tiny", "small", "75m"])
    ap.add_argument("--functions", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--taus", type=float, nargs="+", default=[0.7, 0.9])
    ap.add_argument("--poll", type=float, default=0.05, help="scaling.cut_poll_s")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    model_dir = build_tiny_model(Path(tempfile.mkdtemp()) / "model", seed=0, size=args.size)
    load0 = os.getloadavg()[0]
    res = asyncio.run(measure(model_dir, args))
    print(
        f"\n{'setting':>14} | {'makespan s':>10} {'vs none':>8} | {'fn-seconds':>10} "
        f"{'vs none':>8} | {'moved':>5} {'recv':>4} {'resume':>6}"
    )
    for name, m in res["summary"].items():
        print(
            f"{name:>14} | {m['seconds']:>10.2f} {m['makespan_vs_none']:>8.3f} | "
            f"{m['function_seconds']:>10.2f} {m['function_seconds_vs_none']:>8.3f} | "
            f"{m['migrated']:>5.0f} {m['receivers']:>4.0f} {m['resume_functions']:>6.0f}"
        )
    print(f"load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "command": " ".join(["python", "benchmarks/cut_stage.py", *sys.argv[1:]]),
                "args": vars(args),
                "machine": platform.processor() or platform.machine(),
                "load_average": [load0, os.getloadavg()[0]],
                **res,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
