"""A safety margin from the length predictor's *measured* error: T(k) and C(k) as they are
expected to come out when the lengths are as wrong as the predictor's have been.

Why. :func:`~rlhfless.scaling.scaler.choose_k` compares predicted makespans. When predictions
are good (lognormal lengths, mean relative error ~17%) the predicted curve is close to the true
one. When they are poor (a heavy tail: 5% of samples 10x, error ~50%) it flatters plans that put
many sequences on one function: a sequence predicted short but 10x long, admitted late behind a
full batch, finishes last; and it cannot tell that fewer functions leave less room for a miss.
A fixed margin (the cheapest k within 3% of the fastest *predicted*) cannot know which case it
is in; the predictor can, because it scores every prediction it made once the lengths are known
(:meth:`~rlhfless.scaling.predictor.LengthPredictor.error_samples`).

Scenarios. :class:`ErrorModel` draws ``n`` plausible sets of true lengths for the rollout's
groups (:meth:`ErrorModel.scenarios`, seeded, so a plan is reproducible):

* a group whose prompt the predictor has seen: its predicted lengths times the ratio
  ``actual / predicted`` of the mean of a scored group whose predicted mean was about as large
  (one of the ``window`` nearest), and its longest sample at least its predicted max times the
  max's ratio of a scored group whose predicted max was about as large. Conditioning matters: a
  group predicted long because last epoch it drew a rare long sample tends to come out shorter
  (ratio < 1), one predicted short can come out much longer; and the mean is keyed by the
  predicted mean, since one long sample gives a group a long max but says little of its other
  samples;
* a group whose prompt is new: likewise from the scored predictions of new prompts (the
  per-dataset fallback's error);
* a seen prompt before ``min_samples`` seen predictions were scored (the first iteration of a
  run's second epoch): likewise from the split-half scores of the observed groups (one half of
  a group's samples predicting the other:
  :meth:`~rlhfless.scaling.predictor.LengthPredictor.split_samples`), which carry the error of a
  prompt's own profile, group by group, before a second epoch has scored it;
* too few scored groups of that kind (fewer than ``min_samples``): fresh draws around the
  predicted median: ``median x r`` with ``r`` drawn from the dataset's measured ``sample / its
  prompt's median`` ratios
  (:meth:`~rlhfless.scaling.predictor.LengthPredictor.shape_ratios`), which hold a rare long
  tail even before any prediction has been scored, but no error of a group as a whole;
* nothing measured at all (no observation yet): no scenario; the plan uses the point prediction.

Every drawn length is capped at the longest response ever observed (responses are capped by the
generation limit), and never capped below its own prediction.

Expected T and C. :func:`~rlhfless.scaling.expected.expected_point` evaluates an assignment
on each scenario: function f's load is the prefill of its prompts plus the continuous-batching
decode of its drawn lengths, admitted in predicted order (longest predicted first, as the
assignment submits them), so a long sequence queued behind a full batch finishes late; then
cold start, weight load and the bill exactly as :func:`~rlhfless.scaling.curve.evaluate` does. The expected makespan and
dollars are the means over the scenarios. With an exact predictor every ratio is 1, every
scenario is the prediction, and the expected point is the predicted one.

:class:`Margin` carries the scenarios (and the assignments to try besides the configured one,
e.g. LPT, which measured safer than stratified when errors are large) into ``choose_k``.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from statistics import median

import msgspec

from rlhfless.scaling.assign import METHODS, Assignment, AssignMethod, GroupWork
from rlhfless.scaling.errors import BadScalingInput, BadScalingSetting
from rlhfless.scaling.migrate import check_threshold
from rlhfless.scaling.predictor import ErrorSample, LengthPredictor, check_max_new_tokens
from rlhfless.scaling.throughput import ThroughputParams, decode_seconds

MIN_SAMPLES = 16  # scored groups of a kind (seen / new prompt) before their ratios are used
WINDOW_FRACTION = 8  # the nearest n // 8 scored groups (at least MIN_SAMPLES // 2) are drawn from

Scenario = list[list[float]]  # drawn true lengths per group


def check_scenarios(n: int, name: str = "margin_scenarios") -> int:
    if not (isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 1024):
        raise BadScalingSetting(
            name,
            n,
            "an integer in 0..1024",
            "0 plans on the point predictions (no margin); 16 is the default.",
        )
    return n


class _Ratios:
    """Scored groups of one kind: the ``actual / predicted`` ratio of the mean, keyed by the
    predicted mean, and of the max, keyed by the predicted max."""

    def __init__(self, samples: Sequence[ErrorSample]) -> None:
        self.by_mean = sorted(
            (e.predicted_mean, e.actual_mean / max(e.predicted_mean, 1.0)) for e in samples
        )
        self.by_max = sorted(
            (e.predicted_max, e.actual_max / max(e.predicted_max, 1.0)) for e in samples
        )
        self.mean_keys = [r[0] for r in self.by_mean]
        self.max_keys = [r[0] for r in self.by_max]

    def __len__(self) -> int:
        return len(self.by_max)

    @staticmethod
    def _near(
        keys: Sequence[float], rows: Sequence[tuple[float, float]], key: float, rng: random.Random
    ) -> float:
        """The ratio of one of the ``window`` rows whose key is nearest ``key``, at random."""
        n = len(rows)
        width = min(n, max(MIN_SAMPLES // 2, n // WINDOW_FRACTION))
        at = bisect.bisect_left(keys, key)
        lo = max(0, min(at - width // 2, n - width))
        return rows[rng.randrange(lo, lo + width)][1]

    def draw(
        self, predicted_mean: float, predicted_max: float, rng: random.Random
    ) -> tuple[float, float]:
        """(mean ratio, max ratio): each from the scored groups predicted about as long in that
        measure. A group predicted short *on average* regresses towards the mean by what groups
        predicted that short did, whatever its predicted max (one long sample last epoch gives
        a short group a long max: keyed by the max alone, its mean was drawn as if it were long,
        and a stratum of such groups ran 60% past its predicted tokens, far outside the draws)."""
        mean_ratio = self._near(self.mean_keys, self.by_mean, predicted_mean, rng)
        max_ratio = self._near(self.max_keys, self.by_max, predicted_max, rng)
        return mean_ratio, max_ratio


class ErrorModel:
    """What the predictor's measured error says a group's true lengths may be (module docstring)."""

    def __init__(
        self,
        samples: Sequence[ErrorSample],
        shape: Sequence[float] = (),
        cap: float | None = None,
        min_samples: int = MIN_SAMPLES,
        split: Sequence[ErrorSample] = (),
    ) -> None:
        if not (isinstance(min_samples, int) and min_samples >= 1):
            raise BadScalingSetting("margin min_samples", min_samples, "an integer >= 1")
        if any(not (math.isfinite(r) and r >= 0) for r in shape):
            raise BadScalingInput("ErrorModel", f"shape ratios must be finite and >= 0: {shape}")
        self.seen = _Ratios([e for e in samples if e.seen])
        self.new = _Ratios([e for e in samples if not e.seen])
        self.split = _Ratios(split)  # split-half scores (LengthPredictor.split_samples)
        self.shape = [float(r) for r in shape]
        observed = [e.actual_max for e in samples]
        self.cap = cap if cap is not None else (max(observed) if observed else math.inf)
        self.min_samples = min_samples

    @classmethod
    def from_predictor(cls, predictor: LengthPredictor, last: int | None = None) -> ErrorModel:
        """The error of ``predictor``'s last ``last`` (default: all kept) scored predictions."""
        return cls(
            predictor.error_samples(last),
            predictor.shape_ratios(),
            predictor.max_observed(),
            split=predictor.split_samples(last),
        )

    def _pool(self, how: str) -> _Ratios:
        return {"seen": self.seen, "new": self.new, "split": self.split}[how]

    def source(self, seen: bool) -> str:
        """Where a group's draws come from: "seen", "new", "split" (a seen prompt before enough
        seen predictions were scored: the split-half scores), "shape" or "none" (no draws)."""
        pool = self.seen if seen else self.new
        if len(pool) >= self.min_samples:
            return "seen" if seen else "new"
        if seen and len(self.split) >= self.min_samples:
            return "split"
        return "shape" if self.shape else "none"

    def draw(self, work: GroupWork, seen: bool, rng: random.Random) -> list[float]:
        """One plausible set of true lengths for ``work`` (same order as its predictions)."""
        pred = list(work.lengths)
        if not pred:
            return []
        how = self.source(seen)
        if how == "none":
            return pred
        top = max(range(len(pred)), key=lambda i: pred[i])
        cap = max(self.cap, max(pred))
        if how == "shape":
            mid = float(median(pred))
            out = [mid * self.shape[rng.randrange(len(self.shape))] for _ in pred]
        else:
            mean_ratio, max_ratio = self._pool(how).draw(sum(pred) / len(pred), pred[top], rng)
            out = [x * mean_ratio for x in pred]
            out[top] = max(out[top], pred[top] * max_ratio)
        return [min(cap, x) for x in out]

    def scenarios(
        self, works: Sequence[GroupWork], seen: Sequence[bool], n: int, seed: int = 0
    ) -> list[Scenario]:
        """``n`` scenarios (each: drawn lengths per group); none when nothing was measured."""
        check_scenarios(n, "scenarios")
        if len(seen) != len(works):
            raise BadScalingInput("ErrorModel.scenarios", f"{len(works)} groups, {len(seen)} flags")
        if all(self.source(s) == "none" for s in seen):
            return []
        rng = random.Random(seed)
        return [[self.draw(w, s, rng) for w, s in zip(works, seen, strict=True)] for _ in range(n)]


class Margin(msgspec.Struct, kw_only=True):
    """What ``choose_k`` needs for an error-aware choice.

    ``scenarios``: drawn true lengths (:meth:`ErrorModel.scenarios`); empty: expected = predicted.
    ``alternatives``: assignment methods tried for every k besides the configured one.
    With a margin, "within x of the fastest" is measured against what the slots could do warm
    (:func:`~rlhfless.scaling.curve.within_bound`): a cold start that every candidate pays (no
    warm function) is left out of the comparison, so a short rollout is not given a looser
    tolerance, and with warm functions a smaller k is still held to what a larger k could do.
    """

    scenarios: list[Scenario] = []
    alternatives: tuple[str, ...] = ()
    source: str = "none"  # how most groups were drawn: seen / new / split / shape / none
    # Cut settings (policy, τ) each candidate within the bound is also evaluated with, by
    # simulating its rollout on every scenario (see expected.expected_cut_point); empty: no cut.
    cuts: tuple[tuple[str, float], ...] = ()
    shape: list[float] = []  # the dataset's sample/median ratios: the cut planner's remaining
    # Each group's plan-time median where its prompt was seen, 0 where it is new: where the
    # simulated cut controller's online estimate starts (simulate_rollout's ``priors``).
    priors: list[float] = []
    max_new_tokens: float | None = None  # the generation limit, which bounds that remaining

    def __post_init__(self) -> None:
        for m in self.alternatives:
            if m not in METHODS:
                raise BadScalingSetting("margin alternative", m, f"one of {', '.join(METHODS)}")
        for policy, tau in self.cuts:
            if policy not in ("per_function", "global"):
                raise BadScalingSetting("margin cut", policy, "per_function or global")
            check_threshold(tau)
        check_max_new_tokens(self.max_new_tokens, "margin max_new_tokens")


def build_margin(
    predictor: LengthPredictor,
    works: Sequence[GroupWork],
    seen: Sequence[bool],
    n: int,
    alternatives: Sequence[AssignMethod] = (),
    seed: int = 0,
    cuts: Sequence[tuple[str, float]] = (),
    max_new_tokens: float | None = None,
) -> Margin:
    """The :class:`Margin` for a plan of ``works`` (``seen[i]``: group i's prompt was seen).
    The ``alternatives`` and ``cuts`` are tried only when there are scenarios (some error was
    measured). ``max_new_tokens``: the rollout's generation limit, if known (it bounds what the
    simulated cut planner expects a straggler still to produce)."""
    model = ErrorModel.from_predictor(predictor)
    sources = [model.source(s) for s in seen]
    top = max(set(sources), key=sources.count) if sources else "none"
    scenarios = model.scenarios(works, seen, n, seed) if n else []
    return Margin(
        scenarios=scenarios,
        # Nothing measured, nothing to guard against: keep the configured assignment.
        alternatives=tuple(alternatives) if scenarios else (),
        source=top if n else "off",
        cuts=tuple((str(c), float(t)) for c, t in cuts) if scenarios else (),
        shape=predictor.shape_ratios() if scenarios and cuts else [],
        priors=seen_priors(works, seen) if scenarios and cuts else [],
        max_new_tokens=max_new_tokens,
    )


def seen_priors(works: Sequence[GroupWork], seen: Sequence[bool]) -> list[float]:
    """Each group's predicted median where its prompt was seen, 0 where it is new: the online
    estimator's starting point (a new prompt's estimate waits for its first finished sample)."""
    return [
        float(median(w.lengths)) if s and w.lengths else 0.0
        for w, s in zip(works, seen, strict=True)
    ]


def admission_order(
    assignment: Assignment, works: Sequence[GroupWork]
) -> list[list[tuple[int, int]]]:
    """Each function's sequences as ``(group, sample)``, longest *predicted* first (ties in
    group order): the order :func:`scenario_loads` admits them in. It depends on the
    predictions only, so a caller evaluating many scenarios of one assignment sorts once."""
    order = []
    for members in assignment.groups:
        seqs = [(p, g, i) for g in members for i, p in enumerate(works[g].lengths)]
        seqs.sort(key=lambda t: -t[0])  # stable: equal predictions keep group order
        order.append([(g, i) for _, g, i in seqs])
    return order


def scenario_loads(
    assignment: Assignment,
    works: Sequence[GroupWork],
    lengths: Scenario,
    params: ThroughputParams,
    order: Sequence[Sequence[tuple[int, int]]] | None = None,
) -> list[float]:
    """Each function's seconds (prefill + decode) when its groups' lengths are ``lengths``,
    admitted longest *predicted* first. ``order``: :func:`admission_order` of ``assignment``
    and ``works``, when the caller has it."""
    if len(lengths) != len(works):
        raise BadScalingInput("scenario_loads", f"{len(works)} groups, {len(lengths)} in scenario")
    if order is None:
        order = admission_order(assignment, works)
    loads = []
    for members, seqs in zip(assignment.groups, order, strict=True):
        for g in members:
            if len(lengths[g]) != len(works[g].lengths):
                raise BadScalingInput(
                    "scenario_loads",
                    f"group {g}: {len(works[g].lengths)} predicted, {len(lengths[g])} drawn",
                )
        prefill = params.prefill_seconds(sum(works[g].prefill_tokens for g in members))
        loads.append(prefill + decode_seconds([lengths[g][i] for g, i in seqs], params))
    return loads
