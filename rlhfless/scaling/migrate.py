"""Cut-and-migrate: consolidate a rollout's unfinished sequences onto fewer functions.

**Per-function cut (the paper's policy, :func:`plan_cut_and_migrate`).** Each decode function
tracks ``finished / assigned`` of its sequences. Once that ratio reaches the threshold ``τ``
(0.70 in the public re-implementation), the function is a cut candidate: if every one of its
unfinished sequences fits into the free batch slots of functions that keep running, it is cut
(its generation stops), its sequences move with the tokens they have produced so far, and it is
released. Candidates are tried fewest-unfinished first; a function that receives sequences in a
plan is not cut in the same plan, and at least one function with work always keeps running.
A smaller ``τ`` means more migrations; below ~0.5 there are rarely free slots to move into.
:func:`plan_cut_with_loads` makes the same plan from each function's :class:`FunctionLoad` and
the candidates' progress, for a caller that asks often (the simulator).

Where a sequence goes. Longest predicted remaining first, to the function that will run long
enough anyway (its own predicted remaining >= the sequence's: moving it there extends nothing),
the one with most free slots among those; if none runs that long, the longest-running one.

With the step-time model (the no-extension guard), a move must be predicted to finish within
the horizon: the latest predicted finish of any working function, or, when the caller passes
``planned`` (the seconds the plan expected the rollout to run from now without a cut), that if
it is later. The plan accepted that makespan when it chose k and τ, so a move that ends before
it extends nothing the plan had not already paid for; without it, a horizon set by predictions
that are sharper than the plan's (a straggler's remaining bounded by the generation limit) left
freed functions running.

How it moves. The receiving function needs the KV of prompt + partial response:
:meth:`~rlhfless.scaling.transfer.TransferParams.choose` ships it or re-prefills it, whichever
is cheaper. Either way the sequence continues from its partial tokens: nothing is truncated or
regenerated, so the final samples are the ones the policy would have produced.

**Global cut (RLHFuse-style, :func:`plan_global_cut`)** for comparison: once ``finished /
assigned`` over *all* functions reaches ``τ``, every unfinished sequence is packed onto the fewest
functions that can hold them (those with the most unfinished sequences, which move least), and
all others are cut at once.

Functions with no unfinished sequences are done (released by the caller), never destinations.
All inputs and outputs are structs; nothing here runs a process.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import msgspec

from rlhfless.scaling.errors import BadScalingInput, BadScalingSetting
from rlhfless.scaling.throughput import ThroughputParams
from rlhfless.scaling.transfer import TransferMethod, TransferParams


def check_threshold(threshold: float, name: str = "cut_threshold") -> float:
    if not (isinstance(threshold, int | float) and 0.0 < threshold <= 1.0):
        raise BadScalingSetting(
            name,
            threshold,
            "in (0, 1] (the fraction of a function's sequences finished before it is cut)",
            "0.7 is the paper's re-implementation default; 1 never cuts a function with work left.",
        )
    return float(threshold)


class SequenceProgress(msgspec.Struct, frozen=True, kw_only=True):
    """One unfinished sequence: its prompt length and the response tokens produced so far."""

    seq_id: int | str
    prompt_tokens: int
    tokens: tuple[int, ...] = ()  # partial response ids (may be left empty by a planner)
    produced: int | None = None  # tokens produced; None = len(tokens)
    predicted_remaining: float = 0.0  # tokens still to decode (prediction)

    def __post_init__(self) -> None:
        if self.prompt_tokens < 0:
            raise BadScalingInput(f"sequence {self.seq_id!r}", "prompt_tokens must be >= 0")
        if self.produced is not None and (
            self.produced < 0 or (self.tokens and self.produced != len(self.tokens))
        ):
            raise BadScalingInput(
                f"sequence {self.seq_id!r}",
                f"produced={self.produced} disagrees with {len(self.tokens)} token ids",
            )
        if not (math.isfinite(self.predicted_remaining) and self.predicted_remaining >= 0):
            raise BadScalingInput(
                f"sequence {self.seq_id!r}", "predicted_remaining must be finite and >= 0"
            )

    @property
    def n_produced(self) -> int:
        return len(self.tokens) if self.produced is None else self.produced

    @property
    def state_tokens(self) -> int:
        """Tokens whose KV the receiving function needs: prompt + partial response."""
        return self.prompt_tokens + self.n_produced


class FunctionProgress(msgspec.Struct, frozen=True, kw_only=True):
    """A decode function mid-rollout. ``unfinished`` holds its running and queued sequences."""

    function_id: str
    assigned: int  # sequences it has been given (migrated-in ones included)
    finished: int
    unfinished: tuple[SequenceProgress, ...] = ()
    max_batch: int = 256

    def __post_init__(self) -> None:
        if self.assigned < 0 or self.finished < 0 or self.finished > self.assigned:
            raise BadScalingInput(
                f"function {self.function_id!r}",
                f"need 0 <= finished ({self.finished}) <= assigned ({self.assigned})",
            )
        if self.finished + len(self.unfinished) > self.assigned:
            raise BadScalingInput(
                f"function {self.function_id!r}",
                f"finished ({self.finished}) + unfinished ({len(self.unfinished)}) exceeds "
                f"assigned ({self.assigned})",
            )
        if self.max_batch < 1:
            raise BadScalingInput(f"function {self.function_id!r}", "max_batch must be >= 1")

    @property
    def ratio(self) -> float:
        return finished_ratio(self.finished, self.assigned)

    @property
    def predicted_remaining(self) -> float:
        return max((s.predicted_remaining for s in self.unfinished), default=0.0)


def finished_ratio(finished: int, assigned: int) -> float:
    """``finished / assigned`` (1 with nothing assigned): what ``τ`` is compared with."""
    return finished / assigned if assigned else 1.0


class FunctionLoad(msgspec.Struct, frozen=True, kw_only=True):
    """What a cut plan needs of a function that is only a destination: how many sequences it
    still runs and their predicted remaining tokens, longest and summed (see
    :func:`plan_cut_with_loads`)."""

    function_id: str
    unfinished: int
    remaining: float  # the longest predicted remaining of its unfinished sequences
    total: float  # their sum, added in the order of its unfinished sequences
    max_batch: int = 256

    @classmethod
    def of(cls, f: FunctionProgress) -> FunctionLoad:
        return cls(
            function_id=f.function_id,
            unfinished=len(f.unfinished),
            remaining=f.predicted_remaining,
            total=sum(s.predicted_remaining for s in f.unfinished),
            max_batch=f.max_batch,
        )


class Move(msgspec.Struct, frozen=True, kw_only=True):
    seq_id: int | str
    source: str
    dest: str
    tokens: tuple[int, ...]  # the partial response, kept
    produced: int
    state_tokens: int  # prompt + produced: KV shipped or re-prefilled
    method: TransferMethod
    seconds: float  # predicted transfer / re-prefill time


class MigrationPlan(msgspec.Struct, kw_only=True):
    policy: str  # "per_function" or "global"
    cut: list[str] = []  # functions to stop and release
    moves: list[Move] = []
    reasons: dict[str, str] = {}  # why a candidate was or was not cut

    @property
    def empty(self) -> bool:
        return not self.cut

    def moves_to(self, dest: str) -> list[Move]:
        return [m for m in self.moves if m.dest == dest]


class _Dest:
    """A function that may receive sequences: free slots and its remaining predicted work."""

    __slots__ = ("fid", "free", "n", "params", "remaining", "total")

    def __init__(self, f: FunctionLoad | None, params: ThroughputParams | None) -> None:
        self.params = params
        if f is not None:
            self.fid = f.function_id
            self.free = f.max_batch - f.unfinished
            self.remaining = f.remaining
            self.total = f.total
            self.n = f.unfinished

    def copy(self) -> _Dest:
        d = _Dest(None, self.params)
        d.fid, d.free, d.remaining, d.total, d.n = (
            self.fid, self.free, self.remaining, self.total, self.n
        )  # fmt: skip
        return d

    def load(self, extra: float = 0.0, delay: float = 0.0) -> float:
        """Predicted seconds (tokens without params) until it finishes, with one more sequence."""
        # Every plan asks this of each destination for each sequence: max(a, b) is spelled
        # out as the builtin decides it (b only if b > a), without its call.
        rem = extra if extra > self.remaining else self.remaining
        if self.params is None:
            arrival = delay + extra
            return arrival if arrival > rem else rem
        p = self.params
        n = self.n + (1 if extra > 0 else 0)
        own = p.step_seconds * rem + p.step_seconds_per_seq * (self.total + extra)
        arrival = delay + extra * p.step_time(n)
        return arrival if arrival > own else own


def _check_functions(functions: Sequence[FunctionProgress]) -> None:
    ids = [f.function_id for f in functions]
    if len(set(ids)) != len(ids):
        raise BadScalingInput("migration plan", "function_id values must be unique")
    seqs = [s.seq_id for f in functions for s in f.unfinished]
    if len(set(seqs)) != len(seqs):
        raise BadScalingInput("migration plan", "a seq_id appears on more than one function")


def _most_headroom(
    dests: Sequence[_Dest], need: float, delay: float, within: float
) -> _Dest | None:
    """Of ``dests``, the one whose predicted finish with a sequence of ``need`` tokens arriving
    after ``delay`` seconds is earliest and at most ``within`` (ties: most free slots, then
    function id); None if none fits. Each destination's load is computed once."""
    best, best_key = None, None
    for d in dests:
        load = d.load(need, delay)
        if load <= within:
            key = (load, -d.free, d.fid)
            if best_key is None or key < best_key:
                best, best_key = d, key
    return best


def _place(
    seqs: Sequence[SequenceProgress],
    source: str,
    dests: list[_Dest],
    transfer: TransferParams,
    horizon: float | None = None,
) -> list[Move] | None:
    """Moves for all of ``seqs`` into ``dests`` (updated in place), or None if they do not fit.

    With a ``horizon`` (predicted seconds the rollout runs anyway), a sequence only goes where
    the destination's predicted finish stays within it, to the one with the most headroom left.
    Without, to a function that runs long enough anyway (predicted remaining >= the sequence's),
    most free slots first, else to the longest-running one.
    """
    if sum(max(d.free, 0) for d in dests) < len(seqs):
        return None
    moves = []
    within = None if horizon is None else horizon * (1 + 1e-9)
    for s in sorted(seqs, key=lambda s: (-s.predicted_remaining, str(s.seq_id))):
        method, seconds = transfer.choose(s.state_tokens)
        need = s.predicted_remaining
        open_ = [d for d in dests if d.free > 0]
        if within is not None:
            best = _most_headroom(open_, need, seconds, within)
            if best is None:
                return None
            d = best
        else:
            long_enough = [d for d in open_ if d.remaining >= need]
            if long_enough:
                d = max(long_enough, key=lambda d: (d.free, -d.remaining, d.fid))
            else:
                d = max(open_, key=lambda d: (d.remaining, d.free, d.fid))
        d.free -= 1
        d.remaining = max(d.remaining, need)
        d.total += need
        d.n += 1
        moves.append(
            Move(
                seq_id=s.seq_id,
                source=source,
                dest=d.fid,
                tokens=s.tokens,
                produced=s.n_produced,
                state_tokens=s.state_tokens,
                method=method,
                seconds=seconds,
            )
        )
    return moves


def cut_due(cut: str, threshold: float, functions: Iterable[tuple[int, int, int]]) -> bool:
    """Whether a cut plan is worth asking for: some working function has ``finished >= τ ·
    assigned`` (``per_function``), or all of them together have (``global``).

    ``functions``: ``(finished, assigned, unfinished)`` of each function not yet done. A cheap
    test that planners run before building every sequence's progress."""
    rows = list(functions)
    if cut == "per_function":
        return any(u > 0 and f >= threshold * a for f, a, u in rows)
    return sum(f for f, _, _ in rows) >= threshold * sum(a for _, a, _ in rows)


def plan_cut_and_migrate(
    functions: Sequence[FunctionProgress],
    threshold: float = 0.7,
    transfer: TransferParams | None = None,
    params: ThroughputParams | None = None,
    planned: float | None = None,
) -> MigrationPlan:
    """The paper's per-function cut (see the module docstring).

    With ``params`` (the functions' step-time model) a cut must not extend the rollout: every
    moved sequence must be predicted to finish on its destination before the latest predicted
    finish of any working function now (the horizon), and goes where most headroom is left.
    Without, sequences go to functions that run long enough anyway (token counts only).
    ``planned``: seconds the plan expected the rollout to run from now; the horizon is at least
    that (module docstring).
    """
    tau = check_threshold(threshold)
    transfer = transfer or TransferParams()
    _check_functions(functions)
    working = [f for f in functions if f.unfinished]
    return plan_cut_with_loads(
        [f for f in working if f.ratio >= tau],
        [FunctionLoad.of(f) for f in working],
        tau,
        transfer,
        params,
        planned,
    )


def plan_cut_with_loads(
    candidates: Sequence[FunctionProgress],
    loads: Sequence[FunctionLoad],
    threshold: float = 0.7,
    transfer: TransferParams | None = None,
    params: ThroughputParams | None = None,
    planned: float | None = None,
) -> MigrationPlan:
    """:func:`plan_cut_and_migrate`, given the full progress of the candidates only (working
    functions with ``finished >= τ · assigned``; others are ignored) and a
    :class:`FunctionLoad` of every working function (candidates included): the same plan.

    For a caller that asks often about many sequences (the simulator, at every finish once a
    function is a candidate): a function that can only receive needs no per-sequence progress.
    """
    tau = check_threshold(threshold)
    transfer = transfer or TransferParams()
    plan = MigrationPlan(policy="per_function")
    candidates = sorted(
        (f for f in candidates if f.unfinished and f.ratio >= tau),
        key=lambda f: (len(f.unfinished), f.predicted_remaining, f.function_id),
    )
    dests, horizon = _dests_and_horizon(loads, params, planned)
    receivers: set[str] = set()
    cut: set[str] = set()
    for c in candidates:
        if c.function_id in receivers:
            plan.reasons[c.function_id] = "kept: it receives sequences in this plan"
            continue
        pool = [d for fid, d in dests.items() if fid != c.function_id and fid not in cut]
        if not pool:
            plan.reasons[c.function_id] = "kept: no other function is running"
            continue
        # Trial placement on copies, so a failed fit leaves the pool untouched.
        trial = [d.copy() for d in pool]
        moves = _place(c.unfinished, c.function_id, trial, transfer, horizon)
        if moves is None:
            free = sum(max(d.free, 0) for d in pool)
            plan.reasons[c.function_id] = (
                f"kept: {len(c.unfinished)} unfinished, {free} free slots elsewhere"
                + ("" if horizon is None else f" within the {horizon:.1f} s horizon")
            )
            continue
        for t in trial:
            dests[t.fid] = t
        cut.add(c.function_id)
        receivers.update(m.dest for m in moves)
        plan.cut.append(c.function_id)
        plan.moves.extend(moves)
        plan.reasons[c.function_id] = (
            f"cut at {c.finished}/{c.assigned} = {c.ratio:.2f} >= {tau:.2f}: "
            f"{len(moves)} sequences moved"
        )
    return plan


def _dests_and_horizon(
    loads: Sequence[FunctionLoad], params: ThroughputParams | None, planned: float | None
) -> tuple[dict[str, _Dest], float | None]:
    """The working functions as destinations, by id, and the guard's horizon (None without
    ``params``): what :func:`plan_cut_with_loads` places into."""
    dests = {f.function_id: _Dest(f, params) for f in loads if f.unfinished}
    horizon = max((d.load() for d in dests.values()), default=0.0) if params else None
    if planned is not None:
        if not math.isfinite(planned):
            raise BadScalingInput("migration plan", f"planned must be finite, got {planned}")
        if horizon is not None:
            horizon = max(horizon, planned)
    return dests, horizon


def cut_ruled_out(
    firsts: Sequence[tuple[str, int, SequenceProgress]],
    loads: Sequence[FunctionLoad],
    transfer: TransferParams | None = None,
    params: ThroughputParams | None = None,
    planned: float | None = None,
) -> bool:
    """Whether :func:`plan_cut_with_loads` is sure to plan no cut, told of each candidate only
    ``(function_id, unfinished sequences, the first of them it would place)``: the longest
    predicted remaining, then the smallest ``str(seq_id)``. ``loads``, ``transfer``, ``params``
    and ``planned`` as it takes them. For a caller that asks at every finish and is mostly told
    no: it need not build every candidate sequence's progress to hear it.

    Exact, not a heuristic: until a candidate is cut the planner's destinations stay as
    ``loads`` made them and nothing receives, so it plans a cut only if some candidate passes
    :func:`_place` against all the other working functions, and _place's first step is this
    test (the free slots, then the first sequence within the horizon). Raises what the planner
    raises for a bad ``planned``. Without ``params`` (no horizon) a first sequence always fits
    where slots do: not ruled out."""
    transfer = transfer or TransferParams()
    dests, horizon = _dests_and_horizon(loads, params, planned)
    if horizon is None:
        return False
    within = horizon * (1 + 1e-9)  # as _place compares
    for fid, unfinished, first in firsts:
        pool = [d for other, d in dests.items() if other != fid]
        if not pool or sum(max(d.free, 0) for d in pool) < unfinished:
            continue  # kept: nowhere to go, or too few free slots
        _, seconds = transfer.choose(first.state_tokens)
        open_ = [d for d in pool if d.free > 0]
        if _most_headroom(open_, first.predicted_remaining, seconds, within) is not None:
            return False
    return True


def plan_global_cut(
    functions: Sequence[FunctionProgress],
    threshold: float = 0.7,
    transfer: TransferParams | None = None,
) -> MigrationPlan:
    """RLHFuse-style: at ``threshold`` of all sequences finished, pack the rest onto the fewest."""
    tau = check_threshold(threshold)
    transfer = transfer or TransferParams()
    _check_functions(functions)
    plan = MigrationPlan(policy="global")
    working = [f for f in functions if f.unfinished]
    assigned = sum(f.assigned for f in functions)
    finished = sum(f.finished for f in functions)
    ratio = finished / assigned if assigned else 1.0
    if len(working) < 2 or ratio < tau:
        return plan
    # Keepers: most unfinished first (fewest moves), until their slots hold everything.
    order = sorted(
        working, key=lambda f: (-len(f.unfinished), -f.predicted_remaining, f.function_id)
    )
    total = sum(len(f.unfinished) for f in working)
    keepers: list[FunctionProgress] = []
    capacity = 0
    for f in order:
        keepers.append(f)
        capacity += f.max_batch
        if capacity >= total:
            break
    keep_ids = {f.function_id for f in keepers}
    dests = [_Dest(FunctionLoad.of(f), None) for f in keepers]
    for f in order:
        if f.function_id in keep_ids:
            continue
        moves = _place(f.unfinished, f.function_id, dests, transfer)
        if moves is None:  # cannot happen: keepers' capacity holds every unfinished sequence
            raise AssertionError("global cut: keepers cannot hold the unfinished sequences")
        plan.cut.append(f.function_id)
        plan.moves.extend(moves)
        plan.reasons[f.function_id] = f"global cut at {finished}/{assigned} = {ratio:.2f}"
    return plan
