"""The warm pool: released functions stay warm for reuse, slots have room limits.

A mixin of :class:`rlhfless.runtime.runtime.Runtime`; it shares the runtime's state (the
function table, the room condition) and is kept apart only to keep each file about one thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from rlhfless.runtime.config import RuntimeConfig
from rlhfless.runtime.devices import NodeDevices
from rlhfless.runtime.errors import SpawnError
from rlhfless.runtime.messages import PIN_CORES_ENV, Codec, Init, Release
from rlhfless.runtime.state import FunctionState, RuntimeStats, actor_path, reuse_key


def spawn_env(env: dict[str, str] | None, pin_cores: bool) -> dict[str, str] | None:
    """The env a spawn asks for, as its reuse key sees it: ``pin_cores`` is part of it, so a
    pinned warm function serves pinned spawns only (and is counted for them only)."""
    return {**(env or {}), PIN_CORES_ENV: "1"} if pin_cores else env


class WarmPool:
    # The runtime's state these methods use (set in Runtime.__init__).
    config: RuntimeConfig
    stats: RuntimeStats
    _fns: dict[str, FunctionState]
    _room: asyncio.Condition
    _closed: bool
    _codec: Codec
    threads: int

    if TYPE_CHECKING:  # ...and the runtime's methods they call (declared only for checkers:
        # real stubs here would shadow Locality's methods in the runtime's MRO).
        def nodes(self) -> dict[str, NodeDevices]: ...
        def _devices_of(self, node: str | None) -> NodeDevices: ...
        def _background(self, coro: Any) -> None: ...
        async def _send_quiet(self, identity: str, msg: Any) -> None: ...

    def _reuse_key(
        self,
        path: str,
        args: Sequence[Any],
        init_kwargs: dict[str, Any] | None,
        threads: int,
        env: dict[str, str] | None,
    ) -> tuple[list[Any], str]:
        """The constructor's frames, and the key under which a warm function can be reused."""
        try:
            init_frames = self._codec.encode(Init(list(args), dict(init_kwargs or {})))
        except TypeError as exc:
            raise SpawnError(f"actor {path}: cannot send its arguments: {exc}") from None
        return init_frames, reuse_key(path, threads, env or {}, init_frames)

    def warm_count(
        self,
        actor: str | type[Any],
        *args: Any,
        threads: int | None = None,
        env: dict[str, str] | None = None,
        init_kwargs: dict[str, Any] | None = None,
        pin_cores: bool = False,
    ) -> int:
        """How many warm functions a :meth:`spawn` with these arguments would reuse now, on the
        nodes that are up: what a caller planning its next stage can count on not cold-starting
        (a released function stays warm ``keep_alive_s``, unless evicted)."""
        path = actor_path(actor)
        env = spawn_env(env, pin_cores)
        _, key = self._reuse_key(path, args, init_kwargs, threads or self.threads, env)
        return self._count_warm(key)

    def _warm(self, key: str, slot: int | None, node: str | None) -> Iterator[FunctionState]:
        """The warm functions a spawn of ``key`` (on ``slot`` / ``node`` if given) may reuse."""
        up = self.nodes()
        for fn in self._fns.values():
            where = fn.record.node
            if (
                fn.state == "warm"
                and fn.key == key
                and (slot is None or fn.slot == slot)
                and (where == node if node is not None else where in up)
            ):
                yield fn

    def _count_warm(self, key: str) -> int:
        return sum(1 for _ in self._warm(key, None, None))

    def _take_warm(self, key: str, slot: int | None, node: str | None) -> FunctionState | None:
        for fn in self._warm(key, slot, node):
            self._lease_warm(fn)
            return fn
        return None

    def _lease_warm(self, fn: FunctionState) -> None:
        """A warm function serves a new lease (a gang's members each take one)."""
        if fn.expiry is not None:
            fn.expiry.cancel()
            fn.expiry = None
        fn.state = "leased"
        fn.lease += 1
        fn.record.lease()
        self.stats.warm_starts += 1

    def _live_on(self, slot: int, node: str) -> list[FunctionState]:
        return [
            fn
            for fn in self._fns.values()
            if fn.slot == slot and fn.state != "dead" and fn.record.node == node
        ]

    async def _choose_slot(self, slot: int | None, deadline: float, node: str) -> int:
        """The requested slot, or the least-loaded one; waits (to the deadline) for room."""
        limit = self.config.max_functions_per_slot
        async with self._room:
            while True:
                slots = self._devices_of(node).slots
                candidates = [slot] if slot is not None else list(range(slots))
                load = {s: self._live_on(s, node) for s in candidates}
                best = min(
                    candidates,
                    key=lambda s: (sum(f.state != "warm" for f in load[s]), len(load[s]), s),
                )
                if limit is None or len(load[best]) < limit:
                    return best
                for s in sorted(candidates, key=lambda s: len(load[s])):  # evict a warm function
                    warm = [f for f in load[s] if f.state == "warm"]
                    if warm:
                        await self._retire(warm[0])
                        break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SpawnError(
                        f"no room on slot(s) {candidates}: each holds {limit} live functions "
                        "(max_functions_per_slot); release some or raise the limit"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), left)

    async def _release(self, fn: FunctionState, lease: int) -> None:
        if fn.lease != lease or fn.state in ("warm", "exiting"):
            return  # already released: releasing twice is harmless
        if fn.state == "dead":
            return
        fn.record.release()
        if self._may_keep_warm(fn):
            self._keep_warm(fn)
        else:
            await self._retire(fn)
        await self._notify_room()

    def _may_keep_warm(self, fn: FunctionState) -> bool:
        """Whether a released function may stay warm (a gang stays warm only if all may)."""
        warm_here = sum(f.state == "warm" for f in self._live_on(fn.slot, fn.record.node))
        return (
            not self._closed
            and self.config.keep_alive_s > 0
            and not fn.pending
            and warm_here < self.config.max_warm_per_slot
        )

    def _keep_warm(self, fn: FunctionState) -> None:
        fn.state = "warm"
        loop = asyncio.get_running_loop()
        fn.expiry = loop.call_later(
            self.config.keep_alive_s, lambda: self._background(self._retire(fn))
        )

    async def _retire(self, fn: FunctionState) -> None:
        """Ask a function to exit (scale to zero)."""
        if fn.state == "dead" or (fn.state == "exiting" and fn.expected_exit):
            return
        fn.expected_exit = True
        fn.state = "exiting"
        if fn.expiry is not None:
            fn.expiry.cancel()
            fn.expiry = None
        await self._send_quiet(fn.function_id, Release("released"))

    async def _notify_room(self) -> None:
        async with self._room:
            self._room.notify_all()
