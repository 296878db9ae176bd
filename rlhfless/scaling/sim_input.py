"""What :func:`~rlhfless.scaling.simulate.simulate_rollout` is given, checked: its settings
(:func:`check_settings`, :class:`CutSettings`) and the groups' samples as one row of sequences
(:func:`flatten`). Every error names simulate_rollout, in the order it has always raised them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rlhfless.scaling.errors import BadScalingInput
from rlhfless.scaling.migrate import check_threshold
from rlhfless.scaling.predictor import check_max_new_tokens
from rlhfless.scaling.transfer import TransferParams

CutPolicy = Literal["none", "per_function", "global"]
RemainingEstimate = Literal["conditional", "naive", "siblings"]


def check_settings(
    remaining: str,
    cut: str,
    threshold: float,
    max_new_tokens: float | None,
    planned_end: float | None,
) -> tuple[float, float | None]:
    """``(τ, the generation limit)`` from simulate_rollout's settings, checked in its order.
    Without a cut τ is 1 and the threshold is not read (not even checked)."""
    if remaining not in ("conditional", "naive", "siblings"):
        raise BadScalingInput(
            "simulate_rollout",
            f"remaining must be conditional/naive/siblings, got {remaining!r}",
        )
    if cut not in ("none", "per_function", "global"):
        raise BadScalingInput(
            "simulate_rollout", f"cut must be none/per_function/global, got {cut!r}"
        )
    tau = check_threshold(threshold) if cut != "none" else 1.0
    limit = check_max_new_tokens(max_new_tokens)
    if planned_end is not None and not math.isfinite(planned_end):
        raise BadScalingInput("simulate_rollout", f"planned_end must be finite, got {planned_end}")
    return tau, limit


@dataclass(frozen=True, slots=True)
class Sequences:
    """The rollout's samples as one row of sequences (ids in group order, then sample order)."""

    length: list[int]  # decode steps it needs: its drawn length rounded up
    predicted: list[float]  # orders admission (longest first) and feeds the cut planner
    prompt: list[int]  # its group's prompt tokens
    group: list[int]
    of_group: list[list[int]]  # each group's sequence ids


def flatten(
    lengths: Sequence[Sequence[float]],
    prefill_tokens: Sequence[float],
    groups: Sequence[Sequence[int]],
    pred: Sequence[Sequence[float]],
) -> Sequences:
    """The groups' samples as :class:`Sequences`, every input checked (the errors name
    simulate_rollout, in the order it has always raised them)."""
    if len(prefill_tokens) != len(lengths):
        raise BadScalingInput("simulate_rollout", "prefill_tokens and lengths differ in length")
    if sorted(g for f in groups for g in f) != list(range(len(lengths))):
        raise BadScalingInput("simulate_rollout", "groups must hold every group index exactly once")
    seq_len: list[int] = []
    seq_pred: list[float] = []
    seq_prompt: list[int] = []
    seq_group: list[int] = []
    seq_of_group: list[list[int]] = []
    for g, ls in enumerate(lengths):
        if len(pred[g]) != len(ls):
            raise BadScalingInput("simulate_rollout", f"predicted[{g}] has the wrong length")
        ids = []
        prompt = prefill_tokens[g]
        if not (math.isfinite(prompt) and prompt >= 0):
            raise BadScalingInput(
                "simulate_rollout", f"prefill_tokens[{g}] must be finite and >= 0, got {prompt}"
            )
        for x, p in zip(ls, pred[g], strict=True):
            if not x >= 0:
                raise BadScalingInput("simulate_rollout", f"negative length in group {g}")
            # Checked here, once: the cut planner sees only the candidates' sequences in full
            # (plan_cut_with_loads), so a bad prediction elsewhere would pass unnoticed there.
            if not (math.isfinite(p) and p >= 0):
                raise BadScalingInput(
                    "simulate_rollout", f"predicted[{g}] must be finite and >= 0, got {p}"
                )
            ids.append(len(seq_len))
            seq_len.append(math.ceil(x))
            seq_pred.append(float(p))
            seq_prompt.append(int(prefill_tokens[g]))
            seq_group.append(g)
        seq_of_group.append(ids)
    return Sequences(seq_len, seq_pred, seq_prompt, seq_group, seq_of_group)


@dataclass(frozen=True, slots=True)
class CutSettings:
    """When to ask for a cut plan and what to tell the planner (simulate_rollout's settings,
    checked)."""

    cut: CutPolicy
    tau: float  # 1.0 without a cut
    transfer: TransferParams
    guard: bool
    planned_end: float | None
