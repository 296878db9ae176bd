"""A caller's lease on a function: calls, a typed proxy, and release."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from rlhfless.runtime.errors import RuntimeClosed

if TYPE_CHECKING:
    from rlhfless.runtime.state import FunctionState

T = TypeVar("T")

_DEFAULT: Any = object()


class FunctionCaller(Protocol):
    """What a handle needs of the runtime that made it (the runtime is one; naming only this
    keeps the handle below the runtime, with no import back up)."""

    async def _call(
        self,
        fn: FunctionState,
        lease: int,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: Any,
    ) -> Any: ...

    async def _release(self, fn: FunctionState, lease: int) -> None: ...


class Handle(Generic[T]):
    """Returned by :meth:`Runtime.spawn`. ``await h.call("m", ...)`` or ``await h.m(...)``.

    A handle is a lease: after :meth:`release` the function may serve another caller from the
    warm pool, so this handle refuses further calls. If the function dies, every pending and
    later call raises :class:`~rlhfless.runtime.errors.FunctionDied`.
    """

    def __init__(self, runtime: FunctionCaller, fn: FunctionState, lease: int) -> None:
        self._rt = runtime
        self._fn = fn
        self._lease = lease

    @property
    def function_id(self) -> str:
        return self._fn.function_id

    @property
    def actor(self) -> str:
        return self._fn.actor

    @property
    def slot(self) -> int:
        return self._fn.slot

    @property
    def pid(self) -> int:
        return self._fn.pid

    @property
    def node(self) -> str:
        """The node (machine) the function runs on: this one's name or an agent's."""
        return self._fn.record.node

    @property
    def warm(self) -> bool:
        """True when this lease was served by a warm function (no cold start)."""
        return self._fn.record.warm_starts > 0 and self._lease > 1

    @property
    def alive(self) -> bool:
        fn = self._fn
        return fn.death is None and fn.lease == self._lease and fn.state == "leased"

    async def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``method(*args, **kwargs)`` in the function; concurrent calls are fine."""
        return await self._rt._call(self._fn, self._lease, method, args, kwargs, _DEFAULT)

    async def call_timeout(
        self, timeout: float | None, method: str, /, *args: Any, **kwargs: Any
    ) -> Any:
        """Like :meth:`call` with its own deadline (seconds; None waits forever)."""
        return await self._rt._call(self._fn, self._lease, method, args, kwargs, timeout)

    async def release(self) -> None:
        """Give the function back: it stays warm for reuse, then exits (scale to zero)."""
        await self._rt._release(self._fn, self._lease)

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        if name.startswith("_"):
            raise AttributeError(name)
        methods = self._fn.methods
        if methods and name not in methods:
            raise AttributeError(
                f"{self._fn.actor} has no public method {name!r}; it has: {', '.join(sorted(methods))}"
            )

        async def remote(*args: Any, **kwargs: Any) -> Any:
            return await self.call(name, *args, **kwargs)

        remote.__name__ = name
        return remote

    def __repr__(self) -> str:
        state = "alive" if self.alive else ("dead" if self._fn.death else "released")
        return f"<Handle {self.function_id} {self.actor} slot={self.slot} {state}>"

    async def __aenter__(self) -> Handle[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(RuntimeClosed):  # closing the runtime released it already
            await self.release()
