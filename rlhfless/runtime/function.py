"""The inside of a function process: host one actor and serve calls over a DEALER socket.

Entered either in a child forked by the zygote (:mod:`rlhfless.runtime.zygote`) or in a fresh
interpreter (``python -m rlhfless.runtime.function SPEC``). Either way the device binding and
thread counts are set before the actor's module is imported.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import faulthandler
import importlib
import inspect
import math
import os
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from rlhfless.runtime.errors import BadMessage
from rlhfless.runtime.messages import (
    CPU_SLOTS_ENV,
    PIN_CORES_ENV,
    Call,
    Codec,
    Error,
    Heartbeat,
    Init,
    Ready,
    Release,
    Result,
    Spawn,
)
from rlhfless.runtime.procutil import die_with_parent, ignore_terminal_interrupt
from rlhfless.runtime.rendezvous import prepare_member

INIT_WAIT_S = 120.0  # how long a started function waits for its Init before giving up
STATS_METHOD = "_rlhfless_stats"  # the one private method a caller may use: the function's counters
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def slot_cores(slot: int, slots: int, allowed: set[int]) -> set[int]:
    """CPU slot ``slot``'s own cores: the ``allowed`` cores split evenly over ``slots`` (a
    remainder belongs to none); empty when a share would be under one core."""
    per = len(allowed) // max(1, slots)
    return set(sorted(allowed)[slot * per : (slot + 1) * per]) if per else set()


def pin_to_slot(spec: Spawn) -> None:
    """A function that asked to (``PIN_CORES_ENV``) runs on its CPU slot's cores only: the
    scheduler then never moves other work onto the core it decodes on, nor it onto another's."""
    slots = spec.env.get(CPU_SLOTS_ENV, "")
    if spec.env.get(PIN_CORES_ENV) != "1" or not slots or not hasattr(os, "sched_setaffinity"):
        return
    cores = slot_cores(spec.slot, int(slots), os.sched_getaffinity(0))
    if cores:
        os.sched_setaffinity(0, cores)


def apply_binding(spec: Spawn) -> None:
    """Device binding and thread counts, before anything imports CUDA or the actor's module."""
    os.environ.update(spec.env)
    pin_to_slot(spec)
    for var in _THREAD_VARS:
        os.environ[var] = str(spec.threads)
    torch = sys.modules.get("torch")
    if torch is not None:  # already imported by the zygote: env vars alone come too late
        torch.set_num_threads(spec.threads)
        with contextlib.suppress(RuntimeError):  # only settable before inter-op work starts
            torch.set_num_interop_threads(max(1, spec.threads))
        torch.seed()  # forked children would otherwise share the zygote's RNG state


def apply_import_context(spec: Spawn) -> None:
    """The controller's working directory and import path (Spawn.sys_path, .cwd), ahead of the
    function's own: a zygote started from another directory, or a fresh interpreter started with
    ``-m``, would not find an actor defined next to the user's script. Entries missing here are
    skipped; the function's own entries stay, after the controller's."""
    if spec.cwd and os.path.isdir(spec.cwd):
        os.chdir(spec.cwd)
    if spec.sys_path:
        ours = [p for p in spec.sys_path if os.path.isdir(p) or os.path.isfile(p)]
        sys.path[:] = ours + [p for p in sys.path if p not in ours]
        importlib.invalidate_caches()  # the zygote may have cached a miss for these dirs


def resolve_actor(path: str) -> type:
    module_name, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise TypeError(f"{path} is a {type(obj).__name__}, not a class")
    return obj


def public_methods(cls: type) -> list[str]:
    return sorted(
        name
        for name, member in inspect.getmembers(cls)
        if not name.startswith(("_", "rlhfless_")) and callable(member)
    )


class _Server:
    def __init__(self, spec: Spawn) -> None:
        self.spec = spec
        self.codec = Codec()
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, spec.function_id.encode())
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.send_lock = asyncio.Lock()
        self.bad_messages = 0
        self.tasks: set[asyncio.Task[None]] = set()
        # Synchronous methods run one at a time, so the actor's state needs no locks. By default
        # they run inline on the event loop (fastest); an actor that sets
        # ``rlhfless_threaded = True`` gets them on one worker thread instead, so its async
        # methods and heartbeats keep running during a long synchronous call.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="actor")
        self.threaded = False
        self.actor: Any = None
        self.hb_task: asyncio.Task[None] | None = None

    async def send(self, msg: msgspec.Struct) -> None:
        try:
            frames = self.codec.encode(msg)
        except TypeError as exc:  # an unsendable return value becomes the caller's error
            call_id = getattr(msg, "call_id", -1)
            frames = self.codec.encode(Error(call_id, "TypeError", str(exc), ""))
        async with self.send_lock:
            await self.sock.send_multipart(frames, copy=False)

    def bad(self, why: str) -> None:
        self.bad_messages += 1
        print(
            f"rlhfless function {self.spec.function_id}: rejected a message: {why}", file=sys.stderr
        )

    async def recv(self) -> msgspec.Struct | None:
        frames = await self.sock.recv_multipart(copy=False)
        try:
            return self.codec.decode(frames)
        except BadMessage as exc:
            self.bad(str(exc))
            return None

    async def heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.hb_interval)
            await self.send(
                Heartbeat(self.spec.function_id, time.time(), os.getpid(), self.bad_messages)
            )

    async def run(self, hb_interval: float) -> int:
        self.hb_interval = hb_interval
        spec = self.spec
        if spec.endpoint.startswith("tcp://"):  # a remote function: CURVE to the controller
            from rlhfless.runtime.auth import KEYS_ENV, Keys

            Keys(os.environ[KEYS_ENV]).client(self.sock)
        self.sock.connect(spec.endpoint)
        await self.send(Heartbeat(spec.function_id, time.time(), os.getpid(), 0))  # hello
        t0 = time.perf_counter()
        try:
            cls = resolve_actor(spec.actor)
        except BaseException as exc:
            await self.send(Error(-1, _qualname(exc), str(exc), traceback.format_exc()))
            return 1
        import_s = time.perf_counter() - t0
        init = await self.wait_init()
        if init is None:
            return 3
        t1 = time.perf_counter()
        self.threaded = bool(getattr(cls, "rlhfless_threaded", False))
        try:
            self.actor = cls(*init.args, **init.kwargs)
        except BaseException as exc:
            # The traceback travels in the Error (ActorInitError.remote_traceback); printed here
            # too, it reached the user once per failing function, ahead of the one-line error.
            await self.send(Error(-1, _qualname(exc), str(exc), traceback.format_exc()))
            return 1
        init_s = time.perf_counter() - t1
        await self.send(Ready(spec.function_id, os.getpid(), public_methods(cls), import_s, init_s))
        hb = self.hb_task = asyncio.create_task(self.heartbeats())
        try:
            await self.serve()
        finally:
            hb.cancel()
        if self.tasks:  # a release lets calls already running finish
            await asyncio.wait(self.tasks, timeout=30)
        return self.on_release()

    def on_release(self) -> int:
        """Run the actor's ``rlhfless_on_release()`` hook, if it has one, before the process
        exits: the last chance to put state somewhere durable (e.g. a trainer's hand-over state
        written behind its steps). Not run when the process dies; a failing hook exits with 1."""
        hook = getattr(self.actor, "rlhfless_on_release", None)
        if hook is None:
            return 0
        try:
            hook()
        except BaseException:
            traceback.print_exc()
            return 1
        return 0

    async def wait_init(self) -> Init | None:
        deadline = time.monotonic() + INIT_WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await asyncio.wait_for(self.recv(), left)
            except TimeoutError:
                break
            if isinstance(msg, Init):
                return msg
            if isinstance(msg, Release):
                return None
            if msg is not None:
                self.bad(f"expected Init, got {type(msg).__name__}")
        print(
            f"rlhfless function {self.spec.function_id}: no Init within {INIT_WAIT_S}s",
            file=sys.stderr,
        )
        return None

    async def serve(self) -> None:
        if not self.threaded and self.loop_idle():
            # Fast path: while calls only reach synchronous methods (which run inline, one at a
            # time, anyway) and nothing else waits on the event loop, serve from a blocking loop
            # without asyncio on the hot path.
            released, first = self.serve_blocking()
            if released:
                return
            if first is not None:
                self.start_call(first)  # a coroutine method: serve it, and the rest, on the loop
        while True:
            msg = await self.recv()
            if isinstance(msg, Call):
                self.start_call(msg)
            elif isinstance(msg, Heartbeat):
                await self.send(
                    Heartbeat(self.spec.function_id, time.time(), os.getpid(), self.bad_messages)
                )
            elif isinstance(msg, Release):
                return
            elif msg is not None:
                self.bad(f"unexpected {type(msg).__name__} in a function")

    def start_call(self, msg: Call) -> None:
        task = asyncio.create_task(self.call(msg))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def loop_idle(self) -> bool:
        """True when no task but this one and the heartbeats exists (none from the actor)."""
        return not asyncio.all_tasks() - {asyncio.current_task(), self.hb_task}

    def serve_blocking(self) -> tuple[bool, Call | None]:
        """Serve on the socket directly, blocking, while no call needs the event loop.

        Returns ``(True, None)`` on Release; ``(False, call)`` for the first call that names a
        coroutine method (the caller serves it, and everything after it, on the event loop);
        ``(False, None)`` when a method left a task on the loop (e.g. ``asyncio.create_task``),
        which then needs the loop to run. Heartbeats are sent from here while the loop is not
        running; no call is in flight meanwhile and the heartbeat task has not started.
        """
        sock: zmq.Socket = zmq.Socket.shadow(self.sock.underlying)  # same socket, synchronous API
        codec, fid, pid = self.codec, self.spec.function_id, os.getpid()
        tasks = len(asyncio.all_tasks())
        interval = self.hb_interval
        next_hb = time.monotonic() + interval
        while True:
            now = time.monotonic()
            if now >= next_hb:  # checked every message too: a stream of calls never starves it
                next_hb = now + interval
                self.send_now(sock, Heartbeat(fid, time.time(), pid, self.bad_messages))
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                if not sock.poll(max(1, math.ceil((next_hb - now) * 1000)), zmq.POLLIN):
                    continue
                frames = sock.recv_multipart(copy=False)
            try:
                msg = codec.decode(frames)
            except BadMessage as exc:
                self.bad(str(exc))
                continue
            if isinstance(msg, Call):
                reply = self.call_sync(msg)
                if reply is None:
                    return False, msg
                self.send_now(sock, reply)
                if len(asyncio.all_tasks()) != tasks:
                    return False, None
            elif isinstance(msg, Heartbeat):
                self.send_now(sock, Heartbeat(fid, time.time(), pid, self.bad_messages))
            elif isinstance(msg, Release):
                return True, None
            else:
                self.bad(f"unexpected {type(msg).__name__} in a function")

    def send_now(self, sock: zmq.Socket, msg: msgspec.Struct) -> None:
        try:
            frames = self.codec.encode(msg)
        except TypeError as exc:  # an unsendable return value becomes the caller's error
            call_id = getattr(msg, "call_id", -1)
            frames = self.codec.encode(Error(call_id, "TypeError", str(exc), ""))
        sock.send_multipart(frames, copy=False)

    def call_sync(self, msg: Call) -> Result | Error | None:
        """Run a call to a synchronous method inline; ``None`` if the method is a coroutine."""
        try:
            if msg.method == STATS_METHOD:
                return Result(msg.call_id, {"bad_messages": self.bad_messages, "pid": os.getpid()})
            if msg.method.startswith("_"):
                raise AttributeError(f"private method {msg.method!r} cannot be called remotely")
            method = getattr(self.actor, msg.method)
            if inspect.iscoroutinefunction(method):
                return None
            return Result(msg.call_id, method(*msg.args, **msg.kwargs))
        except Exception as exc:
            return Error(msg.call_id, _qualname(exc), str(exc), traceback.format_exc())

    async def call(self, msg: Call) -> None:
        try:
            if msg.method == STATS_METHOD:
                value: Any = {"bad_messages": self.bad_messages, "pid": os.getpid()}
            else:
                if msg.method.startswith("_"):
                    raise AttributeError(f"private method {msg.method!r} cannot be called remotely")
                method = getattr(self.actor, msg.method)
                if inspect.iscoroutinefunction(method):
                    value = await method(*msg.args, **msg.kwargs)
                elif self.threaded:
                    loop = asyncio.get_running_loop()
                    value = await loop.run_in_executor(
                        self.executor, lambda: method(*msg.args, **msg.kwargs)
                    )
                else:  # inline: a thread hop would double the round trip of a small call
                    value = method(*msg.args, **msg.kwargs)
        except Exception as exc:
            await self.send(Error(msg.call_id, _qualname(exc), str(exc), traceback.format_exc()))
            return
        await self.send(Result(msg.call_id, value))

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.sock.close(linger=2000)
        self.ctx.term()


def _qualname(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def function_main(spec: Spawn, hb_interval: float = 2.0) -> int:
    """Run the function to completion; returns its exit code. The caller exits the process."""
    faulthandler.enable()  # a segfault leaves a Python traceback in the stderr tail
    apply_binding(spec)
    apply_import_context(spec)
    prepare_member()  # a gang member: gloo's interface, and rank 0's store (rendezvous.py)
    server = _Server(spec)
    try:
        return asyncio.run(server.run(hb_interval))
    finally:
        server.close()


def encode_spec(spec: Spawn, hb_interval: float) -> str:
    return base64.b64encode(msgspec.msgpack.encode((spec, hb_interval))).decode()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m rlhfless.runtime.function SPEC (started by the runtime)")
    ignore_terminal_interrupt()  # Ctrl-C is the controller's to handle, not each function's
    die_with_parent()
    spec, hb = msgspec.msgpack.decode(base64.b64decode(argv[0]), type=tuple[Spawn, float])
    sys.stdout.flush()
    code = function_main(spec, hb)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: the work is done, threads may still hold locks


if __name__ == "__main__":
    main()
