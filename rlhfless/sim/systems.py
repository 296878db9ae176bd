"""The systems compared, each a sequence of stage events on the :class:`~.engine.Engine`.

One synchronous RLHF iteration: rollout -> reward (CPU, rule-based) -> forward passes
(old-policy log-probs, reference log-probs if ``reference``, critic values for PPO) -> training
(actor; critic for PPO) -> new weights reach the rollout engines.

* ``serverful-colocated`` (verl-like): every GPU is rented for the whole job (one engine of ``tp``
  GPUs per slot group, cold-started once). Stages time-share the GPUs: rollout on all
  ``G / tp`` engines with prompts split round robin (each sample prefills its own prompt), then
  forward and training passes on all G GPUs; weights are resharded in place each iteration and
  the rollout engine and the trainer swap GPU memory (one reshard each way).
* ``serverful-fused`` (RLHFuse-like): the same, plus inter-stage fusion. When 90% of the samples
  are done, a global cut moves the unfinished ones onto as few engines as fit
  (:func:`rlhfless.scaling.plan_global_cut`), and the engines it frees start the forward passes
  of the finished samples while the tail decodes (a fluid model: freed GPU-seconds before the
  rollout ends absorb that share of the forward work). Intra-stage fusion of training pipelines
  is not modelled (FSDP data parallel has no pipeline bubbles to fill).
* ``rlhfless``: functions per stage, see :mod:`.serverless`.

Busy = a GPU doing stage work; the rest of a held GPU's time is idle (or cold start).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Literal

import msgspec

from rlhfless.scaling import SimResult, ThroughputParams, assign_round_robin, simulate_rollout
from rlhfless.scaling.assign import GroupWork
from rlhfless.sim.cluster import Cluster, FnRecord
from rlhfless.sim.engine import Engine
from rlhfless.sim.interruptions import Interrupter
from rlhfless.sim.perf import PerfModel
from rlhfless.sim.workload import Batch, Workload

REWARD_SECONDS_PER_SAMPLE = 2e-5  # rule-based check on CPU workers (assumption; off the GPUs)
FUSED_CUT_THRESHOLD = 0.9  # RLHFuse cuts when few samples remain; its exact value is not public


class IterationResult(msgspec.Struct, kw_only=True):
    index: int
    start: float
    end: float
    stages: dict[str, float]  # seconds on the critical path per stage
    samples: int  # samples rolled out and trained on
    decode_tokens: int
    samples_trained: int
    rollout_functions: int
    moves: int = 0
    cuts: int = 0

    @property
    def seconds(self) -> float:
        return self.end - self.start


def iteration_result(
    i: int, start: float, end: float, stages: dict[str, float], batch: Batch, r: SimResult,
    rollout_functions: int,
) -> IterationResult:  # fmt: skip
    return IterationResult(
        index=i, start=start, end=end, stages=stages, samples=batch.samples,
        decode_tokens=sum(r.tokens_per_sequence), samples_trained=completed(r, batch),
        rollout_functions=rollout_functions, moves=r.moves, cuts=r.cuts,
    )  # fmt: skip


def completed(r: SimResult, batch: Batch) -> int:
    """Samples whose every token was decoded (across however many functions they visited)."""
    true = [x for ls in batch.lengths for x in ls]
    return sum(1 for got, want in zip(r.tokens_per_sequence, true, strict=True) if got == want)


class System(ABC):
    name = ""

    def __init__(
        self, perf: PerfModel, workload: Workload, cluster: Cluster,
        interrupter: Interrupter | None = None,
    ) -> None:  # fmt: skip
        self.perf, self.workload, self.cluster = perf, workload, cluster
        self.interrupter = interrupter or Interrupter(None, 0.0)
        self.results: list[IterationResult] = []
        self.end = 0.0
        self.gangs: list[int] = []  # GPUs each iteration trained on (empty: every GPU)

    # ------------------------------------------------------------------ the job

    def run(self, engine: Engine, batches: list[Batch]) -> None:
        def iteration(i: int) -> Callable[[float], None]:
            def go(t: float) -> None:
                if i == len(batches):
                    self.finish(t)
                    return
                self.iterate(
                    engine,
                    t,
                    i,
                    batches[i],
                    lambda end: engine.at(end, iteration(i + 1), f"iter{i + 1}"),
                )

            return go

        engine.at(self.setup(), iteration(0), "iter0")
        engine.run()

    def setup(self) -> float:
        """Time the first iteration can start."""
        return 0.0

    def finish(self, t: float) -> None:
        self.end = t

    def gang_unit(
        self, seconds: float, start: float, gpus: int = 0,
        busy: Callable[[float, float], None] | None = None,
    ) -> float:  # fmt: skip
        """A unit on ``gpus`` GPUs (default every GPU) of whole nodes (:mod:`.interruptions`)
        from ``start``: its lost attempts are marked busy with ``busy`` (None: the caller's
        stage counts them in its own busy seconds); returns the extra
        seconds before the attempt that completes."""
        c = self.cluster
        gpus = gpus or c.gpus
        a = self.interrupter.attempts(seconds, -(-gpus // c.gpus_per_node), gpus)
        if busy is not None and a.lost_seconds > 0:
            busy(start, start + a.lost_seconds)
        return a.extra_seconds

    @abstractmethod
    def iterate(
        self, engine: Engine, t: float, i: int, batch: Batch, done: Callable[[float], None]
    ) -> None:
        """Simulate iteration ``i`` from ``t``; call ``done(end)`` when it ends."""

    # ------------------------------------------------------------------ shared stage times

    def mean_seq(self, batch: Batch) -> float:
        return batch.sequence_tokens / max(batch.samples, 1)

    def forward_passes(self) -> int:
        """Forward passes over the batch after the rollout: old log-probs, reference, values."""
        return 1 + int(self.workload.reference) + int(self.workload.algo == "ppo")

    def forward_seconds(self, batch: Batch, gpus: int) -> float:
        one = self.perf.forward_seconds(
            batch.sequence_tokens, self.mean_seq(batch), gpus, batch.samples
        )
        return self.forward_passes() * one + self.perf.gpu.stage_overhead_seconds

    def train_seconds(self, batch: Batch, gpus: int) -> float:
        w = self.workload
        tokens = batch.sequence_tokens * w.train_epochs
        one = self.perf.train_seconds(
            tokens, self.mean_seq(batch), gpus, w.minibatches * w.train_epochs,
            batch.samples * w.train_epochs,
        )  # fmt: skip
        models = 2 if w.algo == "ppo" else 1  # PPO trains the critic too
        return models * one + self.perf.gpu.train_overhead_seconds

    def first_step_compute_seconds(self, batch: Batch, gpus: int) -> float:
        """The forward and backward compute of the first of the iteration's optimiser steps
        (``minibatches x train_epochs`` steps share the batch's passes evenly)."""
        w = self.workload
        compute = self.perf.train_compute_seconds(
            batch.sequence_tokens * w.train_epochs, self.mean_seq(batch), gpus,
            batch.samples * w.train_epochs,
        )  # fmt: skip
        return compute / (w.minibatches * w.train_epochs)

    def reward_seconds(self, batch: Batch) -> float:
        return batch.samples * REWARD_SECONDS_PER_SAMPLE + self.perf.gpu.stage_overhead_seconds

    def rollout_params(self, **changes: float) -> ThroughputParams:
        return msgspec.structs.replace(self.perf.throughput_params(), **changes)

    def works(self, batch: Batch, lengths: list[list[float]], dedup: bool) -> list[GroupWork]:
        g = [len(x) for x in batch.lengths]
        return [
            GroupWork(
                group_id=p,
                prefill_tokens=float(batch.prompt_tokens[p] * (1 if dedup else g[p])),
                lengths=tuple(lengths[p]),
            )
            for p in range(len(batch.lengths))
        ]


class ServerfulColocated(System):
    """verl-like: every GPU held for the whole job; stages time-share them."""

    name = "serverful-colocated"
    fused = False

    def setup(self) -> float:
        tp, c = self.perf.tp, self.cluster
        start = self.perf.start_seconds(warm=False)
        self.engines: list[FnRecord] = [
            c.start("engine", node, slot, tp, 0.0, start)
            for node, slot in c.place(c.gpus // tp, tp)
        ]
        return start

    def finish(self, t: float) -> None:
        super().finish(t)
        for e in self.engines:
            self.cluster.exit(e, t)

    def all_busy(self, start: float, end: float) -> None:
        for e in self.engines:
            e.add_busy(start, end)

    def iterate(
        self, engine: Engine, t: float, i: int, batch: Batch, done: Callable[[float], None]
    ) -> None:
        perf, G = self.perf, self.cluster.gpus
        stages: dict[str, float] = {}
        sync = 2 * perf.reshard_seconds() + perf.gpu.stage_overhead_seconds
        stages["sync"] = sync
        self.all_busy(t, t + sync)
        t1 = t + sync
        params = self.rollout_params(cold_start_seconds=0.0, weight_load_seconds=0.0)
        k = len(self.engines)
        a = assign_round_robin(
            self.works(batch, [list(map(float, x)) for x in batch.lengths], dedup=False), k, params
        )
        prefill = [
            float(batch.prompt_tokens[p] * len(batch.lengths[p])) for p in range(len(batch.lengths))
        ]
        cut: Literal["global", "none"] = "global" if self.fused else "none"
        r = simulate_rollout(
            batch.lengths, prefill, a.groups, params, warm=k, cut=cut,
            threshold=FUSED_CUT_THRESHOLD, transfer=perf.transfer_params(), hold_to_end=True,
        )  # fmt: skip
        # One SPMD job: losing any node restarts the stage on every engine.
        lost = self.gang_unit(r.makespan, t1, busy=self.all_busy)
        roll = lost + r.makespan + perf.gpu.stage_overhead_seconds
        stages["rollout"] = roll
        t1 += lost
        for f, sf in enumerate(r.functions):
            for s, e in sf.busy:
                self.engines[f].add_busy(t1 + s, t1 + e)
        t2 = t1 + r.makespan + perf.gpu.stage_overhead_seconds
        reward = self.reward_seconds(batch)
        stages["reward"] = reward
        fwd = self.forward_seconds(batch, G)
        if self.fused:
            fwd = self.fuse_forward(r, t1, fwd)
        t3 = t2 + reward
        fwd_lost = self.gang_unit(fwd, t3, busy=self.all_busy)
        stages["forward"] = fwd + fwd_lost
        self.all_busy(t3 + fwd_lost, t3 + fwd_lost + fwd)
        train = self.train_seconds(batch, G)
        t4 = t3 + fwd_lost + fwd
        train_lost = self.gang_unit(train, t4, busy=self.all_busy)
        stages["train"] = train + train_lost
        self.all_busy(t4 + train_lost, t4 + train_lost + train)
        end = t4 + train_lost + train
        self.results.append(iteration_result(i, t, end, stages, batch, r, len(a.groups)))
        engine.at(t1, lambda _t: None, f"rollout{i}")
        engine.at(t3, lambda _t: None, f"forward{i}")
        engine.at(t4, lambda _t: None, f"train{i}")
        done(end)

    def fuse_forward(self, r: SimResult, t1: float, fwd: float) -> float:
        """Forward seconds left after the rollout when freed engines start it early."""
        tp, ms = self.perf.tp, r.makespan
        G = self.cluster.gpus
        early = [sf for sf in r.functions if sf.finished_at < ms - 1e-9]
        total_tokens = sum(sf.tokens for sf in r.functions) or 1
        early_share = sum(sf.tokens for sf in early) / total_tokens
        work = fwd * G  # GPU-seconds
        avail = {id(sf): (ms - sf.finished_at) * tp for sf in early}
        room = sum(avail.values())
        overlapped = min(work * early_share, room)
        if room > 0:
            for f, sf in enumerate(r.functions):
                if id(sf) in avail:
                    share = overlapped * avail[id(sf)] / room / tp
                    s = t1 + sf.finished_at
                    self.engines[f].add_busy(s, s + share)
        return (work - overlapped) / G


class ServerfulFused(ServerfulColocated):
    """RLHFuse-like: global cut of the rollout tail, forward passes fused into the freed GPUs."""

    name = "serverful-fused"
    fused = True
