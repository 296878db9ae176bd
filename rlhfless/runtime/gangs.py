"""Starting, reusing and releasing gangs (see :mod:`rlhfless.runtime.gang`).

A mixin of :class:`rlhfless.runtime.runtime.Runtime` (like :mod:`rlhfless.runtime.pool`): it
shares the runtime's state and composes its spawn, placement, warm pool and kill.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import anyio

from rlhfless.runtime.config import RuntimeConfig
from rlhfless.runtime.devices import NodeDevices
from rlhfless.runtime.errors import GangStartError, SpawnError
from rlhfless.runtime.gang import Gang, GangHost, GangState
from rlhfless.runtime.handle import FunctionCaller, Handle
from rlhfless.runtime.nodes import Cluster
from rlhfless.runtime.placement import NodeView, place_gang
from rlhfless.runtime.rendezvous import GANG_ENV, Member, free_port, member_env, remote_port
from rlhfless.runtime.state import FunctionState, actor_path

log = logging.getLogger("rlhfless.runtime")
T = TypeVar("T")


class _Host(FunctionCaller, GangHost, Protocol):
    """The runtime as its gangs and their handles see it."""


class Gangs:
    # The runtime's state these methods use (set in Runtime.__init__ and start()).
    config: RuntimeConfig
    node: str
    threads: int
    cluster: Cluster | None
    _fns: dict[str, FunctionState]
    _gangs: dict[str, GangState]
    _ids: itertools.count[int]
    _token: str

    if TYPE_CHECKING:  # the runtime's methods they call (declared only for checkers)

        async def spawn(self, actor: str | type[T], *args: Any, **kw: Any) -> Handle[T]: ...
        def nodes(self) -> dict[str, NodeDevices]: ...
        def _node_views(self, path: str) -> list[NodeView]: ...
        def _live_on(self, slot: int, node: str) -> list[FunctionState]: ...
        def _reuse_key(
            self, path: str, args: Any, kw: Any, t: int, env: Any
        ) -> tuple[Any, str]: ...
        def _lease_warm(self, fn: FunctionState) -> None: ...
        def _may_keep_warm(self, fn: FunctionState) -> bool: ...
        def _keep_warm(self, fn: FunctionState) -> None: ...
        async def _retire(self, fn: FunctionState) -> None: ...
        async def _notify_room(self) -> None: ...
        def _kill(self, fn: FunctionState) -> None: ...
        def _check_open(self) -> None: ...

    async def spawn_gang(
        self,
        actor: str | type[T],
        size: int,
        *args: Any,
        stage: str = "",
        threads: int | None = None,
        env: dict[str, str] | None = None,
        init_kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
        weights: bool = True,
    ) -> Gang[T]:
        """Start (or reuse a warm) gang of ``size`` functions hosting ``actor``, one per slot.

        Each member is told its rank, the world size and a rendezvous address in torch's
        ``env://`` variables (read them with :func:`rlhfless.runtime.rendezvous.member`), so
        ``torch.distributed.init_process_group(backend)`` in the actor's ``__init__`` just
        works. Returns once every member is READY, or raises
        :class:`~rlhfless.runtime.errors.GangStartError` by ``timeout`` (default
        ``ready_timeout_s``) with every member gone. Other arguments as :meth:`spawn`.
        """
        self._check_open()
        path = actor_path(actor)
        threads = threads or self.threads
        _, base = self._reuse_key(path, args, init_kwargs, threads, env)
        key = f"{base}:{size}"
        deadline = time.monotonic() + (timeout or self.config.ready_timeout_s)
        warm = self._take_warm_gang(key)
        if warm is not None:
            if weights:
                await self._refresh_warm_gang(warm, deadline)
            return Gang(warm, [Handle(self._rt, f, f.lease) for f in _all(warm)], _spans(warm))
        spawn = dict(stage=stage, threads=threads, init_kwargs=init_kwargs, weights=weights)
        return await self._start_gang(path, size, args, env or {}, spawn, key, deadline)

    async def _start_gang(
        self,
        path: str,
        size: int,
        args: tuple[Any, ...],
        env: dict[str, str],
        spawn: dict[str, Any],
        key: str,
        deadline: float,
    ) -> Gang[Any]:
        slots = self._gang_slots(path, size)
        nodes = [node for node, _ in slots]
        spans = len(set(nodes)) > 1
        gang_id = f"g{next(self._ids)}-{self._token}"
        host, port = self._rendezvous(nodes[0], spans)
        if spans:
            log.info(
                "gang %s (%s, %d members) spans nodes %s: no node has %d free slots",
                gang_id, path, size, sorted(set(nodes)), size,
            )  # fmt: skip
        state = GangState(self._rt, gang_id, key, size, f"{host}:{port}")
        members = _members(gang_id, nodes, host, port)
        try:
            handles = await self._spawn_members(
                state, path, args, env, spawn, members, slots, deadline
            )
        except BaseException:
            await self._abandon_gang(gang_id)
            raise
        self._gangs[gang_id] = state
        return Gang(state, handles, spans)

    async def _spawn_members(
        self,
        state: GangState,
        path: str,
        args: tuple[Any, ...],
        env: dict[str, str],
        spawn: dict[str, Any],
        members: list[Member],
        slots: list[tuple[str, int]],
        deadline: float,
    ) -> list[Handle[Any]]:
        """Every member at once; the first to fail cancels the rest and fails the start."""
        handles: list[Handle[Any] | None] = [None] * len(members)
        failures: list[tuple[int, Exception]] = []

        async def start(rank: int) -> None:
            node, slot = slots[rank]
            try:
                h: Handle[Any] = await self.spawn(
                    path, *args, slot=slot, node=node, env={**env, **member_env(members[rank])},
                    timeout=max(0.001, deadline - time.monotonic()), **spawn,
                )  # fmt: skip
            except Exception as exc:
                failures.append((rank, exc))
                tg.cancel_scope.cancel()
                return
            handles[rank] = h
            state.join(rank, self._fns[h.function_id])

        async with anyio.create_task_group() as tg:
            for rank in range(len(members)):
                tg.start_soon(start, rank)
        if failures:
            rank, exc = failures[0]
            # Members that wait for each other (a rendezvous) miss one deadline together, and
            # the first to be told fails the start: the one that hung may be any of these.
            waiting = ", ".join(str(r) for r, h in enumerate(handles) if h is None)
            raise GangStartError(
                f"gang {state.gang_id} of {path} ({len(members)} members) did not start: "
                f"rank {rank} on {slots[rank][0]} slot {slots[rank][1]} failed: {exc} "
                f"(ranks not started by then: {waiting})\n"
                "every member was stopped"
            ) from exc
        return [h for h in handles if h is not None]

    async def _abandon_gang(self, gang_id: str) -> None:
        """Kill every process a failed start left, and wait (bounded) until each has exited."""
        fns = [f for f in self._fns.values() if f.spec.env.get(GANG_ENV) == gang_id]
        for fn in fns:
            if fn.state != "dead":
                fn.expected_exit = True
                self._kill(fn)
        with anyio.move_on_after(self.config.shutdown_timeout_s):
            for fn in fns:
                await fn.exited.wait()
        left = [f.function_id for f in fns if f.state != "dead"]
        if left:
            log.warning("gang %s: members %s had not exited yet", gang_id, left)

    def _gang_slots(self, path: str, size: int) -> list[tuple[str, int]]:
        views = self._node_views(path)
        busy = {
            v.name: [
                sum(f.state != "warm" for f in self._live_on(s, v.name)) for s in range(v.slots)
            ]
            for v in views
        }
        try:
            return place_gang(views, busy, size)
        except ValueError as exc:
            raise SpawnError(f"cannot place a gang of {size}: {exc}") from None

    def _rendezvous(self, node: str, spans: bool) -> tuple[str, int]:
        """Rank 0's node, on the interface the configuration names; a port free there."""
        if node != self.node:
            remote = self.cluster.by_name(node) if self.cluster else None
            assert remote is not None  # placement names only live nodes
            return remote.host, remote_port()  # the address the cluster config gives the agent
        host = self.config.gang_host
        if spans and ipaddress.ip_address(host).is_loopback:
            raise SpawnError(
                "a gang spanning nodes has rank 0 here, but RuntimeConfig.gang_host is loopback: "
                "set it to this machine's address on the cluster network"
            )
        return host, free_port(host)

    @property
    def _rt(self) -> _Host:
        return cast("_Host", self)  # this mixin is only ever part of a Runtime, which is one

    async def _refresh_warm_gang(self, state: GangState, deadline: float) -> None:
        """As :meth:`spawn` does for a warm function: a remote member's node gets the current
        weights before the caller may count on them; a failure releases the gang."""
        try:
            for fn in _all(state):
                if self.cluster is not None and fn.record.node != self.node:
                    await self.cluster.refresh_warm(fn, deadline)
        except BaseException:
            await self._release_gang(state, _all(state))
            raise

    def _take_warm_gang(self, key: str) -> GangState | None:
        up = self.nodes()
        for state in self._gangs.values():
            fns = _all(state)
            if state.key == key and all(f.state == "warm" and f.record.node in up for f in fns):
                for fn in fns:
                    self._lease_warm(fn)
                return state
        return None

    async def _release_gang(self, state: GangState, live: list[FunctionState]) -> None:
        """Warm as a unit when every member may stay warm; else every member exits."""
        keep = len(live) == state.size and all(self._may_keep_warm(f) for f in live)
        for fn in live:
            fn.record.release()
            if keep:
                self._keep_warm(fn)
            else:
                await self._retire(fn)
        await self._notify_room()


def _members(gang_id: str, nodes: list[str], host: str, port: int) -> list[Member]:
    """Each rank's place: ranks on one node are contiguous (placement groups them)."""
    return [
        Member(
            gang_id=gang_id,
            rank=rank,
            world_size=len(nodes),
            local_rank=nodes[:rank].count(node),
            local_world_size=nodes.count(node),
            host=host,
            port=port,
        )
        for rank, node in enumerate(nodes)
    ]


def _all(state: GangState) -> list[FunctionState]:
    return [f for f in state.members if f is not None]


def _spans(state: GangState) -> bool:
    return len({f.record.node for f in _all(state)}) > 1
