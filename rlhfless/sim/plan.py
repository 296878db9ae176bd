"""The simulated ``rlhfless`` rollout plan, made the way the real :class:`~rlhfless.scaling.Scaler`
makes it.

``rlhfless train --set scaling.policy=rlhfless`` plans each rollout with ``Scaler.plan``: the k
that is cheapest within ``ScalingConfig.within()`` (3%) of the fastest *expected* makespan, where
expected means averaged over the error margin's scenarios (true lengths drawn from the
predictor's measured error), each k also tried with the margin's fallback assignment (LPT), and
with ``cut = "auto"`` a per-function cut at each of ``auto_cut_thresholds`` planned when that is
cheaper within the bound. The simulator asks the same code the same question: a real
:class:`~rlhfless.scaling.Scaler` holds the predictor and builds the margin (``Scaler.margin``),
and :func:`~rlhfless.scaling.choose_k` is called with the scaler's settings. The one difference
is the candidate k: the simulator evaluates a coarse grid and then a fine one around its choice
(:func:`k_grid`) instead of every k, which a 100-node sweep could not afford.

Whatever ``Scaler.plan`` passes to ``choose_k`` this must pass too:
``tests/sim/test_stream.py::test_the_simulated_plan_is_the_real_scalers`` fails when they part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlhfless.cost_models import CostModel
from rlhfless.scaling import (
    GroupWork,
    Scaler,
    ScalingConfig,
    ScalingDecision,
    ThroughputParams,
    TransferParams,
    choose_k,
)
from rlhfless.scaling.margin import seen_priors

# The rollout policy as a user gets it with `scaling.policy = "rlhfless"` (assignment, margin,
# fallback, cut, within-fraction: every other setting at its default).
POLICY = ScalingConfig(policy="rlhfless")


def k_grid(limit: int, around: int | None = None) -> list[int]:
    """Candidate function counts: powers of two up to ``limit`` (and ``limit``), or, with
    ``around``, ~10% steps from half to twice it. The scaler's curve is smooth, so a coarse
    pass and a fine pass around its choice find its minimum at a fraction of the cost of
    evaluating every k (which would dominate a 100-node sweep)."""
    if around is None:
        ks = {limit}
        k = 1
        while k < limit:
            ks.add(k)
            k *= 2
        return sorted(ks)
    ks = {around}
    x = max(1.0, around / 2)
    while x < min(limit, 2 * around):
        ks.add(max(1, min(limit, round(x))))
        x *= 1.1
    return sorted(ks)


class RolloutPlanner:
    """One job's scaling policy: the real scaler's predictor and margin, the sim's k grid."""

    def __init__(
        self, functions: int, device_kind: str, cost_model: CostModel,
        transfer: TransferParams, max_new_tokens: int | None, tp: int,
    ) -> None:  # fmt: skip
        self.functions, self.tp = functions, tp
        self.scaler = Scaler(
            POLICY, functions, device_kind, transfer=transfer, cost_model=cost_model,
            max_new_tokens=max_new_tokens,
        )  # fmt: skip

    def predict(self, prompt_ids: Sequence[str], group_sizes: Sequence[int]) -> list[list[float]]:
        p = self.scaler.predictor
        return [p.predict_group(pid, g) for pid, g in zip(prompt_ids, group_sizes, strict=True)]

    def online(self, prompt_ids: Sequence[str], works: Sequence[GroupWork]) -> dict[str, Any]:
        """How the stage's cut controller estimates what a straggler has left, as
        ``simulate_rollout`` settings: online, from finished siblings, a seen prompt starting
        from its prediction (``remaining = "siblings"``)."""
        p = self.scaler.predictor
        return {
            "remaining": "siblings",
            "priors": seen_priors(works, [p.seen(pid) for pid in prompt_ids]),
            "shape": p.shape_ratios(),
            "max_new_tokens": self.scaler.max_new_tokens,
        }

    def observe(self, prompt_ids: Sequence[str], lengths: Sequence[Sequence[int]]) -> None:
        self.scaler.observe(prompt_ids, lengths)

    def plan(
        self, prompt_ids: Sequence[str], works: list[GroupWork], params: ThroughputParams
    ) -> ScalingDecision:
        """The decision ``Scaler.plan`` would make for ``works`` (coarse, then fine k grid)."""
        margin = self.scaler.margin(prompt_ids, works)
        transfer = self.scaler.transfer_costs() if margin is not None and margin.cuts else None

        def choose(ks: list[int]) -> ScalingDecision:
            return choose_k(
                works, ks, params, self.scaler.model, self.scaler.device_kind,
                lam=POLICY.lam, within_fraction=POLICY.within(), method=POLICY.assign,
                slack=POLICY.pack_slack, headroom=POLICY.pack_headroom,
                slots_per_function=self.tp, margin=margin, transfer=transfer,
                worst_case=self.scaler.worst_case(),
            )  # fmt: skip

        coarse = choose(k_grid(self.functions))
        return choose(k_grid(self.functions, coarse.k))
