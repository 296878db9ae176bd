"""Closing a runtime: release every function, then every resource, even when a step fails.

A mixin of :class:`rlhfless.runtime.runtime.Runtime`; it shares the runtime's state (the
function table, the sockets, the config) and is kept apart only to keep each file about one
thing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio

from rlhfless.runtime.billing import BillingLog
from rlhfless.runtime.config import RuntimeConfig
from rlhfless.runtime.messages import Release
from rlhfless.runtime.state import FunctionState

if TYPE_CHECKING:
    from rlhfless.runtime.nodes import Cluster

log = logging.getLogger("rlhfless.runtime")


class Closing:
    # The runtime's state these methods use (set in Runtime.__init__ and start).
    config: RuntimeConfig
    cluster: Cluster | None
    ray_agents: Any
    _fns: dict[str, FunctionState]
    _tasks: list[asyncio.Task[Any]]
    _sock: zmq.asyncio.Socket
    _ctx: zmq.asyncio.Context
    _billing: BillingLog

    if TYPE_CHECKING:  # the runtime's methods they call (declared only for checkers)

        def _on_exited(self, fid: str, pid: int, code: int | None, tail: list[str]) -> None: ...
        def _kill(self, fn: FunctionState) -> None: ...
        async def _send_quiet(self, identity: str, msg: Any) -> None: ...

    async def _release_resources(self) -> None:
        """Every step runs even when one before it fails: a step skipped leaves an
        authenticator thread, sockets or a context behind, and the garbage collector's later
        attempt to terminate that context hangs whatever runs then. The first failure is
        raised once all steps have run."""
        failures: list[BaseException] = []

        async def step(what: str, action: Any) -> None:
            try:
                result = action()
                if asyncio.iscoroutine(result):
                    await result
            except BaseException as exc:  # a cancellation too: the later steps still run
                log.warning("closing the runtime: %s failed: %r", what, exc)
                failures.append(exc)

        if self.cluster is not None:
            await step("closing the node links", self.cluster.aclose)
        if self.ray_agents is not None:
            await step("closing the Ray agents", lambda: asyncio.to_thread(self.ray_agents.close))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await step("closing the socket", lambda: self._sock.close(linger=0))
        # destroy, not term: a socket still open on this context (one a failed step left)
        # is closed instead of making term() wait for it forever.
        await step("closing the zmq context", lambda: self._ctx.destroy(linger=0))
        # The scratch directory is not removed here: Runtime.aclose's finally does it (its
        # finalizer), also when a step above is cancelled.
        await step("closing the billing log", self._billing.close)
        if failures:
            raise failures[0]

    async def _shutdown_functions(self) -> None:
        live = [fn for fn in self._fns.values() if fn.state != "dead"]
        for fn in live:
            fn.expected_exit = True
            if fn.expiry is not None:
                fn.expiry.cancel()
            if fn.state != "starting" or fn.pid:
                await self._send_quiet(fn.function_id, Release("shutdown"))
            fn.state = "exiting"
        await self._wait_exits(live, self.config.shutdown_timeout_s)
        left = [fn for fn in live if fn.state != "dead"]
        for fn in left:
            self._kill(fn)
        await self._wait_exits(left, 2.0)
        for fn in left:  # no exit report (e.g. the zygote was gone): close the books anyway
            if fn.state != "dead":
                self._on_exited(
                    fn.function_id, fn.pid, None, ["(no exit report: killed at shutdown)"]
                )

    @staticmethod
    async def _wait_exits(fns: list[FunctionState], timeout: float) -> None:
        if fns:
            await asyncio.wait(
                [asyncio.ensure_future(fn.exited.wait()) for fn in fns], timeout=timeout
            )
