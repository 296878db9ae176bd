"""Choosing how many rollout functions to run: predicted time T(k) and dollars C(k) for each k.

For a candidate k the groups are assigned (:mod:`~rlhfless.scaling.assign`), which may use fewer
than k functions. Function f then lives: cold start (0 when it is one of the ``warm`` functions
already running; the heaviest functions get those, they start first), weight load (every
iteration has new weights), then its own predicted load; it is released at its own finish.

* ``T(k)`` = the latest function's finish (cold start + weight load + load).
* ``C(k)`` = the sum of each function's bill under the cost model's rules
  (``Lifetime.planned(cold, weight load + load)``: granularity, minimum charge, cold start billed
  or not), so releasing a function early saves what the rules let it save.
* ``serverful_usd`` = the same functions all held until ``T(k)`` (no early release), for comparison.

The choice is the k minimising ``C(k) + lam * T(k)`` (``lam`` in $/s, >= 0), or, with
``within_fraction = x``, the cheapest k whose ``T(k) <= (1 + x) * min T``. Ties go to fewer
functions. :meth:`ScalingDecision.render` prints the curve.

With a :class:`~rlhfless.scaling.margin.Margin` (what :class:`~rlhfless.scaling.policy.Scaler`
passes by default), each candidate also gets its *expected* ``E[T(k)]`` and ``E[C(k)]`` over
scenarios of true lengths drawn from the predictor's measured error, and the choice uses those
instead of the point predictions; every k is tried with the margin's alternative assignments
too (e.g. LPT beside stratified), ties going to the configured one; and "the fastest" is what
the slots could do warm (:func:`~rlhfless.scaling.curve.within_bound`): with nothing warm the
cold start every candidate pays is left out, so x is a fraction of the rollout's own time; with
``warm`` functions, a smaller k is still held to what the larger ones could do warm (no drift
down from one iteration to the next), and a larger k pays its cold starts.

:class:`CurvePoint` and :func:`evaluate` live in :mod:`~rlhfless.scaling.curve`, the expected
points (and the cut settings' points) in :mod:`~rlhfless.scaling.expected`; both are
re-exported here.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from rlhfless.cost_models import BillingRules, CostModel
from rlhfless.scaling.assign import Assignment, AssignMethod, GroupWork, assign
from rlhfless.scaling.curve import CurvePoint as CurvePoint
from rlhfless.scaling.curve import Pricing as Pricing
from rlhfless.scaling.curve import evaluate as evaluate
from rlhfless.scaling.curve import function_lives as function_lives
from rlhfless.scaling.curve import within_bound
from rlhfless.scaling.errors import BadScalingSetting
from rlhfless.scaling.expected import CUT_CANDIDATES as CUT_CANDIDATES
from rlhfless.scaling.expected import CUT_SCENARIOS as CUT_SCENARIOS
from rlhfless.scaling.expected import cut_points, expected_point, scenario_points
from rlhfless.scaling.expected import expected_cut_point as expected_cut_point
from rlhfless.scaling.margin import Margin
from rlhfless.scaling.throughput import ThroughputParams
from rlhfless.scaling.transfer import TransferParams
from rlhfless.scaling.worst_case import (
    WorstCase,
    baseline_makespans,
    worst_cut_ratio,
    worst_ratio,
)


class ScalingDecision(msgspec.Struct, kw_only=True):
    k: int  # the chosen k (functions asked for)
    functions: int  # functions to start (<= k)
    criterion: str  # "lam" or "within"
    lam: float
    within_fraction: float | None
    cost_model: str
    device_kind: str
    curve: list[CurvePoint]  # every (method, k) evaluated
    assignment: Assignment  # for the chosen k
    method: str = ""  # the chosen point's assignment method
    margin: str = "off"  # where the margin's scenarios came from (seen/new/shape/none), or off
    scenarios: int = 0  # error scenarios behind the expected T and C (0: point predictions)
    cut: str = "none"  # the chosen point's cut setting (see CurvePoint.cut)
    cut_threshold: float = 1.0
    # Its makespan over round robin's at the worst-case guard's quantile and scales (None: no
    # guard, or round robin itself was chosen first).
    worst_case_ratio: float | None = None

    @property
    def chosen(self) -> CurvePoint:
        return next(
            p
            for p in self.curve
            if p.k == self.k
            and (not self.method or p.method == self.method)
            and p.cut == self.cut
            and (p.cut == "none" or p.cut_threshold == self.cut_threshold)
        )

    @property
    def uncut(self) -> CurvePoint:
        """The chosen (k, method) without a cut: what the plan expected the rollout to take had
        it not cut (the chosen point itself when no cut is planned)."""
        return next(
            p
            for p in self.curve
            if p.k == self.k and (not self.method or p.method == self.method) and p.cut == "none"
        )

    def render(self, width: int = 100) -> str:
        """The curve as a table (the chosen row marked), for logs and ``--show-curve``."""
        from rich.console import Console
        from rich.table import Table

        how = (
            f"min C + {self.lam:g} $/s x T"
            if self.criterion == "lam"
            else f"cheapest within {self.within_fraction:.0%} of the fastest"
        )
        margin = (
            f", expected over {self.scenarios} error scenarios ({self.margin})"
            if self.scenarios
            else ""
        )
        cut = f", cut {self.cut} at {self.cut_threshold:g}" if self.cut != "none" else ""
        if self.worst_case_ratio is not None:
            cut += f", worst case {self.worst_case_ratio:.3f}x round robin"
        table = Table(
            title=f"rollout functions: k={self.k} {self.method}{cut} ({self.functions} used), "
            f"{how}{margin}, {self.cost_model} {self.device_kind}"
        )
        cols = ["k", "method", "cut", "used", "T (s)", "C ($)"]
        if self.scenarios:
            cols += ["E[T] (s)", "E[C] ($)"]
        for col in (*cols, "held to T ($)", "fn-s", "score"):
            table.add_column(col, justify="right")
        chosen = self.chosen
        for p in self.curve:
            mark = "*" if p is chosen else ""
            how = "-" if p.cut == "none" else f"{p.cut} {p.cut_threshold:g}"
            row = [f"{mark}{p.k}", p.method, how, str(p.functions)]
            row += [f"{p.seconds:.2f}", f"{p.usd:.5f}"]
            if self.scenarios:
                row += [f"{p.planned_seconds:.2f}", f"{p.planned_usd:.5f}"]
            table.add_row(
                *row,
                f"{p.serverful_usd:.5f}",
                f"{p.function_seconds:.1f}",
                f"{p.score:.5f}",
            )
        out = io.StringIO()
        Console(file=out, width=width, force_terminal=False, color_system=None).print(table)
        return out.getvalue()


class WarmPool(CostModel):
    """``model``'s prices and granularity, for functions drawn from a warm pool that outlives one
    rollout (instances kept alive across stages and iterations, the way a serverless platform
    reuses warm workers). Such an instance pays the provider's per-start minimum once per job,
    not once per rollout, and is already warm (model loaded) when a rollout takes it, so a
    rollout is billed for the seconds it holds each one from ready to release: no minimum, no
    cold start. A serverful rental held for the whole job gets exactly this treatment too; use
    it for both sides of a comparison, or for neither."""

    def __init__(self, model: CostModel) -> None:
        rules = BillingRules(
            granularity_seconds=model.rules.granularity_seconds,
            minimum_seconds=0.0,
            bill_cold_start=False,
        )
        super().__init__(f"{model.name}/pool", rules, f"{model.description} (warm pool)")
        self.inner = model

    def rates(self) -> Mapping[str, float]:
        return self.inner.rates()


def check_lam(lam: float) -> float:
    if not (isinstance(lam, int | float) and math.isfinite(lam) and lam >= 0):
        raise BadScalingSetting(
            "lam",
            lam,
            "a finite number >= 0 (dollars per second of rollout time)",
            "0 picks the cheapest k; larger values trade dollars for speed.",
        )
    return float(lam)


def choose_k(
    works: Sequence[GroupWork],
    ks: Iterable[int],
    params: ThroughputParams,
    cost_model: CostModel,
    device_kind: str,
    *,
    lam: float = 0.0,
    within_fraction: float | None = None,
    method: AssignMethod = "pack",
    slack: float = 0.0,
    headroom: float = 0.0,
    warm: int = 0,
    slots_per_function: int = 1,
    margin: Margin | None = None,
    transfer: TransferParams | None = None,
    worst_case: WorstCase | None = None,
) -> ScalingDecision:
    """Evaluate every k in ``ks`` and pick one (see the module docstring). ``transfer``: what a
    cut's moves cost (the margin's cut settings; default: 7B defaults at ``params``' prefill).
    ``worst_case``: round robin on ``max(ks)`` functions joins the candidates, and the choice is
    the best one whose makespan stays within the guard's bound over round robin's on the
    worst case of the scenarios (:mod:`~rlhfless.scaling.worst_case`)."""
    lam = check_lam(lam)
    candidates = _candidates(ks, within_fraction)
    methods = _methods(method, margin)
    curve: list[CurvePoint] = []
    assignments: dict[tuple[str, int], Assignment] = {}
    # Each candidate on each scenario without a cut: its expectation, and what a cut setting
    # on it is measured against (computed once here for both).
    plain: dict[tuple[str, int], list[CurvePoint]] = {}
    pricing = Pricing(
        cost_model=cost_model, device_kind=device_kind, lam=lam, warm=warm,
        slots_per_function=slots_per_function,
    )  # fmt: skip
    for m in methods:
        for k in candidates:
            a = assign(works, k, m, params, slack, headroom)
            curve.append(_priced(a, k, works, params, pricing, margin, assignments, plain))
    baseline, check, fastest = None, None, None
    if worst_case is not None:
        baseline = _round_robin_point(
            works, max(candidates), params, pricing, margin, assignments, plain, curve
        )
        check = GuardCheck(
            baseline, curve, assignments, works, margin, params, worst_case,
            transfer or TransferParams(prefill_tokens_per_s=params.prefill_tokens_per_s),
        )  # fmt: skip
        if within_fraction is not None:
            fastest = check.fastest(curve)
    if margin is not None and margin.cuts and margin.scenarios:
        curve += cut_points(
            curve, assignments, works, margin, params, pricing, within_fraction, transfer, plain,
            fastest=fastest, keep=check.passes if check is not None else None,
        )  # fmt: skip
    order = _Order(methods, margin)
    if within_fraction is None:
        best, ratio = min(curve, key=lambda p: (p.score, *order.tiebreak(p)[1:])), None
    else:
        # With a margin, the bound is measured against what the slots could do warm (a cold
        # start every candidate pays is no part of the rollout's own time).
        cold = params.cold_start_seconds if margin is not None else 0.0
        ok, _ = within_bound(curve, within_fraction, cold, warm, fastest=fastest)
        if baseline is not None and baseline not in ok:
            ok.append(baseline)
        ordered = sorted(ok, key=lambda p: (p.planned_usd, *order.tiebreak(p)))
        best, ratio = check.first(ordered) if check is not None else (ordered[0], None)
    return ScalingDecision(
        k=best.k, functions=best.functions, criterion="lam" if within_fraction is None else "within",
        lam=lam, within_fraction=within_fraction, cost_model=cost_model.name,
        device_kind=device_kind, curve=curve, assignment=assignments[(best.method, best.k)],
        method=best.method, margin=margin.source if margin is not None else "off",
        scenarios=len(margin.scenarios) if margin is not None else 0, cut=best.cut,
        cut_threshold=best.cut_threshold, worst_case_ratio=ratio,
    )  # fmt: skip


def _candidates(ks: Iterable[int], within_fraction: float | None) -> list[int]:
    """The k to try, in order; the bound checked (a finite fraction >= 0, or none)."""
    if within_fraction is not None and not (
        math.isfinite(within_fraction) and within_fraction >= 0
    ):
        raise BadScalingSetting("within_fraction", within_fraction, "a finite number >= 0")
    candidates = sorted(set(ks))
    if not candidates:
        raise BadScalingSetting("k range", candidates, "non-empty", "check k_min and k_max.")
    return candidates


def _methods(method: AssignMethod, margin: Margin | None) -> list[AssignMethod]:
    """The configured assignment first, then the margin's alternatives (ties go to it)."""
    methods: list[AssignMethod] = [method]
    for alt in margin.alternatives if margin is not None else ():
        if alt not in methods:
            methods.append(alt)  # type: ignore[arg-type]
    return methods


class _Order:
    """How equal candidates rank: shorter, fewer functions, smaller k, the configured method
    first (round robin last), no cut before a cut, then the margin's cuts in their order."""

    def __init__(self, methods: list[AssignMethod], margin: Margin | None) -> None:
        self.rank: dict[str, int] = {m: i for i, m in enumerate(methods)}  # a point's is a str
        self.rank.setdefault("round_robin", len(self.rank))
        cuts = margin.cuts if margin else ()
        self.cut_rank = {("none", 1.0): 0} | {c: i + 1 for i, c in enumerate(cuts)}

    def tiebreak(self, p: CurvePoint) -> tuple[float, int, int, int, int]:
        return (p.planned_seconds, p.functions, p.k, self.rank[p.method],
                self.cut_rank[(p.cut, p.cut_threshold)])  # fmt: skip


def _round_robin_point(
    works: Sequence[GroupWork],
    k: int,
    params: ThroughputParams,
    pricing: Pricing,
    margin: Margin | None,
    assignments: dict[tuple[str, int], Assignment],
    plain: dict[tuple[str, int], list[CurvePoint]],
    curve: list[CurvePoint],
) -> CurvePoint:
    """Round robin on ``k`` functions, no cut: added to ``curve`` (and ``assignments``) unless
    it is there already. The baseline the worst-case guard measures every candidate against."""
    for p in curve:
        if p.method == "round_robin" and p.k == k and p.cut == "none":
            return p
    a = assign(works, k, "round_robin", params)
    p = _priced(a, k, works, params, pricing, margin, assignments, plain)
    curve.append(p)
    return p


def _priced(
    a: Assignment,
    k: int,
    works: Sequence[GroupWork],
    params: ThroughputParams,
    pricing: Pricing,
    margin: Margin | None,
    assignments: dict[tuple[str, int], Assignment],
    plain: dict[tuple[str, int], list[CurvePoint]],
) -> CurvePoint:
    """A candidate's point on the curve: its (T, C), expected over the margin's scenarios when
    there is a margin; the assignment and its per-scenario points are kept under (method, k)."""
    assignments[(a.method, k)] = a
    p = pricing.evaluate(a, params)
    if margin is not None:
        plain[(a.method, k)] = scenario_points(a, works, margin, params, pricing)
        p = expected_point(p, a, works, margin, params, pricing, plain[(a.method, k)])
    return p


class GuardCheck:
    """The worst-case guard (:mod:`~rlhfless.scaling.worst_case`) over one choice's candidates:
    each one's worst-case makespan ratio to ``baseline`` (round robin on all slots), computed
    once per candidate; ``baseline`` itself always passes."""

    def __init__(
        self,
        baseline: CurvePoint,
        curve: Sequence[CurvePoint],
        assignments: Mapping[tuple[str, int], Assignment],
        works: Sequence[GroupWork],
        margin: Margin | None,
        params: ThroughputParams,
        guard: WorstCase,
        transfer: TransferParams,
    ) -> None:
        self.baseline, self.curve, self.assignments = baseline, curve, assignments
        self.works, self.margin, self.params, self.guard = works, margin, params, guard
        self.transfer = transfer
        self.base = baseline_makespans(
            assignments[(baseline.method, baseline.k)], works, margin, params, guard
        )
        self._ratios: dict[int, float | None] = {}

    def ratio(self, p: CurvePoint) -> float | None:
        """``p``'s worst-case makespan over the baseline's; None where it cannot be judged (a
        cut with no drawn scenarios to simulate it on)."""
        key = id(p)
        if key not in self._ratios:
            self._ratios[key] = self._ratio(p)
        return self._ratios[key]

    def _ratio(self, p: CurvePoint) -> float | None:
        if p is self.baseline:
            return 1.0
        a = self.assignments[(p.method, p.k)]
        args = (a, self.base, self.works, self.margin, self.params, self.guard)
        if p.cut == "none":
            return worst_ratio(*args)
        if self.margin is None or not self.margin.scenarios:
            # No drawn lengths: nothing to simulate the cut on.
            return None
        return worst_cut_ratio(*args, (p.cut, p.cut_threshold), self.transfer)

    def passes(self, p: CurvePoint) -> bool:
        """Whether ``p`` keeps the guard's bound on the worst case."""
        r = self.ratio(p)
        return r is not None and r <= 1.0 + self.guard.fraction

    def fastest(self, curve: Sequence[CurvePoint]) -> float:
        """The quickest all-warm time (:attr:`CurvePoint.ideal_seconds`) of an uncut candidate
        that passes: what "within x of the fastest" is measured from. A candidate whose own
        worst case breaks the bound is no plan the choice could make, so it sets no pace; its
        expected time may also flatter it most where the scenarios fit it worst (stratified
        strata of groups predicted short, on the tiny trace: expected 2% faster than LPT,
        9.6% slower than round robin as it ran)."""
        uncut = sorted((p for p in curve if p.cut == "none"), key=lambda p: p.ideal_seconds)
        return next(p.ideal_seconds for p in uncut if self.passes(p))

    def first(self, ordered: Sequence[CurvePoint]) -> tuple[CurvePoint, float | None]:
        """The first of ``ordered`` (best first) that passes, with its ratio (None for the
        baseline itself), else the baseline."""
        for p in ordered:
            if p is self.baseline:
                return p, None
            if self.passes(p):
                return p, self.ratio(p)
        return self.baseline, None
