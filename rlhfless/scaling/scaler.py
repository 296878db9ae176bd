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
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from rlhfless.cost_models import BillingRules, CostModel, Lifetime
from rlhfless.scaling.assign import Assignment, AssignMethod, GroupWork, assign
from rlhfless.scaling.errors import BadScalingSetting
from rlhfless.scaling.throughput import ThroughputParams


class CurvePoint(msgspec.Struct, frozen=True, kw_only=True):
    k: int  # functions asked for
    functions: int  # functions the assignment used
    seconds: float  # T(k), predicted makespan incl. cold start and weight load
    usd: float  # C(k), each function released at its own finish
    serverful_usd: float  # every function held until T(k)
    function_seconds: float  # sum of the functions' lifetimes (slot-seconds per slot)
    score: float  # usd + lam * seconds


class ScalingDecision(msgspec.Struct, kw_only=True):
    k: int  # the chosen k (functions asked for)
    functions: int  # functions to start (<= k)
    criterion: str  # "lam" or "within"
    lam: float
    within_fraction: float | None
    cost_model: str
    device_kind: str
    curve: list[CurvePoint]
    assignment: Assignment  # for the chosen k

    @property
    def chosen(self) -> CurvePoint:
        return next(p for p in self.curve if p.k == self.k)

    def render(self, width: int = 100) -> str:
        """The curve as a table (the chosen row marked), for logs and ``--show-curve``."""
        from rich.console import Console
        from rich.table import Table

        how = (
            f"min C + {self.lam:g} $/s x T"
            if self.criterion == "lam"
            else f"cheapest within {self.within_fraction:.0%} of the fastest"
        )
        table = Table(
            title=f"rollout functions: k={self.k} ({self.functions} used), {how}, "
            f"{self.cost_model} {self.device_kind}"
        )
        for col in ("k", "used", "T (s)", "C ($)", "held to T ($)", "fn-s", "score"):
            table.add_column(col, justify="right")
        for p in self.curve:
            mark = "*" if p.k == self.k else ""
            table.add_row(
                f"{mark}{p.k}",
                str(p.functions),
                f"{p.seconds:.2f}",
                f"{p.usd:.5f}",
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
    loads: Sequence[float], params: ThroughputParams, warm: int = 0
) -> list[tuple[float, float]]:
    """(cold start, busy seconds) per function; the ``warm`` heaviest start without a cold start."""
    order = sorted(range(len(loads)), key=lambda f: -loads[f])
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
) -> CurvePoint:
    """T, C and the serverful C of one assignment (its loads must be in seconds)."""
    if assignment.unit != "seconds":
        raise BadScalingSetting(
            "assignment", assignment.unit, "in seconds", "assign with a ThroughputParams."
        )
    lives = function_lives(assignment.loads, params, warm)
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
) -> ScalingDecision:
    """Evaluate every k in ``ks`` and pick one (see the module docstring)."""
    lam = check_lam(lam)
    if within_fraction is not None and not (
        math.isfinite(within_fraction) and within_fraction >= 0
    ):
        raise BadScalingSetting("within_fraction", within_fraction, "a finite number >= 0")
    candidates = sorted(set(ks))
    if not candidates:
        raise BadScalingSetting("k range", candidates, "non-empty", "check k_min and k_max.")
    curve: list[CurvePoint] = []
    assignments: dict[int, Assignment] = {}
    for k in candidates:
        a = assign(works, k, method, params, slack, headroom)
        assignments[k] = a
        curve.append(evaluate(a, params, cost_model, device_kind, lam, warm, slots_per_function))
    if within_fraction is None:
        best = min(curve, key=lambda p: (p.score, p.functions, p.k))
        criterion = "lam"
    else:
        fastest = min(p.seconds for p in curve)
        ok = [p for p in curve if p.seconds <= fastest * (1.0 + within_fraction) + 1e-12]
        best = min(ok, key=lambda p: (p.usd, p.seconds, p.functions, p.k))
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
        assignment=assignments[best.k],
    )
