"""What is simulated: algorithm, model, batch, group size and response lengths per iteration.

Lengths come from a parametric distribution or a recorded trace:

* **Parametric** (:data:`DATASETS`): each prompt p has a typical length ``m_p = exp(N(ln median,
  sigma_prompt))``; each of its samples in each epoch is ``m_p * exp(N(0, sigma_sample))``, and
  with probability ``tail_prob`` a sample rambles (x ``tail_factor`` = 3..8, the long tail of
  repetition that never reaches an answer); all capped at ``max_response``. The same prompts
  come back every ``steps_per_epoch`` iterations, so the length predictor has history from the
  second epoch on. The shapes are assumptions chosen to resemble the datasets' published length
  ranges (the paper: prompts up to 1024 tokens, responses up to 2048), not measurements.
* **Trace** (``--trace FILE.jsonl``): one JSON object per line, ``{"prompt_id", "lengths": [...],
  "prompt_tokens"}`` — what ``rlhfless train`` writes to ``runs/*/lengths.jsonl``. Lines are in
  iteration order; iteration i replays lines ``i*B .. (i+1)*B - 1`` (``B`` = prompts per
  iteration), wrapping around when the trace is shorter than the job.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import msgspec

from rlhfless.sim.errors import BadSetting, BadTrace, UnknownName

Algo = Literal["grpo", "ppo"]


class LengthDist(msgspec.Struct, frozen=True, kw_only=True):
    response_median: float
    sigma_prompt: float  # spread of typical lengths across prompts
    sigma_sample: float  # spread of one prompt's samples
    tail_prob: float  # chance a sample rambles
    max_response: int
    prompt_median: float
    prompt_sigma: float
    max_prompt: int = 1024


DATASETS: dict[str, LengthDist] = {
    "gsm8k-like": LengthDist(
        response_median=260,
        sigma_prompt=0.35,
        sigma_sample=0.45,
        tail_prob=0.02,
        max_response=2048,
        prompt_median=120,
        prompt_sigma=0.3,
    ),
    "gpqa-like": LengthDist(
        response_median=900,
        sigma_prompt=0.5,
        sigma_sample=0.5,
        tail_prob=0.05,
        max_response=2048,
        prompt_median=250,
        prompt_sigma=0.4,
    ),
    "livecodebench-like": LengthDist(
        response_median=1100,
        sigma_prompt=0.6,
        sigma_sample=0.5,
        tail_prob=0.08,
        max_response=2048,
        prompt_median=400,
        prompt_sigma=0.5,
    ),
}


class Batch(msgspec.Struct, kw_only=True):
    """One iteration's prompts: ids, prompt tokens, and every sample's true response length."""

    prompt_ids: list[str]
    prompt_tokens: list[int]
    lengths: list[list[int]]  # lengths[p][s]

    @property
    def samples(self) -> int:
        return sum(len(x) for x in self.lengths)

    @property
    def decode_tokens(self) -> int:
        return sum(sum(x) for x in self.lengths)

    @property
    def sequence_tokens(self) -> int:
        """Prompt + response tokens over all samples (what forward and training passes see)."""
        return sum(
            p * len(ls) + sum(ls) for p, ls in zip(self.prompt_tokens, self.lengths, strict=True)
        )


class Workload(msgspec.Struct, frozen=True, kw_only=True):
    algo: Algo = "grpo"
    dataset: str = "gsm8k-like"
    batch_prompts: int = 512  # prompts per iteration (verl GSM8K examples use 256-1024)
    group_size: int = 8  # samples per prompt; PPO uses 1
    iterations: int = 4
    steps_per_epoch: int = 2  # the same prompts return after this many iterations
    train_epochs: int = 1  # passes over the batch per iteration (verl ppo_epochs = 1)
    minibatches: int = 4  # optimizer steps per iteration (each one all-gathers the weights)
    reference: bool = True  # a KL term needs reference log-probs (verl's GRPO default)
    micro_batch: int = 4  # sequences per micro-batch per GPU (verl's quickstart)
    prompt_len: int = 0  # > 0: the dataset's median prompt tokens replaced by this
    response_len: int = 0  # > 0: the dataset's median response tokens replaced by this
    max_response: int = 0  # > 0: the generation limit (the dataset's cap otherwise)
    seed: int = 0
    trace: str = ""  # JSONL trace replacing the parametric lengths

    def __post_init__(self) -> None:
        if self.algo not in ("grpo", "ppo"):
            raise UnknownName("algo", self.algo, ("grpo", "ppo"))
        if not self.trace and self.dataset not in DATASETS:
            raise UnknownName("dataset", self.dataset, DATASETS)
        for name in ("batch_prompts", "group_size", "iterations", "steps_per_epoch"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise BadSetting(name, getattr(self, name), "an integer >= 1")
        for name in ("prompt_len", "response_len", "max_response"):
            if getattr(self, name) < 0:
                raise BadSetting(name, getattr(self, name), "an integer >= 0 (0: the dataset's)")
        for name in ("train_epochs", "minibatches", "micro_batch"):
            if getattr(self, name) < 1:
                raise BadSetting(name, getattr(self, name), "an integer >= 1")

    def batches(self) -> Iterator[Batch]:
        if self.trace:
            yield from _replay(read_trace(self.trace), self.batch_prompts, self.iterations)
        else:
            yield from _parametric(self)


def lengths_of(w: Workload) -> LengthDist:
    """The dataset's length distribution with the workload's own medians and limit."""
    d = DATASETS[w.dataset]
    changes: dict = {}
    if w.prompt_len:
        changes["prompt_median"] = float(w.prompt_len)
        changes["max_prompt"] = max(d.max_prompt, 2 * w.prompt_len)
    if w.response_len:
        changes["response_median"] = float(w.response_len)
    if w.max_response:
        changes["max_response"] = w.max_response
    return msgspec.structs.replace(d, **changes)


def _parametric(w: Workload) -> Iterator[Batch]:
    d = lengths_of(w)
    rng = random.Random(w.seed)
    n = w.batch_prompts * w.steps_per_epoch
    typical = [rng.lognormvariate(math.log(d.response_median), d.sigma_prompt) for _ in range(n)]
    prompt = [
        max(
            8, min(d.max_prompt, int(rng.lognormvariate(math.log(d.prompt_median), d.prompt_sigma)))
        )
        for _ in range(n)
    ]
    for it in range(w.iterations):
        start = (it % w.steps_per_epoch) * w.batch_prompts
        ids = list(range(start, start + w.batch_prompts))
        lengths = []
        for p in ids:
            group = []
            for _ in range(w.group_size):
                x = typical[p] * rng.lognormvariate(0.0, d.sigma_sample)
                if rng.random() < d.tail_prob:
                    x *= rng.uniform(3.0, 8.0)
                group.append(max(1, min(d.max_response, int(x))))
            lengths.append(group)
        yield Batch(
            prompt_ids=[f"p{p}" for p in ids], prompt_tokens=[prompt[p] for p in ids],
            lengths=lengths,
        )  # fmt: skip


class TraceLine(msgspec.Struct, frozen=True):
    prompt_id: str | int
    lengths: list[int]
    prompt_tokens: int = 512
    max_new_tokens: int | None = None  # the generation limit it was sampled with, if recorded


def read_trace(path: str | Path) -> list[TraceLine]:
    """Every line of a lengths trace; a bad line is an error naming its line number."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadTrace(path, f"cannot read it ({exc.strerror or exc})") from None
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = msgspec.json.decode(line, type=TraceLine)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BadTrace(path, str(exc), number) from None
        if not row.lengths or any(x < 0 for x in row.lengths) or row.prompt_tokens < 0:
            raise BadTrace(path, "lengths must be a non-empty list of ints >= 0", number)
        out.append(row)
    if not out:
        raise BadTrace(path, "no lines")
    return out


def _replay(rows: list[TraceLine], per_iteration: int, iterations: int) -> Iterator[Batch]:
    per_iteration = min(per_iteration, len(rows))
    for it in range(iterations):
        chunk = [rows[(it * per_iteration + i) % len(rows)] for i in range(per_iteration)]
        yield Batch(
            prompt_ids=[str(r.prompt_id) for r in chunk],
            prompt_tokens=[r.prompt_tokens for r in chunk],
            lengths=[list(r.lengths) for r in chunk],
        )


def trace_to_jsonl(batches: list[Batch]) -> str:
    """The trace format for ``batches`` (tests and tools)."""
    return "".join(
        json.dumps({"prompt_id": pid, "lengths": ls, "prompt_tokens": pt}) + "\n"
        for b in batches
        for pid, pt, ls in zip(b.prompt_ids, b.prompt_tokens, b.lengths, strict=True)
    )
