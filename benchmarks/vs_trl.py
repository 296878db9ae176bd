"""rlhfless GRPO against TRL's ``GRPOTrainer``, in one run: seconds per step and reward.

    python benchmarks/vs_trl.py              # 5 steps per side, 4 prompts x G=8 per step
    python benchmarks/vs_trl.py --quick      # 3 steps per side, 2 prompts x G=8 per step
    python benchmarks/vs_trl.py --steps 10   # more steps, steadier medians
    python benchmarks/vs_trl.py --only ours  # one side only (also: --only trl)
    .venv-vllm/bin/python benchmarks/vs_trl.py --only ours --engine vllm   # vLLM rollout

``benchmarks/grpo_vllm_vs_trl.py`` runs the vLLM side and TRL from their own venvs, alternating.

Prints a table and writes ``benchmarks/results/vs_trl.json``. TRL is measured when ``import trl``
works (``pip install trl``); otherwise the table says that side was skipped and why.

Both sides run the same job:

* the same model: the ~75M-parameter Qwen2-style config of ``rlhfless.adapters.tiny`` ("75m"),
  random init from one seed, written once as a transformers model dir that both load;
* the same tokenizer: the in-code character tokenizer, rebuilt for TRL as a
  ``PreTrainedTokenizerFast`` with the same ids (checked at start: same prompt ids, same decoded
  text for random id lists);
* the same task and prompts: ``RepeatTask`` from the same config; TRL's dataset is our pipeline's
  batches for steps 0..N-1 in order (``shuffle_dataset=False``), so step i sees the same prompts on
  both sides; both score with ``RepeatTask.score`` on the decoded completion;
* G samples per prompt, the same prompts per step, at most ``--max-new-tokens`` new tokens; both
  stop a sample at EOS, so the mean completion length (EOS included) is reported for each side;
* GRPO with the same loss: token-mean (TRL ``loss_type="dapo"``), advantages scaled by the
  group std (``scale_rewards="group"``), clip 0.2, grad-norm clip 1.0, AdamW with the same
  constant lr, no weight decay, KL coefficient 0 (no reference model on either side), one
  optimiser step per batch (our ``train.epochs=1``; TRL one generation per step,
  ``num_iterations=1``), temperature 1, fp32 on the CPU.

TRL's own default ``gradient_checkpointing=True`` recomputes the forward in the backward; it is a
memory saving a 75M model on the CPU does not need, so it is turned off here (TRL is faster
without it; ``--trl-gradient-checkpointing`` measures TRL's default).

Timing: seconds per step is wall time per optimiser step, everything included (our side:
rollout on function processes, reward, advantages, train, weight publication; TRL: generation,
reward, loss, backward, optimiser). The first step is reported separately (our cold starts of
function processes; TRL's first-step allocations); the headline is the median over the steps
after it. Ratio = TRL s/step / ours (above 1: we are faster). The issue's target is >= 1.25.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `rlhfless` importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rlhfless.adapters.tiny import TinyTokenizer, build_tiny_model  # noqa: E402
from rlhfless.stages.common import task_from_config  # noqa: E402
from rlhfless.stages.config import Config, load_config  # noqa: E402
from rlhfless.stages.tasks import Prompt, batch_for_step  # noqa: E402

TARGET = 1.25  # issue 4: at least 1.25x faster per step than TRL at equal batch and lengths
RESULTS = ROOT / "benchmarks" / "results" / "vs_trl.json"


# --------------------------------------------------------------------------- shared setup


def make_config(args: argparse.Namespace) -> Config:
    return load_config(
        None,
        [
            f"train.iterations={args.steps}",
            "model.tiny_size=75m",
            f"model.seed={args.seed}",
            f"rollout.max_new_tokens={args.max_new_tokens}",
            f"rollout.engine={args.engine}",
            "rollout.temperature=1.0",
            f"train.batch_prompts={args.batch_prompts}",
            f"train.group_size={args.group_size}",
            "train.epochs=1",  # one optimiser step per batch, as TRL with num_iterations=1
            "train.grad_accum=1",
            # Ours only: micro-batches of similar length, at most this many padded tokens each,
            # summed into the same one optimiser step (config default 256 tokens; the gradient is
            # the same up to rounding; --micro-batch-tokens 0 pads the whole batch as TRL does).
            *(
                [f"train.micro_batch_tokens={args.micro_batch_tokens}"]
                if args.micro_batch_tokens is not None
                else []
            ),
            f"train.lr={args.lr}",
            "train.weight_decay=0.0",
            "train.max_grad_norm=1.0",
            "train.clip_eps=0.2",
            "train.kl_coef=0.0",  # no reference stage; TRL beta=0 loads no reference model
            'train.loss_agg="token-mean"',
            "train.scale_adv_by_std=true",
            "train.algo=grpo",
            f"runtime.slots={args.slots}",
            *([f"runtime.keep_alive_s={args.keep_alive}"] if args.keep_alive is not None else []),
            "checkpoint.every=0",
            f"run.seed={args.seed}",
        ],
    )


def step_prompts(cfg: Config, steps: int) -> list[list[Prompt]]:
    task = task_from_config(cfg.task, cfg.rollout.max_new_tokens)
    return [batch_for_step(task, s, cfg.train.batch_prompts, cfg.run.seed) for s in range(steps)]


def median_after_first(xs: list[float]) -> float | None:
    rest = xs[1:]
    return statistics.median(rest) if rest else None


def summarise(steps: list[dict[str, Any]]) -> dict[str, Any]:
    secs = [s["seconds"] for s in steps]
    rewards = [s["reward_mean"] for s in steps]
    lens = [s["completion_len_mean"] for s in steps]
    k = min(3, len(steps))
    # Completion tokens per second (EOS included): the two sides sample different lengths, so
    # this is the per-step time normalised by the work the step actually did.
    tps = [s["samples"] * s["completion_len_mean"] / s["seconds"] for s in steps[1:]]
    return {
        "n_steps": len(steps),
        "first_step_s": secs[0] if secs else None,
        "median_step_s": median_after_first(secs),
        "min_step_s": min(secs[1:]) if len(secs) > 1 else None,
        "median_tokens_per_s": statistics.median(tps) if tps else None,
        "reward_first": rewards[0] if rewards else None,
        "reward_last": rewards[-1] if rewards else None,
        f"reward_last{k}_mean": statistics.fmean(rewards[-k:]) if rewards else None,
        "completion_len_mean": statistics.fmean(lens) if lens else None,
    }


# --------------------------------------------------------------------------- our pipeline


async def run_ours(
    args: argparse.Namespace, cfg: Config, model_dir: Path, work: Path
) -> dict[str, Any]:
    from rlhfless.runtime import Runtime
    from rlhfless.stages.pipeline import Pipeline

    run_dir = work / "ours"
    run_dir.mkdir(parents=True, exist_ok=True)
    steps: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if args.preload is not None:  # the zygote's imports; default: what `rlhfless train` uses
        extra["preload"] = tuple(filter(None, args.preload.split(",")))
    elif cfg.rollout.engine == "vllm":
        from rlhfless.adapters.vllm import zygote_preload

        extra["preload"] = zygote_preload()
    async with Runtime(
        slots=cfg.runtime.slots, keep_alive_s=cfg.runtime.keep_alive_s, **extra
    ) as rt:
        startup = time.perf_counter() - t0
        pipe = Pipeline(rt, cfg, model_dir, run_dir)
        for step in range(args.steps):
            m = await pipe.run_iteration(step)
            steps.append(
                {
                    "step": step,
                    "seconds": m.seconds,
                    "reward_mean": m.reward_mean,
                    "completion_len_mean": m.response_len_mean,
                    "completion_len_max": m.response_len_max,
                    "samples": m.samples,
                    "loss": m.loss,
                    "grad_norm": m.grad_norm,
                    "stage_seconds": m.stage_seconds,
                    "cold_starts": m.cold_starts,
                    "warm_starts": m.warm_starts,
                    "functions": m.functions,
                }
            )
            if args.verbose:
                stages = " ".join(f"{k}={v:.2f}" for k, v in m.stage_seconds.items())
                print(
                    f"  ours step {step}: {m.seconds:.2f}s reward={m.reward_mean:.3f} "
                    f"len={m.response_len_mean:.1f} cold={m.cold_starts} [{stages}]",
                    flush=True,
                )
    return {
        "status": "ok",
        "engine": cfg.rollout.engine,
        "preload": list(rt.config.preload),
        "runtime_start_s": startup,
        "threads": {"rollout": rt.threads, "train": rt.devices.cores},
        "steps": steps,
        **summarise(steps),
    }


# --------------------------------------------------------------------------- TRL


def trl_tokenizer(tok: TinyTokenizer):
    """The tiny character tokenizer as a ``PreTrainedTokenizerFast`` with the same ids."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(tok.tokens)}
    # BPE without merges on an un-pre-tokenized string: one token per character.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.add_special_tokens(tok.tokens[:3])  # <pad> <bos> <eos>: already ids 0, 1, 2
    core.decoder = decoders.Fuse()  # join characters without spaces
    core.post_processor = processors.TemplateProcessing(
        single=f"{tok.tokens[tok.bos_id]} $A",
        special_tokens=[(tok.tokens[tok.bos_id], tok.bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=tok.tokens[tok.pad_id],
        bos_token=tok.tokens[tok.bos_id],
        eos_token=tok.tokens[tok.eos_id],
        padding_side="left",
    )


def check_tokenizer(hf_tok, tok: TinyTokenizer, prompts: list[Prompt]) -> None:
    """Fail loudly if the TRL tokenizer disagrees with ours (ids of prompts, decoded text)."""
    for p in prompts:
        ours, theirs = tok.encode_prompt(p.text), hf_tok(p.text)["input_ids"]
        if ours != theirs:
            raise AssertionError(f"prompt {p.text!r}: ours {ours} != TRL tokenizer {theirs}")
    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 40))]
        a, b = tok.decode(ids), hf_tok.decode(ids, skip_special_tokens=True)
        if a != b:
            raise AssertionError(f"decode {ids}: ours {a!r} != TRL tokenizer {b!r}")


def run_trl(args: argparse.Namespace, cfg: Config, model_dir: Path, work: Path) -> dict[str, Any]:
    try:
        import trl
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as e:
        return {"status": "skipped", "reason": f"cannot import trl ({e}); `pip install trl`"}

    torch.set_num_threads(os.cpu_count() or 1)  # TRL trains in this process: all cores
    tok = TinyTokenizer.load(model_dir)
    hf_tok = trl_tokenizer(tok)
    batches = step_prompts(cfg, args.steps)
    check_tokenizer(hf_tok, tok, [p for b in batches for p in b])
    task = task_from_config(cfg.task, cfg.rollout.max_new_tokens)
    rows = [{"prompt": p.text, "index": p.index} for b in batches for p in b]
    dataset = Dataset.from_list(rows)

    per_step: list[dict[str, Any]] = []

    def repeat_reward(prompts, completions, completion_ids, index, **_: Any) -> list[float]:
        scores = [
            float(task.score(task.get(i), c)) for i, c in zip(index, completions, strict=True)
        ]
        per_step.append(
            {
                "reward_mean": statistics.fmean(scores),
                "completion_len_mean": statistics.fmean(len(c) for c in completion_ids),
                "completion_len_max": max(len(c) for c in completion_ids),
                "samples": len(scores),
            }
        )
        return scores

    step_ends: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            step_ends.append(time.perf_counter())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            step_ends.append(time.perf_counter())

    n = cfg.train.batch_prompts * cfg.train.group_size
    targs = GRPOConfig(
        output_dir=str(work / "trl"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to="none",
        max_steps=args.steps,
        per_device_train_batch_size=n,  # B prompts x G samples per optimiser step
        gradient_accumulation_steps=1,
        num_generations=cfg.train.group_size,
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature,
        top_p=1.0,
        top_k=0,
        beta=cfg.train.kl_coef,
        epsilon=cfg.train.clip_eps,
        loss_type="dapo",  # token-mean over the batch: our loss_agg="token-mean"
        scale_rewards="group",  # our scale_adv_by_std=true
        learning_rate=cfg.train.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=cfg.train.weight_decay,
        max_grad_norm=cfg.train.max_grad_norm,
        optim="adamw_torch",  # the same torch.optim.AdamW as our trainer
        gradient_checkpointing=args.trl_gradient_checkpointing,
        shuffle_dataset=False,  # the dataset is already our per-step batches in order
        seed=cfg.run.seed,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.generation_config.pad_token_id = tok.pad_id
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=repeat_reward,
        args=targs,
        train_dataset=dataset,
        processing_class=hf_tok,
        callbacks=[Clock()],
    )
    setup = time.perf_counter() - t0
    trainer.train()
    secs = [b - a for a, b in itertools.pairwise(step_ends)]
    steps = [
        {"step": i, "seconds": s, **per_step[i]} for i, s in enumerate(secs) if i < len(per_step)
    ]
    if args.verbose:
        for s in steps:
            print(
                f"  trl  step {s['step']}: {s['seconds']:.2f}s reward={s['reward_mean']:.3f} "
                f"len={s['completion_len_mean']:.1f}",
                flush=True,
            )
    return {
        "status": "ok",
        "trl_version": trl.__version__,
        "setup_s": setup,
        "threads": torch.get_num_threads(),
        "gradient_checkpointing": args.trl_gradient_checkpointing,
        "steps": steps,
        **summarise(steps),
    }


# --------------------------------------------------------------------------- report


def fmt(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    ours, theirs = result["ours"], result["trl"]
    c = result["config"]
    title = (
        f"GRPO per step: rlhfless ({c.get('engine', 'hf')} rollout) vs TRL — 75M Qwen2-style, "
        f"{c['batch_prompts']} prompts x "
        f"G={c['group_size']}, <= {c['max_new_tokens']} new tokens, {c['steps']} steps"
    )
    t = Table(title=title)
    t.add_column("")
    t.add_column("rlhfless", justify="right")
    t.add_column("TRL GRPOTrainer", justify="right")

    def val(side: dict[str, Any], key: str, spec: str = ".2f") -> str:
        if side.get("status") != "ok":
            return side.get("status", "-")
        return fmt(side.get(key), spec)

    rows = [
        ("median s/step (after step 1)", "median_step_s", ".2f"),
        ("min s/step (after step 1)", "min_step_s", ".2f"),
        ("first step s (incl. cold starts)", "first_step_s", ".2f"),
        ("median completion tokens/s (after step 1)", "median_tokens_per_s", ".1f"),
        ("mean completion length (tokens)", "completion_len_mean", ".1f"),
        ("reward, step 1", "reward_first", ".3f"),
        (f"reward, step {c['steps']}", "reward_last", ".3f"),
    ]
    k = min(3, c["steps"])
    rows.append((f"reward, mean of last {k} steps", f"reward_last{k}_mean", ".3f"))
    for label, key, spec in rows:
        t.add_row(label, val(ours, key, spec), val(theirs, key, spec))
    t.add_row(
        "setup s (runtime start / trainer build)",
        val(ours, "runtime_start_s"),
        val(theirs, "setup_s"),
    )
    console = Console()
    console.print(t)
    r = result.get("ratio")
    if r is not None:
        verdict = "MET" if r >= TARGET else "NOT met"
        style = "green" if r >= TARGET else "red"
        console.print(
            f"ratio TRL s/step / rlhfless s/step = [bold]{r:.2f}x[/bold] "
            f"(target >= {TARGET}x: [{style}]{verdict}[/{style}])"
        )
    for name, side in (("rlhfless", ours), ("TRL", theirs)):
        if side.get("status") != "ok":
            console.print(
                f"[yellow]{name} side {side.get('status')}: {side.get('reason')}[/yellow]"
            )
    if ours.get("status") == "ok" and ours["steps"][1:]:
        stages: dict[str, list[float]] = {}
        for s in ours["steps"][1:]:
            for k_, v in s["stage_seconds"].items():
                stages.setdefault(k_, []).append(v)
        parts = ", ".join(f"{k_} {statistics.median(v):.2f}" for k_, v in stages.items())
        console.print(f"rlhfless median stage seconds after step 1: {parts}")
    console.print(
        f"load average before/after: {result['loadavg_before']} / {result['loadavg_after']}"
    )
    console.print(f"wrote {result['path']}")


def version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps per side (default 5)")
    ap.add_argument("--quick", action="store_true", help="3 steps per side, 2 prompts per step")
    ap.add_argument(
        "--batch-prompts", type=int, default=None, help="prompts per step (default 4; --quick 2)"
    )
    ap.add_argument("--group-size", type=int, default=8, help="samples per prompt G (default 8)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="default 64")
    ap.add_argument(
        "--lr",
        type=float,
        default=1e-5,
        help="both sides (default 1e-5: higher rates swing the random-init model between "
        "1-token and 64-token completions within a few steps, and per-step time follows length)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slots", type=int, default=os.cpu_count() or 1, help="our runtime slots")
    ap.add_argument("--only", choices=["both", "ours", "trl"], default="both")
    ap.add_argument(
        "--engine",
        choices=["hf", "vllm"],
        default="hf",
        help="our rollout engine (vllm: run from the vLLM venv, docs/vllm.md)",
    )
    ap.add_argument(
        "--micro-batch-tokens",
        type=int,
        default=None,
        help="our trainer's padded-token budget per micro-batch (default: the config's; 0: one batch)",
    )
    ap.add_argument(
        "--preload",
        default=None,
        help="our zygote's preload, comma separated ('?mod' optional; default RuntimeConfig's)",
    )
    ap.add_argument(
        "--order",
        choices=["ours-first", "trl-first"],
        default="ours-first",
        help="which side runs first (alternate between runs: the machine's load drifts)",
    )
    ap.add_argument(
        "--keep-alive",
        type=float,
        default=None,
        help="our runtime's keep_alive_s (default: the config default, 30 s)",
    )
    ap.add_argument(
        "--trl-gradient-checkpointing",
        action="store_true",
        help="keep TRL's default gradient checkpointing on (slower TRL)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("-q", "--quiet", dest="verbose", action="store_false", help="no per-step lines")
    args = ap.parse_args(argv)
    if args.steps is None:
        args.steps = 3 if args.quick else 5
    if args.batch_prompts is None:
        args.batch_prompts = 2 if args.quick else 4
    if args.steps < 2:
        ap.error("--steps must be >= 2 (the first step is reported separately)")

    cfg = make_config(args)
    loadavg_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="rlhfless-vs-trl-"))
    try:
        model_dir = build_tiny_model(work / "model", seed=cfg.model.seed, size=cfg.model.tiny_size)
        n_params = sum(
            p.numel()
            for p in __import__("transformers")
            .AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            .parameters()
        )
        ours: dict[str, Any] = {"status": "skipped", "reason": "--only trl"}
        theirs: dict[str, Any] = {"status": "skipped", "reason": "--only ours"}
        sides = ["ours", "trl"] if args.order == "ours-first" else ["trl", "ours"]
        for side in sides:
            if args.only not in ("both", side):
                continue
            if side == "ours":
                print(f"rlhfless: {args.steps} steps ...", flush=True)
                try:
                    ours = asyncio.run(run_ours(args, cfg, model_dir, work))
                except Exception as e:
                    traceback.print_exc()
                    ours = {"status": "failed", "reason": repr(e)}
            else:
                print(f"TRL GRPOTrainer: {args.steps} steps ...", flush=True)
                try:
                    theirs = run_trl(args, cfg, model_dir, work)
                except Exception as e:
                    traceback.print_exc()
                    theirs = {"status": "failed", "reason": repr(e)}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratio = None
    if ours.get("median_step_s") and theirs.get("median_step_s"):
        ratio = theirs["median_step_s"] / ours["median_step_s"]
    result = {
        "benchmark": "vs_trl",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {p: version(p) for p in ("torch", "transformers", "trl", "rlhfless")},
        "config": {
            "steps": args.steps,
            "model": "75m (Qwen2-style, random init)",
            "parameters": n_params,
            "batch_prompts": cfg.train.batch_prompts,
            "group_size": cfg.train.group_size,
            "samples_per_step": cfg.train.batch_prompts * cfg.train.group_size,
            "max_new_tokens": cfg.rollout.max_new_tokens,
            "lr": cfg.train.lr,
            "kl_coef": cfg.train.kl_coef,
            "slots": cfg.runtime.slots,
            "engine": cfg.rollout.engine,
            "micro_batch_tokens": cfg.train.micro_batch_tokens,
            "keep_alive_s": cfg.runtime.keep_alive_s,
            "order": args.order,
            "seed": cfg.run.seed,
        },
        "ours": ours,
        "trl": theirs,
        "ratio": ratio,
        "target": TARGET,
        "target_met": None if ratio is None else ratio >= TARGET,
        "loadavg_before": [round(x, 2) for x in loadavg_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "path": str(args.out),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print_table(result)
    return 0 if ours.get("status") != "failed" and theirs.get("status") != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
