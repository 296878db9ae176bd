"""Assigning prompt groups to k rollout functions by predicted work.

A *group* is one prompt and its G samples (a GRPO group; G = 1 for PPO). It always stays on one
function, so its prompt is prefilled once there. Its predicted work is :class:`GroupWork`.

A function's predicted time (its *load*) is, with a :class:`ThroughputParams`, prefill seconds +
decode seconds of its sequences under continuous batching; without one, its tokens (prefill +
decode), the classic additive LPT load. Decode time is not additive: a function's step time is
shared by its whole batch, so its time is about ``t0 * (its longest sequence) + t1 * (its tokens)``
(the closed form of :func:`~rlhfless.scaling.throughput.decode_seconds_fast`), used while
assigning; the reported loads are the exact simulation (longest sequences submitted first).

Methods:

* ``round_robin`` — group i to function i mod k: the baseline (what a fixed split does).
* ``lpt`` — longest processing time first: groups by decreasing load, each to the function whose
  load after taking it is smallest. Balances finish times; every function runs about as long.
* ``pack`` — the paper's length-aware packing: groups sorted by predicted longest sample, cut into
  contiguous chunks, each as large as possible while its load stays within a bound (LPT's
  makespan x (1 + slack), or the smallest bound k contiguous chunks can meet, whichever is
  larger). Functions holding short groups finish early and are released, and as few functions
  as the bound allows are used: the fewest chunks, and the smallest sum of chunk maxima, of any
  contiguous split under the bound (chunks taken greedily as large as possible start as late as
  possible). It may use fewer than k functions.

* ``stratified`` — groups sorted by predicted longest sample, cut into k contiguous strata of
  (nearly) equal predicted token work, none over one batch. Each function gets about the tokens
  round robin would give it, so its per-sequence step cost (``t1 * tokens``) is round robin's,
  while the long groups share functions: the short strata finish early and are released, and
  the sum of the functions' longest samples (``t0 * steps``, most of their seconds) shrinks.
  Unlike LPT and pack it never loads a function more because its groups were *predicted*
  short, so a sample that runs far past its prediction costs no more than under round robin:
  prediction error moves groups between strata, not the makespan. Known limit: the last
  (shortest) stratum holds the most sequences and may exceed one batch (then it queues);
  forcing it under the batch would unbalance the work, which measured worse.

Empty functions are dropped from the result and counted in ``Assignment.empty_functions``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import msgspec

from rlhfless.scaling.errors import BadScalingInput, BadScalingSetting
from rlhfless.scaling.throughput import ThroughputParams, decode_seconds

AssignMethod = Literal["round_robin", "lpt", "pack", "stratified"]
METHODS: tuple[str, ...] = ("round_robin", "lpt", "pack", "stratified")


class GroupWork(msgspec.Struct, frozen=True, kw_only=True):
    """One prompt group's predicted work: prompt tokens (prefilled once) and sample lengths."""

    group_id: int | str
    prefill_tokens: float
    lengths: tuple[float, ...]  # predicted decode tokens of each sample of the group

    def __post_init__(self) -> None:
        if not (math.isfinite(self.prefill_tokens) and self.prefill_tokens >= 0):
            raise BadScalingInput(
                f"group {self.group_id!r}",
                f"prefill_tokens must be >= 0, got {self.prefill_tokens}",
            )
        if not all(math.isfinite(x) and x >= 0 for x in self.lengths):
            raise BadScalingInput(
                f"group {self.group_id!r}", f"lengths must be finite and >= 0, got {self.lengths}"
            )

    @property
    def decode_tokens(self) -> float:
        return float(sum(self.lengths))

    @property
    def max_length(self) -> float:
        return float(max(self.lengths, default=0.0))

    @property
    def tokens(self) -> float:
        return self.prefill_tokens + self.decode_tokens


class Assignment(msgspec.Struct, kw_only=True):
    """Groups per function. ``groups[f]`` are indices into the works list, longest first."""

    method: str
    k: int  # functions asked for
    groups: list[list[int]]  # one list per function used (never empty)
    loads: list[float]  # predicted seconds per function (tokens when assigned without params)
    makespan: float  # max(loads), 0 with no work
    empty_functions: int  # functions asked for that got no group (dropped from groups)
    unit: str = "seconds"  # of loads and makespan: "seconds" or "tokens"

    @property
    def functions(self) -> int:
        return len(self.groups)

    def function_of(self, n_groups: int) -> list[int]:
        """For each group index, the function it went to."""
        out = [-1] * n_groups
        for f, members in enumerate(self.groups):
            for g in members:
                out[g] = f
        return out


class _Bin:
    """Incremental closed-form load of a set of groups (O(1) per added group)."""

    __slots__ = ("max_len", "params", "prefill", "seqs", "tokens")

    def __init__(self, params: ThroughputParams | None) -> None:
        self.params = params
        self.prefill = 0.0
        self.tokens = 0.0
        self.max_len = 0.0
        self.seqs = 0

    def with_(self, w: GroupWork) -> float:
        return _closed_load(
            self.params,
            self.prefill + w.prefill_tokens,
            self.tokens + w.decode_tokens,
            max(self.max_len, w.max_length),
            self.seqs + len(w.lengths),
        )

    def add(self, w: GroupWork) -> None:
        self.prefill += w.prefill_tokens
        self.tokens += w.decode_tokens
        self.max_len = max(self.max_len, w.max_length)
        self.seqs += len(w.lengths)


def _closed_load(
    params: ThroughputParams | None, prefill: float, tokens: float, max_len: float, seqs: int
) -> float:
    if params is None:
        return prefill + tokens
    steps = math.ceil(max_len)
    if seqs > params.max_batch:
        steps = max(steps, math.ceil(tokens / params.max_batch))
    return (
        params.prefill_seconds(prefill)
        + params.step_seconds * steps
        + params.step_seconds_per_seq * tokens
    )


def function_load(works: Sequence[GroupWork], params: ThroughputParams | None) -> float:
    """Predicted seconds (tokens without params) of one function holding ``works``."""
    if params is None:
        return float(sum(w.tokens for w in works))
    lengths = sorted((x for w in works for x in w.lengths), reverse=True)
    return params.prefill_seconds(sum(w.prefill_tokens for w in works)) + decode_seconds(
        lengths, params
    )


def _check(works: Sequence[GroupWork], k: int) -> None:
    if not (isinstance(k, int) and k >= 1):
        raise BadScalingSetting("k", k, "an integer >= 1 (number of functions)")
    ids = [w.group_id for w in works]
    if len(set(ids)) != len(ids):
        raise BadScalingInput("assign", "group_id values must be unique")


def _finish(
    method: str,
    k: int,
    works: Sequence[GroupWork],
    bins: list[list[int]],
    params: ThroughputParams | None,
) -> Assignment:
    groups = [
        sorted(b, key=lambda i: (-works[i].max_length, -works[i].tokens, i)) for b in bins if b
    ]
    loads = [function_load([works[i] for i in g], params) for g in groups]
    return Assignment(
        method=method,
        k=k,
        groups=groups,
        loads=loads,
        makespan=max(loads, default=0.0),
        empty_functions=k - len(groups),
        unit="tokens" if params is None else "seconds",
    )


def assign_round_robin(
    works: Sequence[GroupWork], k: int, params: ThroughputParams | None = None
) -> Assignment:
    """Group i to function i mod k, in the order given."""
    _check(works, k)
    bins: list[list[int]] = [[] for _ in range(k)]
    for i in range(len(works)):
        bins[i % k].append(i)
    return _finish("round_robin", k, works, bins, params)


def _solo_order(works: Sequence[GroupWork], params: ThroughputParams | None) -> list[int]:
    solo = [_closed_load(params, w.prefill_tokens, w.decode_tokens, w.max_length, len(w.lengths))
            for w in works]  # fmt: skip
    return sorted(range(len(works)), key=lambda i: (-solo[i], -works[i].max_length, i))


def assign_lpt(
    works: Sequence[GroupWork], k: int, params: ThroughputParams | None = None
) -> Assignment:
    """Longest processing time first, with the (non-additive) closed-form load."""
    _check(works, k)
    state = [_Bin(params) for _ in range(k)]
    bins: list[list[int]] = [[] for _ in range(k)]
    for i in _solo_order(works, params):
        best = min(range(k), key=lambda f: (state[f].with_(works[i]), len(bins[f]), f))
        state[best].add(works[i])
        bins[best].append(i)
    return _finish("lpt", k, works, bins, params)


def _greedy_chunks(
    works: Sequence[GroupWork], order: list[int], params: ThroughputParams | None, bound: float
) -> list[list[int]]:
    """Contiguous chunks of ``order``, each as large as possible with closed load <= bound and,
    with params, no more sequences than one batch holds (a queued sequence admitted late is
    where an unpredicted long tail hurts most)."""
    chunks: list[list[int]] = []
    cur: list[int] = []
    b = _Bin(params)
    cap = params.max_batch if params is not None else math.inf
    for i in order:
        over = b.seqs + len(works[i].lengths) > cap
        if cur and (over or b.with_(works[i]) > bound * (1 + 1e-12)):
            chunks.append(cur)
            cur, b = [], _Bin(params)
        cur.append(i)
        b.add(works[i])
    if cur:
        chunks.append(cur)
    return chunks


def assign_pack(
    works: Sequence[GroupWork],
    k: int,
    params: ThroughputParams | None = None,
    slack: float = 0.0,
    headroom: float = 0.0,
) -> Assignment:
    """Sort by predicted longest sample; fewest contiguous chunks within the makespan bound.

    ``headroom`` (a fraction in [0, 1)) lowers the bound below LPT's makespan, keeping chunks
    away from it: a margin for prediction error, at the price of more functions.
    """
    _check(works, k)
    if not (math.isfinite(slack) and slack >= 0):
        raise BadScalingSetting("pack slack", slack, "a finite number >= 0 (fraction)")
    if not (math.isfinite(headroom) and 0 <= headroom < 1):
        raise BadScalingSetting("pack headroom", headroom, "a fraction in [0, 1)")
    if not works:
        return _finish("pack", k, works, [], params)
    order = sorted(range(len(works)), key=lambda i: (-works[i].max_length, -works[i].tokens, i))
    lpt = assign_lpt(works, k, params)
    # LPT's makespan in the closed form (the same yardstick the chunks are measured with).
    lpt_closed = 0.0
    for g in lpt.groups:
        b = _Bin(params)
        for i in g:
            b.add(works[i])
        lpt_closed = max(lpt_closed, _closed_load(params, b.prefill, b.tokens, b.max_len, b.seqs))
    # The smallest bound k contiguous chunks can meet: binary search between the largest single
    # group and everything on one function.
    lo = max(_closed_load(params, w.prefill_tokens, w.decode_tokens, w.max_length, len(w.lengths))
             for w in works)  # fmt: skip
    hi = max(lo, _closed_load(
        params,
        sum(w.prefill_tokens for w in works),
        sum(w.decode_tokens for w in works),
        max(w.max_length for w in works),
        sum(len(w.lengths) for w in works),
    ))  # fmt: skip
    if len(_greedy_chunks(works, order, params, lo)) > k:
        for _ in range(60):
            mid = (lo + hi) / 2
            if len(_greedy_chunks(works, order, params, mid)) <= k:
                hi = mid
            else:
                lo = mid
        lo = hi
    bound = max(lo, lpt_closed * (1.0 + slack) * (1.0 - headroom))
    chunks = _greedy_chunks(works, order, params, bound)
    if len(chunks) > k:  # float edge: fall back to the searched bound
        chunks = _greedy_chunks(works, order, params, hi)
    return _finish("pack", k, works, chunks, params)


def _work(w: GroupWork, params: ThroughputParams | None) -> float:
    """A group's additive share of a function's time: prefill + per-sequence step cost."""
    if params is None:
        return w.tokens
    return params.prefill_seconds(w.prefill_tokens) + params.step_seconds_per_seq * w.decode_tokens


def assign_stratified(
    works: Sequence[GroupWork], k: int, params: ThroughputParams | None = None
) -> Assignment:
    """Longest predicted first, cut into k contiguous strata of about equal work (see above)."""
    _check(works, k)
    if not works:
        return _finish("stratified", k, works, [], params)
    order = sorted(range(len(works)), key=lambda i: (-works[i].max_length, -works[i].tokens, i))
    # Zero-work groups (zero lengths, no prompt) count as a sliver so they still spread out.
    work = [max(_work(works[i], params), 1e-9) for i in order]
    total = sum(work)
    # At most a batch per function; when k batches cannot hold them all, an even share each
    # (else the last stratum would queue all the overflow and finish last).
    n_seqs = sum(len(w.lengths) for w in works)
    cap = max(params.max_batch, math.ceil(n_seqs / k)) if params is not None else math.inf
    chunks: list[list[int]] = []
    cur: list[int] = []
    done = seqs = 0.0
    for pos, i in enumerate(order):
        # Close the stratum where the cumulative work is nearest its share, or at a full batch.
        target = total * (len(chunks) + 1) / k
        n = len(works[i].lengths)
        if cur and len(chunks) < k - 1:
            over_batch = seqs + n > cap
            if over_batch or abs(done + work[pos] - target) > abs(done - target):
                chunks.append(cur)
                cur, seqs = [], 0.0
        cur.append(i)
        seqs += n
        done += work[pos]
    chunks.append(cur)
    return _finish("stratified", k, works, chunks, params)


def assign(
    works: Sequence[GroupWork],
    k: int,
    method: AssignMethod = "pack",
    params: ThroughputParams | None = None,
    slack: float = 0.0,
    headroom: float = 0.0,
) -> Assignment:
    """Assign ``works`` to at most ``k`` functions with ``method`` (see the module docstring)."""
    if method == "round_robin":
        return assign_round_robin(works, k, params)
    if method == "lpt":
        return assign_lpt(works, k, params)
    if method == "pack":
        return assign_pack(works, k, params, slack, headroom)
    if method == "stratified":
        return assign_stratified(works, k, params)
    raise BadScalingSetting("assign method", method, f"one of {', '.join(METHODS)}")
