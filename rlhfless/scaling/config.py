"""``[scaling]``: how many rollout functions to run and how to use them.

``policy = "fixed"`` runs ``k`` functions (0 = one per slot) with prompts split round robin and
no cut: the baseline. ``policy = "rlhfless"`` predicts lengths, assigns groups by predicted length,
picks k in ``k_min .. k_max`` minimising ``C(k) + lam * T(k)`` (or the cheapest within
``within_fraction`` of the fastest), and cuts and migrates stragglers at ``cut_threshold``.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from rlhfless.scaling.assign import METHODS
from rlhfless.scaling.errors import BadScalingSetting
from rlhfless.scaling.migrate import check_threshold


class ScalingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    policy: Literal["rlhfless", "fixed"] = "fixed"  # the baseline until a run opts in
    k: int = 0  # fixed policy: functions per rollout; 0 = one per slot
    k_min: int = 1  # rlhfless: fewest functions considered
    k_max: int = 0  # rlhfless: most functions considered; 0 = number of slots
    lam: float = 0.0  # $/s: what one second of rollout time is worth (0 = cheapest wins)
    within_fraction: float | None = None  # instead of lam: cheapest k with T <= (1+x) * fastest
    # Measured (benchmarks/scaling.py, 5 seeds, simulated L40S, k cheapest within 3% of the
    # fastest predicted): stratified with no cut is within +5% makespan of round robin on both
    # lognormal and heavy-tailed lengths with >= 20% fewer function-seconds; LPT runs 5% longer
    # on lognormal (it loads a function more because its groups were predicted short, so an
    # underpredicted sample there runs slow); the paper's pack + per-function cut saves more
    # function time but runs 10-17% longer. All remain one setting away.
    assign: Literal["stratified", "pack", "lpt", "round_robin"] = "stratified"
    pack_slack: float = 0.0  # pack: allowed makespan above LPT's, as a fraction
    cut: Literal["per_function", "global", "none"] = "none"  # rlhfless cut policy (see assign)
    cut_threshold: float = 0.7  # τ: finished/assigned at which a function is cut (paper: 0.7)
    predictor_alpha: float = 0.5  # EWMA weight of the newest epoch (1 = last epoch only)
    predictor_window: int = 0  # >0: plain mean over that many epochs instead of the EWMA
    predictor_default: float = 128.0  # tokens predicted before any observation
    predictor_shrink: float = 0.0  # pseudo-observations of the dataset mixed into each prompt's
    pack_headroom: float = 0.0  # pack: keep chunks this fraction below LPT's makespan
    prefix_min_len: int = 16  # shortest shared prefix worth planning (tokens)
    cost_model: str = "aws"  # prices C(k) (a name rlhfless.cost_models.get_model knows)
    # C(k) for functions from a warm pool reused across stages and iterations (scaler.WarmPool):
    # no per-start minimum or cold start per rollout. Off: each function is a fresh start.
    warm_pool: bool = False
    device_kind: str = ""  # override the device kind priced ("" = the runtime's)
    show_curve: bool = False  # log the T(k), C(k) curve every iteration

    def __post_init__(self) -> None:
        if not (isinstance(self.k, int) and self.k >= 0):
            raise BadScalingSetting("k", self.k, "an integer >= 0 (0 = one function per slot)")
        if not (isinstance(self.k_min, int) and self.k_min >= 1):
            raise BadScalingSetting("k_min", self.k_min, "an integer >= 1")
        if not (isinstance(self.k_max, int) and self.k_max >= 0):
            raise BadScalingSetting("k_max", self.k_max, "an integer >= 0 (0 = number of slots)")
        if self.k_max and self.k_max < self.k_min:
            raise BadScalingSetting(
                "k_max", self.k_max, f">= k_min ({self.k_min}), or 0 for the number of slots"
            )
        if not (isinstance(self.lam, int | float) and math.isfinite(self.lam) and self.lam >= 0):
            raise BadScalingSetting(
                "lam",
                self.lam,
                "a finite number >= 0 (dollars per second of rollout time)",
                "0 picks the cheapest k; larger values buy speed.",
            )
        if self.within_fraction is not None and not (
            math.isfinite(self.within_fraction) and self.within_fraction >= 0
        ):
            raise BadScalingSetting(
                "within_fraction", self.within_fraction, "a finite number >= 0, e.g. 0.05 for 5%"
            )
        if self.assign not in METHODS:
            raise BadScalingSetting("assign", self.assign, f"one of {', '.join(METHODS)}")
        if not (math.isfinite(self.pack_slack) and self.pack_slack >= 0):
            raise BadScalingSetting("pack_slack", self.pack_slack, "a finite number >= 0")
        check_threshold(self.cut_threshold)
        if not (0.0 < self.predictor_alpha <= 1.0):
            raise BadScalingSetting("predictor_alpha", self.predictor_alpha, "in (0, 1]")
        if not (isinstance(self.predictor_window, int) and self.predictor_window >= 0):
            raise BadScalingSetting("predictor_window", self.predictor_window, "an integer >= 0")
        if not (math.isfinite(self.predictor_default) and self.predictor_default >= 0):
            raise BadScalingSetting(
                "predictor_default", self.predictor_default, "a finite number >= 0 (tokens)"
            )
        if not (math.isfinite(self.predictor_shrink) and self.predictor_shrink >= 0):
            raise BadScalingSetting(
                "predictor_shrink", self.predictor_shrink, "a finite number >= 0"
            )
        if not (math.isfinite(self.pack_headroom) and 0 <= self.pack_headroom < 1):
            raise BadScalingSetting("pack_headroom", self.pack_headroom, "a fraction in [0, 1)")
        if not (isinstance(self.prefix_min_len, int) and self.prefix_min_len >= 1):
            raise BadScalingSetting("prefix_min_len", self.prefix_min_len, "an integer >= 1")
        if not self.cost_model:
            raise BadScalingSetting("cost_model", self.cost_model, "a cost model name, e.g. 'aws'")

    def k_range(self, slots: int) -> range:
        """Candidate k for the rlhfless policy on ``slots`` slots."""
        if slots < 1:
            raise BadScalingSetting("slots", slots, "an integer >= 1")
        hi = min(self.k_max or slots, slots)
        lo = min(self.k_min, hi)
        return range(lo, hi + 1)

    def fixed_k(self, slots: int) -> int:
        if slots < 1:
            raise BadScalingSetting("slots", slots, "an integer >= 1")
        return min(self.k or slots, slots)
