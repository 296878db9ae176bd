"""A candidate's *expected* T and C over the margin's error scenarios, with and without a cut.

:func:`expected_point` evaluates an assignment on each of the
:class:`~rlhfless.scaling.margin.Margin`'s scenarios (:func:`scenario_points`) and averages;
:func:`expected_cut_point` simulates the rollout with a cut setting on the same scenarios and
adds what the cut changes; :func:`cut_points` picks the candidates worth that. Split from
:mod:`~rlhfless.scaling.scaler` (which re-exports the public names), whose ``choose_k`` calls
them.

Cost. ``choose_k`` evaluates every (method, k) on every scenario, then simulates a few of them
with each cut setting, and a cut is measured against the same assignment *without* a cut on
the same scenarios: those no-cut evaluations are the ones :func:`expected_point` already made,
so ``choose_k`` computes them once (:func:`scenario_points`) and hands them to both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import msgspec

from rlhfless.scaling.assign import Assignment, GroupWork
from rlhfless.scaling.curve import CurvePoint, Pricing, within_bound
from rlhfless.scaling.errors import BadScalingInput
from rlhfless.scaling.margin import Margin, admission_order, scenario_loads
from rlhfless.scaling.simulate import simulate_rollout
from rlhfless.scaling.throughput import ThroughputParams
from rlhfless.scaling.transfer import TransferParams

# Candidates (the cheapest within the bound without a cut) also evaluated with each cut setting.
CUT_CANDIDATES = 2
# Of the margin's scenarios, the first this many measure what a cut changes (paired with the
# same scenarios without a cut, so the difference is steady on fewer draws than E[T] needs).
CUT_SCENARIOS = 16


def scenario_points(
    assignment: Assignment,
    works: Sequence[GroupWork],
    margin: Margin,
    params: ThroughputParams,
    pricing: Pricing,
    scenarios: int | None = None,
) -> list[CurvePoint]:
    """``assignment`` evaluated (:func:`~rlhfless.scaling.curve.evaluate`) on each of the first
    ``scenarios`` (default: all) of ``margin``'s scenarios in turn, its functions warmed by their
    *predicted* loads."""
    order = admission_order(assignment, works)  # the same for every scenario: computed once
    out = []
    for lengths in margin.scenarios[: scenarios or len(margin.scenarios)]:
        loads = scenario_loads(assignment, works, lengths, params, order)
        drawn = msgspec.structs.replace(assignment, loads=loads, makespan=max(loads, default=0.0))
        out.append(pricing.evaluate(drawn, params, rank=assignment.loads))
    return out


def _check_plain(plain: Sequence[CurvePoint], assignment: Assignment, want: int) -> None:
    # A cheap guard against handing over another candidate's evaluations.
    if len(plain) < want or any(
        p.k != assignment.k or p.method != assignment.method for p in plain
    ):
        raise BadScalingInput(
            "expected point",
            f"plain evaluations of {assignment.method} k={assignment.k} on {want} scenarios "
            f"needed, got {len(plain)} of {sorted({(p.method, p.k) for p in plain})}",
        )


def expected_point(
    point: CurvePoint,
    assignment: Assignment,
    works: Sequence[GroupWork],
    margin: Margin,
    params: ThroughputParams,
    pricing: Pricing,
    plain: Sequence[CurvePoint] | None = None,
) -> CurvePoint:
    """``point`` with its expected T and C over ``margin``'s scenarios (and its score on them).
    ``plain``: :func:`scenario_points` of these arguments, when the caller already has them."""
    if not margin.scenarios:
        return point
    if plain is None:
        plain = scenario_points(assignment, works, margin, params, pricing)
    _check_plain(plain, assignment, len(margin.scenarios))
    seconds = usd = warm_seconds = 0.0
    for p in plain:
        seconds += p.seconds
        usd += p.usd
        warm_seconds += p.ideal_seconds
    n = len(margin.scenarios)
    return msgspec.structs.replace(
        point,
        expected_seconds=seconds / n,
        expected_usd=usd / n,
        warm_seconds=warm_seconds / n,
        score=usd / n + pricing.lam * seconds / n,
    )


def expected_cut_point(
    point: CurvePoint,
    assignment: Assignment,
    works: Sequence[GroupWork],
    margin: Margin,
    cut: str,
    threshold: float,
    params: ThroughputParams,
    transfer: TransferParams,
    pricing: Pricing,
    scenarios: int | None = None,
    plain: Sequence[CurvePoint] | None = None,
) -> CurvePoint:
    """``point`` (no cut, its expected T and C from :func:`expected_point`) re-evaluated with
    the cut setting ``(cut, threshold)``.

    The rollout is simulated on the first ``scenarios`` (default: all) of the margin's scenarios
    (:func:`~rlhfless.scaling.simulate.simulate_rollout`, admitted on the *predicted* lengths
    and cut on the online estimates the stage's cut controller makes as samples finish:
    ``remaining = "siblings"``, seen prompts starting from their prediction), so a straggler's move, its transfer, the receiver's
    longer steps and the early release are all in it. What the cut changes, paired scenario by
    scenario against the same assignment without a cut, is added to ``point``'s expectation:
    with fewer scenarios than the margin has, the difference is still measured on equal draws.
    The ``warm`` heaviest functions (by predicted load) start warm, as in
    :func:`~rlhfless.scaling.curve.function_lives`. ``plain``: :func:`scenario_points` of the
    same assignment and arguments (at least its first ``scenarios``), when the caller has them.
    """
    if not margin.scenarios:
        return point
    drawn = margin.scenarios[: scenarios or len(margin.scenarios)]
    if plain is None:
        plain = scenario_points(assignment, works, margin, params, pricing, len(drawn))
    _check_plain(plain, assignment, len(drawn))
    order = sorted(range(assignment.functions), key=lambda f: -assignment.loads[f])
    groups = [assignment.groups[f] for f in order]
    predicted = [list(w.lengths) for w in works]
    prefill = [w.prefill_tokens for w in works]
    d_seconds = d_usd = 0.0
    for lengths, base in zip(drawn, plain, strict=False):
        r = simulate_rollout(
            lengths, prefill, groups, params, predicted=predicted, warm=pricing.warm,
            cut=cut, threshold=threshold, transfer=transfer, shape=margin.shape,  # type: ignore[arg-type]
            max_new_tokens=margin.max_new_tokens,
            remaining="siblings", priors=margin.priors or None,
        )  # fmt: skip
        d_seconds += r.makespan - base.seconds
        d_usd += (
            r.usd(
                pricing.cost_model,
                pricing.device_kind,
                slots_per_function=pricing.slots_per_function,
            )
            - base.usd
        )
    seconds = point.planned_seconds + d_seconds / len(drawn)
    usd = point.planned_usd + d_usd / len(drawn)
    return msgspec.structs.replace(
        point,
        expected_seconds=seconds,
        expected_usd=usd,
        score=usd + pricing.lam * seconds,
        # What the cut changes, on the all-warm time too (the bound's reference).
        warm_seconds=point.ideal_seconds + d_seconds / len(drawn),
        cut=cut,
        cut_threshold=threshold,
    )


def cut_points(
    curve: Sequence[CurvePoint],
    assignments: Mapping[tuple[str, int], Assignment],
    works: Sequence[GroupWork],
    margin: Margin,
    params: ThroughputParams,
    pricing: Pricing,
    within_fraction: float | None,
    transfer: TransferParams | None,
    plain: Mapping[tuple[str, int], Sequence[CurvePoint]] | None = None,
    *,
    fastest: float | None = None,
    keep: Callable[[CurvePoint], bool] | None = None,
) -> list[CurvePoint]:
    """The margin's cut settings on the candidates worth trying them on (``plain``: each
    candidate's :func:`scenario_points`, by ``(method, k)`` as ``assignments``; ``fastest``:
    the bound's reference, as :func:`~rlhfless.scaling.curve.within_bound` takes it; ``keep``:
    only candidates it accepts, e.g. those the worst-case guard lets through uncut).

    A cut only adds time (the no-extension guard aims at none, but predicted remaining lengths
    are only expected ones), so under "within x of the fastest" only candidates already within
    the bound without a cut can stay within it with one; under ``lam`` only those whose score
    a cut's whole C could still beat (score - C < the best score). Of those, the
    ``CUT_CANDIDATES`` cheapest are tried, each τ from the highest down. That keeps the
    simulations (one per scenario per cut setting) to the few k near the choice.
    """
    transfer = transfer or TransferParams(prefill_tokens_per_s=params.prefill_tokens_per_s)
    if within_fraction is None:
        best = min(p.score for p in curve)
        pick = [p for p in curve if p.score - p.planned_usd < best]
        bound = math.inf
    else:
        pick, bound = within_bound(
            curve, within_fraction, params.cold_start_seconds, pricing.warm, fastest
        )
    if keep is not None:
        pick = [p for p in pick if keep(p)]
    cheap: Callable[[CurvePoint], float] = (
        (lambda p: p.score) if within_fraction is None else (lambda p: p.planned_usd)
    )
    pick = sorted(pick, key=lambda p: (cheap(p), p.planned_seconds))[:CUT_CANDIDATES]
    # A higher τ cuts later and moves fewer sequences, so it costs less time: try τ from the
    # highest down and stop at the first that leaves the bound (a lower one would too).
    cuts = sorted(margin.cuts, key=lambda c: (c[0], -c[1]))
    out = []
    for p in pick:
        a = assignments[(p.method, p.k)]
        if a.functions < 2:  # nothing to move to
            continue
        base = plain.get((p.method, p.k)) if plain is not None else None
        for cut, tau in cuts:
            q = expected_cut_point(
                p, a, works, margin, cut, tau, params, transfer, pricing, CUT_SCENARIOS, base
            )
            out.append(q)
            if within_fraction is not None and q.planned_seconds > bound:
                break
    return out
