"""What a streamed GRPO step's trainer is asked to do with each scored chunk of samples.

Scored samples come in chunks (``Chunk``): whole groups, and, when groups may be trained open
(``pipeline.open_groups`` > 0), single samples of groups that still decode. The plan turns
them into trainer calls (``TrainerActor.accumulate / accumulate_open / close_group``):

- a group that is complete when its samples first reach the trainer trains as a whole, with
  its advantages (``accumulate``), exactly as without open groups;
- a group still decoding is opened while fewer than ``open_max`` are open: its samples so far
  train now (``accumulate_open``), and so does each one that ends later;
- its last samples close it (``close_group``), their advantages now known;
- the samples of a group that found no room wait, and the group opens when one closes.

With ``per_micro_batch``, samples go to the trainer one micro-batch per call (the trainer's own
micro-batches, ``group_micro_batches`` and ``by_reward``; whole groups' gradient is then the
same to the bit, an open group's the same up to float rounding, as it is anyway): the stage
sets the trainer's threads between calls, and a group whose training starts on the one core a
finished rollout function freed goes on with every core the moment the rollout ends, instead of
finishing on one. Once the rollout has ended the stage turns it off: the threads no longer
change, and a call per micro-batch would only add calls.

Pure bookkeeping (no processes): the calls are replayed in order after a trainer's death.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import torch

from rlhfless.stages import algorithms as alg
from rlhfless.stages.config import TrainConfig
from rlhfless.stages.iteration import grpo_rows
from rlhfless.stages.micro_batch import group_micro_batches
from rlhfless.stages.open_groups import by_reward


class Chunk(msgspec.Struct, kw_only=True):
    """Scored samples: rows are their keys in the batch (group-major, ``index * G + s``)."""

    rows: list[int]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    logprobs: list[Any]
    rewards: list[float]
    ref: list[Any] | None = None
    values: list[Any] | None = None


def merge_chunks(chunks: list[Chunk]) -> Chunk:
    """Several scored chunks as one (their rows are disjoint), in order. An empty chunk (a
    scoring call that found every sample scored) carries no ref or values: it is left out."""
    chunks = [c for c in chunks if c.rows] or chunks[:1]
    if len(chunks) == 1:
        return chunks[0]

    def joined(name: str) -> list[Any]:
        return [x for c in chunks for x in getattr(c, name)]

    def optional(name: str) -> list[Any] | None:
        return None if any(getattr(c, name) is None for c in chunks) else joined(name)

    return Chunk(
        rows=joined("rows"), prompt_ids=joined("prompt_ids"), response_ids=joined("response_ids"),
        logprobs=joined("logprobs"), rewards=joined("rewards"), ref=optional("ref"),
        values=optional("values"),
    )  # fmt: skip


class _Scored(NamedTuple):
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: Any
    reward: float
    ref: Any


class TrainCall(msgspec.Struct, frozen=True):
    """One trainer call: the method's name and its keyword arguments."""

    method: str
    args: dict[str, Any]


class TrainPlan:
    def __init__(
        self, cfg: TrainConfig, temperature: float, open_max: int, per_micro_batch: bool = False
    ) -> None:
        self.cfg, self.g, self.temperature, self.open_max = (
            cfg, cfg.group_size, temperature, open_max,
        )  # fmt: skip
        self.per_micro_batch = per_micro_batch
        self.samples: dict[int, _Scored] = {}
        self.sent: set[int] = set()  # rows the trainer has taken
        self.open: list[int] = []  # groups trained sample by sample, in the order opened
        self.taken: dict[int, list[int]] = {}  # an open group's keys, in the order sent

    def take(self, chunk: Chunk) -> list[TrainCall]:
        """The trainer calls for one scored chunk, in order."""
        # float32, as the advantages are computed: an open group's sums are centred on them
        rewards = torch.tensor(chunk.rewards, dtype=torch.float32).tolist()
        for j, k in enumerate(chunk.rows):
            self.samples[k] = _Scored(
                chunk.prompt_ids[j], chunk.response_ids[j], chunk.logprobs[j], rewards[j],
                chunk.ref[j] if chunk.ref is not None else None,
            )  # fmt: skip
        touched = sorted({k // self.g for k in chunk.rows})
        whole = [i for i in touched if self._complete(i) and i not in self.open]
        calls = self._whole(whole) if whole else []
        for i in touched:
            if i in self.open and self._complete(i):
                self.open.remove(i)
                calls.append(self._close(i))
            elif i in self.open:
                calls += self._open_calls(i)
        calls += self._open_waiting()
        return calls

    def _open_waiting(self) -> list[TrainCall]:
        """Open the groups whose samples wait, while there is room."""
        calls = []
        for i in sorted({k // self.g for k in self.samples.keys() - self.sent}):
            if len(self.open) >= self.open_max:
                break
            if i not in self.open and not self._complete(i):
                self.open.append(i)
                calls += self._open_calls(i)
        return calls

    def _complete(self, group: int) -> bool:
        return all(k in self.samples for k in self._keys(group))

    def _keys(self, group: int) -> range:
        return range(group * self.g, (group + 1) * self.g)

    def _unsent(self, group: int) -> list[int]:
        keys = [k for k in self._keys(group) if k in self.samples and k not in self.sent]
        self.sent.update(keys)
        return keys

    def _lengths(self, keys: list[int]) -> list[int]:
        """Prompt and response tokens of each sample, as the trainer cuts micro-batches by."""
        return [len(self.samples[k].prompt_ids) + len(self.samples[k].response_ids) for k in keys]

    def _rows(self, keys: list[int]) -> dict[str, Any]:
        return {
            "prompt_ids": [self.samples[k].prompt_ids for k in keys],
            "response_ids": [self.samples[k].response_ids for k in keys],
            "old_logprobs": [self.samples[k].logprobs for k in keys],
            "temperature": self.temperature,
        }

    def _whole(self, groups: list[int]) -> list[TrainCall]:
        keys = [k for i in groups for k in self._unsent(i)]
        rewards = torch.tensor([self.samples[k].reward for k in keys], dtype=torch.float32)
        responses = [len(self.samples[k].response_ids) for k in keys]
        advantages = grpo_rows(rewards, responses, self.cfg)
        ref = [self.samples[k].ref for k in keys] if self.cfg.uses_reference else None
        parts = [list(range(len(keys)))]
        if self.per_micro_batch:  # the keys of whole groups: group-aligned, as the trainer's
            parts = group_micro_batches(self._lengths(keys), self.g, self.cfg.micro_batch_tokens)
        calls = []
        for idx in parts:
            args = self._rows([keys[j] for j in idx])
            args["advantages"] = [advantages[j] for j in idx]
            args["ref_logprobs"] = [ref[j] for j in idx] if ref is not None else None
            calls.append(TrainCall("accumulate", args))
        return calls

    def _open_calls(self, group: int) -> list[TrainCall]:
        """The group's samples not yet sent, into its sums: one call, or one per micro-batch
        (the trainer's own: ``by_reward``), taken in the calls' order."""
        keys = self._unsent(group)
        parts = [keys]
        if self.per_micro_batch and len(keys) > 1:
            rewards = [self.samples[k].reward for k in keys]
            parts = [
                [keys[j] for j in idx]
                for idx in by_reward(rewards, self._lengths(keys), self.cfg.micro_batch_tokens)
            ]
        calls = []
        for part in parts:
            self.taken.setdefault(group, []).extend(part)
            args = {"group": group, **self._rows(part)}
            args["rewards"] = [self.samples[k].reward for k in part]
            calls.append(TrainCall("accumulate_open", args))
        return calls

    def _close(self, group: int) -> TrainCall:
        """The group's advantages and scale exactly as a whole group's (``_whole``)."""
        rewards = torch.tensor([[self.samples[k].reward for k in self._keys(group)]])
        adv = alg.grpo_advantages(rewards, self.g, scale_by_std=self.cfg.scale_adv_by_std)[0]
        _, scale = alg.grpo_baseline(rewards, scale_by_std=self.cfg.scale_adv_by_std)
        keys = self._unsent(group)
        order = self.taken.pop(group) + keys
        return TrainCall("close_group", {
            "group": group, "scale": float(scale),
            "advantages": [float(adv[k - group * self.g]) for k in order], **self._rows(keys),
        })  # fmt: skip
