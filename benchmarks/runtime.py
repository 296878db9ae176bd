"""The runtime against Ray actors, in one run: round trip, pipelining, tensors, cold starts.

    python benchmarks/runtime.py            # full run (~2-3 minutes on 2 cores)
    python benchmarks/runtime.py --quick    # shorter run (~1 minute)
    python benchmarks/runtime.py --no-ray   # rlhfless only

Prints a table and writes ``benchmarks/results/runtime.json``. Ray is measured when
``import ray`` works (``pip install ray``); otherwise the table says why it was skipped.

What is measured (the same actor classes, ``benchmarks/actors.py``, on both runtimes):

* round trip: one small call at a time (``ping(1)``), median and p99 over ``--calls`` calls after
  a warm-up, in ``--rounds`` rounds; the best round is reported, all rounds are kept in the JSON.
* pipelined: ``--inflight`` calls outstanding at once (``asyncio.gather`` batches; Ray: that many
  ``.remote()`` then one ``ray.get``); calls per second.
* 16 MiB tensor: a float32 tensor of 16 MiB sent to an actor that answers with its byte count;
  GB/s = bytes / median wall time of the whole call (so it includes the call overhead and the
  small reply: a lower bound on the one-way rate). The reverse direction (the actor returns a
  16 MiB tensor it built before timing) is reported too.
* cold start: wall time from the spawn call to the first call's answer, for a fresh process
  each repetition: (a) rlhfless with a fresh interpreter per function, (b) rlhfless forked from
  the zygote (torch + transformers preloaded), (c) a new Ray actor after ``ray.init`` (which is
  timed separately). Both the "imports torch" actor and the like-for-like actor (torch +
  transformers + a tiny 2-layer Llama built in ``__init__``) are measured.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.actors` and `rlhfless` importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rlhfless.runtime import Runtime  # noqa: E402

ECHO = "benchmarks.actors:Echo"
TORCH_ONLY = "benchmarks.actors:TorchOnly"
TINY = "benchmarks.actors:TinyLlama"
TENSOR_BYTES = 16 * 1024 * 1024
PRELOAD = ("torch", "transformers")  # the runtime's default zygote preload
# transformers imports model code lazily: a zygote serving Llama actors can preload it too.
LLAMA_MODULE = "transformers.models.llama.modeling_llama"
RESULTS = ROOT / "benchmarks" / "results" / "runtime.json"

# Targets from issue 2 (2-core machine).
RTT_FRACTION_OF_RAY = 1 / 3
COLD_START_SPEEDUP = 5.0
TENSOR_GBPS = 2.0


# ------------------------------------------------------------------------------------ helpers


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "all": [round(v, 6) for v in values],
    }


def rounds_summary(rounds: list[dict[str, float]], key: str, best: str) -> dict[str, Any]:
    """The best round by ``key`` (``best`` is "min" or "max") plus the spread over rounds."""
    vals = [r[key] for r in rounds]
    pick = min(vals) if best == "min" else max(vals)
    return {"best": pick, "min": min(vals), "max": max(vals), "rounds": vals}


def settle(seconds: float) -> None:
    """Let background work (a process exiting, Ray refilling its worker pool) finish."""
    time.sleep(seconds)


def machine_info() -> dict[str, Any]:
    import transformers

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "loadavg_start": list(os.getloadavg()),
    }
    try:
        import zmq

        info["pyzmq"] = zmq.__version__
        info["libzmq"] = zmq.zmq_version()
    except ImportError:  # pragma: no cover
        pass
    return info


# ------------------------------------------------------------------------------------ rlhfless


async def rl_calls(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with Runtime(preload=("torch",), keep_alive_s=0) as rt:
        h = await rt.spawn(ECHO, slot=0)
        for _ in range(args.warmup):
            await h.ping(1)
        rounds = []
        for _ in range(args.rounds):
            lat = []
            for _ in range(args.calls):
                t0 = time.perf_counter()
                await h.ping(1)
                lat.append(time.perf_counter() - t0)
            rounds.append({"median": statistics.median(lat), "p99": pct(lat, 99)})
        out["rtt_median_s"] = rounds_summary(rounds, "median", "min")
        out["rtt_p99_s"] = rounds_summary(rounds, "p99", "min")

        rates = []
        n_batches = max(1, args.pipelined // args.inflight)
        await asyncio.gather(*(h.ping(i) for i in range(args.inflight)))  # warm-up
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            for _ in range(n_batches):
                await asyncio.gather(*(h.ping(i) for i in range(args.inflight)))
            rates.append({"rate": n_batches * args.inflight / (time.perf_counter() - t0)})
        out["pipelined_calls_per_s"] = rounds_summary(rates, "rate", "max")

        t = torch.ones(TENSOR_BYTES // 4, dtype=torch.float32)
        await h.make(TENSOR_BYTES)
        out["tensor"] = await _tensor_rates(
            args, lambda: h.take(t), h.give, lambda: h.ping(t), check=TENSOR_BYTES
        )
        await h.release()
    return out


async def _tensor_rates(args: argparse.Namespace, send, recv, echo, check: int) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for name, fn, nbytes in (
        ("to_actor", send, TENSOR_BYTES),
        ("from_actor", recv, TENSOR_BYTES),
        ("echo_both_ways", echo, 2 * TENSOR_BYTES),
    ):
        for _ in range(3):
            got = await fn()
        if name == "to_actor":
            assert got == check, got
        rounds = []
        for _ in range(args.rounds):
            times = []
            for _ in range(args.tensor_reps):
                t0 = time.perf_counter()
                await fn()
                times.append(time.perf_counter() - t0)
            rounds.append({"gbps": nbytes / statistics.median(times) / 1e9})
        res[f"{name}_gbps"] = rounds_summary(rounds, "gbps", "max")
    return res


async def rl_cold(
    args: argparse.Namespace, zygote: bool, actor: str, preload: tuple[str, ...] = PRELOAD
) -> dict[str, Any]:
    """Spawn -> first call answered, a new process each time (keep_alive_s=0: no warm reuse)."""
    out: dict[str, Any] = {"preload": list(preload)}
    t_start = time.perf_counter()
    async with Runtime(preload=preload, zygote=zygote, keep_alive_s=0) as rt:
        if zygote:
            # The zygote's own start (interpreter + torch + transformers) happens once per node,
            # like ray.init: measure it with a first spawn and keep it out of the repetitions.
            h = await rt.spawn(actor, slot=0)
            await h.ping()
            out["first_spawn_incl_zygote_start_s"] = time.perf_counter() - t_start
            await h.release()
            await _wait_all_exited(rt)
        walls, readies, imports, inits = [], [], [], []
        for _ in range(args.cold_reps):
            settle(args.settle)
            t0 = time.perf_counter()
            h = await rt.spawn(actor, slot=0)
            await h.ping()
            walls.append(time.perf_counter() - t0)
            readies.append(rt.stats.cold_start_s[-1])
            ready = h._fn.ready.result()  # Ready: the function's own import / __init__ timings
            imports.append(ready.import_seconds)
            inits.append(ready.init_seconds)
            await h.release()
            await _wait_all_exited(rt)
        out["wall_s"] = summary(walls)
        out["requested_to_ready_s"] = summary(readies)
        out["actor_import_s"] = summary(imports)
        out["actor_init_s"] = summary(inits)
    return out


async def _wait_all_exited(rt: Runtime, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(s != "dead" for s in rt.functions().values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def bench_rlhfless(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {}
    print("rlhfless: calls, pipelining, tensors ...", flush=True)
    res.update(await rl_calls(args))
    print("rlhfless: cold start from the zygote ...", flush=True)
    res["cold_zygote"] = await rl_cold(args, zygote=True, actor=TINY)
    res["cold_zygote_model_preloaded"] = await rl_cold(
        args, zygote=True, actor=TINY, preload=(*PRELOAD, LLAMA_MODULE)
    )
    res["cold_zygote_torch_only"] = await rl_cold(args, zygote=True, actor=TORCH_ONLY)
    print("rlhfless: cold start in a fresh interpreter ...", flush=True)
    res["cold_fresh"] = await rl_cold(args, zygote=False, actor=TINY)
    return res


# ------------------------------------------------------------------------------------ Ray


def bench_ray(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    import benchmarks.actors as actors

    # Ray's workers must import benchmarks.actors by name, as rlhfless functions do.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    res: dict[str, Any] = {"version": ray.__version__}
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    res["init_s"] = time.perf_counter() - t0
    try:
        settle(2.0)  # let Ray's prestarted workers finish starting
        print("Ray: calls, pipelining, tensors ...", flush=True)
        Echo = ray.remote(actors.Echo)
        a = Echo.remote()
        ray.get(a.ping.remote(1))
        for _ in range(args.warmup):
            ray.get(a.ping.remote(1))
        rounds = []
        for _ in range(args.rounds):
            lat = []
            for _ in range(args.calls):
                t1 = time.perf_counter()
                ray.get(a.ping.remote(1))
                lat.append(time.perf_counter() - t1)
            rounds.append({"median": statistics.median(lat), "p99": pct(lat, 99)})
        res["rtt_median_s"] = rounds_summary(rounds, "median", "min")
        res["rtt_p99_s"] = rounds_summary(rounds, "p99", "min")

        n_batches = max(1, args.pipelined // args.inflight)
        ray.get([a.ping.remote(i) for i in range(args.inflight)])
        rates = []
        for _ in range(args.rounds):
            t1 = time.perf_counter()
            for _ in range(n_batches):
                ray.get([a.ping.remote(i) for i in range(args.inflight)])
            rates.append({"rate": n_batches * args.inflight / (time.perf_counter() - t1)})
        res["pipelined_calls_per_s"] = rounds_summary(rates, "rate", "max")

        t = torch.ones(TENSOR_BYTES // 4, dtype=torch.float32)
        ray.get(a.make.remote(TENSOR_BYTES))

        async def sync(f):  # the same measuring code as for rlhfless
            return f()

        res["tensor"] = asyncio.run(
            _tensor_rates(
                args,
                lambda: sync(lambda: ray.get(a.take.remote(t))),
                lambda: sync(lambda: ray.get(a.give.remote())),
                lambda: sync(lambda: ray.get(a.ping.remote(t))),
                check=TENSOR_BYTES,
            )
        )
        ray.kill(a)

        print("Ray: cold start of new actors ...", flush=True)
        for key, cls in (("cold_torch_only", actors.TorchOnly), ("cold_tiny", actors.TinyLlama)):
            remote_cls = ray.remote(cls)
            walls = []
            for _ in range(args.cold_reps):
                settle(args.settle)
                t1 = time.perf_counter()
                actor = remote_cls.remote()
                ray.get(actor.ping.remote())
                walls.append(time.perf_counter() - t1)
                ray.kill(actor)
            res[key] = {"wall_s": summary(walls)}
    finally:
        t1 = time.perf_counter()
        ray.shutdown()
        res["shutdown_s"] = time.perf_counter() - t1
    return res


# ------------------------------------------------------------------------------------ report


def build_rows(rl: dict[str, Any], ray_res: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Rows: (metric, unit, rlhfless value, Ray value, lower_is_better)."""

    def get(d: dict[str, Any] | None, *path: str) -> float | None:
        for p in path:
            if d is None or p not in d:
                return None
            d = d[p]
        return d  # type: ignore[return-value]

    us = 1e6
    specs = [
        ("call round trip, median", "µs", ("rtt_median_s", "best"), ("rtt_median_s", "best"), us, True),
        ("call round trip, p99", "µs", ("rtt_p99_s", "best"), ("rtt_p99_s", "best"), us, True),
        ("pipelined calls (64 in flight)", "calls/s", ("pipelined_calls_per_s", "best"), ("pipelined_calls_per_s", "best"), 1, False),
        ("16 MiB tensor to actor (one way)", "GB/s", ("tensor", "to_actor_gbps", "best"), ("tensor", "to_actor_gbps", "best"), 1, False),
        ("16 MiB tensor from actor", "GB/s", ("tensor", "from_actor_gbps", "best"), ("tensor", "from_actor_gbps", "best"), 1, False),
        ("16 MiB tensor echoed (both ways)", "GB/s", ("tensor", "echo_both_ways_gbps", "best"), ("tensor", "echo_both_ways_gbps", "best"), 1, False),
        ("cold start: zygote fork, torch+tf+tiny Llama (vs Ray: same actor)", "s", ("cold_zygote", "wall_s", "median"), ("cold_tiny", "wall_s", "median"), 1, True),
        ("cold start: zygote fork (vs Ray actor importing torch)", "s", ("cold_zygote", "wall_s", "median"), ("cold_torch_only", "wall_s", "median"), 1, True),
        ("cold start: zygote + Llama module preloaded, tiny Llama (vs Ray: same)", "s", ("cold_zygote_model_preloaded", "wall_s", "median"), ("cold_tiny", "wall_s", "median"), 1, True),
        ("cold start: zygote + Llama module preloaded (vs Ray importing torch)", "s", ("cold_zygote_model_preloaded", "wall_s", "median"), ("cold_torch_only", "wall_s", "median"), 1, True),
        ("cold start: zygote fork, torch-only actor (vs same)", "s", ("cold_zygote_torch_only", "wall_s", "median"), ("cold_torch_only", "wall_s", "median"), 1, True),
        ("cold start: fresh interpreter, torch+tf+tiny Llama (vs Ray: same)", "s", ("cold_fresh", "wall_s", "median"), ("cold_tiny", "wall_s", "median"), 1, True),
        ("one-off start: zygote start + first spawn / ray.init", "s", ("cold_zygote", "first_spawn_incl_zygote_start_s"), ("init_s",), 1, True),
    ]  # fmt: skip
    rows = []
    for name, unit, rp, yp, scale, lower in specs:
        a, b = get(rl, *rp), get(ray_res, *yp)
        a = None if a is None else a * scale
        b = None if b is None else b * scale
        ratio = None
        if a and b:
            ratio = b / a if lower else a / b
        rows.append(
            {"metric": name, "unit": unit, "rlhfless": a, "ray": b, "ratio": ratio, "lower_is_better": lower}
        )  # fmt: skip
    return rows


def targets(rl: dict[str, Any], ray_res: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    rtt = rl["rtt_median_s"]["best"]
    zyg = rl["cold_zygote"]["wall_s"]["median"]
    gbps = rl["tensor"]["to_actor_gbps"]["best"]
    if ray_res is not None:
        ray_rtt = ray_res["rtt_median_s"]["best"]
        ray_cold = ray_res["cold_torch_only"]["wall_s"]["median"]
        out.append({
            "target": "median round trip <= 1/3 of Ray's",
            "measured": f"{rtt * 1e6:.0f} µs vs Ray {ray_rtt * 1e6:.0f} µs ({rtt / ray_rtt:.2f} of Ray's)",
            "pass": rtt <= ray_rtt * RTT_FRACTION_OF_RAY,
        })  # fmt: skip
        out.append({
            "target": "zygote cold start >= 5x faster than a new Ray actor importing torch "
            "(default preload: torch, transformers; actor builds a tiny Llama)",
            "measured": f"{zyg:.3f} s vs Ray {ray_cold:.3f} s ({ray_cold / zyg:.1f}x)",
            "pass": ray_cold >= COLD_START_SPEEDUP * zyg,
        })  # fmt: skip
        zyg2 = rl["cold_zygote_model_preloaded"]["wall_s"]["median"]
        out.append({
            "target": "zygote cold start >= 5x faster than a new Ray actor importing torch "
            f"(preload also {LLAMA_MODULE})",
            "measured": f"{zyg2:.3f} s vs Ray {ray_cold:.3f} s ({ray_cold / zyg2:.1f}x)",
            "pass": ray_cold >= COLD_START_SPEEDUP * zyg2,
        })  # fmt: skip
    else:
        out.append(
            {"target": "median round trip <= 1/3 of Ray's", "measured": "Ray skipped", "pass": None}
        )
        out.append({"target": "zygote cold start >= 5x faster than a new Ray actor importing torch", "measured": "Ray skipped", "pass": None})  # fmt: skip
    out.append({
        "target": "16 MiB tensor >= 2 GB/s (one way, to the actor)",
        "measured": f"{gbps:.2f} GB/s",
        "pass": gbps >= TENSOR_GBPS,
    })  # fmt: skip
    return out


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "calls/s":
        return f"{v:,.0f}"
    if unit == "µs":
        return f"{v:,.0f}"
    if unit == "s":
        return f"{v:.3f}"
    return f"{v:.2f}"


def print_report(rows, tgts, ray_note: str, info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    table = Table(
        title=f"rlhfless runtime vs Ray actors ({info['cores']} cores, Python {info['python']}, "
        f"torch {info['torch']})",
        caption="ratio > 1: rlhfless is better (Ray time / rlhfless time, or rlhfless rate / Ray rate)",
    )
    table.add_column("metric")
    table.add_column("unit")
    table.add_column("rlhfless", justify="right")
    table.add_column("Ray", justify="right")
    table.add_column("ratio", justify="right")
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.1f}x"
        table.add_row(
            r["metric"], r["unit"], fmt(r["rlhfless"], r["unit"]), fmt(r["ray"], r["unit"]), ratio
        )
    console.print(table)
    if ray_note:
        console.print(f"[yellow]{ray_note}[/yellow]")
    for t in tgts:
        mark = {
            True: "[green]PASS[/green]",
            False: "[red]FAIL[/red]",
            None: "[yellow]n/a[/yellow]",
        }[t["pass"]]
        console.print(f"{mark}  {t['target']}: {t['measured']}")


# ------------------------------------------------------------------------------------ main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter run (fewer calls and repetitions)")
    p.add_argument("--no-ray", action="store_true", help="measure rlhfless only")
    p.add_argument("--out", default=str(RESULTS), help="where to write the JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.calls, args.rounds, args.warmup, args.pipelined = 2000, 1, 200, 3200
        args.tensor_reps, args.cold_reps, args.settle = 10, 3, 0.5
    else:
        args.calls, args.rounds, args.warmup, args.pipelined = 3000, 3, 500, 12800
        args.tensor_reps, args.cold_reps, args.settle = 30, 5, 1.0
    args.inflight = 64
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    info = machine_info()
    config = {k: v for k, v in vars(args).items() if k != "out"}
    ray_note = ""
    ray_res: dict[str, Any] | None = None
    if args.no_ray:
        ray_note = "Ray skipped: --no-ray"
    elif importlib.util.find_spec("ray") is None:
        ray_note = "Ray skipped: `import ray` fails (not installed; `pip install ray`)"
    rl = asyncio.run(bench_rlhfless(args))
    if not ray_note:
        try:
            ray_res = bench_ray(args)
        except ImportError as exc:
            ray_note = f"Ray skipped: `import ray` failed: {exc}"
    info["loadavg_end"] = list(os.getloadavg())
    rows = build_rows(rl, ray_res)
    tgts = targets(rl, ray_res)
    print_report(rows, tgts, ray_note, info)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": info,
        "config": config,
        "table": rows,
        "targets": tgts,
        "ray_skipped": ray_note or None,
        "rlhfless": rl,
        "ray": ray_res,
    }
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
