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
too (e.g. LPT beside stratified), ties going to the configured one; and "within x of the
fastest" leaves out a cold start that every candidate pays (nothing warm), so it is a fraction
of the rollout's own time.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from rlhfless.cost_models import BillingRules, CostModel, Lifetime
from rlhfless.scaling.assign import Assignment, AssignMethod, GroupWork, assign
from rlhfless.scaling.errors import BadScalingSetting
from rlhfless.scaling.margin import Margin, scenario_loads
from rlhfless.scaling.simulate import simulate_rollout
from rlhfless.scaling.throughput import ThroughputParams
from rlhfless.scaling.transfer import TransferParams


class CurvePoint(msgspec.Struct, frozen=True, kw_only=True):
    k: int  # functions asked for
    functions: int  # functions the assignment used
    seconds: float  # T(k), predicted makespan incl. cold start and weight load
    usd: float  # C(k), each function released at its own finish
    serverful_usd: float  # every function held until T(k)
    function_seconds: float  # sum of the functions' lifetimes (slot-seconds per slot)
    score: float  # usd + lam * seconds (expected_usd + lam * expected_seconds with a margin)
    method: str = ""  # the assignment method behind this point
    expected_seconds: float | None = None  # E[T(k)] under the predictor's measured error
    expected_usd: float | None = None  # E[C(k)] likewise
    cut: str = "none"  # the cut setting behind this point: none, per_function or global
    cut_threshold: float = 1.0  # its τ

    @property
    def planned_seconds(self) -> float:
        """What the choice compares: the expected makespan when known, else the predicted."""
        return self.seconds if self.expected_seconds is None else self.expected_seconds

    @property
    def planned_usd(self) -> float:
        return self.usd if self.expected_usd is None else self.expected_usd


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


def function_lives(
    loads: Sequence[float],
    params: ThroughputParams,
    warm: int = 0,
    rank: Sequence[float] | None = None,
) -> list[tuple[float, float]]:
    """(cold start, busy seconds) per function; the ``warm`` heaviest start without a cold start
    (heaviest by ``rank``, default ``loads``: a scenario's functions are warmed by their
    *predicted* loads, as the plan does)."""
    by = loads if rank is None else rank
    order = sorted(range(len(loads)), key=lambda f: -by[f])
    warm_set = set(order[: max(0, warm)])
    return [
        (0.0 if f in warm_set else params.cold_start_seconds, params.weight_load_seconds + loads[f])
        for f in range(len(loads))
    ]


def evaluate(
    assignment: Assignment,
    params: ThroughputParams,
    cost_model: CostModel,
    device_kind: str,
    lam: float = 0.0,
    warm: int = 0,
    slots_per_function: int = 1,
    rank: Sequence[float] | None = None,
) -> CurvePoint:
    """T, C and the serverful C of one assignment (its loads must be in seconds; ``rank``: see
    :func:`function_lives`)."""
    if assignment.unit != "seconds":
        raise BadScalingSetting(
            "assignment", assignment.unit, "in seconds", "assign with a ThroughputParams."
        )
    lives = function_lives(assignment.loads, params, warm, rank)
    ends = [c + b for c, b in lives]
    t = max(ends, default=0.0)
    usd = sum(
        cost_model.price(device_kind, Lifetime.planned(c, b), slots_per_function).usd
        for c, b in lives
    )
    held = sum(
        cost_model.price(
            device_kind, Lifetime.planned(c, b, max(0.0, t - c - b)), slots_per_function
        ).usd
        for c, b in lives
    )
    return CurvePoint(
        k=assignment.k,
        functions=assignment.functions,
        seconds=t,
        usd=usd,
        serverful_usd=held,
        function_seconds=sum(ends) * slots_per_function,
        score=usd + lam * t,
        method=assignment.method,
    )


def expected_point(
    point: CurvePoint,
    assignment: Assignment,
    works: Sequence[GroupWork],
    margin: Margin,
    params: ThroughputParams,
    cost_model: CostModel,
    device_kind: str,
    lam: float = 0.0,
    warm: int = 0,
    slots_per_function: int = 1,
) -> CurvePoint:
    """``point`` with its expected T and C over ``margin``'s scenarios (and its score on them)."""
    if not margin.scenarios:
        return point
    seconds = usd = 0.0
    for lengths in margin.scenarios:
        loads = scenario_loads(assignment, works, lengths, params)
        drawn = msgspec.structs.replace(assignment, loads=loads, makespan=max(loads, default=0.0))
        p = evaluate(
            drawn, params, cost_model, device_kind, lam, warm, slots_per_function,
            rank=assignment.loads,
        )  # fmt: skip
        seconds += p.seconds
        usd += p.usd
    n = len(margin.scenarios)
    return msgspec.structs.replace(
        point,
        expected_seconds=seconds / n,
        expected_usd=usd / n,
        score=usd / n + lam * seconds / n,
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
    cost_model: CostModel,
    device_kind: str,
    lam: float = 0.0,
    warm: int = 0,
    slots_per_function: int = 1,
    scenarios: int | None = None,
) -> CurvePoint:
    """``point`` (no cut, its expected T and C from :func:`expected_point`) re-evaluated with
    the cut setting ``(cut, threshold)``.

    The rollout is simulated on the first ``scenarios`` (default: all) of the margin's scenarios
    (:func:`~rlhfless.scaling.simulate.simulate_rollout`, admitted and cut on the *predicted*
    lengths, as the planner will see them), so a straggler's move, its transfer, the receiver's
    longer steps and the early release are all in it. What the cut changes, paired scenario by
    scenario against the same assignment without a cut, is added to ``point``'s expectation:
    with fewer scenarios than the margin has, the difference is still measured on equal draws.
    The ``warm`` heaviest functions (by predicted load) start warm, as in :func:`function_lives`.
    """
    if not margin.scenarios:
        return point
    drawn = margin.scenarios[: scenarios or len(margin.scenarios)]
    order = sorted(range(assignment.functions), key=lambda f: -assignment.loads[f])
    groups = [assignment.groups[f] for f in order]
    predicted = [list(w.lengths) for w in works]
    prefill = [w.prefill_tokens for w in works]
    d_seconds = d_usd = 0.0
    for lengths in drawn:
        r = simulate_rollout(
            lengths, prefill, groups, params, predicted=predicted, warm=warm,
            cut=cut, threshold=threshold, transfer=transfer, shape=margin.shape,  # type: ignore[arg-type]
        )  # fmt: skip
        loads = scenario_loads(assignment, works, lengths, params)
        plain = evaluate(
            msgspec.structs.replace(assignment, loads=loads, makespan=max(loads, default=0.0)),
            params, cost_model, device_kind, lam, warm, slots_per_function, rank=assignment.loads,
        )  # fmt: skip
        d_seconds += r.makespan - plain.seconds
        d_usd += (
            sum(
                cost_model.price(device_kind, f.lifetime(), slots_per_function).usd
                for f in r.functions
            )
            - plain.usd
        )
    seconds = point.planned_seconds + d_seconds / len(drawn)
    usd = point.planned_usd + d_usd / len(drawn)
    return msgspec.structs.replace(
        point,
        expected_seconds=seconds,
        expected_usd=usd,
        score=usd + lam * seconds,
        cut=cut,
        cut_threshold=threshold,
    )


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
) -> ScalingDecision:
    """Evaluate every k in ``ks`` and pick one (see the module docstring). ``transfer``: what a
    cut's moves cost (the margin's cut settings; default: 7B defaults at ``params``' prefill)."""
    lam = check_lam(lam)
    if within_fraction is not None and not (
        math.isfinite(within_fraction) and within_fraction >= 0
    ):
        raise BadScalingSetting("within_fraction", within_fraction, "a finite number >= 0")
    candidates = sorted(set(ks))
    if not candidates:
        raise BadScalingSetting("k range", candidates, "non-empty", "check k_min and k_max.")
    methods: list[AssignMethod] = [method]
    for alt in margin.alternatives if margin is not None else ():
        if alt not in methods:
            methods.append(alt)  # type: ignore[arg-type]
    curve: list[CurvePoint] = []
    assignments: dict[tuple[str, int], Assignment] = {}
    for m in methods:
        for k in candidates:
            a = assign(works, k, m, params, slack, headroom)
            assignments[(a.method, k)] = a
            p = evaluate(a, params, cost_model, device_kind, lam, warm, slots_per_function)
            if margin is not None:
                p = expected_point(
                    p, a, works, margin, params, cost_model, device_kind, lam, warm,
                    slots_per_function,
                )  # fmt: skip
            curve.append(p)
    if margin is not None and margin.cuts and margin.scenarios:
        curve += _cut_points(
            curve, assignments, works, margin, params, cost_model, device_kind, lam,
            within_fraction, warm, slots_per_function, transfer,
        )  # fmt: skip
    rank = {m: i for i, m in enumerate(methods)}
    cut_rank = {("none", 1.0): 0} | {c: i + 1 for i, c in enumerate(margin.cuts if margin else ())}
    if within_fraction is None:
        best = min(
            curve,
            key=lambda p: (
                p.score,
                p.functions,
                p.k,
                rank[p.method],
                cut_rank[(p.cut, p.cut_threshold)],
            ),
        )
        criterion = "lam"
    else:
        # With a margin, a cold start every candidate pays is no part of the rollout's own time.
        common = params.cold_start_seconds if margin is not None and warm <= 0 else 0.0
        fastest = min(p.planned_seconds for p in curve) - common
        ok = [
            p
            for p in curve
            if p.planned_seconds - common <= fastest * (1.0 + within_fraction) + 1e-12
        ]
        best = min(
            ok,
            key=lambda p: (
                p.planned_usd, p.planned_seconds, p.functions, p.k, rank[p.method],
                cut_rank[(p.cut, p.cut_threshold)],
            ),
        )  # fmt: skip
        criterion = "within"
    return ScalingDecision(
        k=best.k,
        functions=best.functions,
        criterion=criterion,
        lam=lam,
        within_fraction=within_fraction,
        cost_model=cost_model.name,
        device_kind=device_kind,
        curve=curve,
        assignment=assignments[(best.method, best.k)],
        method=best.method,
        margin=margin.source if margin is not None else "off",
        scenarios=len(margin.scenarios) if margin is not None else 0,
        cut=best.cut,
        cut_threshold=best.cut_threshold,
    )


# Candidates (the cheapest within the bound without a cut) also evaluated with each cut setting.
CUT_CANDIDATES = 2
# Of the margin's scenarios, the first this many measure what a cut changes (paired with the
# same scenarios without a cut, so the difference is steady on fewer draws than E[T] needs).
CUT_SCENARIOS = 16


def _cut_points(
    curve: Sequence[CurvePoint],
    assignments: Mapping[tuple[str, int], Assignment],
    works: Sequence[GroupWork],
    margin: Margin,
    params: ThroughputParams,
    cost_model: CostModel,
    device_kind: str,
    lam: float,
    within_fraction: float | None,
    warm: int,
    slots_per_function: int,
    transfer: TransferParams | None,
) -> list[CurvePoint]:
    """The margin's cut settings on the candidates worth trying them on.

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
        common = params.cold_start_seconds if warm <= 0 else 0.0
        fastest = min(p.planned_seconds for p in curve) - common
        pick = [
            p
            for p in curve
            if p.planned_seconds - common <= fastest * (1.0 + within_fraction) + 1e-12
        ]
        bound = fastest * (1.0 + within_fraction) + common + 1e-12
    cheap = (lambda p: p.score) if within_fraction is None else (lambda p: p.planned_usd)
    pick = sorted(pick, key=lambda p: (cheap(p), p.planned_seconds))[:CUT_CANDIDATES]
    # A higher τ cuts later and moves fewer sequences, so it costs less time: try τ from the
    # highest down and stop at the first that leaves the bound (a lower one would too).
    cuts = sorted(margin.cuts, key=lambda c: (c[0], -c[1]))
    out = []
    for p in pick:
        a = assignments[(p.method, p.k)]
        if a.functions < 2:  # nothing to move to
            continue
        for cut, tau in cuts:
            q = expected_cut_point(
                p, a, works, margin, cut, tau, params, transfer, cost_model, device_kind,
                lam, warm, slots_per_function, CUT_SCENARIOS,
            )  # fmt: skip
            out.append(q)
            if within_fraction is not None and q.planned_seconds > bound:
                break
    return out
