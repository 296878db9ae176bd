"""What a simulated sequence has left to decode, as ``simulate_rollout`` is told to estimate it.

``remaining`` (simulate_rollout's setting) picks the way:

* ``"conditional"``: :func:`~rlhfless.scaling.predictor.expected_remaining` over the sequence's
  group's length support, ``tail`` x produced once it has overrun it, memoised per support (a
  planner simulates the same groups on many scenarios, and every rollout asks at much the same
  token counts);
* ``"naive"``: predicted - produced, at least 1;
* ``"siblings"``: online, as the rollout stage's cut controller estimates, from the group's
  finished samples and its running ones (:class:`~rlhfless.scaling.online.SiblingPredictor`,
  told every finish as it happens).

Every way stays within ``max_new_tokens`` (the generation limit), when given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import median

from rlhfless.scaling.errors import BadScalingInput
from rlhfless.scaling.online import SampleReport, SiblingPredictor
from rlhfless.scaling.predictor import expected_remaining as expected_remaining  # a hook

# expected_remaining(support, produced, tail, limit) by (support, tail, limit), then produced.
# A planner simulates the same groups' predictions on many scenarios and cut settings, and
# every rollout asks each group's remaining at much the same token counts: the table outlives
# the rollout. A hit returns the value an identical call computed (equal float keys: the
# support's points only enter as ``x > produced`` and ``x - produced`` with produced >= 0, where
# 0.0 and -0.0 agree; a NaN never equals, so it only misses). tail's type is in the key: an int
# tail gives an int ``tail * produced``.
_TABLES: dict[tuple[object, ...], dict[int, float]] = {}
_TABLES_MAX = 4096  # supports kept; past it the tables start over


def _table(support: list[float], tail: float, limit: float | None) -> dict[int, float]:
    key = (tuple(support), type(tail), tail, limit)
    table = _TABLES.get(key)
    if table is None:
        if len(_TABLES) >= _TABLES_MAX:
            _TABLES.clear()
        table = _TABLES[key] = {}
    return table


class Remaining:
    """Each unfinished sequence's predicted remaining tokens, having produced so many.

    Sequences are ids in group order (``of_group[g]``: group g's ids); ``group[s]`` is s's
    group, ``predicted[s]`` its predicted length (the naive way's); ``support[g]`` group g's
    length support (the conditional way's, ``conditional``); ``siblings`` the online estimator
    (that way's: given, it is the way)."""

    def __init__(
        self,
        conditional: bool,
        predicted: list[float],
        group: list[int],
        of_group: list[list[int]],
        support: list[list[float]],
        tail: float,
        limit: float | None,
        siblings: SiblingPredictor | None = None,
    ) -> None:
        self.conditional, self.predicted, self.group = conditional, predicted, group
        self.support, self.tail, self.limit = support, tail, limit
        self.siblings = siblings
        tables = [_table(s, tail, limit) for s in support]
        # each sequence's table (its group's; conditional remaining only)
        self.table_of = [tables[g] for g in group] if tables else []
        self.index = [0] * len(group)  # each sequence's index within its group
        for ids in of_group:
            for i, s in enumerate(ids):
                self.index[s] = i

    def finished(self, s: int, length: int) -> None:
        """Sequence s ended at ``length`` tokens: the online estimator, if any, is told."""
        if self.siblings is not None:
            self.siblings.observe([self._report(s, length, True)])

    def of(self, seqs: Sequence[int], made: Sequence[int]) -> list[float]:
        """The predicted remaining tokens of each of ``seqs``, having produced ``made``."""
        if self.siblings is not None:
            return self._sibling(seqs, made)
        if not self.conditional:  # naive
            top = math.inf if self.limit is None else self.limit
            predicted = self.predicted
            return [max(min(predicted[s], top) - m, 1.0) for s, m in zip(seqs, made, strict=True)]
        # A pure function of (support, produced) given tail and the limit, asked again for a
        # group's samples, at each cut check and by every rollout of the same groups: memoised
        # (_table); the misses are filled in after one pass of look-ups.
        table_of = self.table_of
        rems = [table_of[s].get(m) for s, m in zip(seqs, made, strict=True)]
        if None in rems:
            for i, (s, m) in enumerate(zip(seqs, made, strict=True)):
                if rems[i] is None:
                    rems[i] = self._expected(s, m)
        return rems  # type: ignore[return-value]  # every None filled in

    def _report(self, s: int, produced: int, finished: bool) -> SampleReport:
        return SampleReport(str(self.group[s]), self.index[s], produced, finished)

    def _sibling(self, seqs: Sequence[int], made: Sequence[int]) -> list[float]:
        """What the online estimator expects of each of ``seqs``, told their progress first."""
        siblings = self.siblings
        assert siblings is not None
        siblings.observe(self._report(s, m, False) for s, m in zip(seqs, made, strict=True))
        group = self.group
        # Each group's centre once, and each (group, produced) once: a check asks for every
        # unfinished sequence, and a group's samples run side by side.
        centres: dict[int, float] = {}
        found: dict[tuple[int, int], float] = {}
        out = []
        for s, m in zip(seqs, made, strict=True):
            g = group[s]
            rem = found.get((g, m))
            if rem is None:
                c = centres.get(g)
                if c is None:
                    c = centres[g] = siblings.centre(str(g))
                rem = found[(g, m)] = siblings.remaining_at(c, m)
            out.append(rem)
        return out

    def _expected(self, s: int, m: int) -> float:
        """Sequence s's expected_remaining having produced m, memoised in its group's table."""
        table = self.table_of[s]
        rem = table.get(m)
        if rem is None:
            g = self.group[s]
            rem = table[m] = expected_remaining(self.support[g], m, self.tail, self.limit)
        return rem


def sibling_predictor(
    of_group: list[list[int]],
    pred: Sequence[Sequence[float]],
    priors: Sequence[float] | None,
    shape: Sequence[float],
    limit: float | None,
) -> SiblingPredictor:
    """The online estimator the rollout stage's cut controller uses, for these groups: a group
    with a prior (``priors[g] > 0``: its prompt was seen; without ``priors``, every group's
    predicted median) starts from it, any other from the predictions' median until its first
    sample finishes."""
    # Medians as statistics.median takes them (an even count: the middle two's mean), as the
    # stage's estimator (SiblingPredictor.from_predictor) and margin.seen_priors take them.
    flat = [x for p in pred for x in p]
    typical = float(median(flat)) if flat else 1.0
    if priors is None:
        priors = [float(median(p)) if p else 0.0 for p in pred]
    elif len(priors) != len(pred):
        raise BadScalingInput("simulate_rollout", f"{len(pred)} groups, {len(priors)} priors")
    elif not all(math.isfinite(x) and x >= 0 for x in priors):
        raise BadScalingInput("simulate_rollout", f"priors must be finite and >= 0: {priors}")
    return SiblingPredictor(
        {str(g): len(ids) for g, ids in enumerate(of_group)},
        {str(g): float(x) for g, x in enumerate(priors) if x > 0},
        [r for r in shape if r > 0],
        default=max(typical, 1.0),
        max_new_tokens=limit,
    )
