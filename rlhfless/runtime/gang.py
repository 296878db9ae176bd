"""A gang: n functions that live and die as one, and the handle that calls all of them.

Composed from the runtime's own parts: each member is an ordinary function (its own process,
slot, lease and billing record) spawned by :meth:`Runtime.spawn`, and each call fans out
through the members' :class:`~rlhfless.runtime.handle.Handle`. What a gang adds is the shared
fate: one member's death fails every pending call of the gang at once and kills the others,
since they may be blocked in a collective that can no longer complete.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import anyio

from rlhfless.runtime.errors import FunctionDied, GangMemberDied, RuntimeClosed
from rlhfless.runtime.handle import _DEFAULT, Handle
from rlhfless.runtime.state import FunctionState

if TYPE_CHECKING:
    from rlhfless.runtime.config import RuntimeConfig

log = logging.getLogger("rlhfless.runtime")
T = TypeVar("T")


PEER_DEATH_GRACE_S = 1.0  # how long a rank's error waits for a peer's death to be reported


class GangHost(Protocol):
    """What a gang needs of the runtime that started it (the runtime is one; naming only this
    keeps the gang below the runtime, with no import back up)."""

    config: RuntimeConfig
    _gangs: dict[str, GangState]

    def _background(self, coro: Any) -> None: ...
    async def _retire(self, fn: FunctionState) -> None: ...
    def _kill(self, fn: FunctionState) -> None: ...
    async def _release_gang(self, state: GangState, live: list[FunctionState]) -> None: ...


class GangState:
    """Controller-side state of one gang: its members in rank order and how it ended."""

    def __init__(self, rt: GangHost, gang_id: str, key: str, size: int, address: str) -> None:
        self.rt = rt
        self.gang_id = gang_id
        self.key = key  # warm reuse only for the same actor, arguments, threads, env and size
        self.size = size
        self.address = address  # the rendezvous "host:port" every member was given
        self.members: list[FunctionState | None] = [None] * size  # set as each becomes ready
        self.death: GangMemberDied | None = None  # the member death that ended the gang
        self.torn_down = ""  # why the runtime killed the members ("" while it has not)

    def join(self, rank: int, fn: FunctionState) -> None:
        # A member is reused only with its gang: no plain spawn's key looks like this one.
        fn.key = f"gang:{self.gang_id}:{rank}"
        self.members[rank] = fn
        fn.on_exit.append(self._member_exited)

    def live(self) -> list[FunctionState]:
        return [f for f in self.members if f is not None and f.state != "dead"]

    def _member_exited(self, fn: FunctionState) -> None:
        """The runtime's exit hook: a gang short of a member is over, one way or the other."""
        self.rt._gangs.pop(self.gang_id, None)  # never reused
        failed = not fn.expected_exit or bool(fn.pending)
        if failed and not self.torn_down and fn.death is not None:
            rank = self.members.index(fn)
            self.death = GangMemberDied(self.gang_id, rank, self.size, fn.death)
            log.warning("gang %s: rank %d (%s) died; killing the others", self.gang_id, rank, fn)
            self.tear_down(f"rank {rank} died")
        else:  # released, expired or shut down: the others follow, quietly
            for other in self.live():
                self.rt._background(self.rt._retire(other))

    def tear_down(self, why: str) -> None:
        """Kill every live member now (SIGKILL: one blocked in a collective would never exit)."""
        self.torn_down = self.torn_down or why
        for fn in self.live():
            fn.expected_exit = True
            self.rt._kill(fn)

    async def wait_exits(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            for fn in self.members:
                if fn is not None:
                    await fn.exited.wait()


class Gang(Generic[T]):
    """Returned by :meth:`Runtime.spawn_gang`. ``await g.call("m", ...)`` runs ``m`` on every
    rank at once and returns the replies in rank order.

    A lease, like :class:`Handle`: after :meth:`release` the gang may serve another caller
    from the warm pool (as a unit). Any failing rank fails the call at once and tears the gang
    down; a member's death raises :class:`~rlhfless.runtime.errors.GangMemberDied`.
    """

    def __init__(self, state: GangState, members: list[Handle[T]], spans_nodes: bool) -> None:
        self._state = state
        self.members = members  # one handle per rank, in rank order
        self.spans_nodes = spans_nodes  # True when placement could not pack it on one node

    @property
    def gang_id(self) -> str:
        return self._state.gang_id

    @property
    def size(self) -> int:
        return self._state.size

    @property
    def address(self) -> str:
        """The rendezvous address ("host:port") the runtime chose and gave every member."""
        return self._state.address

    @property
    def function_ids(self) -> list[str]:
        return [h.function_id for h in self.members]

    @property
    def nodes(self) -> list[str]:
        return [h.node for h in self.members]

    @property
    def pids(self) -> list[int]:
        return [h.pid for h in self.members]

    @property
    def warm(self) -> bool:
        """True when this lease was served by a warm gang (no cold start, no new rendezvous)."""
        return all(h.warm for h in self.members)

    @property
    def alive(self) -> bool:
        return all(h.alive for h in self.members)

    async def call(self, method: str, /, *args: Any, **kwargs: Any) -> list[Any]:
        """``method(*args, **kwargs)`` on every rank concurrently; the replies in rank order."""
        return await self._fan_out(method, [args] * self.size, kwargs, _DEFAULT)

    async def call_each(
        self, method: str, per_rank: Sequence[Sequence[Any]], /, **kwargs: Any
    ) -> list[Any]:
        """``method(*per_rank[r], **kwargs)`` on each rank ``r`` (e.g. each its own shard)."""
        if len(per_rank) != self.size:
            raise ValueError(f"call_each needs {self.size} argument lists, got {len(per_rank)}")
        return await self._fan_out(method, [tuple(a) for a in per_rank], kwargs, _DEFAULT)

    async def call_timeout(
        self, timeout: float | None, method: str, /, *args: Any, **kwargs: Any
    ) -> list[Any]:
        """Like :meth:`call` with its own deadline (seconds; None waits forever)."""
        return await self._fan_out(method, [args] * self.size, kwargs, timeout)

    async def release(self) -> None:
        """Give the gang back: it stays warm as a unit for reuse, then its members exit."""
        live = [fn for fn, h in zip(self._state.members, self.members, strict=True) if h.alive]
        if live:
            await self._state.rt._release_gang(self._state, [f for f in live if f is not None])

    async def _fan_out(
        self, method: str, args: list[tuple[Any, ...]], kwargs: dict[str, Any], timeout: Any
    ) -> list[Any]:
        self._check()
        replies: list[Any] = [None] * self.size
        failures: list[BaseException] = []

        async def one(rank: int) -> None:
            h = self.members[rank]
            try:
                if timeout is _DEFAULT:
                    replies[rank] = await h.call(method, *args[rank], **kwargs)
                else:
                    replies[rank] = await h.call_timeout(timeout, method, *args[rank], **kwargs)
            except Exception as exc:  # the first failure ends the call for every rank
                failures.append(exc)
                tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            for rank in range(self.size):
                tg.start_soon(one, rank)
        if failures:
            raise await self._failed(failures[0])
        return replies

    async def _failed(self, first: BaseException) -> BaseException:
        """The error a failed call raises, once the members are gone (no process left behind)."""
        st = self._state
        if st.death is None and not isinstance(first, FunctionDied | RuntimeClosed):
            # A peer's crash reaches a surviving rank as a collective error ("connection closed
            # by peer") before the runtime hears of the death: wait briefly to name the dead one.
            with anyio.move_on_after(PEER_DEATH_GRACE_S):
                while st.death is None:
                    await anyio.sleep(0.02)
        if st.death is None and not isinstance(first, FunctionDied | RuntimeClosed):
            # A rank raised or timed out: the others may wait in a collective for it forever.
            st.tear_down(f"{type(first).__name__} on one rank")
        await st.wait_exits(st.rt.config.shutdown_timeout_s)
        return st.death or first

    def _check(self) -> None:
        st = self._state
        if st.death is not None:
            raise st.death
        if st.torn_down:
            raise RuntimeClosed(
                f"gang {st.gang_id} was torn down ({st.torn_down}): start a new one"
            )
        if not self.alive:
            raise RuntimeClosed(f"gang {st.gang_id}: this handle was released; spawn_gang again")

    def __getattr__(self, name: str) -> Callable[..., Awaitable[list[Any]]]:
        """``await g.step(...)`` is ``await g.call("step", ...)``."""
        if name.startswith("_"):
            raise AttributeError(name)
        self.members[0].__getattr__(name)  # an AttributeError naming the actor's methods

        async def on_every_rank(*args: Any, **kwargs: Any) -> list[Any]:
            return await self.call(name, *args, **kwargs)

        on_every_rank.__name__ = name
        return on_every_rank

    def __repr__(self) -> str:
        return f"<Gang {self.gang_id} size={self.size} nodes={self.nodes} alive={self.alive}>"

    async def __aenter__(self) -> Gang[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()
