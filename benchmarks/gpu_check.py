"""The CUDA path in one command (issue 21): the default GRPO job on a GPU, what it shows, one JSON.

    python benchmarks/gpu_check.py --out DIR                  # what the machine allows (below)
    python benchmarks/gpu_check.py --out DIR --set train.iterations=2 --no-tests

On a machine with a CUDA GPU (``nvidia-smi`` lists one) it runs the default ``rlhfless train``
job (GRPO, HF engine, the repeat task, every default setting; ``--set`` overrides as ``train``
does) on a Qwen2 model of Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads,
intermediate 4864) with random weights and the project's character tokenizer: no download. With
that 23-token vocabulary it has 358M parameters, the same as Qwen2.5-0.5B without its
151,936-token embedding. Without a GPU it runs the same job on the embedded tiny model, and
every CUDA-only figure is reported as skipped, with the reason.

It drives ``Pipeline`` on a ``Runtime`` built with the settings ``Job`` gives it (stages/run.py),
for ``train.iterations`` (default 3) or until ``--budget-s`` would be overrun, without the
checkpoints. Two things are added, neither changing what runs: every ``spawn`` is timed (cold
and warm starts), and the zygote preloads this module, whose fork hook records in each forked
function whether CUDA was already initialised at fork (inherited from the zygote: it must never
be) and, from a thread, the CUDA_VISIBLE_DEVICES the function sees and torch's peak CUDA memory
(allocated and reserved; the CUDA context's ~0.5 GiB is not in them). Then, on the same warm
functions: the weights published to a rollout function both ways the job can (inline tensor
frames; a node-local safetensors file), and a probe on every slot (which GPU it sees). Then
``pytest -m gpu tests/gpu``. Figures:

* pinning: each function's CUDA_VISIBLE_DEVICES equals its slot ("" on a CPU node); each slot's
  probe sees exactly one GPU;
* zygote: no forked function found CUDA initialised (torch.cuda.is_initialized and torch's
  bad-fork flag, read in the child before it runs anything);
* on GPU: which of the job's functions allocated CUDA memory at all;
* cold start to READY (billing: requested -> ready, per actor), warm start (spawn served warm);
* rollout tokens/s: decode tokens / the rollout stage's wall seconds, per iteration;
* training step: the trainer function's busy seconds per iteration (billing busy intervals:
  its step and weight read-out calls);
* weight publish: trainer -> controller and controller -> rollout function (load included);
* peak GPU memory per function, by actor; dollars of the run under aws, gcp, serverless and
  onprem (the ledger over the run's billing events).

Writes DIR/gpu_check.json (the table, every figure, each function's record) and
DIR/pytest_gpu.txt, nothing else: a device call brings back at most 8 files. The model, the run
directory and the per-function records go to ``--work`` (default: a temporary folder, removed).
See docs/gpu.md; benchmarks/gpu_wheels.sh has the one device command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WATCH_ENV = "RLHFLESS_GPU_CHECK_WATCH"  # the folder forked functions write what they saw into
THIS_MODULE = "benchmarks.gpu_check"
PROBE = f"{THIS_MODULE}:GpuProbe"
QWEN05_SHAPE = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2,
)  # fmt: skip
COST_MODELS = ("aws", "gcp", "serverless", "onprem")
# The actors that host a model and belong on the GPU (the reward actor runs verifiers on the CPU).
MODEL_ACTORS = ("RolloutActor", "TrainerActor", "ReferenceActor", "CriticActor")
MIB = 1 << 20


# ------------------------------------------------------------- inside the zygote's children
# The zygote imports this module (preload); nothing here touches CUDA in the zygote itself.


def _in_zygote() -> bool:
    main = sys.modules.get("__main__")
    return getattr(getattr(main, "__spec__", None), "name", "") == "rlhfless.runtime.zygote"


def _child_forked() -> None:
    """Runs in each child right after the zygote forks it, before the function starts."""
    import torch

    seen: dict[str, Any] = {
        "pid": os.getpid(),
        "cuda_initialised_at_fork": torch.cuda.is_initialized(),
        "bad_fork": torch.cuda._is_in_bad_fork(),
    }
    threading.Thread(target=_watch_child, args=(seen,), daemon=True).start()


def _watch_child(seen: dict[str, Any]) -> None:
    """Write what this function sees whenever it changes (the binding lands after the fork)."""
    import torch

    path = Path(os.environ[WATCH_ENV]) / f"{seen['pid']}.json"
    written: dict[str, Any] = {}
    t0 = time.monotonic()
    while True:
        seen["visible"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        if torch.cuda.is_initialized():  # never initialise it here: only read what is there
            seen["device_count"] = torch.cuda.device_count()
            seen["peak_allocated"] = torch.cuda.max_memory_allocated()
            seen["peak_reserved"] = torch.cuda.max_memory_reserved()
        if seen != written:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(seen))
            os.replace(tmp, path)
            written = dict(seen)
        # Often at first, to catch the binding that the function sets just after the fork.
        time.sleep(0.02 if time.monotonic() - t0 < 2.0 else 0.2)


if os.environ.get(WATCH_ENV) and _in_zygote():
    os.register_at_fork(after_in_child=_child_forked)


class GpuProbe:
    """Spawned on each slot: the GPU this slot's functions get."""

    def info(self) -> dict[str, Any]:
        import torch

        count = torch.cuda.device_count()
        props = torch.cuda.get_device_properties(0) if count else None
        return {
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device_count": count,
            "name": props.name if props else None,
            "uuid": str(props.uuid) if props else None,
            "total_bytes": props.total_memory if props else None,
        }


# ------------------------------------------------------------------------- the controller


def build_model(out: Path, big: bool) -> tuple[Path, str]:
    """Qwen2.5-0.5B's shape on a GPU, the tiny model on a CPU; random weights, our tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from rlhfless.adapters.tiny import TinyTokenizer, build_tiny_model

    if not big:
        return build_tiny_model(out / "model-tiny", seed=0), "tiny (embedded default)"
    model_dir = out / "model-qwen2.5-0.5b-shape"
    tok = TinyTokenizer()
    config = Qwen2Config(
        vocab_size=tok.vocab_size, max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, **QWEN05_SHAPE,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tok.pad_id
    model.save_pretrained(model_dir)
    tok.save(model_dir)
    tok.to_hf().save_pretrained(model_dir)
    params = sum(p.numel() for p in model.parameters())
    return model_dir, f"Qwen2.5-0.5B shape, random weights, {params / 1e6:.0f}M parameters"


def timed_runtime_class() -> type:
    from rlhfless.runtime import Runtime

    class TimedRuntime(Runtime):
        """The runtime, with every spawn timed and recorded (pid, slot, warm, its arguments)."""

        spawns: list[dict[str, Any]]

        async def spawn(self, actor: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            h = await super().spawn(actor, *args, **kwargs)
            if not hasattr(self, "spawns"):
                self.spawns = []
            self.spawns.append({
                "actor": h.actor, "pid": h.pid, "slot": h.slot, "warm": h.warm,
                "seconds": time.perf_counter() - t0, "args": args, "kwargs": kwargs,
            })  # fmt: skip
            return h

    return TimedRuntime


async def run_job(cfg: Any, model_dir: Path, run_dir: Path, budget_s: float) -> dict[str, Any]:
    """The job's iterations, then the publish and slot measurements on its warm functions."""
    from rlhfless.runtime.config import RuntimeConfig
    from rlhfless.stages.config import warm_functions_per_slot
    from rlhfless.stages.pipeline import Pipeline

    rc, t_start = cfg.runtime, time.monotonic()
    rt = timed_runtime_class()(
        slots=rc.slots, keep_alive_s=rc.keep_alive_s,
        max_warm_per_slot=warm_functions_per_slot(cfg),
        billing_path=str(run_dir / "billing.jsonl"),
        preload=(*RuntimeConfig().preload, THIS_MODULE),
    )  # fmt: skip
    out: dict[str, Any] = {"iterations": [], "windows": []}
    async with rt:
        # The first spawn waits for the zygote's imports: paid here, so that the job's cold
        # starts are forks and model loads only.
        t0 = time.perf_counter()
        async with await rt.spawn(PROBE, stage="probe"):
            out["zygote_start_s"] = time.perf_counter() - t0
        pipeline = Pipeline(rt, cfg, model_dir, run_dir)
        try:
            async with asyncio.timeout(budget_s):  # the device call's time is fixed: never over
                await _iterate(pipeline, cfg, out, t_start + budget_s)
        except TimeoutError:
            out["stopped_early"] = f"iteration {len(out['iterations'])} cut at the budget"
        try:  # on the job's warm functions; whatever fails here, the figures so far stand
            out["publish"] = await measure_publish(rt, cfg, run_dir)
        except Exception as exc:
            out["publish"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        out["probes"] = await probe_slots(rt)
        out["devices"] = {"kind": rt.devices.kind, "slots": rt.devices.slots, "gpu": rt.devices.gpu}
    out["spawns"] = [{k: v for k, v in s.items() if k not in ("args", "kwargs")} for s in rt.spawns]
    out["billing"] = list(rt.billing_events)
    return out


async def _iterate(pipeline: Any, cfg: Any, out: dict[str, Any], deadline: float) -> None:
    """Iterations until train.iterations, or until the next one would not end by ``deadline``."""
    for step in range(cfg.train.iterations):
        t0 = time.time()
        m = await pipeline.run_iteration(step)
        out["windows"].append((t0, time.time()))
        out["iterations"].append(_metrics_dict(m))
        left = deadline - time.monotonic()
        if step + 1 < cfg.train.iterations and left < 1.2 * m.seconds:
            out["stopped_early"] = f"after {step + 1} iterations: {left:.0f} s of budget left"
            return


def _metrics_dict(m: Any) -> dict[str, Any]:
    import msgspec

    return msgspec.to_builtins(m)


def _last_spawn(rt: Any, suffix: str) -> dict[str, Any] | None:
    return next((s for s in reversed(rt.spawns) if s["actor"].endswith(suffix)), None)


async def _again(rt: Any, record: dict[str, Any]) -> tuple[Any, float, bool]:
    """The same function again (warm if the pool still holds it), timed."""
    t0 = time.perf_counter()
    h = await rt.spawn(record["actor"], *record["args"], **record["kwargs"])
    return h, time.perf_counter() - t0, h.warm


async def measure_publish(rt: Any, cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Trainer -> controller -> a rollout function, inline frames and through a file."""
    trainer_rec, rollout_rec = _last_spawn(rt, ":TrainerActor"), _last_spawn(rt, ":RolloutActor")
    if trainer_rec is None or rollout_rec is None:
        return {"error": "the job started no trainer or no rollout function"}
    trainer, t_spawn, t_warm = await _again(rt, trainer_rec)
    rollout, r_spawn, r_warm = await _again(rt, rollout_rec)
    out: dict[str, Any] = {
        "trainer_spawn_s": t_spawn, "trainer_warm": t_warm,
        "rollout_spawn_s": r_spawn, "rollout_warm": r_warm,
        "file_above_bytes": cfg.rollout.weights_file_mb * MIB,
    }  # fmt: skip
    try:
        for route, file_dir in (("inline", None), ("file", str(run_dir / "weights-check"))):
            await trainer.persist()  # the write behind the last step lands first, untimed
            t0 = time.perf_counter()
            pub = await trainer.weights(file_dir, 0)
            t1 = time.perf_counter()
            weights = pub.get("path") or pub["state_dict"]
            await rollout.load_weights(weights, pub["version"])
            t2 = time.perf_counter()
            if route == "inline":
                out["bytes"] = sum(t.numel() * t.element_size() for t in weights.values())
            out[route] = {"trainer_s": t1 - t0, "rollout_load_s": t2 - t1, "total_s": t2 - t0}
    finally:
        await trainer.release()
        await rollout.release()
    out["job_route"] = "file" if out.get("bytes", 0) > out["file_above_bytes"] else "inline"
    return out


async def probe_slots(rt: Any) -> list[dict[str, Any]]:
    found = []
    for slot in range(rt.devices.slots):
        async with await rt.spawn(PROBE, slot=slot, stage="probe") as h:
            found.append({"slot": slot, **(await h.info())})
    return found


# ------------------------------------------------------------------------------ figures


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _seen(watch: Path) -> dict[int, dict[str, Any]]:
    return {int(p.stem): json.loads(p.read_text()) for p in watch.glob("*.json")}


def figures(job: dict[str, Any], seen: dict[int, dict[str, Any]], gpu: bool) -> dict[str, Any]:
    """Everything the table shows, from the job's records; CUDA-only ones skipped without CUDA."""
    no_cuda = "skipped: no CUDA GPU on this machine"
    by_pid = {s["pid"]: s for s in job["spawns"] if not s["actor"].endswith(":GpuProbe")}
    fns = [{**by_pid[pid], **seen[pid]} for pid in seen if pid in by_pid]  # the job's functions
    out: dict[str, Any] = {"functions_seen": len(fns), "functions": fns}
    expected = (lambda slot: str(slot)) if gpu else (lambda slot: "")
    wrong = [f for f in fns if f.get("visible") != expected(f["slot"])]
    wrong += [p for p in job["probes"] if p["visible"] != expected(p["slot"])]
    out["pinning"] = {
        "ok": not wrong and bool(fns),
        "functions": len(fns),
        "wrong": [{k: f.get(k) for k in ("actor", "slot", "visible")} for f in wrong],
        "slots": job["probes"],
        "slots_with_one_gpu": sum(p["device_count"] == 1 for p in job["probes"])
        if gpu
        else no_cuda,
    }
    dirty = [f for f in fns if f["cuda_initialised_at_fork"] or f["bad_fork"]]
    out["zygote_cuda"] = {
        "forks_seen": len(seen),
        "forks_with_cuda_initialised": len(dirty),
        "ok": not dirty,
        **({} if gpu else {"skipped": f"{no_cuda}: the zygote cannot have initialised it"}),
    }
    out["zygote_start_s"] = job["zygote_start_s"]
    out["cold_start_s"] = _cold_starts(job["billing"])
    warm = [s["seconds"] for s in job["spawns"] if s["warm"]]
    out["warm_start_s"] = {"median": _median(warm), "count": len(warm)}
    out["rollout_tokens_per_s"] = [
        m["tokens"]["decode"] / m["stage_seconds"]["rollout"] for m in job["iterations"]
    ]
    out["train_busy_s"] = _trainer_busy(job["billing"], job["windows"])
    out["publish"] = job["publish"]
    out["gpu_memory"] = _gpu_memory(fns) if gpu else no_cuda
    out["dollars"] = _dollars(job["billing"])
    return out


def _cold_starts(events: list[Any]) -> dict[str, dict[str, float]]:
    per: dict[str, list[float]] = {}
    for e in events:
        if e.ready_at is not None and not e.actor.endswith(":GpuProbe"):
            per.setdefault(e.actor.rpartition(":")[2], []).append(e.ready_at - e.requested_at)
    return {a: {"median": statistics.median(v), "max": max(v), "n": len(v)} for a, v in per.items()}


def _trainer_busy(events: list[Any], windows: list[tuple[float, float]]) -> list[float]:
    """Seconds the trainer functions worked inside each iteration's wall window."""
    busy = [iv for e in events if e.actor.endswith(":TrainerActor") for iv in e.busy]
    return [sum(max(0.0, min(b, w1) - max(a, w0)) for a, b in busy) for w0, w1 in windows]


def _gpu_memory(fns: list[dict[str, Any]]) -> dict[str, Any]:
    per: dict[str, dict[str, Any]] = {}
    for f in fns:
        actor = f["actor"].rpartition(":")[2]
        row = per.setdefault(actor, {"functions": 0, "on_gpu": 0, "peak_allocated_mib": 0.0})
        row["functions"] += 1
        if f.get("peak_reserved"):
            row["on_gpu"] += 1
            row["peak_allocated_mib"] = max(row["peak_allocated_mib"], f["peak_allocated"] / MIB)
            row["peak_reserved_mib"] = max(
                row.get("peak_reserved_mib", 0.0), f["peak_reserved"] / MIB
            )
    return per


def _dollars(events: list[Any]) -> dict[str, Any]:
    from rlhfless.cost_models import Ledger, get_model

    out: dict[str, Any] = {}
    for name in COST_MODELS:
        try:
            r = Ledger(get_model(name), list(events)).result()
            out[name] = {"total": r.total.usd, "serverful": r.serverful.usd}
        except Exception as exc:  # e.g. a device kind this model has no price for
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


# -------------------------------------------------------------------------- pytest -m gpu


def run_gpu_tests(out: Path, timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-rs", "-p", "no:cacheprovider"]  # fmt: skip
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        text, code = f"{exc.stdout or ''}\n(timed out after {timeout_s:.0f} s)", None
    (out / "pytest_gpu.txt").write_text(text)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", text)}
    return {"exit_code": code, "seconds": time.monotonic() - t0, **counts}


# -------------------------------------------------------------------------------- table


def _fmt(x: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}{unit}"


def table_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, value, verdict) rows; the verdict is ok, FAIL, skipped (why) or info."""
    f, gpu = r["figures"], r["gpu"]
    ok = lambda b: "ok" if b else "FAIL"  # noqa: E731
    pin, zyg = f["pinning"], f["zygote_cuda"]
    rows = [
        ("device", f"{r['device']} x{r['slots']} slots", "info"),
        ("model", r["model"], "info"),
        ("iterations", f"{len(r['job_iterations'])} ({r.get('stopped_early') or 'all'})", "info"),
        (
            "pinned to slot",
            f"{pin['functions']} functions + {len(pin['slots'])} probes, {len(pin['wrong'])} wrong",
            ok(pin["ok"]),
        ),
    ]
    if gpu:
        n = pin["slots_with_one_gpu"]
        rows.append(
            ("slots with one GPU", f"{n} of {len(pin['slots'])}", ok(n == len(pin["slots"])))
        )
        models = [v for a, v in f["gpu_memory"].items() if a in MODEL_ACTORS]
        on_gpu, n = sum(v["on_gpu"] for v in models), sum(v["functions"] for v in models)
        rows.append(("model functions on GPU", f"{on_gpu} of {n}", ok(n > 0 and on_gpu == n)))
    zv = f"{zyg['forks_with_cuda_initialised']} of {zyg['forks_seen']} forks had CUDA"
    rows.append(
        ("zygote CUDA at fork", zv, "skipped (no CUDA)" if "skipped" in zyg else ok(zyg["ok"]))
    )
    rows.append(("zygote start + fork", _fmt(f["zygote_start_s"], " s"), "info"))
    for actor, c in sorted(f["cold_start_s"].items()):
        rows.append(
            (f"cold start {actor}", f"{_fmt(c['median'], ' s')} median of {c['n']}", "info")
        )
    w = f["warm_start_s"]
    rows.append(("warm start", f"{_fmt(w['median'], ' s', 4)} median of {w['count']}", "info"))
    tps = f["rollout_tokens_per_s"]
    rows.append(("rollout tokens/s", "first " + _fmt(tps[0] if tps else None, digits=0)
                 + ", later " + _fmt(_median(tps[1:]), digits=0), "info"))  # fmt: skip
    tb = f["train_busy_s"]
    rows.append(("train step (busy)", "first " + _fmt(tb[0] if tb else None, " s")
                 + ", later " + _fmt(_median(tb[1:]), " s"), "info"))  # fmt: skip
    p = f["publish"]
    if "error" in p:
        rows.append(("publish", p["error"][:70], "FAIL"))
    for route in ("inline", "file"):
        if route in p:
            mark = " (job's route)" if p.get("job_route") == route else ""
            v = f"{_fmt(p[route]['total_s'], ' s', 3)} ({_fmt(p['bytes'] / MIB, ' MiB', 1)}){mark}"
            rows.append((f"publish {route}", v, "info"))
    if gpu:
        for actor, m in sorted(f["gpu_memory"].items()):
            v = f"{_fmt(m['peak_allocated_mib'], ' MiB', 0)} alloc, {_fmt(m.get('peak_reserved_mib'), ' MiB', 0)} reserved"
            on_cpu = "FAIL (on CPU)" if actor in MODEL_ACTORS else "info (no model)"
            rows.append((f"GPU peak {actor}", v, "info" if m["on_gpu"] else on_cpu))
    else:
        rows.append(("GPU peak per function", "-", "skipped (no CUDA)"))
    for name, d in f["dollars"].items():
        v = (
            f"${d['total']:.6f} (serverful ${d['serverful']:.6f})"
            if "total" in d
            else d["error"][:60]
        )
        rows.append((f"dollars {name}", v, "info" if "total" in d else "FAIL"))
    t = r.get("pytest_gpu")
    if t is None:
        rows.append(("pytest -m gpu", "-", "skipped (--no-tests)"))
    else:
        v = f"{t.get('passed', 0)} passed, {t.get('failed', 0)} failed, {t.get('skipped', 0)} skipped"
        ran = t["exit_code"] == 0 and t.get("passed", 0) > 0  # all skipped on a GPU: not ok
        verdict = "skipped (no CUDA)" if not gpu else ok(ran)
        rows.append(("pytest -m gpu", v, verdict))
    return rows


def print_table(rows: list[tuple[str, str, str]]) -> None:
    w0, w1 = max(len(a) for a, _, _ in rows), max(len(b) for _, b, _ in rows)
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:<{w1}}  {c}")


# --------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", required=True, type=Path, help="where the JSON and test log go")
    ap.add_argument(
        "--work", type=Path, default=None,
        help="model, run dir and per-function records (default: a temporary folder, removed)",
    )  # fmt: skip
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--model", choices=("auto", "tiny", "qwen0.5b"), default="auto",
        help="auto: the Qwen2.5-0.5B shape where there is a GPU, else the tiny model",
    )  # fmt: skip
    # Defaults sized for one device call: model ~10 s, zygote ~5 s, job <= 200 s, publish and
    # probes ~30 s, tests <= 150 s: under 7 minutes at worst.
    ap.add_argument("--budget-s", type=float, default=200.0, help="the job's iterations stop here")
    ap.add_argument("--tests-timeout-s", type=float, default=150.0)
    ap.add_argument("--no-tests", action="store_true", help="skip pytest -m gpu")
    args = ap.parse_args(argv)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from rlhfless.runtime.devices import detect  # nvidia-smi: this process never touches CUDA
    from rlhfless.stages.config import ConfigError, load_config

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Only small files under --out: a device call brings back at most 8 of them.
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        return check(args, out, work, detect(), load_config, ConfigError)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def check(args: Any, out: Path, work: Path, devices: Any, load_config: Any, error: Any) -> int:
    watch, run_dir = work / "seen", work / "run"
    for old in (watch, run_dir):  # this check's own: never resumed, never mixed with a last run
        shutil.rmtree(old, ignore_errors=True)
    watch.mkdir(parents=True)
    os.environ[WATCH_ENV] = str(watch)
    t0 = time.monotonic()
    big = args.model == "qwen0.5b" or (args.model == "auto" and devices.gpu)
    model_dir, model = build_model(work, big)
    build_s = time.monotonic() - t0
    settings = ["train.iterations=3", "model.kind=dir", f"model.path={model_dir}",
                *args.overrides, f"run.run_dir={run_dir}"]  # fmt: skip
    try:
        cfg = load_config(None, settings)
    except error as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    run_dir.mkdir(parents=True)
    job = asyncio.run(run_job(cfg, model_dir, run_dir, args.budget_s))
    result: dict[str, Any] = {
        "gpu": devices.gpu, "device": devices.kind, "slots": job["devices"]["slots"],
        "model": model, "model_build_s": build_s, "settings": settings,
        "stopped_early": job.get("stopped_early"), "job_iterations": job["iterations"],
        "spawns": job["spawns"],
        "figures": figures(job, _seen(watch), devices.gpu),
    }  # fmt: skip
    if not args.no_tests:
        result["pytest_gpu"] = run_gpu_tests(out, args.tests_timeout_s)
    rows = table_rows(result)
    result["table"] = rows
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
    print_table(rows)
    print(f"\nwrote {out / 'gpu_check.json'}")
    return 1 if any(v.startswith("FAIL") for _, _, v in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
