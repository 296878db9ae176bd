"""A supervised warm start for the built-in tiny model: RLHF begins from a fine-tuned policy.

    python benchmarks/warm_start.py                 # the stream benchmark's model, cached
    python benchmarks/warm_start.py --steps 800       # fitted longer; prints its directory

A random-init tiny model ends a response at random (its EOS has probability ~1/23 per token),
so its response lengths do not depend on the prompt, and every rollout function holds a sample
near the token cap. A real policy's lengths depend on the prompt, which is what makes a rollout
tail: a few prompts ask for long answers. This fits the tiny model on the repeat task's answers
(teacher forcing, loss on the response tokens only, then EOS) so that it answers "13xa" with
about 13 characters, with the spread of sampling at temperature 1.

The result is a model directory (``model.kind = "dir"``), cached under ``--cache`` by a key of
every input: the same arguments give the same weights, trained once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rlhfless.adapters.tiny import TinyTokenizer, build_tiny_model  # noqa: E402
from rlhfless.stages.tasks import Prompt, RepeatTask  # noqa: E402

CACHE = Path.home() / ".cache" / "rlhfless" / "warm-start"
# Part of the cache key: bump it when what a fit makes changes (the fit below, the tiny model's
# sizes or tokenizer, how the repeat task draws its prompts), so an old fit is not reused.
FIT_VERSION = 1


class WarmStart:
    """What the fine-tuned model is: model size and seed, task, and the fitting's settings."""

    def __init__(
        self, size: str = "small", seed: int = 0, median_len: float = 8.0, sigma: float = 1.4,
        max_len: int = 191, steps: int = 400, batch: int = 32, lr: float = 3e-3,
    ) -> None:  # fmt: skip
        if steps < 1 or batch < 1 or lr <= 0:
            raise ValueError(f"bad warm start: steps={steps}, batch={batch}, lr={lr}")
        self.settings = dict(
            size=size, seed=seed, median_len=median_len, sigma=sigma, max_len=max_len,
            steps=steps, batch=batch, lr=lr,
        )  # fmt: skip

    def key(self) -> str:
        import transformers

        key = {**self.settings, "fit": FIT_VERSION, "torch": torch.__version__,
               "transformers": transformers.__version__}  # fmt: skip
        blob = json.dumps(key, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def task(self) -> RepeatTask:
        s = self.settings
        return RepeatTask(size=256, seed=0, median_len=s["median_len"], sigma=s["sigma"],
                          max_len=s["max_len"])  # fmt: skip


def model_dir(ws: WarmStart, cache: Path = CACHE) -> Path:
    """The fine-tuned model's directory, trained now unless the cache holds it."""
    out = cache / ws.key()
    if (out / "warm_start.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fit(ws, tmp)
    (tmp / "warm_start.json").write_text(json.dumps(ws.settings, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # a whole model dir or none
    return out


def fit(ws: WarmStart, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    s = ws.settings
    build_tiny_model(out, seed=s["seed"], size=s["size"])
    tok = TinyTokenizer.load(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=s["lr"])
    task, rng = ws.task(), random.Random(s["seed"])
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s["seed"])
        for step in range(s["steps"]):
            loss = response_loss(model, tok, task.sample(rng, s["batch"]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 100 == 0 or step == s["steps"] - 1:
                print(f"warm start: step {step + 1}/{s['steps']} loss {loss.item():.3f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    model.save_pretrained(out)


def response_loss(model, tok: TinyTokenizer, prompts: list[Prompt]) -> torch.Tensor:
    """Mean cross-entropy of each answer's tokens and its EOS, given the prompt."""
    rows, masks = [], []
    for p in prompts:
        prompt, answer = tok.encode_prompt(p.text), [*tok.encode(p.answer), tok.eos_id]
        rows.append(prompt + answer)
        masks.append([0] * len(prompt) + [1] * len(answer))
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([m + [0] * (width - len(m)) for m in masks], dtype=torch.float32)[:, 1:]
    logits = model(ids).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none"
    ).view_as(mask)
    return (nll * mask).sum() / mask.sum()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--cache", type=Path, default=CACHE)
    a = ap.parse_args()
    print(model_dir(WarmStart(steps=a.steps), a.cache))
