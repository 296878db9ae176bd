"""A rollout simulated step by step: k functions, continuous batching, optional cut-and-migrate.

Used by ``benchmarks/scaling.py`` and the tests to measure a policy with *true* lengths while it
decides with *predicted* ones. Model (all times in seconds from the rollout's start):

* Function f is requested at 0, ready after its cold start (0 if warm), loads this iteration's
  weights, prefills its groups' prompts (``prefill_tokens / prefill_tokens_per_s``), then decodes.
* Decode: at most ``max_batch`` sequences run, admitted FIFO (the assignment's order, longest
  predicted first); each step takes ``t0 + t1 * batch`` and gives every running sequence a token.
  (Only steps where something happens, a sequence's last or the first after an arrival, are
  events; the steps between are counted, and timed by adding one step time at a time as an
  event per step would, so skipping them changes no number: the planner simulates each cut
  candidate on many scenarios.)
* Cut-and-migrate (``cut = "per_function"`` or ``"global"``): whenever a sequence finishes, the
  planner of :mod:`~rlhfless.scaling.migrate` is asked with every working function's progress
  (a per-function cut: the candidates' progress and the others' loads, ``plan_cut_with_loads``).
  Predicted remaining (``remaining = "conditional"``, the default) is
  :func:`~rlhfless.scaling.predictor.expected_remaining`: ``E[L - produced | L > produced]`` over
  the sequence's group profile plus its median times the dataset's ``shape`` ratios, ``tail`` x
  produced once it has overrun them all; ``"naive"``: predicted - produced, at least 1;
  ``"siblings"``: online, as the rollout stage's cut controller estimates, from the group's
  samples finished so far and its running ones
  (:class:`~rlhfless.scaling.online.SiblingPredictor`, fed every finish as it happens; a group
  with a prior, ``priors[g] > 0``, starts from it, one without waits for its first finish).
  Every way never past ``max_new_tokens`` (the generation limit), when given
  (:mod:`~rlhfless.scaling.sim_remaining`). A cut function stops at
  once; each moved sequence keeps its produced tokens and joins its destination's queue after the
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
from dataclasses import dataclass
from typing import Literal

from rlhfless.scaling import sim_remaining
from rlhfless.scaling.errors import BadScalingInput
from rlhfless.scaling.migrate import (
    FunctionLoad,
    FunctionProgress,
    MigrationPlan,
    Move,
    SequenceProgress,
    check_threshold,
    cut_due,
    cut_ruled_out,
    finished_ratio,
    plan_cut_with_loads,
    plan_global_cut,
)
from rlhfless.scaling.predictor import check_max_new_tokens, length_support
from rlhfless.scaling.sim_memo import SimMemo, result_key
from rlhfless.scaling.sim_remaining import Remaining, sibling_predictor
from rlhfless.scaling.sim_result import SimFunction as SimFunction
from rlhfless.scaling.sim_result import SimResult as SimResult
from rlhfless.scaling.throughput import ThroughputParams
from rlhfless.scaling.transfer import TransferParams

CutPolicy = Literal["none", "per_function", "global"]
RemainingEstimate = Literal["conditional", "naive", "siblings"]


class _Fn:
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


def simulate_rollout(
    lengths: Sequence[Sequence[float]],  # drawn lengths may be fractional: rounded up per sample
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
    max_new_tokens: float | None = None,
    planned_end: float | None = None,
    priors: Sequence[float | None] | None = None,
) -> SimResult:
    """Simulate decoding ``lengths[g]`` (true lengths of group g's samples) on functions holding
    ``groups[f]`` (group indices). ``predicted[g]`` (same shape as lengths; default: the true
    lengths, an oracle) orders admission and feeds the cut planner. ``warm``: the first that
    many functions skip the cold start. ``prewarm``: cold starts happen before the rollout (timed
    from history, overlapping the previous stage): billed, but not in the makespan. ``guard``:
    per-function cuts use the step-time model so as not to extend the rollout. ``remaining``,
    ``shape`` (:meth:`LengthPredictor.shape_ratios`) and ``tail``: how the planner is told a
    sequence's remaining length (module docstring); ``max_new_tokens``: the generation limit, which
    bounds it (:func:`~rlhfless.scaling.predictor.expected_remaining`). ``planned_end``: when the
    plan expected the rollout to end without a cut (seconds on this simulation's clock); the
    guard's horizon is at least what is left of it (:mod:`~rlhfless.scaling.migrate`).
    ``priors`` (``remaining = "siblings"`` only): each group's plan-time median where its prompt
    was seen, 0 or None where it is new; default: every group's predicted median.
    ``cut = "auto"`` is a planning setting,
    not a cut: run the plan's (``ScalingConfig.cut_in_force``).

    A rollout asked for again with the same inputs gets a copy of the first answer (see
    :mod:`~rlhfless.scaling.sim_memo`): the planner simulates its candidates again at each k
    grid and iteration."""
    inputs = (
        lengths, prefill_tokens, groups, params, predicted, warm, cut, threshold, transfer,
        hold_to_end, prewarm, guard, remaining, shape, tail, max_new_tokens, planned_end,
        None if priors is None else [0.0 if x is None else x for x in priors],
    )  # fmt: skip
    # sim_remaining's expected_remaining too: the estimate calls it through its own module
    hooks = [*(globals()[name] for name in _HOOKS), sim_remaining.expected_remaining]
    key = result_key(inputs, hooks)
    kept = _MEMO.get(key)
    if kept is not None:
        return kept
    result = _simulate(*inputs)
    _MEMO.put(key, result)
    return result


_MEMO = SimMemo()
# What a rollout calls through this module's namespace, and so what a caller (a test, a golden
# recorder) may replace: part of the memo's key.
_HOOKS = ("plan_cut_with_loads", "plan_global_cut", "cut_ruled_out", "cut_due",
          "length_support", "check_threshold", "check_max_new_tokens",
          "finished_ratio")  # fmt: skip


def _simulate(
    lengths: Sequence[Sequence[float]],
    prefill_tokens: Sequence[float],
    groups: Sequence[Sequence[int]],
    params: ThroughputParams,
    predicted: Sequence[Sequence[float]] | None,
    warm: int,
    cut: CutPolicy,
    threshold: float,
    transfer: TransferParams | None,
    hold_to_end: bool,
    prewarm: bool,
    guard: bool,
    remaining: RemainingEstimate,
    shape: Sequence[float],
    tail: float,
    max_new_tokens: float | None,
    planned_end: float | None,
    priors: Sequence[float] | None,
) -> SimResult:
    tau, limit = _check_settings(remaining, cut, threshold, max_new_tokens, planned_end)
    transfer = transfer or TransferParams(prefill_tokens_per_s=params.prefill_tokens_per_s)
    pred = predicted if predicted is not None else lengths
    seqs = _flatten(lengths, prefill_tokens, groups, pred)
    conditional = remaining == "conditional"
    estimate = Remaining(
        conditional, seqs.predicted, seqs.group, seqs.of_group,
        [length_support(p, shape) for p in pred] if conditional else [], tail, limit,
        sibling_predictor(seqs.of_group, pred, priors, shape, limit)
        if remaining == "siblings" else None,
    )  # fmt: skip
    policy = _CutSettings(cut, tau, transfer, guard, planned_end)
    rollout = _Rollout(params, seqs, policy, estimate)
    rollout.start(groups, prefill_tokens, warm, prewarm)
    rollout.run()
    return rollout.result(hold_to_end)


def _check_settings(
    remaining: str,
    cut: str,
    threshold: float,
    max_new_tokens: float | None,
    planned_end: float | None,
) -> tuple[float, float | None]:
    """``(τ, the generation limit)`` from simulate_rollout's settings, checked in its order.
    Without a cut τ is 1 and the threshold is not read (not even checked)."""
    if remaining not in ("conditional", "naive", "siblings"):
        raise BadScalingInput(
            "simulate_rollout",
            f"remaining must be conditional/naive/siblings, got {remaining!r}",
        )
    if cut not in ("none", "per_function", "global"):
        raise BadScalingInput(
            "simulate_rollout", f"cut must be none/per_function/global, got {cut!r}"
        )
    tau = check_threshold(threshold) if cut != "none" else 1.0
    limit = check_max_new_tokens(max_new_tokens)
    if planned_end is not None and not math.isfinite(planned_end):
        raise BadScalingInput("simulate_rollout", f"planned_end must be finite, got {planned_end}")
    return tau, limit


@dataclass(frozen=True, slots=True)
class _Sequences:
    """The rollout's samples as one row of sequences (ids in group order, then sample order)."""

    length: list[int]  # decode steps it needs: its drawn length rounded up
    predicted: list[float]  # orders admission (longest first) and feeds the cut planner
    prompt: list[int]  # its group's prompt tokens
    group: list[int]
    of_group: list[list[int]]  # each group's sequence ids


def _flatten(
    lengths: Sequence[Sequence[float]],
    prefill_tokens: Sequence[float],
    groups: Sequence[Sequence[int]],
    pred: Sequence[Sequence[float]],
) -> _Sequences:
    """The groups' samples as :class:`_Sequences`, every input checked (the errors name
    simulate_rollout, in the order it has always raised them)."""
    if len(prefill_tokens) != len(lengths):
        raise BadScalingInput("simulate_rollout", "prefill_tokens and lengths differ in length")
    if sorted(g for f in groups for g in f) != list(range(len(lengths))):
        raise BadScalingInput("simulate_rollout", "groups must hold every group index exactly once")
    seq_len: list[int] = []
    seq_pred: list[float] = []
    seq_prompt: list[int] = []
    seq_group: list[int] = []
    seq_of_group: list[list[int]] = []
    for g, ls in enumerate(lengths):
        if len(pred[g]) != len(ls):
            raise BadScalingInput("simulate_rollout", f"predicted[{g}] has the wrong length")
        ids = []
        prompt = prefill_tokens[g]
        if not (math.isfinite(prompt) and prompt >= 0):
            raise BadScalingInput(
                "simulate_rollout", f"prefill_tokens[{g}] must be finite and >= 0, got {prompt}"
            )
        for x, p in zip(ls, pred[g], strict=True):
            if not x >= 0:
                raise BadScalingInput("simulate_rollout", f"negative length in group {g}")
            # Checked here, once: the cut planner sees only the candidates' sequences in full
            # (plan_cut_with_loads), so a bad prediction elsewhere would pass unnoticed there.
            if not (math.isfinite(p) and p >= 0):
                raise BadScalingInput(
                    "simulate_rollout", f"predicted[{g}] must be finite and >= 0, got {p}"
                )
            ids.append(len(seq_len))
            seq_len.append(math.ceil(x))
            seq_pred.append(float(p))
            seq_prompt.append(int(prefill_tokens[g]))
            seq_group.append(g)
        seq_of_group.append(ids)
    return _Sequences(seq_len, seq_pred, seq_prompt, seq_group, seq_of_group)


@dataclass(frozen=True, slots=True)
class _CutSettings:
    """When to ask for a cut plan and what to tell the planner (simulate_rollout's settings,
    checked)."""

    cut: CutPolicy
    tau: float  # 1.0 without a cut
    transfer: TransferParams
    guard: bool
    planned_end: float | None


@dataclass(frozen=True, slots=True)
class _Work:
    """A working function at a cut check: its unfinished sequences, the tokens each has produced
    and its predicted remaining, its load row, and whether it is a cut candidate."""

    f: int
    fn: _Fn
    seqs: list[int]
    made: list[int]
    rems: list[float]
    load: FunctionLoad
    candidate: bool


class _Rollout:
    """One simulated rollout: its functions, the event clock and every sequence's progress.
    :meth:`start` requests the functions, :meth:`run` plays the clock out, :meth:`result` sums
    up. Sequence arrays are indexed by sequence id (:class:`_Sequences`); function arrays
    (``fns``, ``out``) by function index."""

    def __init__(
        self, params: ThroughputParams, seqs: _Sequences, policy: _CutSettings, estimate: Remaining
    ) -> None:
        self.params = params
        self.seqs = seqs
        self.policy = policy
        self.estimate = estimate  # each unfinished sequence's predicted remaining
        n = len(seqs.length)
        self.produced = [0] * n  # decode tokens of completed steps, over all functions
        self.finished_at = [0.0] * n  # when each sequence finished
        self.start_step = [0] * n  # its function's step count when it was admitted there
        self.fns: list[_Fn] = []
        self.out: list[SimFunction] = []
        self.clock: list[tuple[float, int, int]] = []  # (time, function, version)
        self.moves = 0
        self.cuts = 0
        self.global_fired = False
        # Whether the last per-function check found no candidate and nothing since could have
        # made one but the finishes at the function now checking. A function's test (unfinished
        # work, finished >= τ · assigned) turns true only when its finished count grows, at its
        # own checked finishes or at a zero-length admission, or when a migration moves work
        # (which follows a true check); so after a false check only the checking function needs
        # testing.
        self.clear = False

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
            fn = _Fn(f"f{f}", params.max_batch)
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

    def end_steps(self, t: float, f: int, fn: _Fn) -> bool:
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
        if done_any and self.policy.cut != "none" and self.has_candidate(f):
            self.migrate(t, f)
            return fn.done
        return False

    def admit(self, t: float, f: int, fn: _Fn) -> None:
        """Queue fn's arrivals due by t, then start queued sequences while a slot is free."""
        while fn.arrivals and fn.arrivals[0][0] <= t + 1e-12:
            fn.queue.append(heapq.heappop(fn.arrivals)[1])
        produced, length = self.produced, self.seqs.length
        while fn.queue and len(fn.active) < fn.max_batch:
            s = fn.queue.popleft()
            if produced[s] >= length[s]:  # zero length: finished without a step
                self.finished(s, t)
                self.clear = False  # unchecked: the next cut check looks at every function
                fn.finished += 1
                self.out[f].finished += 1
                continue
            self.start_step[s] = fn.step
            fn.active_set.add(s)
            heapq.heappush(fn.active, (fn.step + length[s] - produced[s], s))

    def resume(self, t: float, f: int, fn: _Fn) -> None:
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

    def made_of(self, fn: _Fn) -> tuple[list[int], list[int]]:
        """fn's unfinished sequences (running, queued, then on their way here: the order the
        planner is told them in, which its sums follow) and the tokens each has produced."""
        produced, start_step, step = self.produced, self.start_step, fn.step
        running = [s for _, s in fn.active]
        waiting = list(fn.queue) + [s for _, s in fn.arrivals]
        made = [produced[s] + (step - start_step[s]) for s in running]
        made += [produced[s] for s in waiting]
        return running + waiting, made

    def function_progress(self, f: int, fn: _Fn) -> FunctionProgress:
        seqs, made = self.made_of(fn)
        return self.progress_of(f, fn, seqs, made, self.estimate.of(seqs, made))

    def progress_of(
        self, f: int, fn: _Fn, seqs: list[int], made: list[int], rems: list[float]
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

    def working(self) -> list[_Work]:
        """Every function with sequences to finish, with their progress (see _Work)."""
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
            out.append(_Work(f, fn, seqs, made, rems, load, candidate))
        return out

    def first_to_place(self, w: _Work) -> SequenceProgress:
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
        """The cut plan at t (looked up in this module's namespace at each call: tests wrap the
        planners there)."""
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
