"""The ``rlhfless`` system: functions started per stage, billed per function.

Per iteration, with the same :mod:`rlhfless.scaling` code the real runtime uses:

* **Rollout.** The :class:`~rlhfless.scaling.LengthPredictor` (EWMA, alpha 0.5) predicts each
  prompt's lengths; :func:`~rlhfless.scaling.choose_k` packs prompt groups by predicted length
  and picks the cheapest number of functions (``tp`` GPUs each) whose predicted makespan is
  within 5% of the fastest, under the plan's cost model (the first ``--cost`` model);
  :func:`~rlhfless.scaling.simulate_rollout` runs it with the true lengths and per-function
  cut-and-migrate at tau = 0.7. Shared prefixes: each group's prompt is prefilled once.
  Functions are released at their own finish (or cut).
* **Forward passes** (old log-probs, reference, critic values) and **training** run on
  functions of one whole node each (the G GPUs, like the serverful systems, so stage times match
  and only the holding differs). Trainer functions load the Adam state (16 bytes per
  parameter) and write it back to host memory after the update (billed, busy).
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

from collections.abc import Callable

from rlhfless.cost_models import CostModel
from rlhfless.scaling import (
    GroupWork,
    LengthPredictor,
    ScalingConfig,
    ScalingDecision,
    SimFunction,
    ThroughputParams,
    choose_k,
    simulate_rollout,
)
from rlhfless.sim.cluster import Cluster
from rlhfless.sim.engine import Engine
from rlhfless.sim.perf import PerfModel
from rlhfless.sim.systems import IterationResult, System, completed
from rlhfless.sim.workload import Batch, Workload

WITHIN_FRACTION = 0.05  # k: cheapest within 5% of the fastest predicted rollout
# The rollout policy as a user gets it by default (assignment method, cut, tau), so the
# simulated system is the one `rlhfless train --set scaling.policy=rlhfless` runs.
POLICY = ScalingConfig(policy="rlhfless")


def k_grid(limit: int, around: int | None = None) -> list[int]:
    """Candidate function counts: powers of two up to ``limit`` (and ``limit``), or, with
    ``around``, ~10% steps from half to twice it. The scaler's curve is smooth, so a coarse
    pass and a fine pass around its choice find its minimum at a fraction of the cost of
    evaluating every k (which would dominate a 100-node sweep)."""
    if around is None:
        ks = {limit}
        k = 1
        while k < limit:
            ks.add(k)
            k *= 2
        return sorted(ks)
    ks = {around}
    k = max(1.0, around / 2)
    while k < min(limit, 2 * around):
        ks.add(max(1, min(limit, round(k))))
        k *= 1.1
    return sorted(ks)


def hold_seconds(model: CostModel, boot: float) -> float:
    """Idle gap worth paying for instead of releasing and restarting a GPU: a restart bills its
    boot (when cold starts are billed) and at least the minimum charge."""
    r = model.rules
    return max(r.minimum_seconds, boot if r.bill_cold_start else 0.0)


class Rlhfless(System):
    name = "rlhfless"

    def __init__(
        self, perf: PerfModel, workload: Workload, cluster: Cluster, plan_model: CostModel
    ) -> None:
        super().__init__(perf, workload, cluster)
        self.plan_model = plan_model
        self.predictor = LengthPredictor(alpha=0.5)
        self.node_slots = min(cluster.gpus_per_node, cluster.gpus)

    def warm(self, role: str, t: float) -> bool:
        return self.cluster.cached(0, role, t, self.perf.startup.keep_alive_seconds)

    def node_functions(
        self, engine: Engine, role: str, start: float, busy: float, state_bytes: float | None
    ) -> None:
        """One function per node for a whole-cluster stage, pre-warmed to be ready at ``start``."""
        c, slots = self.cluster, self.node_slots
        boot = self.perf.start_seconds(self.warm(role, start), state_bytes, c.gpus)
        for node, slot in c.place(c.gpus // slots, slots):
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

    def choose(
        self, works: list[GroupWork], ks: list[int], params: ThroughputParams
    ) -> ScalingDecision:
        return choose_k(
            works, ks, params, self.plan_model, self.cluster.device_kind,
            within_fraction=WITHIN_FRACTION, method=POLICY.assign, slots_per_function=self.perf.tp,
        )  # fmt: skip

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
        predicted = [
            self.predictor.predict_group(pid, len(ls))
            for pid, ls in zip(batch.prompt_ids, batch.lengths, strict=True)
        ]
        works = self.works(batch, predicted, dedup=True)
        limit = c.gpus // tp
        coarse = self.choose(works, k_grid(limit), params)
        decision = self.choose(works, k_grid(limit, coarse.k), params)
        groups = decision.assignment.groups
        cut, tau = POLICY.cut_in_force((decision.cut, decision.cut_threshold))
        r = simulate_rollout(
            batch.lengths, [float(x) for x in batch.prompt_tokens], groups, params,
            predicted=predicted, cut=cut, threshold=tau,  # type: ignore[arg-type]
            transfer=perf.transfer_params(), prewarm=i > 0,
        )  # fmt: skip
        for (node, slot), sf in zip(c.place(len(groups), tp), r.functions, strict=True):
            engine.at(
                t + sf.ready_at,
                self._use("rollout", node, slot, tp, t, sf),
                f"rollout:{node}:{slot}",
            )
        for pid, ls in zip(batch.prompt_ids, batch.lengths, strict=True):
            self.predictor.observe(pid, ls)
        roll = r.makespan + perf.gpu.stage_overhead_seconds
        stages["rollout"] = roll
        t2 = t + roll
        stages["reward"] = reward = self.reward_seconds(batch)
        t3 = t2 + reward
        stages["forward"] = fwd = self.forward_seconds(batch, c.gpus)
        engine.at(
            t3, lambda now: self.node_functions(engine, "forward", now, fwd, None), f"forward{i}"
        )
        t4 = t3 + fwd
        stages["train"] = train = self.train_seconds(batch, c.gpus)
        state = perf.trainer_state_bytes()
        offload = state / c.gpus / perf.gpu.intra_node_bytes_per_s
        engine.at(
            t4,
            lambda now: self.node_functions(engine, "trainer", now, train + offload, state),
            f"train{i}",
        )
        end = t4 + train
        self.results.append(
            IterationResult(
                index=i, start=t, end=end, stages=stages, samples=batch.samples,
                decode_tokens=sum(r.tokens_per_sequence), samples_trained=completed(r, batch),
                rollout_functions=len(groups), moves=r.moves, cuts=r.cuts,
            )
        )  # fmt: skip
        done(end)
