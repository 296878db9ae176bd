"""Cut-and-migrate in a simulated rollout (:func:`~rlhfless.scaling.simulate.simulate_rollout`
with ``cut = "per_function"`` or ``"global"``): whenever sequences finish, the planner of
:mod:`~rlhfless.scaling.migrate` is asked with every working function's progress, and its plan
is carried out on the engine's clock (:class:`~rlhfless.scaling.sim_engine.Rollout`).

The planners are looked up in this module's namespace at each call: a test may wrap them here,
and :mod:`~rlhfless.scaling.simulate`'s memo keys on what they are."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from rlhfless.scaling.migrate import (
    FunctionLoad,
    FunctionProgress,
    MigrationPlan,
    Move,
    SequenceProgress,
    cut_due,
    cut_ruled_out,
    finished_ratio,
    plan_cut_with_loads,
    plan_global_cut,
)
from rlhfless.scaling.sim_engine import Rollout, SimFn
from rlhfless.scaling.sim_input import CutSettings, Sequences
from rlhfless.scaling.sim_remaining import Remaining
from rlhfless.scaling.throughput import ThroughputParams


@dataclass(frozen=True, slots=True)
class Work:
    """A working function at a cut check: its unfinished sequences, the tokens each has produced
    and its predicted remaining, its load row, and whether it is a cut candidate."""

    f: int
    fn: SimFn
    seqs: list[int]
    made: list[int]
    rems: list[float]
    load: FunctionLoad
    candidate: bool


class CutRollout(Rollout):
    """A simulated rollout whose finishes may cut functions and move their sequences."""

    def __init__(
        self, params: ThroughputParams, seqs: Sequences, estimate: Remaining, policy: CutSettings
    ) -> None:
        super().__init__(params, seqs, estimate)
        self.policy = policy
        self.global_fired = False
        # Whether the last per-function check found no candidate and nothing since could have
        # made one but the finishes at the function now checking. A function's test (unfinished
        # work, finished >= τ · assigned) turns true only when its finished count grows, at its
        # own checked finishes or at a zero-length admission, or when a migration moves work
        # (which follows a true check); so after a false check only the checking function needs
        # testing.
        self.clear = False

    def after_finishes(self, t: float, f: int) -> bool:
        """Check for a cut (and carry it out); whether function f itself was cut."""
        if not self.has_candidate(f):
            return False
        self.migrate(t, f)
        return self.fns[f].done

    def finished_unstepped(self) -> None:
        self.clear = False  # unchecked: the next cut check looks at every function

    def made_of(self, fn: SimFn) -> tuple[list[int], list[int]]:
        """fn's unfinished sequences (running, queued, then on their way here: the order the
        planner is told them in, which its sums follow) and the tokens each has produced."""
        produced, start_step, step = self.produced, self.start_step, fn.step
        running = [s for _, s in fn.active]
        waiting = list(fn.queue) + [s for _, s in fn.arrivals]
        made = [produced[s] + (step - start_step[s]) for s in running]
        made += [produced[s] for s in waiting]
        return running + waiting, made

    def function_progress(self, f: int, fn: SimFn) -> FunctionProgress:
        seqs, made = self.made_of(fn)
        return self.progress_of(f, fn, seqs, made, self.estimate.of(seqs, made))

    def progress_of(
        self, f: int, fn: SimFn, seqs: list[int], made: list[int], rems: list[float]
    ) -> FunctionProgress:
        prompt = self.seqs.prompt
        unfinished = tuple(
            SequenceProgress(seq_id=s, prompt_tokens=prompt[s], produced=m, predicted_remaining=rem)
            for s, m, rem in zip(seqs, made, rems, strict=True)
        )
        return FunctionProgress(
            function_id=str(f),
            assigned=fn.assigned,
            finished=fn.finished,
            unfinished=unfinished,
            max_batch=fn.max_batch,
        )

    def progress(self) -> list[FunctionProgress]:
        return [self.function_progress(f, fn) for f, fn in enumerate(self.fns) if not fn.done]

    def working(self) -> list[Work]:
        """Every function with sequences to finish, with their progress (see Work)."""
        out = []
        for f, fn in enumerate(self.fns):
            if fn.done or not fn.unfinished_count():
                continue
            seqs, made = self.made_of(fn)
            rems = self.estimate.of(seqs, made)
            load = FunctionLoad(
                function_id=str(f),
                unfinished=len(seqs),
                remaining=max(rems),  # = FunctionLoad.of(its progress): the same max and sum
                total=sum(rems),
                max_batch=fn.max_batch,
            )
            candidate = finished_ratio(fn.finished, fn.assigned) >= self.policy.tau
            out.append(Work(f, fn, seqs, made, rems, load, candidate))
        return out

    def first_to_place(self, w: Work) -> SequenceProgress:
        """The sequence of w's that the planner would place first (migrate._place's order:
        longest predicted remaining, then the smallest id as a string)."""
        top = w.load.remaining
        i = min((i for i, rem in enumerate(w.rems) if rem == top), key=lambda i: str(w.seqs[i]))
        s = w.seqs[i]
        return SequenceProgress(
            seq_id=s, prompt_tokens=self.seqs.prompt[s], produced=w.made[i], predicted_remaining=top
        )

    def has_candidate(self, now: int) -> bool:
        """Whether a cut plan is worth asking for now (cut_due), function ``now`` having just
        finished sequences; only ``now`` is tested while ``clear`` holds (see __init__)."""
        cut, tau = self.policy.cut, self.policy.tau
        if cut == "global" and self.global_fired:
            return False
        if self.clear and cut == "per_function":
            fn = self.fns[now]
            self.clear = not cut_due(cut, tau, [(fn.finished, fn.assigned, fn.unfinished_count())])
            return not self.clear
        # Every function (a global cut counts the finished ones too); one that is done has no
        # unfinished sequence, so it is never a per-function candidate.
        # (Asked at every event that finishes a sequence: built inline, it is cheap.)
        counts = [
            (
                fn.finished,
                fn.assigned,
                0 if fn.done else len(fn.active) + len(fn.queue) + len(fn.arrivals),
            )
            for fn in self.fns
        ]
        self.clear = not cut_due(cut, tau, counts)
        return not self.clear

    def migrate(self, t: float, now: int) -> None:
        """Ask the planner at t (function ``now`` just finished sequences) and carry its plan
        out: stop the cut functions, send the moved sequences, release what is cut."""
        for g, fn in enumerate(self.fns):
            if g != now and fn.in_step and not fn.done:
                self.catch_up(g, t, now)
        plan = self.plan(t)
        if plan.empty:
            return
        cut_ids = [int(c) for c in plan.cut]
        leave = {c: t for c in cut_ids}
        self.stop(cut_ids)
        woken = self.send(plan.moves, t, leave)
        for c in cut_ids:
            self.cuts += 1
            self.finish_fn(c, t)
            self.out[c].cut_at = t
            self.out[c].released_at = leave[c]
        self.wake(woken, now)

    def plan(self, t: float) -> MigrationPlan:
        """The cut plan at t (the planners as this module's namespace holds them now)."""
        p = self.policy
        if p.cut == "per_function":
            work = self.working()
            rows = [w.load for w in work]
            params = self.params if p.guard else None
            planned = None if p.planned_end is None else p.planned_end - t
            candidates = [w for w in work if w.candidate]
            # Most checks plan nothing: rule that out first from one sequence per candidate
            # (exact: migrate.cut_ruled_out), unless a candidate's remaining lengths are not all
            # finite (its progress would raise as before: left to the full path).
            if all(math.isfinite(w.load.total) for w in candidates) and cut_ruled_out(
                [(str(w.f), len(w.seqs), self.first_to_place(w)) for w in candidates],
                rows,
                p.transfer,
                params,
                planned,
            ):
                return MigrationPlan(policy="per_function")
            progress = [self.progress_of(w.f, w.fn, w.seqs, w.made, w.rems) for w in candidates]
            return plan_cut_with_loads(progress, rows, p.tau, p.transfer, params, planned)
        plan = plan_global_cut(self.progress(), p.tau, p.transfer)
        self.global_fired = True
        return plan

    def stop(self, cut_ids: Sequence[int]) -> None:
        """Stop generation on the cut functions; the step in flight is abandoned (its tokens
        are not counted)."""
        for c in cut_ids:
            stopped = self.fns[c]
            for _, s in stopped.active:
                self.produced[s] += stopped.step - self.start_step[s]
            stopped.active.clear()
            stopped.active_set.clear()
            stopped.queue.clear()
            stopped.arrivals.clear()

    def send(self, moves: Sequence[Move], t: float, leave: dict[int, float]) -> set[int]:
        """Put each moved sequence on its way (arriving after its transfer time); a shipping
        source stays until its KV has left (``leave``). The destinations."""
        woken: set[int] = set()
        for m in moves:
            s, src, dst = int(m.seq_id), int(m.source), int(m.dest)
            self.fns[dst].assigned += 1
            heapq.heappush(self.fns[dst].arrivals, (t + m.seconds, s))
            if m.method == "ship_kv":  # the source stays until its KV has left
                leave[src] = max(leave[src], t + m.seconds)
            woken.add(dst)
            self.moves += 1
        return woken

    def wake(self, woken: set[int], now: int) -> None:
        """Reschedule the destinations for their arrivals."""
        for dst in woken:
            d = self.fns[dst]
            if d.waiting:  # idle until its arrivals: wake at the earliest
                self.schedule(dst, d.arrivals[0][0])
            elif d.in_step and not d.done and dst != now:
                # Decoding: its next clock entry moves to the step its arrivals are due.
                self.schedule_steps(dst)
