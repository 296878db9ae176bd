"""A streamed GRPO step trains the samples of a group that is still decoding: two gradient sums.

A sample's advantage is affine in its reward, ``A_i = (R_i - mean) * scale`` with the group's
mean and scale (``algorithms.grpo_baseline``), and while each of its tokens' ratio to the
sampling policy lies inside the clip range its loss is ``A_i`` times its loss at advantage 1,
whose gradient is ``u_i``. Centred on the reward ``c`` of the group's first sample here,
``A_i = (R_i - c) * scale + A_c``, so the group's gradient is

    scale * sum_i (R_i - c) u_i  +  A_c * sum_i u_i

and both sums can be added up sample by sample as the group's samples end, before its mean and
scale are known: a forward and backward per sample in the rollout's tail, instead of the whole
group's after its longest sample. Samples of one reward share a backward (one gradient serves
both sums). When the group's last samples end, the stage closes it with the group's scale and
every sample's advantage as the whole-group path computes them: its last samples train as any
complete group's, and the sums are scaled into the step's gradient. (Centred, a group whose
rewards are all equal adds nothing to the first sum, and its gradient is ``A_c`` times the
second, whatever the rounding: with ``scale`` at 1/eps, uncentred sums would have turned the
rounding of ``mean`` into a gradient.)

A sample with a token outside the clip range is not linear in its advantage (the clip cuts its
gradient by the advantage's sign): it waits for its group's close and trains then. A KL term
would need a third sum of its own; open groups are GRPO without a reference only
(``StreamedIteration`` opens none otherwise).

Memory: two gradient-sized sums per open group (``pipeline.open_groups`` bounds them).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from rlhfless.stages.micro_batch import micro_batches


class OpenGroup:
    """One group's two gradient sums, and its samples so far (trained or waiting)."""

    def __init__(self, centre: float) -> None:
        self.centre = centre  # the reward of the group's first sample here
        self.sum_c: list[torch.Tensor | None] = []  # sum of (R_i - centre) u_i, per parameter
        self.sum_1: list[torch.Tensor | None] = []  # sum of u_i
        self.rows: list[dict[str, Any]] = []  # prompt_ids, response_ids, old_logprobs
        self.loss_at_1: list[float | None] = []  # each row's loss at advantage 1; None: waits

    def add(self, grads: list[torch.Tensor | None], reward: float) -> None:
        """Add the gradient ``grads`` of samples whose reward is ``reward`` to both sums."""
        if not self.sum_1:
            self.sum_1 = [None] * len(grads)
            self.sum_c = [None] * len(grads)
        off = reward - self.centre
        for i, g in enumerate(grads):
            if g is None:
                continue
            s1 = self.sum_1[i]
            self.sum_1[i] = g.clone() if s1 is None else s1.add_(g)
            if off:
                sc = self.sum_c[i]
                self.sum_c[i] = g * off if sc is None else sc.add_(g, alpha=off)

    def gradient(self, scale: float, a_centre: float) -> Iterator[tuple[int, torch.Tensor]]:
        """(parameter index, its gradient) of the group's trained samples, given the group's
        scale and the advantage of a sample whose reward is the centre."""
        for i, (s1, sc) in enumerate(zip(self.sum_1, self.sum_c, strict=True)):
            if s1 is None:
                continue
            g = s1.mul_(a_centre)
            yield i, g if sc is None else g.add_(sc, alpha=scale)

    def waiting(self) -> list[int]:
        return [j for j, loss in enumerate(self.loss_at_1) if loss is None]

    def trained_loss(self, advantages: list[float]) -> float:
        """What the trained samples add to the step's loss sum, their advantages now known."""
        taken = zip(advantages[: len(self.loss_at_1)], self.loss_at_1, strict=True)
        return sum(a * loss for a, loss in taken if loss is not None)


@contextmanager
def grads_apart(params: list[torch.nn.Parameter]) -> Iterator[list[torch.Tensor | None]]:
    """Run a backward whose gradient must not join the step's: the step's gradients are set
    aside and restored after; the list yielded holds the new gradient once the block ends."""
    kept = [p.grad for p in params]
    for p in params:
        p.grad = None
    out: list[torch.Tensor | None] = []
    try:
        yield out
        out.extend(p.grad for p in params)
    finally:
        for p, g in zip(params, kept, strict=True):
            p.grad = g


def add_into(params: list[torch.nn.Parameter], grads: Iterator[tuple[int, torch.Tensor]]) -> None:
    """Add a closed group's gradient to the step's."""
    for i, g in grads:
        p = params[i]
        p.grad = g if p.grad is None else p.grad.add_(g)


def by_reward(rewards: list[float], lengths: list[int], token_budget: int) -> list[list[int]]:
    """Rows in micro-batches of one reward each (one backward then serves both sums), each
    cut by ``token_budget`` padded tokens (0 = no limit)."""
    out: list[list[int]] = []
    for value in sorted(set(rewards)):
        rows = [i for i, r in enumerate(rewards) if r == value]
        out += [[rows[j] for j in part] for part in micro_batches(
            [lengths[i] for i in rows], 1, token_budget
        )]  # fmt: skip
    return out
