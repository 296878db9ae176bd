"""The most streaming can gain on this machine, on recorded response lengths: an upper bound.

    python benchmarks/stream_bound.py                   # SmolLM2-135M, its recorded traces
    python benchmarks/stream_bound.py --iterations 400 --caps 1.0 0.5

``benchmarks/stream.py`` measures the streamed iteration against the staged one, but a SmolLM2
iteration takes 40-160 s here, and no SmolLM2 workload tried with it has the rollout tail the
issue's target assumes. This script asks the question for many workloads at once: for every
recorded SmolLM2 trace (``tests/scaling/data/smollm2_*.jsonl``, first replies of the model to
real tasks), every length cap, group size and prompts per rollout function, what is the most
a streamed iteration could save over the staged one on this machine?

It measures the machine (one run, about two minutes with SmolLM2): decode seconds per step on
one thread at two batch sizes (step = t0 + t1 x sequences still running), forward and backward
seconds per token on one thread (c1) and on all cores, and the optimiser step. Then it draws
iterations from a trace (prompts at random, each sample's length one of its prompt's recorded
lengths, capped; each rollout function decodes its prompts' samples as one batch on its own
core) and times both ways:

* staged: the rollout, then the forward and backward of every sample on all cores, then the
  step;
* streamed, by the rule of ``pipeline.stream`` with open groups: a rollout function's core joins
  a pool when the function ends; each sample's forward and backward (c1 seconds per token on
  each pool core) joins the pool the moment the sample ends; what is left at the rollout's end
  runs on all cores, then the step.

The approximations favour streaming: the pool's cores share work perfectly, decoding is not
slowed by the trainer beside it (measured, it is, by a few percent), every sample trains as it
ends (none waits for its group's clip range or for ``pipeline.open_groups``), and scoring and
the weights cost nothing either way. The per-token costs are a plain forward and backward, the
same for both ways; scaled by 0.8-1.3 they move the largest bound by at most 0.02. Prints a
table (best cases first) and writes benchmarks/results/stream_bound.json with the measured
speeds and the machine's load; ``--speeds`` that file replays the draw without measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


RESULTS = ROOT / "benchmarks" / "results" / "stream_bound.json"
TRACES = sorted((ROOT / "tests" / "scaling" / "data").glob("smollm2_*.jsonl"))
TAIL = 0.4  # the workload: a rollout tail of at least 40% of the rollout


class Speeds:
    """This machine's costs for one model: decode step = t0 + t1 x running sequences (one
    thread), forward and backward per token on one thread (c1) and on all cores (c_all), and
    the optimiser step (all cores)."""

    def __init__(self, t0: float, t1: float, c1: float, c_all: float, step: float) -> None:
        if min(t0 + t1, c1, c_all) <= 0 or t1 < 0 or step < 0:
            raise ValueError(f"bad speeds: t0={t0}, t1={t1}, c1={c1}, c_all={c_all}")
        self.t0, self.t1, self.c1, self.c_all, self.step = t0, t1, c1, c_all, step

    def as_dict(self) -> dict[str, float]:
        return dict(t0=self.t0, t1=self.t1, c1=self.c1, c_all=self.c_all, step=self.step)


def measure(model_dir: Path, cores: int, rounds: int = 3) -> Speeds:
    """Time the model here (medians over ``rounds``), as the module doc says."""
    import torch

    from rlhfless.adapters.hf import HFEngine

    engine = HFEngine.load(model_dir)
    vocab = engine.model.config.vocab_size
    prompt = [random.Random(0).randrange(10, vocab) for _ in range(100)]

    def per_step(batch: int) -> float:
        torch.set_num_threads(1)
        times = []
        for r in range(rounds):
            t = time.perf_counter()
            gen = engine.generate([prompt], batch, 32, temperature=1.0, seed=r)
            steps = max(len(s.token_ids) for s in gen.samples)
            if steps < 16:  # the prefill would be most of the time: no decode speed to read
                raise SystemExit(f"the model ended after {steps} tokens: measure with more")
            times.append((time.perf_counter() - t) / steps)
        return statistics.median(times)

    def per_token(threads: int) -> float:
        torch.set_num_threads(threads)
        ids = torch.randint(10, vocab, (4, 200))
        model = engine.model.train()
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            times.append((time.perf_counter() - t) / ids.numel())
        model.zero_grad(set_to_none=True)
        return statistics.median(times)

    def optimiser_step() -> float:
        torch.set_num_threads(cores)
        params = [p for p in engine.model.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.zeros_like(p)
        opt = torch.optim.AdamW(params, lr=0.0)
        opt.step()  # the first step allocates the state
        t = time.perf_counter()
        opt.step()
        return time.perf_counter() - t

    one, eight = per_step(1), per_step(8)
    t1 = max(0.0, (eight - one) / 7)
    return Speeds(one - t1, t1, per_token(1), per_token(cores), optimiser_step())


def load_trace(path: Path) -> tuple[dict[Any, list[int]], dict[Any, int]]:
    """A trace's lengths by prompt (epochs pooled) and prompt lengths, with a clear error."""
    lengths: dict[Any, list[int]] = defaultdict(list)
    prompt_tokens: dict[Any, int] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
            lengths[row["prompt_id"]] += [int(x) for x in row["lengths"]]
            prompt_tokens[row["prompt_id"]] = int(row["prompt_tokens"])
        except (ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"{path}:{n}: not a trace line ({e!r})") from None
    if len(lengths) < 2:
        raise SystemExit(f"{path}: a trace needs at least 2 prompts, has {len(lengths)}")
    return lengths, prompt_tokens


def ends(lengths: list[int], sp: Speeds) -> list[float]:
    """When each of one function's samples (decoded as one batch) ends."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out, at, step, running = [0.0] * len(lengths), 0.0, 0, len(lengths)
    for i in order:
        while step < lengths[i]:
            at += sp.t0 + sp.t1 * running
            step += 1
        out[i] = at
        running -= 1
    return out


def iteration(
    fns: list[list[tuple[int, int]]], sp: Speeds, cores: int
) -> tuple[float, float, float]:
    """One iteration (per function: its samples' (response, prompt) lengths): staged seconds,
    the streamed bound's seconds, and the tail share."""
    done = [ends([r for r, _ in f], sp) for f in fns]
    finish = [max(d) for d in done]
    rollout = max(finish)
    tokens = sum(r + p for f in fns for r, p in f)
    staged = rollout + tokens * sp.c_all + sp.step
    ready = [
        (at, r + p) for f, d in zip(fns, done, strict=True) for (r, p), at in zip(f, d, strict=True)
    ]
    left = tail_work(ready, finish, rollout, cores // len(fns), sp.c1)
    return staged, rollout + left * sp.c_all + sp.step, 1 - min(finish) / rollout


def tail_work(
    ready: list[tuple[float, int]], finish: list[float], rollout: float, per_fn: int, c1: float
) -> float:
    """Tokens whose forward and backward is left at the rollout's end: until then, each sample
    (time it ends, tokens) joins a pool worked on by the cores of the functions that ended,
    ``c1`` seconds per token on each (sharing it perfectly)."""
    events = sorted([(at, 0, n) for at, n in ready] + [(at, 1, 0) for at in finish])
    pending, cores, t = 0.0, 0, 0.0
    for at, frees, n in events:
        if at >= rollout:
            break
        pending = max(0.0, pending - cores * (at - t) / c1)
        t, cores, pending = at, cores + per_fn * frees, pending + n
    pending = max(0.0, pending - cores * (rollout - t) / c1)
    return pending + sum(n for at, n in ready if at >= rollout)


def workload(
    trace: tuple[dict[Any, list[int]], dict[Any, int]], cap: int, group: int, per_fn: int,
    functions: int, sp: Speeds, cores: int, n: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """``n`` iterations drawn from ``trace``: the bound over all and over those with a tail."""
    lengths, prompt_tokens = trace
    rng, ids = random.Random(seed), sorted(lengths, key=str)
    runs = []
    for _ in range(n):
        prompts = rng.sample(ids, min(len(ids), per_fn * functions))
        fns = [
            [
                (min(cap, rng.choice(lengths[q])), prompt_tokens[q])
                for q in chunk
                for _ in range(group)
            ]
            for chunk in (prompts[k::functions] for k in range(functions))
        ]
        runs.append(iteration([f for f in fns if f], sp, cores))
    tailed = [r for r in runs if r[2] >= TAIL]
    return {
        "cap": cap, "group": group, "prompts_per_function": per_fn,
        "staged_s": statistics.median(r[0] for r in runs),
        "tail_share": statistics.median(r[2] for r in runs),
        "tailed": len(tailed) / n,
        "bound": sum(r[0] for r in runs) / sum(r[1] for r in runs),
        "bound_tailed": sum(r[0] for r in tailed) / sum(r[1] for r in tailed) if tailed else None,
    }  # fmt: skip


def main(args: argparse.Namespace) -> dict[str, Any]:
    cores = args.cores or len(os.sched_getaffinity(0))
    if args.functions > cores:  # a function's release must free a core for the pool
        raise SystemExit(f"--functions {args.functions}: this machine has {cores} cores")
    load_before = os.getloadavg()
    if args.speeds:
        sp = Speeds(**json.loads(Path(args.speeds).read_text())["speeds"])
    else:
        from rlhfless.adapters.hf import smollm2_dir

        cache = Path(args.cache or tempfile.gettempdir()) / "rlhfless-stream-bound"
        print("measuring SmolLM2-135M on this machine ...", file=sys.stderr)
        sp = measure(smollm2_dir(cache), cores)
    rows = []
    for path in args.trace or TRACES:
        trace = load_trace(Path(path))
        top = max(x for ls in trace[0].values() for x in ls)
        for frac in args.caps:
            for group in args.groups:
                for per_fn in args.per_function:
                    row = workload(
                        trace, max(1, round(top * frac)), group, per_fn, args.functions, sp,
                        cores, args.iterations, args.seed,
                    )  # fmt: skip
                    rows.append({"trace": Path(path).stem, **row})
    out = {
        "speeds": sp.as_dict(), "cores": cores, "functions": args.functions, "rows": rows,
        "machine": {"load_before": load_before, "load_after": os.getloadavg()},
    }  # fmt: skip
    show(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return out


def show(out: dict[str, Any]) -> None:
    sp = out["speeds"]
    print(
        f"speeds: decode step {1000 * sp['t0']:.1f} + {1000 * sp['t1']:.1f} ms x sequences (1 "
        f"thread); forward+backward {1000 * sp['c1']:.2f} ms/token on 1 thread, "
        f"{1000 * sp['c_all']:.2f} on {out['cores']}; optimiser step {sp['step']:.2f} s"
    )
    print(
        f"{'trace':38} {'cap':>4} {'G':>2} {'P/fn':>4} {'staged s':>8} {'tail':>5} "
        f"{'tail>=40%':>9} {'bound':>6} {'bound, tailed':>13}"
    )
    for r in sorted(out["rows"], key=lambda r: -r["bound"]):
        tailed = f"{r['bound_tailed']:.2f}x" if r["bound_tailed"] else "-"
        print(
            f"{r['trace']:38} {r['cap']:>4} {r['group']:>2} {r['prompts_per_function']:>4} "
            f"{r['staged_s']:>8.1f} {r['tail_share']:>5.0%} {r['tailed']:>9.0%} "
            f"{r['bound']:>5.2f}x {tailed:>13}"
        )
    best = max(out["rows"], key=lambda r: r["bound"])
    print(
        f"largest bound: {best['bound']:.2f}x ({best['trace']}, cap {best['cap']}); "
        f"load {out['machine']['load_before'][0]:.1f} -> {out['machine']['load_after'][0]:.1f}"
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", action="append", help="a trace file (default: the SmolLM2 ones)")
    ap.add_argument(
        "--caps",
        type=float,
        nargs="+",
        default=[1.0, 0.75, 0.5],
        help="length caps, as fractions of the trace's longest reply",
    )
    ap.add_argument("--groups", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--per-function", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--functions", type=int, default=2, help="rollout functions (one per slot)")
    ap.add_argument("--iterations", type=int, default=200, help="drawn per workload")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speeds", help="reuse the speeds of an earlier run's JSON (no measuring)")
    ap.add_argument("--cores", type=int, default=0, help="the machine's cores (default: these)")
    ap.add_argument("--cache", help="where the converted SmolLM2 is kept (default: temp dir)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    if min(a.groups + a.per_function + [a.functions, a.iterations]) < 1 or min(a.caps) <= 0:
        ap.error("groups, prompts per function, functions and iterations must be >= 1, caps > 0")
    return a


if __name__ == "__main__":
    main(parse())
