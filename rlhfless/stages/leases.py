"""Spawning, running, releasing and re-running the stages' functions, in one place.

A stage's work runs on a function leased from the runtime (warm from the pool when one is kept
alive). A function that dies mid-work has that work re-run on a new function, so an iteration
never loses a sample. :meth:`Leases.run` is one unit of work on one lease; :class:`Held` keeps
one function across the many calls of a streamed stage and restarts it, with whatever state
the caller rebuilds on it (``on_start``), when it dies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from rlhfless.runtime import ActorInitError, FunctionDied, Gang, Runtime

log = logging.getLogger("rlhfless.pipeline")
R = TypeVar("R")
MAX_RETRIES = 2  # re-runs of one unit of work after its function died

# (seconds from spawn to release, warm?) per function a stage used: its price as it ran
LeaseLog = list[tuple[float, bool]]


class Leases:
    """The stages' access to the runtime's functions; counts the re-runs after deaths."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.retries = 0
        # role's actor -> (the gang's actor, ranks): that role runs as a gang of functions
        # (a sharded trainer, train.slots > 1) wherever a stage leases it
        self.gangs: dict[str, tuple[str, int]] = {}

    async def spawn(
        self, actor: str, args: tuple[Any, ...], stage: str, threads: int | None,
        node: str | None, weights: bool, pin_cores: bool = False,
    ) -> Any:  # fmt: skip
        if actor in self.gangs:  # placement packs a gang on one node when it can
            path, size = self.gangs[actor]
            per_rank = max(1, threads // size) if threads else None  # they share the cores
            gang = await self.rt.spawn_gang(
                path, size, *args, stage=stage, threads=per_rank, weights=weights
            )
            return GangLease(gang)
        if node is not None and node not in self.rt.nodes():
            node = None  # the pinned node is gone: placement picks
        return await self.rt.spawn(
            actor, *args, stage=stage, threads=threads, node=node, weights=weights,
            pin_cores=pin_cores,
        )  # fmt: skip

    def died(self, exc: FunctionDied, attempt: int, stage: str) -> None:
        """Count a death to re-run after, or raise it: out of attempts, or it would recur."""
        if attempt == MAX_RETRIES or will_fail_again(exc):
            raise exc
        self.retries += 1
        log.warning(
            "%s function %s died (%s); re-running its work", stage, exc.function_id, exc.exit_code
        )

    async def run(
        self,
        actor: str,
        args: tuple[Any, ...],
        stage: str,
        work: Callable[[Any], Awaitable[R]],
        threads: int | None = None,
        leases: LeaseLog | None = None,
        node: str | None = None,
        weights: bool = False,
        pin_cores: bool = False,
    ) -> R:
        """Spawn (or reuse warm), run ``work(handle)``, release; re-run on a new function if it
        dies. ``leases`` collects each function's lease for pricing; ``weights``: the function
        reads the published weights (rollouts); ``pin_cores``: on CPU slots it keeps to its
        slot's cores (rollouts: Runtime.spawn)."""
        for attempt in range(MAX_RETRIES + 1):
            t0 = time.perf_counter()
            handle = None
            try:  # a node lost while the function starts is a death too (NodeLost)
                handle = await self.spawn(actor, args, stage, threads, node, weights, pin_cores)
                return await work(handle)
            except FunctionDied as exc:
                self.died(exc, attempt, stage)
            finally:
                if handle is not None:
                    await handle.release()
                    if leases is not None:
                        leases.append((time.perf_counter() - t0, handle.warm))
        raise AssertionError("unreachable")  # pragma: no cover

    def held(
        self,
        actor: str,
        args: tuple[Any, ...],
        stage: str,
        threads: int | None = None,
        node: str | None = None,
        on_start: Callable[[Any], Awaitable[Any]] | None = None,
    ) -> Held:
        return Held(self, actor, args, stage, threads, node, on_start)


class Held:
    """One function kept for the many calls of a streamed stage, started at the first call.

    ``on_start(handle)`` runs on every function it starts, the first and any replacement: the
    place to rebuild what the calls so far left in the dead one (the streamed trainer replays
    its chunks there)."""

    def __init__(
        self, leases: Leases, actor: str, args: tuple[Any, ...], stage: str,
        threads: int | None, node: str | None,
        on_start: Callable[[Any], Awaitable[Any]] | None,
    ) -> None:  # fmt: skip
        self.leases, self.actor, self.args, self.stage = leases, actor, args, stage
        self.threads, self.node, self.on_start = threads, node, on_start
        self.handle: Any = None
        # (start, end) of every call (time.perf_counter): the stage's work, for the timeline
        # and for the share that overlapped the rollout
        self.calls: list[tuple[float, float]] = []

    async def call(self, work: Callable[[Any], Awaitable[R]]) -> R:
        for attempt in range(MAX_RETRIES + 1):
            t0 = time.perf_counter()
            try:
                if self.handle is None:
                    await self._start()
                return await work(self.handle)
            except FunctionDied as exc:
                await self._drop()
                self.leases.died(exc, attempt, self.stage)
            finally:
                self.calls.append((t0, time.perf_counter()))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _start(self) -> None:
        self.handle = await self.leases.spawn(
            self.actor, self.args, self.stage, self.threads, self.node, weights=False
        )
        if self.on_start is not None:
            await self.on_start(self.handle)

    async def _drop(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            await handle.release()

    async def release(self) -> None:
        await self._drop()


class GangLease:
    """A gang leased where a stage leases one function: every call goes to every rank (they
    run it together) and the reply is rank 0's (the ranks agree on the statistics; rank 0
    holds the gathered weights). A rank's death raises ``GangMemberDied``, a
    ``FunctionDied``: the work is re-run on a new gang like any dead function's."""

    def __init__(self, gang: Gang[Any]) -> None:
        self.gang = gang

    @property
    def node(self) -> str:
        return self.gang.nodes[0]  # rank 0's: where the hand-over state is swapped in

    @property
    def warm(self) -> bool:
        return self.gang.warm

    @property
    def pids(self) -> list[int]:
        return self.gang.pids

    async def release(self) -> None:
        await self.gang.release()

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        if name.startswith("_"):
            raise AttributeError(name)

        async def on_every_rank(*args: Any, **kwargs: Any) -> Any:
            return (await self.gang.call(name, *args, **kwargs))[0]

        on_every_rank.__name__ = name
        return on_every_rank


def will_fail_again(exc: FunctionDied) -> bool:
    """A function whose engine refused its model or settings (EngineError in ``__init__``):
    another one, with the same arguments, would refuse them too."""
    return isinstance(exc, ActorInitError) and exc.remote_type.endswith(".EngineError")
