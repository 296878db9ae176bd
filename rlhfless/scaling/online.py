"""Sibling-informed, online length prediction: what is left of each running sample.

Why. The epoch predictor (:mod:`~rlhfless.scaling.predictor`) predicts once, before the rollout,
from a prompt's earlier epochs; a prompt it has not seen gets the dataset's typical length. But
the G samples of one prompt have similar lengths (Seer, arXiv 2511.14617), so once some of a
group's samples have finished, the rest are predicted far better from them; and a sample that is
still running is at least as long as it already is.

Model. Each sample of group g has length ``L = m_g * r``: ``m_g`` the group's median, ``r`` a
ratio drawn from the dataset's measured ``sample / its prompt's median`` spread (``shape``,
:meth:`~rlhfless.scaling.predictor.LengthPredictor.shape_ratios`). The samples of a group run
side by side, so its first finished samples are its shortest: the i-th shortest finished of G
(lengths ``F_1 <= F_2 <= ...``) is read as the ``i / (G + 1)`` quantile of ``r``, and
``F_i / r_(i)`` estimates ``m_g``. Those estimates are averaged on the log scale with the
plan-time median (the epoch predictor's profile, counted as ``prior_weight`` finished samples;
none for a prompt never seen), and raised to what its running samples allow (the shortest
running one, at ``p`` tokens, is at least the group's next order statistic). An unfinished sample that has produced ``p`` tokens then has
the median of ``L - p`` over the points of ``m_g * shape`` above ``p`` to go
(:func:`median_remaining`, bounded by the generation limit).

Pure: no clock, no I/O. The rollout stage feeds it progress (:class:`SampleReport`) with
:meth:`SiblingPredictor.observe` and asks :meth:`SiblingPredictor.remaining`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from statistics import NormalDist, median

import msgspec

from rlhfless.scaling.errors import BadScalingInput, BadScalingSetting
from rlhfless.scaling.predictor import (
    LengthPredictor,
    check_max_new_tokens,
    expected_remaining,
    resample_sorted,
)

# Before any group was measured: sample / median ratios of a lognormal with this sigma (the
# spread of a 135M model's and the synthetic workloads' samples around their prompt's median is
# 0.4-0.7 on the log scale). Replaced by the measured shape as soon as there is one.
DEFAULT_SIGMA = 0.5
SHAPE_POINTS = 16

SampleKey = tuple[str, int]  # (prompt id, sample index within its group)


class SampleReport(msgspec.Struct, frozen=True):
    """One sample's progress: ``produced`` tokens so far (its final length once ``finished``)."""

    prompt_id: str
    sample: int  # index within its group, 0 .. group_size - 1
    produced: int
    finished: bool = False


def lognormal_shape(sigma: float = DEFAULT_SIGMA, points: int = SHAPE_POINTS) -> list[float]:
    """Ratios ``sample / median`` at ``points`` evenly spaced quantiles of a lognormal."""
    unit = NormalDist()
    return [math.exp(sigma * unit.inv_cdf((i + 0.5) / points)) for i in range(points)]


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated ``q`` quantile of already sorted values."""
    pos = min(max(q, 0.0), 1.0) * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class _Group:
    """What is known of one group: its prior median, finished lengths, and running samples."""

    def __init__(self, size: int, prior: float | None) -> None:
        self.size = size
        self.prior = prior
        self.finished: dict[int, int] = {}
        self.running: dict[int, int] = {}
        self.median: float | None = None  # SiblingPredictor.median, kept until a sample finishes
        self.median_known = False

    def report(self, r: SampleReport) -> None:
        if r.sample in self.finished:
            return  # a finished sample's length is final
        if r.finished:
            self.running.pop(r.sample, None)
            self.finished[r.sample] = r.produced
            self.median_known = False
        else:
            self.running[r.sample] = max(r.produced, self.running.get(r.sample, 0))


class SiblingPredictor:
    """Remaining length of every running sample of one rollout (module docstring)."""

    def __init__(
        self,
        group_sizes: Mapping[str, int],
        priors: Mapping[str, float] | None = None,
        shape: Sequence[float] = (),
        *,
        prior_weight: float = 1.0,
        default: float = 128.0,
        max_new_tokens: float | None = None,
    ) -> None:
        if not (math.isfinite(prior_weight) and prior_weight >= 0):
            raise BadScalingSetting("prior_weight", prior_weight, "a finite number >= 0")
        if not (math.isfinite(default) and default > 0):
            raise BadScalingSetting("default", default, "a finite number > 0 (tokens)")
        if any(not (math.isfinite(r) and r > 0) for r in shape):
            raise BadScalingInput("SiblingPredictor", f"shape ratios must be > 0: {shape}")
        self.shape = sorted(float(r) for r in shape) or lognormal_shape()
        self.prior_weight = float(prior_weight)
        self.default = float(default)
        self.max_new_tokens = check_max_new_tokens(max_new_tokens)
        self._order_ratios: dict[tuple[int, int], float] = {}
        priors = priors or {}
        self._groups: dict[str, _Group] = {}
        for pid, size in group_sizes.items():
            if not (isinstance(size, int) and size >= 1):
                raise BadScalingInput("SiblingPredictor", f"group {pid!r}: size {size} < 1")
            self._groups[str(pid)] = _Group(size, priors.get(str(pid)))

    @classmethod
    def from_predictor(
        cls,
        predictor: LengthPredictor,
        prompt_ids: Sequence[str | int],
        group_size: int,
        max_new_tokens: float | None = None,
    ) -> SiblingPredictor:
        """The plan-time state: priors from ``predictor``'s profiles of the prompts it has seen
        (an unseen prompt has none: its siblings decide), its measured shape, its default."""
        priors = {
            str(p): float(median(predictor.profile(p))) for p in prompt_ids if predictor.seen(p)
        }
        shape = predictor.shape_ratios(SHAPE_POINTS)
        fallback = float(median(predictor.dataset_profile()))
        return cls(
            {str(p): group_size for p in prompt_ids},
            priors,
            [r for r in shape if r > 0],
            default=max(fallback, 1.0),
            max_new_tokens=max_new_tokens,
        )

    def observe(self, reports: Iterable[SampleReport]) -> None:
        """Record progress reports (any order; a finished sample's length is final)."""
        for r in reports:
            g = self._groups.get(str(r.prompt_id))
            if g is None:
                raise BadScalingInput("SiblingPredictor.observe", f"unknown prompt {r.prompt_id!r}")
            if not (0 <= r.sample < g.size) or r.produced < 0:
                raise BadScalingInput(
                    "SiblingPredictor.observe",
                    f"{r.prompt_id!r}: sample {r.sample} of {g.size}, produced {r.produced}",
                )
            g.report(r)

    def median(self, prompt_id: str) -> float | None:
        """The group's estimated median length; None before any evidence (no prior and no
        finished sibling: a prompt never seen is predicted once its first sample finishes)."""
        g = self._groups[str(prompt_id)]
        if g.median_known:
            return g.median
        logs, weight = 0.0, 0.0
        if g.prior is not None and g.prior > 0:
            logs, weight = self.prior_weight * math.log(g.prior), self.prior_weight
        done = sorted(g.finished.values())
        for i, length in enumerate(done, 1):
            logs += math.log(max(length, 1) / self._order_ratio(i, g.size))
            weight += 1.0
        g.median = math.exp(logs / weight) if weight > 0 else None
        g.median_known = True
        return g.median

    def lower_median(self, prompt_id: str) -> float:
        """The least median the running samples allow: the shortest of them, at ``p`` tokens,
        is at least the group's (k+1)-th shortest of G (k finished), so the median is at least
        ``p / r_(k+1)`` (0 when nothing runs yet). A group none of whose samples has finished
        by now is long, whatever its prior said."""
        g = self._groups[str(prompt_id)]
        if not g.running:
            return 0.0
        return min(g.running.values()) / self._order_ratio(len(g.finished) + 1, g.size)

    def _order_ratio(self, i: int, size: int) -> float:
        """The shape's ratio for the i-th shortest of ``size`` samples: its ``i / (size + 1)``
        quantile (memoised: asked for every group at every poll)."""
        key = (i, size)
        ratio = self._order_ratios.get(key)
        if ratio is None:
            ratio = self._order_ratios[key] = quantile(self.shape, i / (size + 1))
        return ratio

    def source(self, prompt_id: str) -> str:
        """What a group's estimate rests on: "siblings", "prior" or "default"."""
        g = self._groups[str(prompt_id)]
        if g.finished:
            return "siblings"
        return "prior" if g.prior is not None else "default"

    def centre(self, prompt_id: str) -> float:
        """The group's median as estimated now: its evidence (else the default), at least what
        its running samples allow."""
        mid = self.median(prompt_id)
        return max(mid if mid is not None else self.default, self.lower_median(prompt_id))

    def remaining_at(self, centre: float, produced: float) -> float:
        """Expected tokens to go for a running sample at ``produced`` of a group centred on
        ``centre`` (:meth:`centre`): :func:`median_remaining` of ``centre`` times the shape,
        read off the sorted points directly (the same number; asked for every running sample
        at every poll, and by the planner's simulations at every finish)."""
        if not (math.isfinite(produced) and produced >= 0):
            raise BadScalingInput("median_remaining", f"produced must be >= 0, got {produced}")
        limit = self.max_new_tokens
        support = [centre * r for r in self.shape]  # ascending: the shape is sorted...
        if not centre > 0:  # ...unless the centre is not positive
            return median_remaining(support, produced, limit)
        above = support[bisect.bisect_right(support, produced) :]
        if not above:
            return expected_remaining([], produced, max_new_tokens=limit)
        if limit is not None:
            above = [x if x < limit else limit for x in above]  # min(x, limit), still ascending
        n = len(above)
        mid = above[n // 2] if n % 2 else (above[n // 2 - 1] + above[n // 2]) / 2
        return max(1.0, float(mid) - produced)

    def remaining_of(self, prompt_id: str, produced: float) -> float:
        """Expected tokens to go for a running sample of ``prompt_id`` at ``produced``."""
        return self.remaining_at(self.centre(prompt_id), produced)

    def produced(self, key: SampleKey) -> int:
        """Tokens so far of a sample (0 before its first report)."""
        g = self._groups[key[0]]
        return g.finished.get(key[1], g.running.get(key[1], 0))

    def remaining(self) -> dict[SampleKey, float]:
        """Expected tokens to go for every unfinished sample (one never reported: from 0)."""
        out: dict[SampleKey, float] = {}
        for pid, g in self._groups.items():
            for sample in range(g.size):
                if sample not in g.finished:
                    out[(pid, sample)] = self.remaining_of(pid, g.running.get(sample, 0))
        return out

    def predicted_lengths(self) -> dict[SampleKey, float]:
        """Predicted final length of every unfinished sample: tokens so far + expected to go."""
        return {key: self.produced(key) + rem for key, rem in self.remaining().items()}


def median_remaining(
    support: Sequence[float], produced: float, max_new_tokens: float | None = None
) -> float:
    """Median tokens to go for a sample at ``produced``: the median of the ``support`` points
    above it (each capped at the limit), minus ``produced``; at least 1. The median, not the
    mean of :func:`~rlhfless.scaling.predictor.expected_remaining`: one rare 10x ratio in the
    shape would otherwise lift every estimate (replayed, mean relative error 1.5-2.1 with the
    mean vs 0.3-0.8 with the median) and blur the ranking. Past every point, it falls back to
    the mean's rule (as long again as it has run, within the limit)."""
    if not (math.isfinite(produced) and produced >= 0):
        raise BadScalingInput("median_remaining", f"produced must be >= 0, got {produced}")
    limit = check_max_new_tokens(max_new_tokens)
    above = sorted(x if limit is None else min(x, limit) for x in support if x > produced)
    if not above:
        return expected_remaining([], produced, max_new_tokens=limit)
    return max(1.0, float(median(above)) - produced)


def lockstep_reports(lengths: Mapping[str, Sequence[int]], clock: int) -> list[SampleReport]:
    """The progress reports of a rollout whose samples all started together and produce one
    token per step, ``clock`` steps in (a replay of a recorded trace's lengths)."""
    return [
        SampleReport(pid, i, min(x, clock), x <= clock)
        for pid, group in lengths.items()
        for i, x in enumerate(group)
    ]


def group_shape(groups: Iterable[Sequence[float]], points: int = SHAPE_POINTS) -> list[float]:
    """``sample / its group's median`` ratios over complete groups, resampled to ``points``
    quantiles (empty when no group has a positive median)."""
    ratios = [x / m for g in groups if g and (m := median(g)) > 0 for x in g]
    return resample_sorted(ratios, min(points, len(ratios))) if ratios else []
