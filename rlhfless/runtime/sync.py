"""A thin blocking facade over :class:`Runtime` for code that is not async.

The runtime's event loop runs on one background thread; every method submits a coroutine to
it and waits for the answer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from rlhfless.runtime.config import RuntimeConfig
from rlhfless.runtime.handle import Handle
from rlhfless.runtime.messages import BillingEvent
from rlhfless.runtime.runtime import Runtime
from rlhfless.runtime.state import RuntimeStats

T = TypeVar("T")
R = TypeVar("R")


class SyncHandle(Generic[T]):
    def __init__(self, owner: SyncRuntime, handle: Handle[T]) -> None:
        self._owner = owner
        self.handle = handle

    @property
    def function_id(self) -> str:
        return self.handle.function_id

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        return self._owner._run(self.handle.call(method, *args, **kwargs))

    def release(self) -> None:
        self._owner._run(self.handle.release())

    def __getattr__(self, name: str) -> Callable[..., Any]:
        remote = getattr(self.handle, name)  # AttributeError for typos, as on the async handle
        return lambda *args, **kwargs: self._owner._run(remote(*args, **kwargs))

    def __enter__(self) -> SyncHandle[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class SyncRuntime:
    """``with SyncRuntime() as rt: h = rt.spawn("pkg.mod:Cls"); h.method(...)``."""

    def __init__(self, config: RuntimeConfig | None = None, **overrides: Any) -> None:
        self.runtime = Runtime(config, **overrides)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="rlhfless-runtime", daemon=True
        )

    def _run(self, coro: Coroutine[Any, Any, R]) -> R:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def start(self) -> SyncRuntime:
        self._thread.start()
        self._run(self.runtime.start())
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._run(self.runtime.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def __enter__(self) -> SyncRuntime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spawn(self, actor: str | type[T], *args: Any, **options: Any) -> SyncHandle[T]:
        """Same arguments as :meth:`Runtime.spawn`."""
        return SyncHandle(self, self._run(self.runtime.spawn(actor, *args, **options)))

    @property
    def billing_events(self) -> list[BillingEvent]:
        return list(self.runtime.billing_events)

    @property
    def stats(self) -> RuntimeStats:
        return self.runtime.stats
