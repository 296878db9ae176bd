"""The local zygote: started on the first spawn, watched, stopped at shutdown.

A mixin of :class:`rlhfless.runtime.runtime.Runtime`; it shares the runtime's state (the
function table, the config) and is kept apart only to keep each file about one thing.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from rlhfless.runtime import launch
from rlhfless.runtime.config import RuntimeConfig
from rlhfless.runtime.errors import SpawnError
from rlhfless.runtime.messages import Release
from rlhfless.runtime.procutil import kill
from rlhfless.runtime.state import FunctionState
from rlhfless.runtime.zygote import ZYGOTE_IDENTITY


class ZygoteHost:
    # The runtime's state these methods use (set in Runtime.__init__).
    config: RuntimeConfig
    endpoint: str
    node: str
    _fns: dict[str, FunctionState]
    _tasks: list[asyncio.Task[Any]]
    _zygote: asyncio.subprocess.Process | None
    _zygote_ready: asyncio.Future[None] | None

    if TYPE_CHECKING:  # the runtime's methods they call (declared only for checkers)

        def _on_exited(self, fid: str, pid: int, code: int | None, tail: list[str]) -> None: ...
        async def _send_quiet(self, identity: str, msg: Any) -> None: ...

    async def _start_zygote(self) -> None:
        loop = asyncio.get_running_loop()
        self._zygote_ready = loop.create_future()
        self._zygote = await launch.start_zygote(
            self.endpoint,
            self.config.preload,
            self.config.stderr_tail_lines,
            self.config.heartbeat_s,
        )
        self._tasks.append(asyncio.create_task(self._watch_zygote(self._zygote)))

    async def _watch_zygote(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._zygote is proc:
            self._zygote = None
        if self._zygote_ready is not None and not self._zygote_ready.done():
            self._zygote_ready.set_exception(
                SpawnError(f"the zygote exited with code {code} before it was ready")
            )
        for fn in list(self._fns.values()):  # its children die with it (PDEATHSIG)
            if fn.process is None and fn.state != "dead" and fn.record.node == self.node:
                if fn.pid:
                    kill(fn.pid)
                self._on_exited(
                    fn.function_id, fn.pid, None, [f"(the zygote exited with code {code})"]
                )

    async def _stop_zygote(self) -> None:
        proc = self._zygote
        if proc is None:
            return
        ready = self._zygote_ready
        if ready is not None and ready.done() and not ready.cancelled() and not ready.exception():
            await self._send_quiet(ZYGOTE_IDENTITY.decode(), Release("shutdown"))
        else:  # still importing its preloads: a Release would be dropped, unheard
            if ready is not None and not ready.done():
                ready.set_exception(SpawnError("the runtime closed before its zygote was ready"))
                ready.exception()  # marked as seen: a spawn still waiting gets it, or nobody
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()  # its SIGTERM handler stops its children and exits
        try:
            await asyncio.wait_for(proc.wait(), self.config.shutdown_timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _zygote_handle(self) -> None:
        if self._zygote is None:
            await self._start_zygote()
        assert self._zygote_ready is not None  # set by _start_zygote
        await asyncio.wait_for(asyncio.shield(self._zygote_ready), self.config.ready_timeout_s)
