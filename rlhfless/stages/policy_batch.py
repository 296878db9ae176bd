"""A policy step's inputs and running sums, shared by the trainer's staged and streamed steps
(``stages/trainer.py``): the batch padded once, the loss statistics added up over
micro-batches, and an open streamed step's state."""

from __future__ import annotations

import torch

from rlhfless.stages.common import pad_rows
from rlhfless.stages.micro_batch import units
from rlhfless.stages.open_groups import OpenGroup


class PolicyBatch:
    """A policy step's inputs, padded once to the batch's longest response."""

    def __init__(
        self,
        prompt_ids: list[list[int]],
        response_ids: list[list[int]],
        old_logprobs: list[torch.Tensor],
        advantages: list[torch.Tensor],
        ref_logprobs: list[torch.Tensor] | None,
        temperature: float,
        device: torch.device,
    ) -> None:
        self.prompt_ids, self.response_ids = prompt_ids, response_ids
        self.device = device
        self.raw = (old_logprobs, advantages, ref_logprobs)
        self.temperature = temperature
        self.lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
        width = max(1, max(len(r) for r in response_ids))
        self.old = pad_rows(old_logprobs, width, device)
        self.adv = pad_rows(advantages, width, device)
        self.ref = pad_rows(ref_logprobs, width, device) if ref_logprobs is not None else None

    def units(self, agg: str) -> float:
        return units(self.response_ids, agg)

    @staticmethod
    def join(chunks: list[PolicyBatch]) -> PolicyBatch:
        refs = [c.raw[2] for c in chunks]
        return PolicyBatch(
            [p for c in chunks for p in c.prompt_ids],
            [r for c in chunks for r in c.response_ids],
            [t for c in chunks for t in c.raw[0]],
            [t for c in chunks for t in c.raw[1]],
            None if any(r is None for r in refs) else [t for r in refs for t in r or []],
            chunks[0].temperature,
            chunks[0].device,
        )


class LossSums:
    """Loss statistics added up over micro-batches (weighted as their gradients are)."""

    def __init__(self) -> None:
        self.loss = self.kl = self.clip_frac = self.grad_norm = 0.0

    def add(self, loss: float, kl: float, clip: float, weight: float) -> None:
        self.loss += loss * weight
        self.kl += kl * weight
        self.clip_frac += clip * weight

    def scale(self, factor: float) -> None:
        self.loss, self.kl, self.clip_frac = (
            self.loss * factor, self.kl * factor, self.clip_frac * factor,
        )  # fmt: skip

    def stats(self, epochs: int) -> dict[str, float]:
        return {
            "loss": self.loss / epochs,
            "kl": self.kl / epochs,
            "clip_frac": self.clip_frac / epochs,
            "grad_norm": self.grad_norm / epochs,
        }


class OpenStep:
    """An open streamed step: chunks taken so far and their summed statistics."""

    def __init__(self, replayed: int, t0: float) -> None:
        self.replayed, self.t0 = replayed, t0
        self.units = 0.0
        self.sums = LossSums()
        self.chunks: list[PolicyBatch] = []
        self.open: dict[int, OpenGroup] = {}  # groups still decoding, trained sample by sample
