"""A rollout simulated step by step: k functions, continuous batching, optional cut-and-migrate.

Used by ``benchmarks/scaling.py`` and the tests to measure a policy with *true* lengths while it
decides with *predicted* ones. Model (all times in seconds from the rollout's start):

* Function f is requested at 0, ready after its cold start (0 if warm), loads this iteration's
  weights, prefills its groups' prompts (``prefill_tokens / prefill_tokens_per_s``), then decodes.
* Decode: at most ``max_batch`` sequences run, admitted FIFO (the assignment's order, longest
  predicted first); each step takes ``t0 + t1 * batch`` and gives every running sequence a token.
* Cut-and-migrate (``cut = "per_function"`` or ``"global"``): whenever a sequence finishes, the
  planner of :mod:`~rlhfless.scaling.migrate` is asked with every working function's progress.
  Predicted remaining (``remaining = "conditional"``, the default) is
  :func:`~rlhfless.scaling.predictor.expected_remaining`: ``E[L - produced | L > produced]`` over
  the sequence's group profile plus its median times the dataset's ``shape`` ratios, ``tail`` x
  produced once it has overrun them all; ``"naive"``: predicted - produced, at least 1. A cut function stops at once;
  each moved sequence keeps its produced tokens and joins its destination's queue after the
  transfer time of its move (ship KV or re-prefill; re-prefill is charged to the sequence's
  arrival, not to the destination's other sequences: a simplification). A cut function is
  released when its last shipment has left.
* A function is released at its own finish, or, with ``hold_to_end``, at the makespan (a
  serverful baseline holding every slot for the whole stage).

Busy = weight load + prefill + decoding; idle = held - cold start - busy (waiting, or held to the
end). Every sequence decodes exactly its true length across however many functions it visits:
:attr:`SimResult.tokens_per_sequence` lets a test check that nothing is lost or truncated.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from typing import Literal

import msgspec

from rlhfless.cost_models import CostModel, Lifetime
from rlhfless.scaling.errors import BadScalingInput
from rlhfless.scaling.migrate import (
    FunctionProgress,
    SequenceProgress,
    check_threshold,
    cut_due,
    plan_cut_and_migrate,
    plan_global_cut,
)
from rlhfless.scaling.predictor import expected_remaining, length_support
from rlhfless.scaling.throughput import ThroughputParams
from rlhfless.scaling.transfer import TransferParams

CutPolicy = Literal["none", "per_function", "global"]
RemainingEstimate = Literal["conditional", "naive"]


class SimFunction(msgspec.Struct, kw_only=True):
    function_id: str
    cold_start_seconds: float
    requested_at: float = 0.0  # < 0 when pre-warmed before the rollout started
    ready_at: float
    finished_at: float = 0.0  # its last sequence finished (or it was cut)
    released_at: float = 0.0
    busy: list[tuple[float, float]] = []
    tokens: int = 0  # decode tokens produced here
    finished: int = 0  # sequences finished here
    cut_at: float | None = None

    @property
    def held_seconds(self) -> float:
        return self.released_at - self.requested_at

    @property
    def busy_seconds(self) -> float:
        return sum(e - s for s, e in self.busy)

    @property
    def idle_seconds(self) -> float:
        return max(0.0, self.held_seconds - self.cold_start_seconds - self.busy_seconds)

    def lifetime(self) -> Lifetime:
        return Lifetime(
            requested_at=self.requested_at,
            ready_at=self.ready_at,
            exited_at=self.released_at,
            busy=tuple(self.busy),
            label=self.function_id,
        )


class SimResult(msgspec.Struct, kw_only=True):
    makespan: float
    functions: list[SimFunction]
    moves: int  # sequences migrated
    cuts: int  # functions cut
    tokens_per_sequence: list[int]  # decode tokens each sequence got, over all functions

    @property
    def function_seconds(self) -> float:
        return sum(f.held_seconds for f in self.functions)

    @property
    def busy_seconds(self) -> float:
        return sum(f.busy_seconds for f in self.functions)

    @property
    def idle_seconds(self) -> float:
        return sum(f.idle_seconds for f in self.functions)

    @property
    def cold_seconds(self) -> float:
        return sum(f.cold_start_seconds for f in self.functions)

    def usd(self, model: CostModel, device_kind: str, continuous: bool = False) -> float:
        """Dollars under ``model``'s rules per function; ``continuous``: rate x held seconds
        (a serverful slot rented for the whole job, where a per-start minimum does not recur)."""
        if continuous:
            return model.rate(device_kind) * self.function_seconds
        return sum(model.price(device_kind, f.lifetime()).usd for f in self.functions)


class _Fn:
    def __init__(self, fid: str, max_batch: int) -> None:
        self.fid = fid
        self.max_batch = max_batch
        self.queue: deque[int] = deque()
        self.arrivals: list[tuple[float, int]] = []  # heap (arrival time, seq)
        self.active: list[tuple[int, int]] = []  # heap (finish step, seq)
        self.active_set: set[int] = set()
        self.step = 0  # completed decode steps
        self.in_step = 0  # batch of the step in flight (0: none)
        self.version = 0  # of its pending clock entry; older entries are stale
        self.assigned = 0
        self.finished = 0
        self.done = False
        self.waiting = False  # idle, waiting for migrated sequences to arrive
        self.busy_start: float | None = None


def simulate_rollout(
    lengths: Sequence[Sequence[int]],
    prefill_tokens: Sequence[float],
    groups: Sequence[Sequence[int]],
    params: ThroughputParams,
    *,
    predicted: Sequence[Sequence[float]] | None = None,
    warm: int = 0,
    cut: CutPolicy = "none",
    threshold: float = 0.7,
    transfer: TransferParams | None = None,
    hold_to_end: bool = False,
    prewarm: bool = False,
    guard: bool = True,
    remaining: RemainingEstimate = "conditional",
    shape: Sequence[float] = (),
    tail: float = 1.0,
) -> SimResult:
    """Simulate decoding ``lengths[g]`` (true lengths of group g's samples) on functions holding
    ``groups[f]`` (group indices). ``predicted[g]`` (same shape as lengths; default: the true
    lengths, an oracle) orders admission and feeds the cut planner. ``warm``: the first that
    many functions skip the cold start. ``prewarm``: cold starts happen before the rollout (timed
    from history, overlapping the previous stage): billed, but not in the makespan. ``guard``:
    per-function cuts use the step-time model so as not to extend the rollout. ``remaining``,
    ``shape`` (:meth:`LengthPredictor.shape_ratios`) and ``tail``: how the planner is told a
    sequence's remaining length (module docstring). ``cut = "auto"`` is a planning setting,
    not a cut: run the plan's (``ScalingConfig.cut_in_force``)."""
    if remaining not in ("conditional", "naive"):
        raise BadScalingInput(
            "simulate_rollout", f"remaining must be conditional/naive, got {remaining!r}"
        )
    if cut not in ("none", "per_function", "global"):
        raise BadScalingInput(
            "simulate_rollout", f"cut must be none/per_function/global, got {cut!r}"
        )
    tau = check_threshold(threshold) if cut != "none" else 1.0
    transfer = transfer or TransferParams(prefill_tokens_per_s=params.prefill_tokens_per_s)
    if len(prefill_tokens) != len(lengths):
        raise BadScalingInput("simulate_rollout", "prefill_tokens and lengths differ in length")
    if sorted(g for f in groups for g in f) != list(range(len(lengths))):
        raise BadScalingInput("simulate_rollout", "groups must hold every group index exactly once")
    pred = predicted if predicted is not None else lengths
    seq_len: list[int] = []
    seq_pred: list[float] = []
    seq_prompt: list[int] = []
    seq_group: list[int] = []
    seq_of_group: list[list[int]] = []
    for g, ls in enumerate(lengths):
        if len(pred[g]) != len(ls):
            raise BadScalingInput("simulate_rollout", f"predicted[{g}] has the wrong length")
        ids = []
        for x, p in zip(ls, pred[g], strict=True):
            if not x >= 0:
                raise BadScalingInput("simulate_rollout", f"negative length in group {g}")
            ids.append(len(seq_len))
            seq_len.append(math.ceil(x))
            seq_pred.append(float(p))
            seq_prompt.append(int(prefill_tokens[g]))
            seq_group.append(g)
        seq_of_group.append(ids)
    support = [length_support(p, shape) for p in pred] if remaining == "conditional" else []
    n = len(seq_len)
    produced = [0] * n  # decode tokens of completed steps, over all functions
    start_step = [0] * n  # its function's step count when it was admitted there
    fns: list[_Fn] = []
    out: list[SimFunction] = []
    clock: list[tuple[float, int, int]] = []  # (time, function, version)

    def schedule(f: int, t: float) -> None:
        fns[f].version += 1
        heapq.heappush(clock, (t, f, fns[f].version))

    for f, members in enumerate(groups):
        fn = _Fn(f"f{f}", params.max_batch)
        cold = 0.0 if f < warm else params.cold_start_seconds
        ready = 0.0 if prewarm else cold
        out.append(
            SimFunction(
                function_id=fn.fid,
                cold_start_seconds=cold,
                requested_at=ready - cold,
                ready_at=ready,
            )
        )
        seqs = sorted((s for g in members for s in seq_of_group[g]), key=lambda s: -seq_pred[s])
        fn.queue.extend(seqs)
        fn.assigned = len(seqs)
        fn.busy_start = ready
        fns.append(fn)
        start = ready + params.weight_load_seconds
        schedule(f, start + params.prefill_seconds(sum(prefill_tokens[g] for g in members)))
    moves = cuts = 0
    global_fired = False

    def close_busy(f: int, t: float) -> None:
        fn = fns[f]
        if fn.busy_start is not None:
            if t > fn.busy_start:
                out[f].busy.append((fn.busy_start, t))
            fn.busy_start = None

    def finish_fn(f: int, t: float) -> None:
        close_busy(f, t)
        fns[f].done = True
        fns[f].version += 1
        out[f].finished_at = t
        out[f].released_at = t

    def made(fn: _Fn, s: int) -> int:
        return produced[s] + (fn.step - start_step[s] if s in fn.active_set else 0)

    def progress() -> list[FunctionProgress]:
        rows = []
        for f, fn in enumerate(fns):
            if fn.done:
                continue
            unfinished = []
            for s in [s for _, s in fn.active] + list(fn.queue) + [s for _, s in fn.arrivals]:
                m = made(fn, s)
                if remaining == "conditional":
                    rem = expected_remaining(support[seq_group[s]], m, tail)
                else:
                    rem = max(seq_pred[s] - m, 1.0)
                unfinished.append(
                    SequenceProgress(
                        seq_id=s,
                        prompt_tokens=seq_prompt[s],
                        produced=m,
                        predicted_remaining=rem,
                    )
                )
            rows.append(
                FunctionProgress(
                    function_id=str(f),
                    assigned=fn.assigned,
                    finished=fn.finished,
                    unfinished=tuple(unfinished),
                    max_batch=fn.max_batch,
                )
            )
        return rows

    def has_candidate() -> bool:
        if cut == "global" and global_fired:
            return False
        # Every function (a global cut counts the finished ones too); one that is done has no
        # unfinished sequence, so it is never a per-function candidate.
        counts = ((fn.finished, fn.assigned, 0 if fn.done else fn_unfinished(fn)) for fn in fns)
        return cut_due(cut, tau, counts)

    def fn_unfinished(fn: _Fn) -> int:
        return len(fn.active) + len(fn.queue) + len(fn.arrivals)

    def migrate(t: float) -> None:
        nonlocal moves, cuts, global_fired
        rows = progress()
        if cut == "per_function":
            plan = plan_cut_and_migrate(rows, tau, transfer, params if guard else None)
        else:
            plan = plan_global_cut(rows, tau, transfer)
            global_fired = True
        if plan.empty:
            return
        cut_ids = [int(c) for c in plan.cut]
        leave = {c: t for c in cut_ids}
        for c in cut_ids:  # stop generation; the step in flight is abandoned
            src = fns[c]
            for _, s in src.active:
                produced[s] += src.step - start_step[s]
            src.active.clear()
            src.active_set.clear()
            src.queue.clear()
            src.arrivals.clear()
        woken = set()
        for m in plan.moves:
            s, src, dst = int(m.seq_id), int(m.source), int(m.dest)
            fns[dst].assigned += 1
            heapq.heappush(fns[dst].arrivals, (t + m.seconds, s))
            if m.method == "ship_kv":  # the source stays until its KV has left
                leave[src] = max(leave[src], t + m.seconds)
            woken.add(dst)
            moves += 1
        for c in cut_ids:
            cuts += 1
            finish_fn(c, t)
            out[c].cut_at = t
            out[c].released_at = leave[c]
        for dst in woken:
            d = fns[dst]
            if d.waiting:  # idle until its arrivals: wake at the earliest
                schedule(dst, d.arrivals[0][0])

    while clock:
        t, f, version = heapq.heappop(clock)
        fn = fns[f]
        if fn.done or version != fn.version:
            continue
        if fn.in_step:
            fn.step += 1
            out[f].tokens += fn.in_step
            fn.in_step = 0
            done_any = False
            while fn.active and fn.active[0][0] == fn.step:
                _, s = heapq.heappop(fn.active)
                fn.active_set.discard(s)
                produced[s] = seq_len[s]
                fn.finished += 1
                out[f].finished += 1
                done_any = True
            if done_any and cut != "none" and has_candidate():
                migrate(t)
                if fn.done:
                    continue
        while fn.arrivals and fn.arrivals[0][0] <= t + 1e-12:
            fn.queue.append(heapq.heappop(fn.arrivals)[1])
        while fn.queue and len(fn.active) < fn.max_batch:
            s = fn.queue.popleft()
            if produced[s] >= seq_len[s]:  # zero length: finished without a step
                fn.finished += 1
                out[f].finished += 1
                continue
            start_step[s] = fn.step
            fn.active_set.add(s)
            heapq.heappush(fn.active, (fn.step + seq_len[s] - produced[s], s))
        fn.waiting = False
        if fn.active:
            if fn.busy_start is None:
                fn.busy_start = t
            fn.in_step = len(fn.active)
            schedule(f, t + params.step_time(fn.in_step))
        elif fn.arrivals:
            close_busy(f, t)
            fn.waiting = True
            schedule(f, fn.arrivals[0][0])
        else:
            finish_fn(f, t)
    makespan = max((max(s.released_at, s.finished_at) for s in out), default=0.0)
    if hold_to_end:
        for s in out:
            s.released_at = makespan
    return SimResult(
        makespan=makespan,
        functions=out,
        moves=moves,
        cuts=cuts,
        tokens_per_sequence=list(produced),
    )
