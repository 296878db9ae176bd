"""The runtime's one ROUTER socket: sending to a peer, the receiver task that reads every
message, and what each message does (a call's answer, a function's hello, ready and exit).

A mixin of :class:`rlhfless.runtime.runtime.Runtime`; it shares the runtime's state (the
function table, the sockets, the codec) and is kept apart only to keep each file about one
thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
import zmq
import zmq.asyncio

from rlhfless.runtime.billing import BillingLog
from rlhfless.runtime.errors import (
    ActorInitError,
    BadMessage,
    FunctionDied,
    RemoteError,
    RuntimeClosed,
)
from rlhfless.runtime.messages import (
    Codec,
    Error,
    Exited,
    Heartbeat,
    Ready,
    Release,
    Result,
)
from rlhfless.runtime.state import FunctionState, RuntimeStats
from rlhfless.runtime.zygote import ZYGOTE_IDENTITY

log = logging.getLogger("rlhfless.runtime")
_RECV_BURST = 64  # messages the receiver takes in a row before it lets other tasks run


class Messaging:
    # The runtime's state these methods use (set in Runtime.__init__ and start).
    stats: RuntimeStats
    _fns: dict[str, FunctionState]
    _sock: zmq.asyncio.Socket
    _sync: zmq.Socket
    _send_lock: asyncio.Lock
    _codec: Codec
    _billing: BillingLog
    _failure: BaseException | None
    _zygote_ready: asyncio.Future[None] | None

    if TYPE_CHECKING:  # the runtime's methods they call (declared only for checkers)

        def _background(self, coro: Any) -> None: ...
        async def _notify_room(self) -> None: ...

    async def _send(self, identity: str, msg: msgspec.Struct) -> None:
        await self._send_frames(identity, self._codec.encode(msg))

    async def _send_frames(self, identity: str, frames: list[Any]) -> None:
        if self._sock.closed:  # the shadow below would point at a freed socket
            raise RuntimeClosed("the runtime is closed")
        if not self._send_lock.locked():  # nothing queued ahead of us: try to send right away
            try:
                self._sync.send_multipart([identity.encode(), *frames], zmq.NOBLOCK, copy=False)
            except zmq.Again:
                pass  # the peer's queue is full: wait in line below
            else:
                # The socket's descriptor is edge-triggered and a send may have consumed the
                # edge of an arrival: reading EVENTS through the asyncio socket re-arms its reader.
                self._sock.get(zmq.EVENTS)
                return
        async with self._send_lock:
            await self._sock.send_multipart([identity.encode(), *frames], copy=False)

    async def _send_quiet(self, identity: str, msg: msgspec.Struct) -> None:
        """Send where the peer may already be gone (releases at shutdown)."""
        with contextlib.suppress(zmq.ZMQError, RuntimeClosed):
            await self._send(identity, msg)

    async def _receive(self) -> None:
        try:
            sync, burst = self._sync, 0
            while True:
                # Take what has already arrived without a future; yield to the loop now and then.
                try:
                    frames = sync.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    frames = await self._sock.recv_multipart(copy=False)
                    burst = 0
                else:
                    burst += 1
                    if burst >= _RECV_BURST:
                        burst = 0
                        await asyncio.sleep(0)
                try:
                    identity = frames[0].bytes.decode("utf-8", "replace")
                    msg = self._codec.decode(frames[1:])
                    await self._dispatch(identity, msg)
                except BadMessage as exc:
                    self.stats.bad_messages += 1
                    log.warning("rejected a message: %s", exc)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # never swallowed: pending work fails, aclose() re-raises
            self._failure = exc
            log.exception("the runtime's receiver failed")
            for fn in self._fns.values():
                err = RuntimeClosed(f"the runtime's receiver failed: {exc!r}")
                for fut in [fn.ready, *(f for f, _ in fn.pending.values())]:
                    if not fut.done():
                        fut.set_exception(err)

    async def _dispatch(self, identity: str, msg: msgspec.Struct) -> None:
        if identity == ZYGOTE_IDENTITY.decode():
            if isinstance(msg, Exited):
                self._on_exited(msg.function_id, msg.pid, msg.exit_code, msg.stderr_tail)
            elif isinstance(msg, Heartbeat):
                if self._zygote_ready is not None and not self._zygote_ready.done():
                    self._zygote_ready.set_result(None)
            else:
                raise BadMessage(f"unexpected {type(msg).__name__} from the zygote")
            return
        fn = self._fns.get(identity)
        if fn is None or fn.state == "dead":
            raise BadMessage(f"{type(msg).__name__} from unknown peer {identity[:40]!r}")
        if isinstance(msg, Result | Error) and msg.call_id >= 0:
            fut, method = fn.pending.get(msg.call_id, (None, ""))
            if fut is None or fut.done():
                return  # the caller gave up (timeout); the late answer is dropped
            if isinstance(msg, Result):
                fut.set_result(msg.value)
            else:
                fut.set_exception(
                    RemoteError(fn.function_id, method, msg.type, msg.message, msg.traceback)
                )
        elif isinstance(msg, Heartbeat):
            if msg.pid and not fn.pid:  # hello: the process is up; send its constructor arguments
                fn.pid = msg.pid
                if fn.state == "exiting":
                    await self._send_quiet(identity, Release("cancelled"))
                else:
                    # A function whose import failed says hello and exits at once: it may be
                    # gone (EHOSTUNREACH) before its Init goes out; its exit report follows.
                    with contextlib.suppress(zmq.ZMQError):
                        await self._send_frames(identity, fn.init_frames)
        elif isinstance(msg, Ready):
            fn.record.ready_at = time.time()
            if not fn.ready.done():
                fn.ready.set_result(msg)
        elif isinstance(msg, Error):
            fn.init_error = msg  # the actor failed to import or construct; its exit follows
        else:
            raise BadMessage(f"unexpected {type(msg).__name__} from function {identity}")

    def _on_exited(
        self,
        fid: str,
        pid: int,
        code: int | None,
        tail: list[str],
        death: FunctionDied | None = None,
    ) -> None:
        fn = self._fns.get(fid)
        if fn is None or fn.state == "dead":
            return
        fn.state = "dead"
        fn.pid = fn.pid or pid
        if fn.expiry is not None:
            fn.expiry.cancel()
        if death is not None:
            pass  # given by the caller (NodeLost)
        elif fn.init_error is not None:
            e = fn.init_error
            death = ActorInitError(fid, fn.actor, code, tail, e.type, e.message, e.traceback)
        else:
            death = FunctionDied(fid, fn.actor, code, tail)
        fn.death = death
        if not fn.expected_exit or fn.pending:
            self.stats.deaths += 1
            log.warning("function %s (%s) died with exit code %s", fid, fn.actor, code)
        if not fn.ready.done():
            fn.ready.set_exception(death)
        for fut, _ in fn.pending.values():
            if not fut.done():
                fut.set_exception(death)
        fn.record.exited(code)
        self._billing.publish(fn.record.event())
        fn.exited.set()
        for hook in fn.on_exit:  # before the failed calls' callers wake: they see its effects
            hook(fn)
        self._background(self._notify_room())
