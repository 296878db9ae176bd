"""The controller: spawns functions on demand, routes calls, keeps a warm pool, records billing.

One ROUTER socket serves the zygote and every function. All state lives on one asyncio loop;
the receiver task is the only reader of the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import socket
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import msgspec
import zmq
import zmq.asyncio

from rlhfless.runtime import launch, scratch
from rlhfless.runtime.billing import BillingLog, BillingRecord
from rlhfless.runtime.closing import Closing
from rlhfless.runtime.config import RuntimeConfig
from rlhfless.runtime.devices import NodeDevices, detect
from rlhfless.runtime.errors import (
    CallTimeout,
    RuntimeClosed,
    SpawnError,
)
from rlhfless.runtime.faults import FaultInjector
from rlhfless.runtime.gang import GangState
from rlhfless.runtime.gangs import Gangs
from rlhfless.runtime.handle import _DEFAULT, Handle
from rlhfless.runtime.locality import Locality
from rlhfless.runtime.messages import (
    CPU_SLOTS_ENV,
    BillingEvent,
    Call,
    Codec,
    Spawn,
)
from rlhfless.runtime.messaging import Messaging
from rlhfless.runtime.nodes import Cluster
from rlhfless.runtime.pool import WarmPool, spawn_env
from rlhfless.runtime.procutil import kill
from rlhfless.runtime.state import FunctionState, RuntimeStats, actor_path, expire
from rlhfless.runtime.weights import WEIGHTS_ENV
from rlhfless.runtime.zygote import ZYGOTE_IDENTITY
from rlhfless.runtime.zygote_host import ZygoteHost

log = logging.getLogger("rlhfless.runtime")
T = TypeVar("T")


class Runtime(Messaging, WarmPool, Locality, ZygoteHost, Gangs, Closing):
    """Function processes on demand. ``async with Runtime() as rt: h = await rt.spawn(...)``."""

    def __init__(self, config: RuntimeConfig | None = None, **overrides: Any) -> None:
        self.config = msgspec.structs.replace(config or RuntimeConfig(), **overrides)
        self.devices: NodeDevices = detect(self.config.slots, self.config.device_kind)
        self.node = self.config.node or socket.gethostname()
        cores_per = max(1, self.devices.cores // self.devices.slots)
        self.threads = self.config.threads_per_function or cores_per
        self.stats = RuntimeStats()
        self._codec = Codec()
        self._fns: dict[str, FunctionState] = {}
        self._gangs: dict[
            str, GangState
        ] = {}  # live gangs by id, the warm ones reusable (gangs.py)
        self._ids = itertools.count(1)
        self._token = secrets.token_hex(3)  # function ids stay unique across runtimes of one run
        self._call_ids = itertools.count(1)
        self._room = asyncio.Condition()
        self._send_lock = asyncio.Lock()
        self._closed = False
        self._started = False
        self._failure: BaseException | None = None
        self._zygote: asyncio.subprocess.Process | None = None
        self._zygote_ready: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._bg: set[asyncio.Task[Any]] = set()
        self._billing = BillingLog(None)
        self.cluster: Cluster | None = None  # remote nodes (agents), when config.agents lists any
        self.ray_agents: Any = None  # provider "ray": the RayAgents this runtime placed
        self._weights: tuple[int, dict[str, Any], int] | None = None  # version, tensors, bytes
        self.faults: FaultInjector | None = None  # kills injected (config.kill_rate > 0)

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Runtime:
        try:
            await self.start()
        except BaseException:
            # A failed start (an agent that never joins, a zygote that dies) must not leave the
            # zygote, the receiver, the sockets or the CURVE authenticator's thread behind.
            with contextlib.suppress(Exception):
                await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        if self._started:
            return
        scratch.sweep_leftovers()  # the directories of runtimes and agents killed here before
        self._dir = scratch.make("rlhfless-")  # 0700: only this user reaches the socket
        # aclose() runs it; so does the interpreter's exit for a runtime never closed.
        self._remove_dir = weakref.finalize(self, scratch.remove, [self._dir])
        self._started = True  # from here on aclose() has something to release
        self.endpoint = f"ipc://{self._dir}/controller"
        self._weights_dir = f"{self._dir}/weights"  # this node's weight cache
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable sends raise, never vanish
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(self.endpoint)
        # The same socket through the synchronous API, for sends and receives that need not wait.
        self._sync: zmq.Socket = zmq.Socket.shadow(self._sock.underlying)
        self._billing = BillingLog(self.config.billing_path)
        self._tasks.append(asyncio.create_task(self._receive(), name="rlhfless-receiver"))
        if self.config.kill_rate > 0:  # opt-in fault injection (faults.py)
            cfg = self.config
            self.faults = FaultInjector(
                cfg.kill_rate, cfg.kill_seed, self._fns.values, self._kill, cfg.kill_max
            )
            self._tasks.append(asyncio.create_task(self.faults.run(), name="rlhfless-faults"))
        if self.config.zygote:
            await self._start_zygote()
        if self.config.provider == "ray":
            await self._place_ray_agents()
        if self.config.agents:
            self.cluster = Cluster(self)
            await self.cluster.start()

    async def aclose(self) -> None:
        """Release every function, wait for exits with a deadline, then kill what is left."""
        if not self._started or self._closed:
            self._closed = True
            return
        self._closed = True
        try:
            await self._shutdown_functions()
            await self._stop_zygote()
        finally:
            try:
                await self._release_resources()
            finally:  # a step above cancelled or failing must not leave the directory
                self._remove_dir()
        if self._failure is not None:
            raise RuntimeClosed(
                f"the runtime's receiver failed: {self._failure!r}"
            ) from self._failure

    # ---------------------------------------------------------------- spawn and release

    async def spawn(
        self,
        actor: str | type[T],
        *args: Any,
        slot: int | None = None,
        stage: str = "",
        threads: int | None = None,
        env: dict[str, str] | None = None,
        init_kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
        node: str | None = None,
        weights: bool = True,
        pin_cores: bool = False,
    ) -> Handle[T]:
        """Start (or reuse a warm) function hosting ``actor(*args, **init_kwargs)`` on a slot.

        ``node`` pins the function to one node (see :meth:`nodes`); by default placement picks.
        ``pin_cores``: on a node of CPU slots, the function runs on its slot's own cores only
        (the node's cores split evenly over its slots); elsewhere it changes nothing.
        ``weights=False``: the function never loads the published weights
        (:meth:`publish_weights`), so across machines its node is not sent them on its account.
        """
        self._check_open()
        path = actor_path(actor)
        self._check_place(node, slot)
        threads = threads or self.threads
        env = spawn_env(env, pin_cores)
        init_frames, key = self._reuse_key(path, args, init_kwargs, threads, env)
        warm = self._take_warm(key, slot, node)
        if warm is not None:
            return await self._hand_out_warm(warm, weights, timeout)
        deadline = time.monotonic() + (timeout or self.config.ready_timeout_s)
        node = node or self._place(path)
        slot = await self._choose_slot(slot, deadline, node)
        spec = self._spawn_spec(path, node, slot, threads, env)
        devices = self._devices_of(node)
        record = BillingRecord(spec.function_id, path, stage, node, slot, devices.kind)
        fn = FunctionState(spec, path, key, record, init_frames)
        fn.uses_weights = weights
        self._fns[spec.function_id] = fn
        self.stats.functions_started += 1
        return await self._start_new(fn, deadline)

    def _check_place(self, node: str | None, slot: int | None) -> None:
        if node is not None and node not in self.nodes():
            raise SpawnError(f"node {node!r} is not up; nodes up: {sorted(self.nodes())}")
        if slot is not None and not 0 <= slot < self._devices_of(node).slots:
            raise SpawnError(
                f"slot {slot} does not exist: this node has slots "
                f"0..{self._devices_of(node).slots - 1}"
            )

    async def _hand_out_warm(
        self, warm: FunctionState, weights: bool, timeout: float | None
    ) -> Handle[Any]:
        if weights and self.cluster is not None and warm.record.node != self.node:
            # The invariant a caller relies on: after publish_weights(v), any function it
            # gets, warm or new, finds v in its node's cache.
            try:
                deadline = time.monotonic() + (timeout or self.config.ready_timeout_s)
                await self.cluster.refresh_warm(warm, deadline)
            except BaseException:
                await self._release(warm, warm.lease)
                raise
        return Handle(self, warm, warm.lease)

    def _spawn_spec(
        self, path: str, node: str, slot: int, threads: int, env: dict[str, str] | None
    ) -> Spawn:
        """A new function's start: its device binding, where it calls home, what it imports."""
        devices = self._devices_of(node)
        fid = f"{node}-{self._token}-f{next(self._ids)}"
        bind = {"CUDA_VISIBLE_DEVICES": str(slot) if devices.gpu else ""}
        if not devices.gpu:  # CPU slots: a function that asks keeps to its slot's cores
            bind[CPU_SLOTS_ENV] = str(devices.slots)
        endpoint = self.endpoint
        if node != self.node:
            remote = self.cluster.by_name(node) if self.cluster else None
            assert remote is not None  # _place and the check above only name live nodes
            endpoint = remote.endpoint
        else:
            bind[WEIGHTS_ENV] = self._weights_dir
        here = launch.import_context() if node == self.node else ([], "")
        return Spawn(fid, path, endpoint, slot, {**bind, **(env or {})}, threads, *here)

    async def _start_new(self, fn: FunctionState, deadline: float) -> Handle[Any]:
        """Launch a new function and wait for its READY; on any failure it is killed."""
        try:
            await self._launch(fn, deadline)
            ready = await asyncio.wait_for(
                asyncio.shield(fn.ready), max(0.0, deadline - time.monotonic())
            )
        except TimeoutError:
            fn.expected_exit = True
            self._kill(fn)
            raise SpawnError(
                f"function {fn.function_id} ({fn.actor}) sent no READY within its deadline"
            ) from None
        except BaseException:
            if fn.state != "dead":
                fn.expected_exit = True
                self._kill(fn)
            raise
        fn.state = "leased"
        fn.methods = frozenset(ready.methods)
        record = fn.record
        self.stats.cold_start_s.append(
            record.ready_at - record.requested_at if record.ready_at else 0.0
        )
        return Handle(self, fn, fn.lease)

    async def _launch(self, fn: FunctionState, deadline: float) -> None:
        if fn.record.node != self.node:
            assert self.cluster is not None
            await self.cluster.launch(fn, deadline)
        elif self.config.zygote:
            try:
                await asyncio.wait_for(self._zygote_handle(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise SpawnError("the zygote did not become ready in time") from None
            await self._send(ZYGOTE_IDENTITY.decode(), fn.spec)
        else:
            fn.process = await launch.start_function(fn.spec, self.config.heartbeat_s)
            self._tasks.append(asyncio.create_task(self._watch_process(fn)))

    async def _watch_process(self, fn: FunctionState) -> None:
        assert fn.process is not None
        tail = await launch.pump_stderr(fn.process, fn.function_id, self.config.stderr_tail_lines)
        code = await fn.process.wait()
        self._on_exited(fn.function_id, fn.process.pid, code, tail)

    def _kill(self, fn: FunctionState) -> None:
        if fn.record.node != self.node:  # remote: its agent kills it (pids are per machine)
            if self.cluster is not None and fn.pid:
                self.cluster.kill(fn)
            else:
                fn.state = "exiting"
        elif fn.pid:
            kill(fn.pid)
        elif fn.process is not None:
            with contextlib.suppress(ProcessLookupError):
                fn.process.kill()
        else:  # not yet connected: the zygote forked it; Release reaches it once it says hello
            fn.state = "exiting"

    # ---------------------------------------------------------------- calls

    async def _call(
        self,
        fn: FunctionState,
        lease: int,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: Any,
    ) -> Any:
        self._check_open()
        if fn.death is not None:
            raise fn.death
        if fn.lease != lease or fn.state != "leased":
            raise RuntimeClosed(f"function {fn.function_id}: this handle was released; spawn again")
        call_id = next(self._call_ids)
        try:
            frames = self._codec.encode(Call(call_id, method, list(args), kwargs))
        except TypeError as exc:
            raise TypeError(f"{method}() on {fn.function_id}: {exc}") from None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        fn.pending[call_id] = (fut, method)
        fn.record.call_started()
        self.stats.calls += 1
        limit = self.config.call_timeout_s if timeout is _DEFAULT else timeout
        # A timer instead of asyncio.wait_for: no extra task per call on the hot path.
        timer = None if limit is None else loop.call_later(limit, expire, fut, limit)
        try:
            await self._send_frames(fn.function_id, frames)
            return await fut
        except CallTimeout:
            raise CallTimeout(
                f"{method}() on function {fn.function_id} took longer than {limit}s"
            ) from None
        finally:
            if timer is not None:
                timer.cancel()
            fn.pending.pop(call_id, None)
            fn.record.call_ended()

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg_done)

    def _bg_done(self, task: asyncio.Task[Any]) -> None:
        self._bg.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()  # surfaces at the next call and at aclose()

    # ---------------------------------------------------------------- billing

    @property
    def billing_events(self) -> list[BillingEvent]:
        """Events of every function that has exited, in exit order."""
        return self._billing.events

    def billing_stream(self) -> AsyncIterator[BillingEvent]:
        """Every billing event from now on, as each function exits; ends when the runtime closes."""
        return self._billing.stream()

    def live_billing(self) -> list[BillingEvent]:
        """Snapshots of functions still alive (exited_at is None), for pricing a run in progress."""
        return [fn.record.event() for fn in self._fns.values() if fn.state != "dead"]

    # ---------------------------------------------------------------- misc

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeClosed("the runtime is closed")
        if not self._started:
            raise RuntimeClosed("the runtime is not started: use `async with Runtime() as rt`")
        if self._failure is not None:
            raise RuntimeClosed(f"the runtime's receiver failed: {self._failure!r}")

    def functions(self) -> dict[str, str]:
        """Function id -> state, for inspection and tests."""
        return {fid: fn.state for fid, fn in self._fns.items()}

    def pids(self) -> list[int]:
        pids = [fn.pid for fn in self._fns.values() if fn.pid]
        if self._zygote is not None:
            pids.append(self._zygote.pid)
        return pids
