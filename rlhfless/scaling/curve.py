"""One candidate's predicted time and dollars: :class:`CurvePoint` and :func:`evaluate`.

Split from :mod:`~rlhfless.scaling.scaler` (which re-exports both) so that
:mod:`~rlhfless.scaling.expected`, which evaluates candidates on the margin's scenarios, can
use them without importing the scaler that calls it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import msgspec

from rlhfless.cost_models import CostModel, Lifetime, TableCostModel, price_planned
from rlhfless.scaling.assign import Assignment
from rlhfless.scaling.errors import BadScalingSetting
from rlhfless.scaling.throughput import ThroughputParams


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
    # Its makespan had every function been warm (no cold start): expected with a margin, else
    # predicted; what "the fastest" of a within-x choice is measured by (within_bound).
    warm_seconds: float | None = None

    @property
    def planned_seconds(self) -> float:
        """What the choice compares: the expected makespan when known, else the predicted."""
        return self.seconds if self.expected_seconds is None else self.expected_seconds

    @property
    def ideal_seconds(self) -> float:
        """Its planned makespan without cold starts (the planned one if not known)."""
        return self.planned_seconds if self.warm_seconds is None else self.warm_seconds

    @property
    def planned_usd(self) -> float:
        return self.usd if self.expected_usd is None else self.expected_usd


class Pricing(msgspec.Struct, frozen=True, kw_only=True):
    """How every candidate of one choice is priced: the bill (``cost_model`` on
    ``device_kind``), ``lam`` ($/s) for the score, how many functions start ``warm``, and the
    slots each function holds. :func:`~rlhfless.scaling.scaler.choose_k` makes one and hands it
    to the expectation and cut passes (:mod:`~rlhfless.scaling.expected`)."""

    cost_model: CostModel
    device_kind: str
    lam: float = 0.0
    warm: int = 0
    slots_per_function: int = 1

    def evaluate(
        self, assignment: Assignment, params: ThroughputParams, rank: Sequence[float] | None = None
    ) -> CurvePoint:
        """:func:`evaluate` under this pricing."""
        return evaluate(
            assignment, params, self.cost_model, self.device_kind, self.lam, self.warm,
            self.slots_per_function, rank,
        )  # fmt: skip


def within_bound(
    curve: Sequence[CurvePoint],
    fraction: float,
    cold_start: float = 0.0,
    warm: int = 0,
    fastest: float | None = None,
) -> tuple[list[CurvePoint], float]:
    """The points whose planned time is within ``fraction`` of the fastest, and that bound (in
    planned seconds).

    ``cold_start`` 0: "the fastest" is the quickest planned time, cold starts and all.
    Otherwise it is what the slots could do warm (the quickest :attr:`CurvePoint.ideal_seconds`)
    and ``cold_start`` is the seconds a function not among the ``warm`` pays before it works.
    With nothing warm every candidate pays that, so it is left out of both sides and does not
    widen the fraction. With ``warm`` functions, a candidate that starts more is measured with
    its cold starts, and a smaller k is still held to what a larger one could do warm: a plan
    neither takes a cold start for granted nor drifts down to whatever last ran warm. Where no
    candidate is within the bound (the work outgrew the warm functions), only the quickest is.
    ``fastest`` (with a ``cold_start``): that all-warm reference where the caller knows better
    than the quickest of ``curve`` (the worst-case guard: the quickest candidate it lets through).
    """
    if cold_start <= 0:
        fastest, own = min(p.planned_seconds for p in curve), 0.0
    else:
        if fastest is None:
            fastest = min(p.ideal_seconds for p in curve)
        own = cold_start if warm <= 0 else 0.0
    # Never below the quickest candidate: then it alone is within (the work outgrew the warm).
    bound = max(fastest * (1.0 + fraction) + own + 1e-12, min(p.planned_seconds for p in curve))
    return [p for p in curve if p.planned_seconds <= bound], bound


def life_usd(
    cost_model: CostModel,
    device_kind: str,
    cold_start_seconds: float,
    busy_seconds: float,
    idle_seconds: float = 0.0,
    slots_per_function: int = 1,
    warm: bool = False,
) -> float:
    """One function's dollars for one rollout.

    A ``warm`` function is one an earlier rollout released and this one reuses: its life, and
    the per-start minimum and cold start its model bills, were paid when it started. This
    rollout extends that life, so it costs its seconds at the rate. Any other function is a new
    life under the model's rules (granularity, minimum, cold start). The rollout stage prices
    its measured leases by the same rule (``RolloutStage._price``), so a plan's C(k) and the
    iteration's measured dollars are the same quantity.
    """
    if warm:
        seconds = cold_start_seconds + busy_seconds + idle_seconds
        return cost_model.rate(device_kind) * seconds * slots_per_function
    life = Lifetime.planned(cold_start_seconds, busy_seconds, idle_seconds)
    return cost_model.price(device_kind, life, slots_per_function).usd


def new_lives_usd(
    cost_model: CostModel, device_kind: str, lives: Sequence[Lifetime], slots_per_function: int = 1
) -> float:
    """Dollars of new functions as the model rents them: each its own life where it rents
    slots; placed the cheapest way onto whole instances where it rents instances (one minimum
    per instance start, unused slots paid: ``cost_models.price_planned``)."""
    if not lives:
        return 0.0
    if isinstance(cost_model, TableCostModel) and cost_model.rented == "instance":
        return price_planned(cost_model, device_kind, lives, slots_per_function)
    return sum(cost_model.price(device_kind, life, slots_per_function).usd for life in lives)


def plan_usd(
    cost_model: CostModel,
    device_kind: str,
    lives: Sequence[tuple[float, float, float]],
    reused: Collection[int] = (),
    slots_per_function: int = 1,
) -> float:
    """A plan's dollars: ``lives`` are (cold start, busy, idle) seconds per function from the
    rollout's start; those in ``reused`` extend a warm life by the second (:func:`life_usd`),
    the others are new (:func:`new_lives_usd`)."""
    warm = sum(
        life_usd(cost_model, device_kind, c, b, i, slots_per_function, warm=True)
        for f, (c, b, i) in enumerate(lives)
        if f in reused
    )
    new = [Lifetime.planned(c, b, i) for f, (c, b, i) in enumerate(lives) if f not in reused]
    return warm + new_lives_usd(cost_model, device_kind, new, slots_per_function)


def warm_functions(
    loads: Sequence[float], warm: int = 0, rank: Sequence[float] | None = None
) -> set[int]:
    """The ``warm`` heaviest functions (by ``rank``, default ``loads``: a scenario's functions
    are warmed by their *predicted* loads, as the plan does): those reused warm."""
    by = loads if rank is None else rank
    order = sorted(range(len(loads)), key=lambda f: -by[f])
    return set(order[: max(0, warm)])


def function_lives(
    loads: Sequence[float],
    params: ThroughputParams,
    warm: int = 0,
    rank: Sequence[float] | None = None,
) -> list[tuple[float, float]]:
    """(cold start, busy seconds) per function; the ``warm`` heaviest (:func:`warm_functions`)
    start without a cold start."""
    warm_set = warm_functions(loads, warm, rank)
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
    reused = warm_functions(assignment.loads, warm, rank)
    ends = [c + b for c, b in lives]
    t = max(ends, default=0.0)
    t_warm = max((b for _, b in lives), default=0.0)
    usd = plan_usd(cost_model, device_kind, [(c, b, 0.0) for c, b in lives], reused,
                   slots_per_function)  # fmt: skip
    held = plan_usd(cost_model, device_kind, [(c, b, max(0.0, t - c - b)) for c, b in lives],
                    reused, slots_per_function)  # fmt: skip
    return CurvePoint(
        k=assignment.k,
        functions=assignment.functions,
        seconds=t,
        usd=usd,
        serverful_usd=held,
        function_seconds=sum(ends) * slots_per_function,
        score=usd + lam * t,
        method=assignment.method,
        warm_seconds=t_warm,
    )
