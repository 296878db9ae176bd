"""A few sampled responses and their rewards: what a user reads to trust the reward function.

Every iteration, the first response of each of the first ``SAMPLES_PER_ITERATION`` prompts goes
to ``<run_dir>/samples.jsonl`` (one :class:`Sample` per line); every ``run.show_samples_every``
iterations they are also logged (logger ``rlhfless.samples``, shown by ``rlhfless train``).
Sampling is random, so the first response of a prompt is an unbiased look at the batch: the
rewards shown track the iteration's mean, they are not its best.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import msgspec

from rlhfless.stages.tasks import Prompt

SAMPLES = "samples.jsonl"
SAMPLES_PER_ITERATION = 4
SHOWN_CHARS = 160  # a logged response is cut here (samples.jsonl keeps it whole)

log = logging.getLogger("rlhfless.samples")


class Scored(msgspec.Struct, frozen=True, kw_only=True):
    """What one iteration sampled and how it scored, group-major: sample g of prompt i is row
    ``i * group_size + g`` of ``response_ids`` and ``rewards``."""

    prompts: list[Prompt]
    response_ids: list[list[int]]
    rewards: list[float]


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    """One response as the user sees it: decoded, with the reward the verifier gave it."""

    iteration: int
    prompt_id: str
    prompt: str
    answer: str  # the task's reference answer
    response: str
    reward: float


def pick(iteration: int, scored: Scored, decode: Callable[[list[int]], str]) -> list[Sample]:
    """The first response of each of the first SAMPLES_PER_ITERATION prompts."""
    if not scored.prompts or len(scored.response_ids) != len(scored.rewards):
        raise ValueError(
            f"a scored batch needs prompts and one reward per response "
            f"({len(scored.prompts)} prompts, {len(scored.response_ids)} responses, "
            f"{len(scored.rewards)} rewards)"
        )
    group = len(scored.response_ids) // len(scored.prompts)
    return [
        Sample(
            iteration=iteration,
            prompt_id=p.id,
            prompt=p.text,
            answer=p.answer,
            response=decode(scored.response_ids[i * group]),
            reward=float(scored.rewards[i * group]),
        )
        for i, p in enumerate(scored.prompts[:SAMPLES_PER_ITERATION])
    ]


def shown(samples: list[Sample]) -> str:
    """The log lines of an iteration's samples: reward, reference answer, the response."""
    # counted from 1, as the progress line counts (samples.jsonl keeps metrics.jsonl's 0-based)
    lines = [f"iteration {samples[0].iteration + 1}: {len(samples)} sampled responses"]
    for s in samples:
        text = " ".join(s.response.split())  # one line per response
        if len(text) > SHOWN_CHARS:
            text = text[: SHOWN_CHARS - 3] + "..."
        lines.append(f"  reward {s.reward:.2f} (answer {s.answer}): {text!r}")
    return "\n".join(lines)


class SampleLog:
    """Appends each iteration's samples to ``<run_dir>/samples.jsonl``; logs every ``every``."""

    def __init__(self, run_dir: Path, every: int, decode: Callable[[list[int]], str]) -> None:
        self.path = Path(run_dir) / SAMPLES
        self.every = every
        self.decode = decode

    def record(self, iteration: int, scored: Scored) -> list[Sample]:
        samples = pick(iteration, scored, self.decode)
        with open(self.path, "ab") as f:
            f.writelines(msgspec.json.encode(s) + b"\n" for s in samples)
        if self.every and (iteration + 1) % self.every == 0:
            log.info("%s", shown(samples))
        return samples
