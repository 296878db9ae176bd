"""``[scaling]``: how many rollout functions to run and how to use them.

``policy = "fixed"`` runs ``k`` functions (0 = one per slot) with prompts split round robin and
no cut: the baseline. ``policy = "rlhfless"`` predicts lengths, assigns groups by predicted length,
picks k in ``k_min .. k_max`` as the cheapest within ``within_fraction`` of the fastest (default
3%), or, with ``lam > 0``, minimising ``C(k) + lam * T(k)``, and cuts and migrates stragglers
where the margin's scenarios say a cut at one of ``auto_cut_thresholds`` is cheaper within the
fraction (``cut = "auto"``, the default), or always at ``cut_threshold`` (``per_function``,
``global``). T and C are what each k is *expected* to give over
``margin_scenarios`` scenarios drawn from the predictor's measured error
(:mod:`rlhfless.scaling.margin`), each k also tried with ``margin_fallback``'s assignment.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from rlhfless.scaling.assign import METHODS
from rlhfless.scaling.errors import BadScalingSetting
from rlhfless.scaling.margin import check_scenarios
from rlhfless.scaling.migrate import check_threshold
from rlhfless.scaling.worst_case import WorstCase, covering_scenarios

# k: the cheapest whose expected makespan is within this fraction of the fastest expected one.
# Below the 5% target: the expected makespan is a mean, and one rollout can land above it.
DEFAULT_WITHIN = 0.03


class ScalingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    policy: Literal["rlhfless", "fixed"] = "fixed"  # the baseline until a run opts in
    k: int = 0  # fixed policy: functions per rollout; 0 = one per slot
    k_min: int = 1  # rlhfless: fewest functions considered
    k_max: int = 0  # rlhfless: most functions considered; 0 = number of slots
    # $/s: what one second of rollout time is worth. > 0 (with within_fraction unset) picks the
    # k minimising C + lam * T; 0 leaves the choice to within_fraction.
    lam: float = 0.0
    # Cheapest k whose T <= (1 + x) * the fastest k's T. None: DEFAULT_WITHIN (3%) unless
    # lam > 0. When set, it wins over lam. (A huge value, e.g. 1e9, picks the cheapest k.)
    within_fraction: float | None = None
    # Measured (benchmarks/scaling.py, 5 seeds, simulated L40S, k cheapest within 3% of the
    # fastest predicted, no margin): stratified with no cut is within +5% makespan of round
    # robin on lognormal and heavy-tailed lengths at 128 prompts with >= 20% fewer
    # function-seconds, but +14% on the heavy tail at 256 prompts (its shortest stratum queues
    # past one batch, and a 10x sample admitted late there finishes last): the margin below
    # falls back to LPT there. LPT alone runs 5% longer on lognormal; the paper's pack +
    # per-function cut saves more function time but runs 10-17% longer. All one setting away.
    assign: Literal["stratified", "pack", "lpt", "round_robin"] = "stratified"
    # Error margin: T(k) and C(k) are averaged over this many scenarios of true lengths drawn
    # from the predictor's measured error (actual/predicted of earlier groups predicted about
    # as long; before any are scored, the dataset's sample/median spread). 0 = plan on the
    # point predictions. The worst-case guard's 0.9 quantile is taken on these too: of 16, the
    # largest (covering 16/17; a plan with a cut on the first 9: 9/10), which held the bound on
    # every seed tried; the 18th of 19 did not (docs/scaling.md). 16 keeps a 256-prompt plan
    # under ~1 s of CPU.
    margin_scenarios: int = 16
    # With the margin on, every k is also tried with this assignment, and it is chosen when it
    # is cheaper within the fraction (ties keep `assign`); "none" tries only `assign`. LPT
    # balances expected finish times, so it is the safe choice when predictions are poor.
    margin_fallback: Literal["lpt", "stratified", "pack", "round_robin", "none"] = "lpt"
    pack_slack: float = 0.0  # pack: allowed makespan above LPT's, as a fraction
    # rlhfless cut policy. "auto": with the margin on, every candidate within the bound is also
    # evaluated with a per-function cut at each of auto_cut_thresholds, by simulating its
    # rollout on the margin's scenarios, and the cut is planned only when that expected
    # (T, C) is chosen (cheaper, still within the fraction). Measured (benchmarks/scaling.py,
    # 5 seeds): on the heavy tail LPT + a cut at 0.9-0.95 saves 30-55% aws/pool within +5%
    # makespan, where the paper's τ = 0.7 runs 11-23% longer (docs/scaling.md).
    # "per_function" / "global": always, at cut_threshold; "none": never.
    # The rollout stage executes a cut the way it is planned: the controller reads the functions'
    # progress, Scaler.migration picks what to cut and where, and the stragglers join their
    # receivers' running batches (stages/rollout_stage.py), so "auto" is the default.
    cut: Literal["auto", "per_function", "global", "none"] = "auto"
    cut_threshold: float = 0.7  # τ: finished/assigned at which a function is cut (paper: 0.7)
    # A cut must not extend the rollout: a sequence moves only where its receiver is predicted
    # to finish within the horizon (the latest predicted finish now). False: the paper's rule,
    # any receiver with free slots (most free slots among those running long enough anyway).
    # "auto" always plans with the guard.
    cut_guard: bool = True
    # How often the rollout stage reads the running functions' progress to plan a cut (s).
    cut_poll_s: float = 0.05
    # τ values cut = "auto" tries (each costs one rollout simulation per margin scenario per
    # candidate within the bound); () = auto never cuts.
    auto_cut_thresholds: tuple[float, ...] = (0.9, 0.95)
    predictor_alpha: float = 0.5  # EWMA weight of the newest epoch (1 = last epoch only)
    predictor_window: int = 0  # >0: plain mean over that many epochs instead of the EWMA
    predictor_default: float = 128.0  # tokens predicted before any observation
    # pseudo-observations of the dataset's mean mixed into each prompt's own lengths (0 = off)
    predictor_shrink: float = 0.0
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
        check_scenarios(self.margin_scenarios)
        quantile = WorstCase().quantile
        fewest = covering_scenarios(quantile, 1024)
        if 0 < self.margin_scenarios < fewest:
            raise BadScalingSetting(
                "margin_scenarios", self.margin_scenarios, f"0 (off) or at least {fewest}",
                f"The worst-case guard's {quantile} quantile is not covered by fewer draws.",
            )  # fmt: skip
        if self.margin_fallback not in (*METHODS, "none"):
            raise BadScalingSetting(
                "margin_fallback", self.margin_fallback, f"one of {', '.join(METHODS)}, none"
            )
        if self.assign not in METHODS:
            raise BadScalingSetting("assign", self.assign, f"one of {', '.join(METHODS)}")
        if not (math.isfinite(self.pack_slack) and self.pack_slack >= 0):
            raise BadScalingSetting("pack_slack", self.pack_slack, "a finite number >= 0")
        check_threshold(self.cut_threshold)
        if not isinstance(self.cut_guard, bool):
            raise BadScalingSetting("cut_guard", self.cut_guard, "true or false")
        if not (isinstance(self.cut_poll_s, int | float) and 0.001 <= self.cut_poll_s <= 10):
            raise BadScalingSetting("cut_poll_s", self.cut_poll_s, "seconds in [0.001, 10]")
        if (
            not isinstance(self.auto_cut_thresholds, tuple | list)
            or len(self.auto_cut_thresholds) > 8
        ):
            raise BadScalingSetting(
                "auto_cut_thresholds", self.auto_cut_thresholds, "a list of at most 8 τ in (0, 1]"
            )
        for tau in self.auto_cut_thresholds:
            check_threshold(tau, "auto_cut_thresholds")
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

    def cut_in_force(self, decided: tuple[str, float]) -> tuple[str, float]:
        """The cut to run, (setting, τ): the plan's ``decided`` one under ``cut = "auto"`` (a
        planning setting, never run as such), else the configured one."""
        return decided if self.cut == "auto" else (self.cut, self.cut_threshold)

    def within(self) -> float | None:
        """The within-fraction criterion in force (None: minimise C + lam * T)."""
        if self.within_fraction is not None:
            return self.within_fraction
        return None if self.lam > 0 else DEFAULT_WITHIN

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
