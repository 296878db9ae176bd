"""A rollout simulated step by step: k functions, continuous batching, optional cut-and-migrate.

Used by ``benchmarks/scaling.py`` and the tests to measure a policy with *true* lengths while it
decides with *predicted* ones. Model (all times in seconds from the rollout's start):

* Function f is requested at 0, ready after its cold start (0 if warm), loads this iteration's
  weights, prefills its groups' prompts (``prefill_tokens / prefill_tokens_per_s``), then decodes.
* Decode: at most ``max_batch`` sequences run, admitted FIFO (the assignment's order, longest
  predicted first); each step takes ``t0 + t1 * batch`` and gives every running sequence a token.
  (Only steps where something happens, a sequence's last or the first after an arrival, are
  events; the steps between are counted, and timed by adding one step time at a time as an
  event per step would, so skipping them changes no number: the planner simulates each cut
  candidate on many scenarios.)
* Cut-and-migrate (``cut = "per_function"`` or ``"global"``): whenever a sequence finishes, the
  planner of :mod:`~rlhfless.scaling.migrate` is asked with every working function's progress
  (a per-function cut: the candidates' progress and the others' loads, ``plan_cut_with_loads``).
  Predicted remaining (``remaining = "conditional"``, the default) is
  :func:`~rlhfless.scaling.predictor.expected_remaining`: ``E[L - produced | L > produced]`` over
  the sequence's group profile plus its median times the dataset's ``shape`` ratios, ``tail`` x
  produced once it has overrun them all; ``"naive"``: predicted - produced, at least 1;
  ``"siblings"``: online, as the rollout stage's cut controller estimates, from the group's
  samples finished so far and its running ones
  (:class:`~rlhfless.scaling.online.SiblingPredictor`, fed every finish as it happens; a group
  with a prior, ``priors[g] > 0``, starts from it, one without waits for its first finish).
  Every way never past ``max_new_tokens`` (the generation limit), when given
  (:mod:`~rlhfless.scaling.sim_remaining`). A cut function stops at
  once; each moved sequence keeps its produced tokens and joins its destination's queue after the
  transfer time of its move (ship KV or re-prefill; re-prefill is charged to the sequence's
  arrival, not to the destination's other sequences: a simplification). A cut function is
  released when its last shipment has left.
* A function is released at its own finish, or, with ``hold_to_end``, at the makespan (a
  serverful baseline holding every slot for the whole stage).

Busy = weight load + prefill + decoding; idle = held - cold start - busy (waiting, or held to the
end). Every sequence decodes exactly its true length across however many functions it visits:
:attr:`SimResult.tokens_per_sequence` lets a test check that nothing is lost or truncated.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

from rlhfless.scaling import sim_cut, sim_input, sim_remaining
from rlhfless.scaling.predictor import length_support
from rlhfless.scaling.sim_cut import CutRollout
from rlhfless.scaling.sim_engine import Rollout
from rlhfless.scaling.sim_input import (
    CutPolicy,
    CutSettings,
    RemainingEstimate,
    check_settings,
    flatten,
)
from rlhfless.scaling.sim_memo import SimMemo, result_key
from rlhfless.scaling.sim_remaining import Remaining, sibling_predictor
from rlhfless.scaling.sim_result import SimFunction as SimFunction
from rlhfless.scaling.sim_result import SimResult as SimResult
from rlhfless.scaling.throughput import ThroughputParams
from rlhfless.scaling.transfer import TransferParams


def simulate_rollout(
    lengths: Sequence[Sequence[float]],  # drawn lengths may be fractional: rounded up per sample
    prefill_tokens: Sequence[float],
    groups: Sequence[Sequence[int]],
    params: ThroughputParams,
    *,
    predicted: Sequence[Sequence[float]] | None = None,
    warm: int = 0,
    cut: CutPolicy = "none",
    threshold: float = 0.7,
    transfer: TransferParams | None = None,
    hold_to_end: bool = False,
    prewarm: bool = False,
    guard: bool = True,
    remaining: RemainingEstimate = "conditional",
    shape: Sequence[float] = (),
    tail: float = 1.0,
    max_new_tokens: float | None = None,
    planned_end: float | None = None,
    priors: Sequence[float | None] | None = None,
) -> SimResult:
    """Simulate decoding ``lengths[g]`` (true lengths of group g's samples) on functions holding
    ``groups[f]`` (group indices). ``predicted[g]`` (same shape as lengths; default: the true
    lengths, an oracle) orders admission and feeds the cut planner. ``warm``: the first that
    many functions skip the cold start. ``prewarm``: cold starts happen before the rollout (timed
    from history, overlapping the previous stage): billed, but not in the makespan. ``guard``:
    per-function cuts use the step-time model so as not to extend the rollout. ``remaining``,
    ``shape`` (:meth:`LengthPredictor.shape_ratios`) and ``tail``: how the planner is told a
    sequence's remaining length (module docstring); ``max_new_tokens``: the generation limit, which
    bounds it (:func:`~rlhfless.scaling.predictor.expected_remaining`). ``planned_end``: when the
    plan expected the rollout to end without a cut (seconds on this simulation's clock); the
    guard's horizon is at least what is left of it (:mod:`~rlhfless.scaling.migrate`).
    ``priors`` (``remaining = "siblings"`` only): each group's plan-time median where its prompt
    was seen, 0 or None where it is new; default: every group's predicted median.
    ``cut = "auto"`` is a planning setting,
    not a cut: run the plan's (``ScalingConfig.cut_in_force``).

    A rollout asked for again with the same inputs gets a copy of the first answer (see
    :mod:`~rlhfless.scaling.sim_memo`): the planner simulates its candidates again at each k
    grid and iteration."""
    inputs = (
        lengths, prefill_tokens, groups, params, predicted, warm, cut, threshold, transfer,
        hold_to_end, prewarm, guard, remaining, shape, tail, max_new_tokens, planned_end,
        None if priors is None else [0.0 if x is None else x for x in priors],
    )  # fmt: skip
    hooks = [length_support, *(getattr(m, name) for m, name in _HOOKS)]
    key = result_key(inputs, hooks)
    kept = _MEMO.get(key)
    if kept is not None:
        return kept
    result = _simulate(*inputs)
    _MEMO.put(key, result)
    return result


_MEMO = SimMemo()
# What a rollout calls through a module's namespace, and so what a caller (a test, a golden
# recorder) may replace there: part of the memo's key (with this module's length_support).
_HOOKS: tuple[tuple[ModuleType, str], ...] = (
    (sim_cut, "plan_cut_with_loads"), (sim_cut, "plan_global_cut"), (sim_cut, "cut_ruled_out"),
    (sim_cut, "cut_due"), (sim_cut, "finished_ratio"), (sim_input, "check_threshold"),
    (sim_input, "check_max_new_tokens"), (sim_remaining, "expected_remaining"),
)  # fmt: skip


def _simulate(
    lengths: Sequence[Sequence[float]],
    prefill_tokens: Sequence[float],
    groups: Sequence[Sequence[int]],
    params: ThroughputParams,
    predicted: Sequence[Sequence[float]] | None,
    warm: int,
    cut: CutPolicy,
    threshold: float,
    transfer: TransferParams | None,
    hold_to_end: bool,
    prewarm: bool,
    guard: bool,
    remaining: RemainingEstimate,
    shape: Sequence[float],
    tail: float,
    max_new_tokens: float | None,
    planned_end: float | None,
    priors: Sequence[float] | None,
) -> SimResult:
    tau, limit = check_settings(remaining, cut, threshold, max_new_tokens, planned_end)
    transfer = transfer or TransferParams(prefill_tokens_per_s=params.prefill_tokens_per_s)
    pred = predicted if predicted is not None else lengths
    seqs = flatten(lengths, prefill_tokens, groups, pred)
    conditional = remaining == "conditional"
    estimate = Remaining(
        conditional, seqs.predicted, seqs.group, seqs.of_group,
        [length_support(p, shape) for p in pred] if conditional else [], tail, limit,
        sibling_predictor(seqs.of_group, pred, priors, shape, limit)
        if remaining == "siblings" else None,
    )  # fmt: skip
    rollout = (
        Rollout(params, seqs, estimate)
        if cut == "none"
        else CutRollout(params, seqs, estimate, CutSettings(cut, tau, transfer, guard, planned_end))
    )
    rollout.start(groups, prefill_tokens, warm, prewarm)
    rollout.run()
    return rollout.result(hold_to_end)
