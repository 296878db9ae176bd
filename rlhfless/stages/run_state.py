"""What the stages share about the run: settings, the runtime's functions, the policy's version
and weights, and where each role's state lives.

The pipeline owns one :class:`RunState`; the rollout stage and the staged and streamed
iterations are given it (never the pipeline), so the stages' modules import this one and
nothing imports the pipeline back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import torch

from rlhfless.runtime import Runtime
from rlhfless.stages.config import Config
from rlhfless.stages.leases import Leases
from rlhfless.stages.protocol import (
    CRITIC,
    REFERENCE,
    ROLLOUT,
    TRAINER,
    Published,
    StepStats,
)

R = TypeVar("R")
SHARDED_TRAINER = "rlhfless.stages.sharded:ShardedTrainerActor"
SHARDED_CRITIC = "rlhfless.stages.sharded:ShardedCriticActor"
SHARDED_REFERENCE = "rlhfless.stages.sharded:ShardedReferenceActor"


class RunState:
    def __init__(
        self, runtime: Runtime, config: Config, model_dir: str | Path, run_dir: str | Path
    ) -> None:
        self.rt = runtime
        self.cfg = config
        self.model_dir = str(model_dir)
        self.run_dir = Path(run_dir)
        self.state_dir = self.run_dir / "state"
        self.leases = Leases(runtime)
        # a role with slots > 1 runs as a gang wherever it is leased (FSDP2, stages/sharded.py)
        for role, actor, slots in (
            (TRAINER, SHARDED_TRAINER, config.train.slots),
            (CRITIC, SHARDED_CRITIC, config.train.critic_slots),
            (REFERENCE, SHARDED_REFERENCE, config.train.reference_slots),
        ):
            if slots > 1:
                self.leases.gangs[role] = (actor, slots)
        self.version = 0
        # None: the model dir's weights; a dict of tensors; or a node-local file's path.
        self.weights: dict[str, torch.Tensor] | str | None = None
        # Per role (trainer, critic): the node whose disk holds its hand-over state; later steps
        # go back there. If it is lost, placement picks another; the version check then says
        # whether run_dir/state is shared storage that the new node can read.
        self.homes: dict[str, str] = {}
        # Per role: the steps whose hand-over state may not be on disk yet (written behind the
        # step, stages/handover.py), as {"version", "args"}; sent along with the role's next
        # call so that a function that came back cold replays them instead of losing them.
        self.unsaved: dict[str, list[dict[str, Any]]] = {TRAINER: [], CRITIC: []}
        self.on_rollout_started: Callable[[list[int]], Any] | None = None  # test hook: pids

    async def with_function(
        self,
        actor: str,
        args: tuple[Any, ...],
        stage: str,
        work: Callable[[Any], Awaitable[R]],
        threads: int | None = None,
        leases: list[tuple[float, bool]] | None = None,
        node: str | None = None,
    ) -> R:
        """One unit of work on a function (stages/leases.py); only rollouts read the weights.
        Rollouts keep to their slot's cores on CPU slots: the scoring and training that stream
        beside the tail then run on the cores the finished functions freed, not on the one a
        function still decodes on (docs/streaming.md)."""
        return await self.leases.run(
            actor, args, stage, work, threads=threads, leases=leases, node=node,
            weights=actor == ROLLOUT, pin_cores=actor == ROLLOUT,
        )  # fmt: skip

    def warm_count(self, actor: str, args: tuple[Any, ...]) -> int:
        """Warm functions a :meth:`with_function` of ``actor`` with ``args`` would reuse now."""
        return self.rt.warm_count(actor, *args, pin_cores=actor == ROLLOUT)

    def weights_route(self) -> tuple[str, int]:
        """Where the trainer puts weights larger than rollout.weights_file_mb (node-local file).

        Across machines a file on the trainer's node is no use elsewhere: always inline, and
        the runtime distributes them node by node.
        """
        if self.rt.cluster is not None:
            return str(self.run_dir / "weights"), 1 << 62
        return str(self.run_dir / "weights"), self.cfg.rollout.weights_file_mb << 20

    def publish(self, published: Published) -> None:
        self.version = published.version
        if self.rt.cluster is not None:
            self.rt.publish_weights(self.version, published.state_dict or {})
        else:
            self.weights = published.path or published.state_dict

    def weight_bytes(self) -> tuple[int, int]:
        """Weight bytes sent to other nodes so far, and what whole versions would have been."""
        traffic = self.rt.weight_traffic().values()
        return sum(t.sent_bytes for t in traffic), sum(t.full_bytes for t in traffic)

    @property
    def weights_cached(self) -> bool:
        """Across machines the runtime sends each version once per node into that node's cache
        (rt.publish_weights) and rollout functions load it there: no per-function copies."""
        return self.rt.cluster is not None and self.version > 0

    def home(self, role: str) -> str | None:
        return self.homes.get(role)  # with_function lets placement pick if it is gone

    async def at_home(self, role: str, h: Any, result: Awaitable[R]) -> R:
        self.homes[role] = h.node
        return await result

    def trainer_threads(self) -> int:
        return self.cfg.runtime.trainer_threads or self.rt.devices.cores

    def trainer_args(self) -> tuple[Any, ...]:
        train_cfg = msgspec.to_builtins(self.cfg.train)
        return (self.model_dir, train_cfg, str(self.state_dir / "policy"), self.cfg.model.dtype)

    def critic_args(self) -> tuple[Any, ...]:
        train_cfg = msgspec.to_builtins(self.cfg.train)
        return (self.model_dir, train_cfg, str(self.state_dir / "critic"), self.cfg.model.dtype)

    def stepped(self, role: str, args: dict[str, Any], stats: StepStats) -> None:
        """Keep a step's inputs until a reply says its state is durable."""
        entries = [*self.unsaved[role], {"version": self.version + 1, "args": args}]
        self.unsaved[role] = [e for e in entries if e["version"] > stats.durable_version]
