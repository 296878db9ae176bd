"""The event engine of :func:`~rlhfless.scaling.simulate.simulate_rollout`: functions decoding
their sequences with continuous batching on one clock, without a cut (the model is in
:mod:`~rlhfless.scaling.simulate`'s docstring; a cut is :mod:`~rlhfless.scaling.sim_cut`)."""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence

from rlhfless.scaling.sim_input import Sequences
from rlhfless.scaling.sim_remaining import Remaining
from rlhfless.scaling.sim_result import SimFunction, SimResult
from rlhfless.scaling.throughput import ThroughputParams


class SimFn:
    """A simulated function: its queues, running batch and step clock."""

    def __init__(self, fid: str, max_batch: int) -> None:
        self.fid = fid
        self.max_batch = max_batch
        self.queue: deque[int] = deque()
        self.arrivals: list[tuple[float, int]] = []  # heap (arrival time, seq)
        self.active: list[tuple[int, int]] = []  # heap (finish step, seq)
        self.active_set: set[int] = set()
        self.step = 0  # completed decode steps (as of t_base)
        self.t_base = 0.0  # when step `step` completed (or decoding resumed): the next one's start
        self.in_step = 0  # batch of the steps in flight (0: none)
        self.due_step = 0  # the step whose completion is its pending clock entry
        self.version = 0  # of its pending clock entry; older entries are stale
        self.assigned = 0
        self.finished = 0
        self.done = False
        self.waiting = False  # idle, waiting for migrated sequences to arrive
        self.busy_start: float | None = None

    def unfinished_count(self) -> int:
        return len(self.active) + len(self.queue) + len(self.arrivals)


class Rollout:
    """One simulated rollout without a cut: its functions, the event clock and every
    sequence's progress. :meth:`start` requests the functions, :meth:`run` plays the clock out,
    :meth:`result` sums up. Sequence arrays are indexed by sequence id (:class:`Sequences`);
    function arrays (``fns``, ``out``) by function index. A cut hooks in where sequences finish
    (:meth:`after_finishes`, :meth:`finished_unstepped`: :class:`~rlhfless.scaling.sim_cut.CutRollout`)."""

    def __init__(self, params: ThroughputParams, seqs: Sequences, estimate: Remaining) -> None:
        self.params = params
        self.seqs = seqs
        self.estimate = estimate  # each unfinished sequence's predicted remaining
        n = len(seqs.length)
        self.produced = [0] * n  # decode tokens of completed steps, over all functions
        self.finished_at = [0.0] * n  # when each sequence finished
        self.start_step = [0] * n  # its function's step count when it was admitted there
        self.fns: list[SimFn] = []
        self.out: list[SimFunction] = []
        self.clock: list[tuple[float, int, int]] = []  # (time, function, version)
        self.moves = 0  # sequences moved and functions cut (by a cut: CutRollout)
        self.cuts = 0

    def finished(self, s: int, t: float) -> None:
        """Sequence s finished at t (its whole length produced): dated, and told to the
        estimate (the online one learns from it)."""
        self.finished_at[s] = t
        self.estimate.finished(s, self.seqs.length[s])

    def start(
        self,
        groups: Sequence[Sequence[int]],
        prefill_tokens: Sequence[float],
        warm: int,
        prewarm: bool,
    ) -> None:
        """Request function f for ``groups[f]``: its first clock entry is when its prompts are
        prefilled (after its cold start, unless warm or pre-warmed, and the weight load)."""
        params, of_group, predicted = self.params, self.seqs.of_group, self.seqs.predicted
        for f, members in enumerate(groups):
            fn = SimFn(f"f{f}", params.max_batch)
            cold = 0.0 if f < warm else params.cold_start_seconds
            ready = 0.0 if prewarm else cold
            self.out.append(
                SimFunction(
                    function_id=fn.fid,
                    cold_start_seconds=cold,
                    requested_at=ready - cold,
                    ready_at=ready,
                    warm=f < warm,
                )
            )
            ids = sorted((s for g in members for s in of_group[g]), key=lambda s: -predicted[s])
            fn.queue.extend(ids)
            fn.assigned = len(ids)
            fn.busy_start = ready
            self.fns.append(fn)
            start = ready + params.weight_load_seconds
            self.schedule(
                f, start + params.prefill_seconds(sum(prefill_tokens[g] for g in members))
            )

    def schedule(self, f: int, t: float) -> None:
        """Function f's next event is at t (its earlier clock entry, if any, goes stale)."""
        fn = self.fns[f]
        fn.version += 1
        heapq.heappush(self.clock, (t, f, fn.version))

    # Steps that finish nothing and admit nothing change only a function's step count, so only
    # the next step that does (a sequence's last, or the first at or after an arrival) goes on
    # the clock. Step times are still summed one step at a time, as a clock entry per step
    # would be, so every time (and so every decision) is the same to the last bit.
    def schedule_steps(self, f: int) -> None:
        fn = self.fns[f]
        st = self.params.step_time(fn.in_step)
        last = fn.active[0][0]  # the earliest last step of a running sequence
        arrive = fn.arrivals[0][0] if fn.arrivals else math.inf
        t, s = fn.t_base, fn.step
        while True:
            t += st
            s += 1
            if s >= last or arrive <= t + 1e-12:
                break
        fn.due_step = s
        self.schedule(f, t)

    def catch_up(self, g: int, t: float, f: int) -> None:
        """Count function g's steps that the clock would have run before (t, f)."""
        fn = self.fns[g]
        st = self.params.step_time(fn.in_step)
        while fn.step + 1 < fn.due_step:
            nt = fn.t_base + st
            if not (nt < t or (nt == t and g < f)):
                break
            fn.t_base = nt
            fn.step += 1
            self.out[g].tokens += fn.in_step

    def run(self) -> None:
        """Play the clock out. A live entry is a function's event: its prefill done, its steps
        due (schedule_steps), or its awaited arrivals due."""
        clock, fns = self.clock, self.fns
        while clock:
            t, f, version = heapq.heappop(clock)
            fn = fns[f]
            if fn.done or version != fn.version:
                continue  # stale: rescheduled since, or the function is finished
            if fn.in_step and self.end_steps(t, f, fn):
                continue  # the cut check its finishes asked for cut it
            self.admit(t, f, fn)
            self.resume(t, f, fn)

    def end_steps(self, t: float, f: int, fn: SimFn) -> bool:
        """Complete fn's steps in flight, finish the sequences they end and, if any did, check
        for a cut (and carry it out). Whether fn itself was cut."""
        out = self.out[f]
        # The steps skipped before this one (see schedule_steps), then this one.
        out.tokens += fn.in_step * (fn.due_step - fn.step)
        fn.step = fn.due_step
        fn.in_step = 0
        done_any = False
        while fn.active and fn.active[0][0] == fn.step:
            _, s = heapq.heappop(fn.active)
            fn.active_set.discard(s)
            self.produced[s] = self.seqs.length[s]
            self.finished(s, t)
            fn.finished += 1
            out.finished += 1
            done_any = True
        return done_any and self.after_finishes(t, f)

    def after_finishes(self, t: float, f: int) -> bool:
        """Function f has just finished sequences at t: whether that cut it (never, here)."""
        return False

    def finished_unstepped(self) -> None:
        """A zero-length sequence has just finished on admission (nothing to do, here)."""

    def admit(self, t: float, f: int, fn: SimFn) -> None:
        """Queue fn's arrivals due by t, then start queued sequences while a slot is free."""
        while fn.arrivals and fn.arrivals[0][0] <= t + 1e-12:
            fn.queue.append(heapq.heappop(fn.arrivals)[1])
        produced, length = self.produced, self.seqs.length
        while fn.queue and len(fn.active) < fn.max_batch:
            s = fn.queue.popleft()
            if produced[s] >= length[s]:  # zero length: finished without a step
                self.finished(s, t)
                self.finished_unstepped()
                fn.finished += 1
                self.out[f].finished += 1
                continue
            self.start_step[s] = fn.step
            fn.active_set.add(s)
            heapq.heappush(fn.active, (fn.step + length[s] - produced[s], s))

    def resume(self, t: float, f: int, fn: SimFn) -> None:
        """After admission at t: decode what runs, else wait (idle) for arrivals, else finish."""
        fn.waiting = False
        if fn.active:
            if fn.busy_start is None:
                fn.busy_start = t
            fn.in_step = len(fn.active)
            fn.t_base = t
            self.schedule_steps(f)
        elif fn.arrivals:
            self.close_busy(f, t)
            fn.waiting = True
            self.schedule(f, fn.arrivals[0][0])
        else:
            self.finish_fn(f, t)

    def close_busy(self, f: int, t: float) -> None:
        fn = self.fns[f]
        if fn.busy_start is not None:
            if t > fn.busy_start:
                self.out[f].busy.append((fn.busy_start, t))
            fn.busy_start = None

    def finish_fn(self, f: int, t: float) -> None:
        self.close_busy(f, t)
        fn = self.fns[f]
        fn.done = True
        fn.version += 1
        self.out[f].finished_at = t
        self.out[f].released_at = t

    def result(self, hold_to_end: bool) -> SimResult:
        out = self.out
        makespan = max((max(s.released_at, s.finished_at) for s in out), default=0.0)
        if hold_to_end:  # a serverful baseline: every slot held for the whole stage
            for result in out:
                result.released_at = makespan
        return SimResult(
            makespan=makespan,
            functions=out,
            moves=self.moves,
            cuts=self.cuts,
            tokens_per_sequence=list(self.produced),
            finish_times=self.finished_at,
        )
