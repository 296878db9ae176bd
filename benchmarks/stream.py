"""The streamed iteration against the staged one: same job, same machine, side by side.

    python benchmarks/stream.py                       # tiny model (warm-started), 3 rounds
    python benchmarks/stream.py --model smollm2 --rounds 2 --iterations 4

Each round starts two runtimes over the same model dir, one running the job streamed
(``pipeline.stream = true``), one staged, with the same prompts and seeds: both decode the same
samples (``--also KEY=VALUE``: a third, streamed with those settings, e.g.
``pipeline.open_groups=0``). Their iterations interleave, the order rotating, so the jobs' same
iteration runs seconds apart, on the same machine state. The first iteration of each round
(cold starts) is left out.

Reported, per mode, medians over the measured iterations: the iteration time, the rollout's tail
share (time from the first rollout function's end to the last's, over the rollout) and, streamed,
the scoring and training seconds that overlapped the rollout, and what ran after its end (the
forward and backward of the groups not trained by then, the step and the weights). The speedup is the staged job's
time over the streamed job's (sum over a round's measured iterations), median over rounds; beside
it the median of the per-iteration ratios, and that median over the iterations whose staged tail
is at least 40% of the rollout (the issue's workload). Prints a table and writes
benchmarks/results/stream.json with the machine's load average before and after.

The tiny workload (benchmarks/warm_start.py) starts from a model fitted to the repeat task, as
RLHF starts from a fine-tuned policy: its response lengths follow the prompt, with long-tailed
targets (lognormal, median 8, sigma 1.4, up to 191 tokens), so a few prompts make a rollout
tail. A random-init model's lengths do not depend on the prompt, and every function would hold a
sample near the cap. One epoch (only the first one's forward and backward can stream).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.warm_start import WarmStart, model_dir  # noqa: E402
from rlhfless.runtime import Runtime  # noqa: E402
from rlhfless.stages.config import Config, load_config  # noqa: E402
from rlhfless.stages.pipeline import IterationMetrics, Pipeline  # noqa: E402
from rlhfless.stages.run import prepare_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "stream.json"
TAIL = 0.4  # the workload: a rollout tail of at least 40% of the rollout
WORKLOADS = {
    "tiny": [
        "model.kind=dir",  # no model.path: the warm-started model (``prepare``)
        "model.tiny_size=small",
        "train.batch_prompts=4",
        "train.group_size=8",
        "rollout.max_new_tokens=192",
        "task.median_len=8",
        "task.sigma=1.4",
        # The tiny model trains faster on one thread than on two on this CPU (a staged step of
        # 128 samples: 0.60-0.78 s against 0.87-1.31 s). Both modes use one: the staged
        # baseline at its best, and no speed for streaming from running part of its step on
        # the one core the rollout tail leaves it.
        "runtime.trainer_threads=1",
    ],
    "smollm2": [
        "model.kind=smollm2",
        "task.name=reasoning-gym",
        "task.dataset=gsm_symbolic",
        "train.batch_prompts=4",
        "train.group_size=4",
        "rollout.max_new_tokens=96",
    ],
}
# One epoch (only the first epoch can stream), and a learning rate so small that the policy,
# and so the response lengths, stay put over the rounds: every round measures the same work.
COMMON = [
    "train.epochs=1",
    "train.lr=1e-8",
    "runtime.slots=2",
    "rollout.functions=2",
    "checkpoint.every=0",
]


def config(
    args: argparse.Namespace, run_dir: Path, stream: bool, extra: list[str] | None = None
) -> Config:
    sets = [*COMMON, *WORKLOADS[args.model], *args.set, *(extra or [])]  # the last word wins
    return load_config(
        None, [*sets, f"run.run_dir={run_dir}", f"pipeline.stream={str(stream).lower()}"]
    )


def modes(args: argparse.Namespace) -> dict[str, tuple[bool, list[str]]]:
    """The jobs a round runs side by side: name -> (streamed, extra settings)."""
    out = {"staged": (False, []), "streamed": (True, [])}
    if args.also:
        out["streamed " + " ".join(args.also)] = (True, args.also)
    return out


def prepare(args: argparse.Namespace, work: Path) -> Path:
    """The model both jobs load: a model dir without a path is the tiny model warm-started on
    the workload's own repeat task; anything else as the pipeline prepares it."""
    cfg = config(args, work / "model-run", True)
    if cfg.model.kind != "dir" or cfg.model.path:
        return prepare_model(cfg, work / "model-run")
    if cfg.task.name != "repeat":
        raise SystemExit("the warm start fits the repeat task: set model.path for another task")
    return model_dir(
        WarmStart(
            size=cfg.model.tiny_size, seed=cfg.model.seed, median_len=cfg.task.median_len,
            sigma=cfg.task.sigma, max_len=cfg.rollout.max_new_tokens - 1,
        )
    )  # fmt: skip


@contextlib.asynccontextmanager
async def all_jobs(
    args: argparse.Namespace, model: Path, work: Path
) -> AsyncIterator[dict[str, Pipeline]]:
    """The job staged and streamed (and any ``--also`` variant), each on its own fresh
    runtime, all alive."""
    async with contextlib.AsyncExitStack() as stack:
        jobs = {}
        for k, (name, (stream, extra)) in enumerate(modes(args).items()):
            run_dir = work / f"job-{k}"
            cfg = config(args, run_dir, stream, extra)
            rt = await stack.enter_async_context(Runtime(slots=cfg.runtime.slots, keep_alive_s=600))
            jobs[name] = Pipeline(rt, cfg, model, run_dir)
        yield jobs


async def one_round(
    args: argparse.Namespace, model: Path, work: Path, r: int
) -> list[dict[str, IterationMetrics]]:
    """Each measured iteration's metrics by job; the order the jobs run in rotates."""
    names = list(modes(args))
    measured = []
    async with all_jobs(args, model, work / f"round-{r}") as jobs:
        for i in range(args.iterations):
            shift = (r + i) % len(names)
            got = {}
            for name in names[shift:] + names[:shift]:
                cpu = time.process_time()
                got[name] = await jobs[name].run_iteration(i)
                DRIVER_CPU[id(got[name])] = time.process_time() - cpu
            if i > 0:
                measured.append(got)
    return measured


# The driver process's CPU seconds in each iteration (this process: the controller's event loop,
# its calls and replies); keyed by the metrics object's id.
DRIVER_CPU: dict[int, float] = {}


def tail_seconds(m: IterationMetrics) -> float:
    ends = m.scaling.get("finished_at") or []
    return max(ends) - min(ends) if len(ends) >= 2 else 0.0


def tail_share(m: IterationMetrics) -> float:
    rollout = max(m.scaling.get("finished_at") or [0.0])
    return tail_seconds(m) / rollout if rollout > 0 else 0.0


def last_step_ms(m: IterationMetrics) -> float:
    """Milliseconds per decode step of the function that replied last (the one that decoded
    the tail): streamed, it decodes beside the scoring and training of the finished groups."""
    calls = [(n, s) for n, s in m.scaling.get("decode") or [] if n]
    return 1000 * calls[-1][1] / calls[-1][0] if calls else 0.0


def per_iteration(m: IterationMetrics) -> dict[str, Any]:
    return {
        "seconds": m.seconds,
        "finished_at": m.scaling.get("finished_at"),
        "decode": m.scaling.get("decode"),
        "stage_seconds": m.stage_seconds,
        "overlapped_seconds": m.overlapped_seconds,
        "after_rollout": m.after_rollout,
        "trained_open": m.trained_open,
        "cold_starts": m.cold_starts,
        "driver_cpu_seconds": DRIVER_CPU.get(id(m), 0.0),
    }


def mode_summary(ms: list[IterationMetrics]) -> dict[str, Any]:
    med = statistics.median
    return {
        "iterations": len(ms),
        "seconds": med(m.seconds for m in ms),
        "rollout_seconds": med(max(m.scaling.get("finished_at") or [0.0]) for m in ms),
        "tail_share": med(tail_share(m) for m in ms),
        "tail_seconds": med(tail_seconds(m) for m in ms),
        "last_function_ms_per_step": med(last_step_ms(m) for m in ms),
        "driver_cpu_seconds": med(DRIVER_CPU.get(id(m), 0.0) for m in ms),
        "overlapped_seconds": med(m.overlapped_seconds for m in ms),
        "stage_seconds": {k: med(m.stage_seconds[k] for m in ms) for k in ms[0].stage_seconds},
        # streamed GRPO: medians of what ran after the rollout's end (IterationMetrics)
        "after_rollout": after_rollout([m.after_rollout for m in ms if m.after_rollout]),
        # streamed GRPO: samples trained while their group still decoded (pipeline.open_groups)
        "trained_open": med(m.trained_open for m in ms),
        "per_iteration": [per_iteration(m) for m in ms],
    }


def after_rollout(rows: list[dict[str, float]]) -> dict[str, float]:
    """Medians of each measure of what ran after the rollout's end, over the iterations that
    have it (streamed GRPO; none staged)."""
    keys = sorted({k for r in rows for k in r})
    return {k: statistics.median(r[k] for r in rows if k in r) for k in keys}


def speedups(rounds: list[list[tuple[IterationMetrics, IterationMetrics]]]) -> dict[str, Any]:
    med = statistics.median
    pairs = [p for r in rounds for p in r]
    ratios = [(tail_share(a), a.seconds / b.seconds) for a, b in pairs]
    tailed = [x for t, x in ratios if t >= TAIL]
    per_round = [sum(a.seconds for a, _ in r) / sum(b.seconds for _, b in r) for r in rounds]
    # With every slot decoding until the first rollout function ends, work after the rollout
    # can only move into the tail: streaming saves at most the staged tail's seconds.
    bound = [
        sum(a.seconds for a, _ in r) / sum(a.seconds - tail_seconds(a) for a, _ in r)
        for r in rounds
    ]
    return {
        "speedup": med(per_round),
        "per_round": per_round,
        "median_pair": med(x for _, x in ratios),
        "median_pair_tailed": med(tailed) if tailed else None,
        "tailed_iterations": len(tailed),
        "bound": med(bound),
        "same_samples": all(a.reward_mean == b.reward_mean for a, b in pairs),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="rlhfless-stream-"))
    model = prepare(args, work)
    rounds = []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        measured = await one_round(args, model, work, r)
        rounds.append(measured)
        print(
            f"round {r}: {time.perf_counter() - t0:.1f} s; seconds per iteration ("
            + " / ".join(modes(args))
            + ") "
            + str([" / ".join(f"{m.seconds:.2f}" for m in it.values()) for it in measured]),
            flush=True,
        )
    out: dict[str, Any] = {
        name: mode_summary([it[name] for r in rounds for it in r]) for name in modes(args)
    }
    out.update(speedups([[(it["staged"], it["streamed"]) for it in r] for r in rounds]))
    out["also"] = {
        name: speedups([[(it["staged"], it[name]) for it in r] for r in rounds])
        for name in list(modes(args))[2:]
    }
    return out


def table(out: dict[str, Any]) -> str:
    rows = [
        f"{'mode':34} {'iteration s':>12} {'rollout s':>10} {'tail share':>11} {'overlapped s':>13}"
        f" {'last fn ms/step':>16} {'driver CPU s':>13}"
    ]
    for name in ["staged", "streamed", *out["also"]]:
        s = out[name]
        rows.append(
            f"{name:34} {s['seconds']:12.2f} {s['rollout_seconds']:10.2f} "
            f"{s['tail_share']:11.0%} {s['overlapped_seconds']:13.2f} "
            f"{s['last_function_ms_per_step']:16.2f} {s['driver_cpu_seconds']:13.3f}"
        )
    after = out["streamed"]["after_rollout"]
    if after:
        rows.append(
            f"streamed, after the rollout's end (medians): {after['seconds']:.3f} s, of which "
            f"{after['forward_backward']:.3f} s the forward and backward of the groups not "
            f"trained by then ({after['samples']:.0f} samples, {after['tokens']:.0f} tokens, "
            f"longest {after['longest']:.0f}); the rest is the step, the weights and waits; "
            f"samples trained while their group decoded: {out['streamed']['trained_open']:.0f}"
        )
    tailed = out["median_pair_tailed"]
    rows += [
        f"speedup (staged job / streamed job, median over rounds): {out['speedup']:.2f}x "
        f"(rounds: {', '.join(f'{x:.2f}' for x in out['per_round'])})",
        f"per iteration, median: {out['median_pair']:.2f}x; over the "
        f"{out['tailed_iterations']} with a staged tail >= {TAIL:.0%}: "
        + (f"{tailed:.2f}x" if tailed is not None else "none"),
        f"most streaming can save here (the staged tails): {out['bound']:.2f}x; "
        f"same samples both ways: {out['same_samples']}",
    ]
    for name, also in out["also"].items():
        rows.append(
            f"{name}: speedup {also['speedup']:.2f}x (rounds: "
            f"{', '.join(f'{x:.2f}' for x in also['per_round'])}); its after the rollout: "
            f"{out[name]['after_rollout'].get('seconds', 0.0):.3f} s; same samples: "
            f"{also['same_samples']}"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(WORKLOADS), default="tiny")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=11, help="per round; the first is left out")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    ap.add_argument(
        "--also", action="append", default=[],
        help="KEY=VALUE: also run the streamed job with these settings, side by side",
    )  # fmt: skip
    a = ap.parse_args()
    if a.rounds < 1 or a.iterations < 2:
        ap.error("need --rounds >= 1 and --iterations >= 2 (the first is left out)")
    load0 = os.getloadavg()
    result = asyncio.run(main(a))
    result["machine"] = {
        "cpus": os.cpu_count(),
        "load_before": load0,
        "load_after": os.getloadavg(),
        "python": platform.python_version(),
    }
    result["args"] = vars(a)
    print(table(result))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    # a variant, or another number of rounds or iterations: its own entry
    key = " ".join([a.model, f"{a.rounds}x{a.iterations}", *a.set, *(f"also {x}" for x in a.also)])
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    old[key] = result
    RESULTS.write_text(json.dumps(old, indent=2))
    print(f"wrote {RESULTS} [{key}]")
