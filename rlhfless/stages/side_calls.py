"""A running rollout function's handle for the calls made beside its generate.

The cut controller reads progress and hands stragglers over, and a streamed rollout takes the
finished samples, all while ``generate`` runs (``RolloutStage.running``). The stage releases a
function only once those calls have returned: released with a call in flight, the runtime
retires it instead of keeping it warm (it cannot tell a quick call from stuck work), and the
next iteration pays a cold start. Measured before this (benchmarks/stream.py, 3 x 10 streamed
iterations polling every 0.02 s): 3 iterations started a rollout function cold, 0.1-0.25 s each.
Once the generate has ended (:meth:`SideCalls.close`), a caller still holding the handle gets
the answer the actor gives when no generate runs, without a call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class SideCalls:
    """Calls ``handle``'s methods as the handle does, counting those in flight. ``idle``: what
    each method answers once the generate has ended (the actor's own answer then)."""

    def __init__(self, handle: Any, idle: dict[str, Any]) -> None:
        self.handle, self.idle = handle, idle
        self._in_flight = 0
        self._closed = False
        self._quiet = asyncio.Event()
        self._quiet.set()

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.handle, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self._closed:
                if name in self.idle:
                    return self.idle[name]
                raise RuntimeError(f"{name}(): the function's generate has ended")
            self._in_flight += 1
            self._quiet.clear()
            try:
                return await method(*args, **kwargs)
            finally:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._quiet.set()

        return call

    def close(self) -> None:
        """The generate has ended: no new call reaches the function."""
        self._closed = True

    async def quiet(self) -> None:
        """Return once no call is in flight (a dead function's fail at once)."""
        while self._in_flight:
            await self._quiet.wait()
