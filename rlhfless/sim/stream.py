"""The streamed iteration's scoring and training, as a fluid model of GPU-seconds.

All G samples of a group decode on one function, so a group is complete when its longest sample
is: :func:`group_finish_times` dates each group inside a function that holds its whole batch at
once (continuous batching: step s costs t0 + t1 x the sequences still running); a function with
more samples than its batch (queueing) or with migrated samples credits its groups at its own
finish (a lower bound). From then on:

* a group's **streamable work** (GPU-seconds: old-policy, reference and critic forward passes;
  for GRPO also its share of the first optimiser step's forward/backward, whose advantages need
  only the group's own rewards) joins the pending pool;
* when the function finishes, its **GPUs** are free. They, and GPUs the rollout never used, join the pool the first time
  work is pending, after ``join_seconds`` (a warm start of a scorer/trainer shard) — and a GPU
  group is busy exactly while work is pending (work splits evenly over the joined GPUs: data
  parallel micro-batches). **Paced**: while the rollout runs, only as many free GPUs join as
  finish the pending work by the rollout's end (released rollout GPUs first, then GPUs it never
  used); after its end, all of them. The simulator knows the true end (an oracle); a real
  scheduler would pace by the scaler's predicted end;
* **barrier work** joins only when the rollout has ended and every streamable piece is done:
  GRPO's optimiser steps (the first steps after the last group; every later mini-batch or epoch
  needs the weights of the step before it) and PPO's whole update (actor and critic wait for
  whole-batch advantage whitening). The caller splits the work (``Rlhfless.stream_work``).

Everything is done when the pool empties after the rollout's end. Ordering inside the pool does
not matter in a fluid model: the same GPU-seconds are spent on the same GPUs.
"""

from __future__ import annotations

import msgspec


class Freed(msgspec.Struct, frozen=True):
    at: float  # seconds from the rollout's start
    gpus: int  # GPUs it frees (0 for work alone)
    work: float  # streamable GPU-seconds it makes ready
    key: int  # which GPU group (the caller's index)


class StreamResult(msgspec.Struct, kw_only=True):
    end: float  # scoring and training done (seconds from the rollout's start)
    busy: dict[int, list[tuple[float, float]]]  # per GPU group: its busy spans


def stream(
    freed: list[Freed], rollout_end: float, barrier_work: float, join_seconds: float,
    pace: bool = True, max_gpus: int = 0,
) -> StreamResult:  # fmt: skip
    """Run the pool (see the module doc); ``freed`` includes never-used GPU groups at ``at=0``
    with ``work=0``. ``max_gpus``: the most GPUs the pool may hold (the training gang's size;
    0: no limit)."""
    pending, t = 0.0, 0.0
    ready: dict[int, float] = {}  # group -> time it contributes from
    gpus = {f.key: f.gpus for f in freed if f.gpus}
    busy: dict[int, list[tuple[float, float]]] = {k: [] for k in gpus}
    arrivals = sorted((f.at, f.work, f.key) for f in freed)
    barrier_left = barrier_work
    i = 0
    while True:
        while i < len(arrivals) and arrivals[i][0] <= t + 1e-12:
            pending += arrivals[i][1]
            i += 1
        if barrier_left and t >= rollout_end - 1e-12 and i == len(arrivals) and pending <= 1e-12:
            pending, barrier_left = barrier_left, 0.0
        cap = sum(gpus[k] for k, r in ready.items() if r <= t + 1e-12)
        if pending > 1e-12:  # free GPUs join when there is work (paced: see _join)
            _join(
                ready, _freed_by(freed, t), gpus, t, pending, rollout_end, join_seconds, pace,
                max_gpus or sum(gpus.values()),
            )  # fmt: skip
            cap = sum(gpus[k] for k, r in ready.items() if r <= t + 1e-12)
        nxt = min(
            [a[0] for a in arrivals[i:]] + [r for r in ready.values() if r > t + 1e-12] + [1e300]
        )
        if pending <= 1e-12 and i == len(arrivals) and not barrier_left:
            return StreamResult(end=max(t, rollout_end), busy=busy)
        if cap == 0 or pending <= 1e-12:
            t = nxt if nxt < 1e300 else max(t, rollout_end)
            continue
        done_at = t + pending / cap
        step_end = min(done_at, nxt)
        # A step that ends with the work ends with none left: subtracting would leave a rounding
        # residue, and one too small to move a large clock (pending / cap under t's last bit)
        # would never be worked off.
        pending = 0.0 if done_at <= nxt else pending - cap * (step_end - t)
        for k, r in ready.items():
            if r <= t + 1e-12:
                _extend(busy[k], t, step_end)
        t = step_end


def _join(
    ready: dict[int, float], free: dict[int, float], gpus: dict[int, int], t: float,
    pending: float, rollout_end: float, join_seconds: float, pace: bool, max_gpus: int,
) -> None:  # fmt: skip
    """Free GPU groups join the pool. Paced, while the rollout runs: only as many as finish the
    pending work by the rollout's end (the work can wait that long without delaying the
    iteration; more GPUs would only be held for a trickle of groups); after it, all of them."""
    held = sum(gpus[k] for k in ready)
    need = pending / (rollout_end - t) if pace and t < rollout_end - 1e-9 else float("inf")
    # released rollout GPUs first (already rented, warm), GPUs the rollout never used last
    for k, at in sorted(free.items(), key=lambda kv: kv[1], reverse=True):
        if k in ready or held + gpus[k] > max_gpus:
            continue
        if held >= need:
            return
        ready[k] = max(t, at) + join_seconds
        held += gpus[k]


def _freed_by(freed: list[Freed], t: float) -> dict[int, float]:
    return {f.key: f.at for f in freed if f.gpus and f.at <= t + 1e-12}


def _extend(spans: list[tuple[float, float]], start: float, end: float) -> None:
    if spans and abs(spans[-1][1] - start) < 1e-9:
        spans[-1] = (spans[-1][0], end)
    elif end > start:
        spans.append((start, end))


def group_finish_times(
    lengths: list[list[int]], finished_at: float, t0: float, t1: float, max_batch: int
) -> list[float] | None:
    """When each group (its samples' lengths) of one function completes, anchored to the
    function's own finish; ``None`` when its samples exceed one batch (they queue)."""
    flat = sorted((x for ls in lengths for x in ls), reverse=True)
    if not flat or len(flat) > max_batch:
        return None
    longest = flat[0]
    # seconds to decode up to step L: sum over steps s <= L of t0 + t1 * (samples still running)
    elapsed, running, at = [0.0] * (longest + 1), len(flat), 0.0
    by_len = sorted(flat)
    j = 0
    for step in range(1, longest + 1):
        at += t0 + t1 * running
        elapsed[step] = at
        while j < len(by_len) and by_len[j] == step:
            running -= 1
            j += 1
    return [finished_at - (elapsed[longest] - elapsed[max(ls, default=0)]) for ls in lengths]
