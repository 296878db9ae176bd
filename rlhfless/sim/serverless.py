"""The ``rlhfless`` system: functions started per stage, billed per function.

Per iteration, with the same :mod:`rlhfless.scaling` code the real runtime uses:

* **Rollout.** Planned as the real :class:`~rlhfless.scaling.Scaler` plans it (:mod:`.plan`):
  its predictor (EWMA, alpha 0.5) predicts each prompt's lengths; ``choose_k`` packs prompt
  groups by predicted length and picks the cheapest number of functions (``tp`` GPUs each)
  whose *expected* makespan over the predictor's error margin is within 3% of the fastest
  (``ScalingConfig.within()``), under the plan's cost model (the first ``--cost`` model), with
  LPT as the margin's fallback and a per-function cut planned where the margin says it pays
  (``cut = "auto"``); :func:`~rlhfless.scaling.simulate_rollout` runs it with the true lengths
  and that cut. Shared prefixes: each group's prompt is prefilled once. Functions are released
  at their own finish (or cut).
* **Forward passes** (old log-probs, reference, critic values) and **training** run as one gang
  of ``train_gpus`` GPUs (a real run's ``train.slots``): one function per node of it. Trainer
  functions load the Adam state (16 bytes per parameter) and write it back to host memory after
  the update (billed, busy). ``train_gpus = 0`` (the default) chooses the gang each iteration
  (:meth:`Rlhfless.choose_gang`): every size that holds the state (:mod:`.gang`) is run through
  this iteration's model on the *predicted* rollout, and the cheapest within the scaler's 3% of
  the fastest is taken (:func:`~rlhfless.scaling.cheapest_gang`). FSDP's traffic per device and
  step does not shrink with the gang, so where it dominates (70B on H100s) a smaller gang is as
  fast and holds fewer GPUs.
* **Cold starts and keep-alive.** A function is pre-warmed (requested its start time before its
  stage begins, overlapping the previous stage: billed, not on the critical path) except the
  first rollout. It starts warm (weights from the node's host memory) when its role ran on that
  node within ``keep_alive_seconds``, else cold (container + engine init + storage load).
* **Locality.** The heaviest rollout function is placed on node 0 (the learner's node) and
  functions fill nodes in order, so a role's functions land where its weights are cached.
  Simplification: new weights reach every rollout function at network speed (no NVLink
  shortcut for the learner's node), and two functions may overlap on a GPU while one warms up.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from rlhfless.cost_models import CostModel
from rlhfless.scaling import (
    GangOption,
    SimFunction,
    SimResult,
    ThroughputParams,
    cheapest_gang,
    simulate_rollout,
)
from rlhfless.sim.cluster import Cluster
from rlhfless.sim.engine import Engine
from rlhfless.sim.gang import gang_sizes
from rlhfless.sim.interruptions import Interrupter, interrupted_functions
from rlhfless.sim.perf import PerfModel
from rlhfless.sim.plan import POLICY, RolloutPlanner
from rlhfless.sim.stream import Freed, StreamResult, group_finish_times, stream
from rlhfless.sim.systems import System, iteration_result
from rlhfless.sim.workload import Batch, Workload, lengths_of


def hold_seconds(model: CostModel, boot: float) -> float:
    """Idle gap worth paying for instead of releasing and restarting a GPU: a restart bills its
    boot (when cold starts are billed) and at least the minimum charge."""
    r = model.rules
    return max(r.minimum_seconds, boot if r.bill_cold_start else 0.0)


class Rlhfless(System):
    """Streamed (the default, as ``rlhfless train`` runs): finished groups are scored and trained
    on GPUs that finished rollout functions released while the tail decodes (:mod:`.stream`)."""

    name = "rlhfless"
    streamed = True

    def __init__(
        self, perf: PerfModel, workload: Workload, cluster: Cluster, plan_model: CostModel,
        interrupter: Interrupter | None = None, train_gpus: int = 0,
    ) -> None:  # fmt: skip
        super().__init__(perf, workload, cluster, interrupter)
        # The training gang (train.slots of a real run): whole nodes, or part of one; 0: chosen
        # per iteration (choose_gang), self.gang then being this iteration's.
        self.fixed_gang = train_gpus
        self.gang = train_gpus or cluster.gpus
        self.plan_model = plan_model
        limit = None if workload.trace else lengths_of(workload).max_response
        self.planner = RolloutPlanner(
            cluster.gpus // perf.tp, cluster.device_kind, plan_model, perf.transfer_params(),
            limit, perf.tp,
        )  # fmt: skip

    def warm(self, role: str, t: float) -> bool:
        return self.cluster.cached(0, role, t, self.perf.startup.keep_alive_seconds)

    def node_functions(
        self, engine: Engine, role: str, start: float, busy: float, state_bytes: float | None
    ) -> None:
        """One function per node for a whole-cluster stage, pre-warmed to be ready at ``start``."""
        c = self.cluster
        slots = min(c.gpus_per_node, self.gang)
        boot = self.perf.start_seconds(self.warm(role, start), state_bytes, self.gang)
        for node, slot in c.place(self.gang // slots, slots):
            c.use(
                role,
                node,
                slot,
                slots,
                boot,
                start,
                [(start, start + busy)],
                start + busy,
                self.hold(boot),
            )

    def hold(self, boot: float) -> float:
        return min(hold_seconds(self.plan_model, boot), self.perf.startup.keep_alive_seconds)

    def _use(
        self, role: str, node: int, slot: int, slots: int, t: float, sf: SimFunction
    ) -> Callable[[float], None]:
        def go(_now: float) -> None:
            busy = [(t + s, t + e) for s, e in sf.busy]
            boot = sf.ready_at - sf.requested_at
            self.cluster.use(
                role,
                node,
                slot,
                slots,
                boot,
                t + sf.ready_at,
                busy,
                t + sf.released_at,
                self.hold(boot),
            )

        return go

    def iterate(
        self, engine: Engine, t: float, i: int, batch: Batch, done: Callable[[float], None]
    ) -> None:
        perf, c = self.perf, self.cluster
        tp = perf.tp
        stages: dict[str, float] = {}
        params = perf.throughput_params(warm=self.warm("rollout", t))
        predicted = self.planner.predict(batch.prompt_ids, [len(ls) for ls in batch.lengths])
        works = self.works(batch, predicted, dedup=True)
        decision = self.planner.plan(batch.prompt_ids, works, params)
        groups = decision.assignment.groups
        cut, tau = POLICY.cut_in_force((decision.cut, decision.cut_threshold))
        r = simulate_rollout(
            batch.lengths, [float(x) for x in batch.prompt_tokens], groups, params,
            predicted=predicted, cut=cut, threshold=tau,  # type: ignore[arg-type]
            transfer=perf.transfer_params(), prewarm=i > 0,
            **self.planner.online(batch.prompt_ids, works),
        )  # fmt: skip
        places = c.place(len(groups), tp)
        r = interrupted_functions(r, self.interrupter, tp, [node for node, _ in places])
        for (node, slot), sf in zip(places, r.functions, strict=True):
            engine.at(
                t + sf.ready_at,
                self._use("rollout", node, slot, tp, t, sf),
                f"rollout:{node}:{slot}",
            )
        self.gang = self.fixed_gang or self.choose_gang(i, batch, groups, predicted, params)
        self.gangs.append(self.gang)
        self.planner.observe(batch.prompt_ids, batch.lengths)
        roll = r.makespan + perf.gpu.stage_overhead_seconds
        stages["rollout"] = roll
        if self.streamed:
            end = self.stream_after(engine, t, i, batch, groups, r, stages)
        else:
            end = self.staged_after(engine, t + roll, i, batch, stages)
        self.results.append(iteration_result(i, t, end, stages, batch, r, len(groups)))
        done(end)

    def staged_after(
        self, engine: Engine, t2: float, i: int, batch: Batch, stages: dict[str, float]
    ) -> float:
        """Reward, then the forward passes, then training, each after the one before (from
        ``t2``, the rollout's end); returns the end."""
        perf = self.perf
        stages["reward"] = reward = self.reward_seconds(batch)
        t3 = t2 + reward
        # The forward passes and the training are gangs (self.gang): a lost node restarts
        # the stage (the replacement's wait is counted in the stage's held, busy seconds).
        fwd = self.forward_seconds(batch, self.gang)
        stages["forward"] = fwd = fwd + self.gang_unit(fwd, t3, self.gang)
        engine.at(
            t3, lambda now: self.node_functions(engine, "forward", now, fwd, None), f"forward{i}"
        )
        t4 = t3 + fwd
        train = self.train_seconds(batch, self.gang)
        stages["train"] = train = train + self.gang_unit(train, t4, self.gang)
        state = perf.trainer_state_bytes()
        offload = state / self.gang / perf.gpu.intra_node_bytes_per_s
        engine.at(
            t4,
            lambda now: self.node_functions(engine, "trainer", now, train + offload, state),
            f"train{i}",
        )
        return t4 + train

    def stream_after(
        self, engine: Engine, t: float, i: int, batch: Batch, groups: list, r: SimResult,
        stages: dict[str, float],
    ) -> float:  # fmt: skip
        """Scoring and training on released GPUs while the tail decodes; returns the end."""
        perf, c = self.perf, self.cluster
        res = self.pool(self.gang, batch, groups, r)
        places = c.place(c.gpus // perf.tp, perf.tp)
        state = perf.trainer_state_bytes()
        join = perf.start_seconds(self.warm("scorer", t), state, self.gang)
        # Pre-warmed as the staged stages are (the start overlaps the rollout function it
        # follows on the GPU: billed as a cold start, not on the critical path); see module doc.
        for f, spans in res.busy.items():
            node, slot = places[f]
            for s, e in spans:
                engine.at(t + s, self._span("scorer", node, slot, join, t + s, t + e), f"score{i}")
        # The work after the last group runs on the gang: a lost node restarts it.
        # Its lost attempts are recorded after the attempt that completed (totals, not order).
        after = res.end - r.makespan
        lost = self.gang_unit(after, t + res.end, self.gang)
        if lost > 0:
            engine.at(
                t + res.end, lambda now: self.node_functions(engine, "trainer", now, lost, None),
                f"lost{i}",
            )  # fmt: skip
        stages["after rollout"] = after + lost  # the state's offload: off the path, as staged
        return t + res.end + lost + perf.gpu.stage_overhead_seconds

    def pool(self, gang: int, batch: Batch, groups: list, r: SimResult) -> StreamResult:
        """The streamed scoring and training of ``batch`` on a gang of ``gang`` GPUs, after the
        rollout ``r`` of ``groups`` (:func:`~rlhfless.sim.stream.stream`)."""
        perf, c, tp = self.perf, self.cluster, self.perf.tp
        streamable, barrier = self.stream_work(batch, gang)
        seq = [
            p * len(ls) + sum(ls) for p, ls in zip(batch.prompt_tokens, batch.lengths, strict=True)
        ]
        total = sum(seq) or 1
        t0, t1 = perf.decode_step()
        freed = []
        for f, (grp, sf) in enumerate(zip(groups, r.functions, strict=True)):
            freed.append(Freed(sf.finished_at, tp, 0.0, f))  # its GPUs
            dated = None if r.moves else group_finish_times(
                [batch.lengths[g] for g in grp], sf.finished_at, t0, t1, perf.max_batch()
            )  # fmt: skip
            for g, at in zip(grp, dated or [sf.finished_at] * len(grp), strict=True):
                freed.append(Freed(at, 0, streamable * seq[g] / total, f))  # its groups' work
        freed += [Freed(0.0, tp, 0.0, f) for f in range(len(groups), c.gpus // tp)]
        return stream(freed, r.makespan, barrier, join_seconds=0.0, max_gpus=gang)

    def choose_gang(
        self, i: int, batch: Batch, groups: list, predicted: list[list[float]],
        params: ThroughputParams,
    ) -> int:  # fmt: skip
        """This iteration's training gang: every size that holds the state, judged on the
        *predicted* rollout (no true length is read), the cheapest within the scaler's bound of
        the fastest (module doc)."""
        perf, c = self.perf, self.cluster
        guess = Batch(
            prompt_ids=batch.prompt_ids, prompt_tokens=batch.prompt_tokens,
            lengths=[[max(1, math.ceil(x)) for x in g] for g in predicted],
        )  # fmt: skip
        # Only the streamed pool reads the rollout (when each group is complete); staged
        # options are the stages' own times.
        r = simulate_rollout(
            guess.lengths, [float(x) for x in guess.prompt_tokens], groups, params,
            prewarm=i > 0,
        ) if self.streamed else None  # fmt: skip
        reference = perf.model.weight_bytes if self.workload.reference else 0.0
        state = perf.trainer_state_bytes() + reference
        sizes = gang_sizes(c.gpus, c.gpus_per_node, perf.tp, state, perf.gpu.memory_bytes)
        rate = self.plan_model.rate(c.device_kind)
        options = [self.gang_option(n, guess, groups, r, rate) for n in sizes or [c.gpus]]
        return cheapest_gang(options, POLICY.within() or 0.0).devices

    def gang_option(
        self, gang: int, batch: Batch, groups: list, r: SimResult | None, rate: float
    ) -> GangOption:
        """A gang's end of the iteration (from the start of the predicted rollout ``r``) and
        the GPU-seconds its pool is busy, priced at ``rate``."""
        assert r is not None  # choose_gang simulates it for the streamed system
        res = self.pool(gang, batch, groups, r)
        busy = sum(e - s for spans in res.busy.values() for s, e in spans) * self.perf.tp
        return GangOption(devices=gang, seconds=res.end, usd=rate * busy)

    def stream_work(self, batch: Batch, gang: int) -> tuple[float, float]:
        """GPU-seconds on a gang of ``gang`` GPUs that stream (start once a group is complete)
        and that wait for the last group, by the real trainer's rule (stages/streamed.py,
        ``TrainerActor.begin_step / accumulate / finish_step``).

        The forward passes stream. GRPO's first optimiser step accumulates the forward and
        backward of complete groups and steps after the last one; every later step (later
        mini-batches, later epochs) needs the weights of the step before it, so it waits. Only
        the first step's compute streams (its share of every group: mini-batches are drawn
        across the batch); the rest of the training time as staged (later steps' compute, all
        steps' FSDP traffic beyond the compute moved earlier, the update's overhead) waits.
        PPO's update waits for whole-batch advantage whitening: all its training waits."""
        G = gang
        fwd = self.forward_seconds(batch, G) * G
        train = self.train_seconds(batch, G) * G
        if self.workload.algo != "grpo":
            return fwd, train
        first = self.first_step_compute_seconds(batch, G) * G
        return fwd + first, train - first

    def _span(
        self, role: str, node: int, slot: int, boot: float, start: float, end: float
    ) -> Callable[[float], None]:
        def go(_now: float) -> None:
            self.cluster.use(
                role, node, slot, self.perf.tp, boot, start, [(start, end)], end, self.hold(boot)
            )

        return go


class RlhflessStaged(Rlhfless):
    """Every stage waits for the one before it (``pipeline.stream = false``)."""

    name = "rlhfless-staged"
    streamed = False

    def gang_option(
        self, gang: int, batch: Batch, groups: list, r: SimResult | None, rate: float
    ) -> GangOption:
        """Staged, the gang holds all its GPUs for the forward passes and then the training."""
        seconds = self.forward_seconds(batch, gang) + self.train_seconds(batch, gang)
        return GangOption(devices=gang, seconds=seconds, usd=rate * gang * seconds)
