"""Verifiable tasks: prompts with stable ids and rule-based scores in [0, 1].

A task is a fixed, seeded list of prompts (so a prompt keeps its id across epochs and processes:
the length predictor tracks prompts by id, and the reward function rebuilds the same task from its
config and scores by id). ``batch_for_step`` walks the list in per-epoch shuffled order, so the
data position of a run is just its step number, which makes resume trivial.

Built in:
- ``RepeatTask`` ("repeat"): "c x n =" -> c repeated n times. n is lognormal across prompts, so
  response lengths are long-tailed the way real RLHF rollouts are; the score gives dense partial
  credit, so a random-init tiny model starts above zero and GRPO can climb within ~40 CPU steps.
- ``ReasoningGymTask`` ("reasoning-gym"): a dataset of the ``reasoning-gym`` package (imported
  lazily; GSM-style ``gsm_symbolic`` by default), scored by the dataset's own verifier. Reward
  "answer": the content of ``<answer>...</answer>`` only. Reward "format-answer": partial
  credit (:func:`format_answer_score`), so that a small model that never writes the tags still
  earns something for the right number, and the tags earn the rest.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec


class Prompt(msgspec.Struct, frozen=True):
    """One prompt of a task. Pure data: it travels between functions as a msgspec struct."""

    id: str  # stable across epochs and processes: "<task key>/<index>"
    index: int  # position in the task's prompt list
    text: str  # what the model is asked (before any chat template)
    answer: str  # the reference answer the verifier compares against


class TaskError(ValueError):
    """A task that cannot be built (missing package, bad parameters) or a prompt it does not own."""


@runtime_checkable
class Task(Protocol):
    """What the pipeline needs from a task."""

    name: str

    def __len__(self) -> int: ...

    def get(self, index: int) -> Prompt: ...

    def sample(self, rng: random.Random, batch: int) -> list[Prompt]: ...

    def score(self, prompt: Prompt, response_text: str) -> float: ...


def batch_for_step(task: Task, step: int, batch: int, seed: int) -> list[Prompt]:
    """The ``batch`` prompts of iteration ``step``: epochs of the task in seeded shuffled order.

    Pure function of (task, step, batch, seed): a resumed run continues the same data order.
    A batch that crosses an epoch boundary takes the rest of one epoch and the start of the next.
    """
    n = len(task)
    if batch < 1 or n < 1:
        raise TaskError(f"need batch >= 1 and a non-empty task (batch={batch}, task size={n})")
    out: list[Prompt] = []
    perms: dict[int, list[int]] = {}
    for pos in range(step * batch, (step + 1) * batch):
        epoch, k = divmod(pos, n)
        if epoch not in perms:
            order = list(range(n))
            random.Random(f"{seed}:{epoch}").shuffle(order)
            perms[epoch] = order
        out.append(task.get(perms[epoch][k]))
    return out


def _index_of(task: Task, prompt: Prompt) -> int:
    if not 0 <= prompt.index < len(task) or task.get(prompt.index).id != prompt.id:
        raise TaskError(
            f"prompt {prompt.id!r} does not belong to task {task.name!r}; build the task from the "
            "same config (name, size, seed) on every function"
        )
    return prompt.index


class RepeatTask:
    """ "c x n =" -> "cc...c" (n times), then EOS. Long-tailed n, dense partial-credit reward."""

    name = "repeat"

    def __init__(
        self,
        size: int = 256,
        seed: int = 0,
        chars: str = "abcdefgh",
        median_len: float = 6.0,
        sigma: float = 0.8,
        max_len: int = 47,
    ) -> None:
        if size < 1 or max_len < 1 or median_len <= 0 or sigma < 0 or not chars:
            raise TaskError(
                f"bad repeat task parameters: size={size}, max_len={max_len}, "
                f"median_len={median_len}, sigma={sigma}, chars={chars!r}"
            )
        rng = random.Random(seed)
        self._prompts: list[Prompt] = []
        for i in range(size):
            c = rng.choice(chars)
            # Lognormal lengths: most targets are short, a few are many times the median.
            n = min(max_len, max(1, round(rng.lognormvariate(math.log(median_len), sigma))))
            self._prompts.append(Prompt(id=f"repeat/{i}", index=i, text=f"{n}x{c}", answer=c * n))

    def __len__(self) -> int:
        return len(self._prompts)

    def get(self, index: int) -> Prompt:
        return self._prompts[index]

    def sample(self, rng: random.Random, batch: int) -> list[Prompt]:
        return [self._prompts[rng.randrange(len(self._prompts))] for _ in range(batch)]

    def score(self, prompt: Prompt, response_text: str) -> float:
        return repeat_score(prompt.answer, response_text)


def repeat_score(target: str, response: str) -> float:
    """Half for the length, half for the characters; 1.0 only for the exact answer.

    length: min(L, n) / max(L, n). characters: positions where the response matches the target,
    over max(L, n), so padding a response with junk dilutes them. Both halves are dense: a
    random-init model scores ~0.15 (mostly from length), and every step toward the right length or
    one more right character earns something, which is what GRPO needs to climb quickly.
    """
    longer = max(len(target), len(response))
    if longer == 0:
        return 1.0
    matches = sum(a == b for a, b in zip(target, response, strict=False))
    return 0.5 * min(len(target), len(response)) / longer + 0.5 * matches / longer


ANSWER_INSTRUCTION = (
    "\nThink step by step, then give only the final answer inside <answer></answer> tags."
)
# "format-answer" asks for the answer alone: with a few dozen new tokens, step-by-step text is
# cut off before the answer (SmolLM2-135M, measured: most responses ramble past 40 tokens).
SHORT_ANSWER_INSTRUCTION = "\nGive the final answer inside <answer></answer> tags."

# format_answer_score's credits. A tagged answer earns TAG_CREDIT for the format and the rest
# by the verifier; the right number said without tags earns UNTAGGED_CREDIT of the verifier's
# score. So: tagged and right 1.0 > untagged and right 0.5 > tagged and wrong 0.25 > 0.
TAG_CREDIT = 0.25
UNTAGGED_CREDIT = 0.5
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number written in ``text`` ("-4", "1,000", "2.5"), or None."""
    found = _NUMBER.findall(text)
    return found[-1].rstrip(",") if found else None


def format_answer_score(tagged: str | None, response: str, verify: Callable[[str], float]) -> float:
    """Partial credit for the format and the answer; ``tagged`` is the ``<answer>`` content.

    With tags around an answer: ``TAG_CREDIT + (1 - TAG_CREDIT) * verify(tagged)``. Without
    (or with empty tags): the response's last number, at ``UNTAGGED_CREDIT * verify(number)``;
    nothing without a number. ``verify`` is the task's own scorer in [0, 1].
    SmolLM2-135M-Instruct writes the tags in ~1 of 32 samples and the right last number in ~1 of
    4 on one-digit sums (measured): the untagged half keeps a GRPO group's rewards apart from the
    first iteration. Empty tags are no answer: when they earned TAG_CREDIT, GRPO taught the model
    to append "<answer></answer>" to every response (lr 2e-5, 15 iterations), which paid a wrong
    sum 0.25 and cut a right one from 0.5 to 0.25.
    """
    if tagged is not None and tagged.strip():
        return TAG_CREDIT + (1.0 - TAG_CREDIT) * verify(tagged)
    number = last_number(response)
    return UNTAGGED_CREDIT * verify(number) if number is not None else 0.0


class ReasoningGymTask:
    """A ``reasoning-gym`` dataset (e.g. ``gsm_symbolic``) as a task; needs ``pip install reasoning-gym``."""

    def __init__(
        self,
        dataset: str = "gsm_symbolic",
        size: int = 256,
        seed: int = 0,
        dataset_args: dict[str, Any] | None = None,
        reward: Literal["answer", "format-answer"] = "answer",
    ) -> None:
        try:
            import reasoning_gym
            from reasoning_gym.utils import extract_answer
        except ImportError as e:
            raise TaskError(
                f"task 'reasoning-gym' needs the reasoning-gym package ({e}); "
                "install it with `pip install reasoning-gym`"
            ) from None
        if reward not in ("answer", "format-answer"):
            raise TaskError(f"unknown reward {reward!r}; choose 'answer' or 'format-answer'")
        self.name = f"reasoning-gym:{dataset}"
        self.reward = reward
        self._extract = extract_answer
        try:
            self._ds = reasoning_gym.create_dataset(
                dataset, size=size, seed=seed, **(dataset_args or {})
            )
        except Exception as e:  # reasoning-gym raises plain errors for unknown names and args
            raise TaskError(
                f"reasoning-gym cannot build dataset {dataset!r} with {dataset_args or {}}: {e}"
            ) from e
        instruction = ANSWER_INSTRUCTION if reward == "answer" else SHORT_ANSWER_INSTRUCTION
        self._entries: list[dict[str, Any]] = [self._ds[i] for i in range(size)]
        # Other dataset settings make other prompts: their ids must differ too.
        key = dataset + "".join(f",{k}={v}" for k, v in sorted((dataset_args or {}).items()))
        self._prompts = [
            Prompt(
                id=f"{key}/{seed}/{i}",
                index=i,
                text=str(e["question"]) + instruction,
                answer=str(e["answer"]),
            )
            for i, e in enumerate(self._entries)
        ]

    def __len__(self) -> int:
        return len(self._prompts)

    def get(self, index: int) -> Prompt:
        return self._prompts[index]

    def sample(self, rng: random.Random, batch: int) -> list[Prompt]:
        return [self._prompts[rng.randrange(len(self._prompts))] for _ in range(batch)]

    def score(self, prompt: Prompt, response_text: str) -> float:
        entry = self._entries[_index_of(self, prompt)]
        tagged = self._extract(response_text, tag_name="answer")

        def verify(answer: str) -> float:
            return float(self._ds.score_answer(answer=answer, entry=entry))

        if self.reward == "format-answer":
            return format_answer_score(tagged, response_text, verify)
        return 0.0 if tagged is None else verify(tagged)


def make_task(name: str, size: int, seed: int, **params: Any) -> Task:
    """Build a task by name: "repeat" or "reasoning-gym" (``params`` go to its constructor)."""
    if name == "repeat":
        return RepeatTask(size=size, seed=seed, **params)
    if name == "reasoning-gym":
        return ReasoningGymTask(size=size, seed=seed, **params)
    raise TaskError(f"unknown task {name!r}; choose 'repeat' or 'reasoning-gym'")
