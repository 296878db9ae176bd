"""The node agent: one per machine; hosts that machine's zygote and serves one controller.

``python -m rlhfless.runtime.agent --listen tcp://HOST:PORT --keys DIR`` (or ``rlhfless agent``).

Links. The controller connects to the agent's CURVE ROUTER (control only: Spawn, Kill, Weights,
heartbeats; the agent answers with NodeHello and forwards its zygote's Exited reports). A
remote function's calls and tensors do not pass through the agent: the function connects
straight to the controller's CURVE tcp ROUTER (one hop, no relay copy). On the agent's machine
the zygote and the agent talk over ipc://.

Faults. The controller heartbeats the agent; an agent that hears nothing for
``controller_timeout_s`` takes its functions down (restarts its zygote) and waits for the next
controller, so a controller that declared this node lost finds no stale functions behind it.
If the agent dies, its zygote dies with it (PDEATHSIG) and the zygote's children with the zygote.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import weakref

import zmq

from rlhfless.runtime import scratch
from rlhfless.runtime.auth import KEYS_ENV, Guard, Keys
from rlhfless.runtime.cache_writer import CacheWriter
from rlhfless.runtime.config import RuntimeConfig
from rlhfless.runtime.devices import detect
from rlhfless.runtime.errors import BadMessage
from rlhfless.runtime.launch import process_env
from rlhfless.runtime.messages import (
    Codec,
    Exited,
    Heartbeat,
    Kill,
    NodeHello,
    Release,
    Spawn,
    Weights,
    WeightsDelta,
    WeightsRefused,
)
from rlhfless.runtime.procutil import exit_now, kill
from rlhfless.runtime.weights import WEIGHTS_ENV, versions
from rlhfless.runtime.zygote import ZYGOTE_IDENTITY

# The same zygote preload as this machine's own runtime: remote cold starts match local ones.
DEFAULT_PRELOAD = RuntimeConfig().preload
log = logging.getLogger("rlhfless.agent")
POLL_MS = 100
CACHE_POLL_MS = 5


class Agent:
    def __init__(
        self,
        listen: str,
        keys_dir: str,
        slots: int | None = None,
        node: str = "",
        preload: tuple[str, ...] = DEFAULT_PRELOAD,
        controller_timeout_s: float = 10.0,
        heartbeat_s: float = 2.0,
        cache_dir: str | None = None,
    ) -> None:
        self.listen = listen
        self.keys_dir = os.path.abspath(keys_dir)
        self.keys = Keys(self.keys_dir)  # fail at start, clearly, on a bad key directory
        self.devices = detect(slots)
        self.node = node or socket.gethostname()
        self.preload = preload
        self.controller_timeout_s = controller_timeout_s
        self.heartbeat_s = heartbeat_s
        self.codec = Codec()
        self.controller: bytes | None = None
        self.last_seen = 0.0
        self.functions: set[str] = set()  # spawned and not yet reported exited
        self.zygote: subprocess.Popen[bytes] | None = None
        self.zygote_ready = False
        self.queued: list[Spawn] = []  # spawns that arrived before the zygote said hello
        self.stop = False
        # The directories last, so that a check above that fails leaves none behind.
        scratch.sweep_leftovers()  # those of agents and runtimes killed here before
        self.dir = scratch.make("rlhfless-agent-")
        self.own_cache = cache_dir is None  # made here: removed at shutdown (it is RAM)
        try:
            self.cache_dir = cache_dir or scratch.make(
                "rlhfless-weights-", scratch.SHM if os.path.isdir(scratch.SHM) else self.dir
            )
        except BaseException:
            scratch.remove([self.dir])
            raise
        # close() runs it; so does the interpreter's exit, or the collector, for an agent that
        # is never served (or never closed): the cache must not outlive the process.
        self._remove_dirs = weakref.finalize(
            self, scratch.remove, [self.dir, *([self.cache_dir] if self.own_cache else [])]
        )
        self.writer = CacheWriter(self.cache_dir)
        self.after_cache: list[Spawn] = []  # spawns held back while weights are being written

    def close(self) -> None:
        """Remove this agent's directories (its weight cache too, if the agent made it)."""
        self.writer.close()  # a write in flight finishes first: nothing writes into a removed dir
        self._remove_dirs()

    # ------------------------------------------------------------------ zygote

    def start_zygote(self) -> None:
        env = process_env({KEYS_ENV: self.keys_dir, WEIGHTS_ENV: self.cache_dir})
        self.zygote = subprocess.Popen(
            [sys.executable, "-m", "rlhfless.runtime.zygote", "--endpoint", self.back_endpoint,
             "--preload", ",".join(self.preload), "--heartbeat", str(self.heartbeat_s),
             "--parent-pid", str(os.getpid())],
            stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        self.zygote_ready = False

    def stop_zygote(self, why: str) -> None:
        """Take every function down with the zygote; report each as exited."""
        proc = self.zygote
        if proc is None:
            return
        self.zygote = None
        if self.zygote_ready:
            with contextlib.suppress(zmq.ZMQError):
                self.back.send_multipart([ZYGOTE_IDENTITY, *self.codec.encode(Release(why))])
        else:  # still importing its preloads: a Release would be dropped, unheard
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5.0)
        for fid in sorted(self.functions):  # exits the zygote could not report before it went
            self.to_controller(
                Exited(fid, 0, -9, [f"(the node agent stopped its functions: {why})"])
            )
        self.functions.clear()
        self.after_cache.clear()  # reported exited just now: never started

    # ------------------------------------------------------------------ links

    def to_controller(self, msg: object) -> None:
        if self.controller is None:
            return
        with contextlib.suppress(zmq.ZMQError):  # gone: its heartbeat timeout covers it
            self.front.send_multipart(
                [self.controller, *self.codec.encode(msg)],  # type: ignore[arg-type]
                copy=False,
            )

    def hello(self) -> NodeHello:
        d = self.devices
        held = [] if self.writer.forgetting else versions(self.cache_dir)
        return NodeHello(self.node, d.slots, d.kind, d.gpu, d.cores, os.getpid(), held)

    def on_front(self) -> None:
        frames = self.front.recv_multipart(copy=False)
        ident = frames[0].bytes
        try:
            msg = self.codec.decode(frames[1:])
        except BadMessage as exc:
            log.warning("agent %s: rejected a message: %s", self.node, exc)
            return
        if ident != self.controller:
            if self.controller is not None and self.functions:
                self.stop_zygote("a new controller connected")
                self.start_zygote()
            # Cached versions are an earlier controller's (or, in a --cache-dir, an earlier
            # agent's): the same numbers with other weights. The new one starts from none.
            self.writer.forget()
            self.after_cache.clear()
            log.info("agent %s: serving controller %s", self.node, ident.hex())
            self.controller = ident
        self.last_seen = time.monotonic()
        if isinstance(msg, Heartbeat):
            self.to_controller(self.hello())
        elif isinstance(msg, Spawn):
            self.functions.add(msg.function_id)
            if self.writer.busy:  # it may load the version being written: after it lands
                self.after_cache.append(msg)
            else:
                self.spawn(msg)
        elif isinstance(msg, Kill):
            if self.owns(msg.pid):
                kill(msg.pid, msg.signal)
        elif isinstance(msg, Weights | WeightsDelta):
            self.writer.submit(msg)  # on a thread: heartbeats are answered meanwhile
        elif isinstance(msg, Release):
            pass  # the controller is shutting down; its heartbeats stop and so do our functions
        else:
            log.warning("agent %s: unexpected %s", self.node, type(msg).__name__)

    def spawn(self, msg: Spawn) -> None:
        if self.zygote_ready:
            self.back.send_multipart([ZYGOTE_IDENTITY, *self.codec.encode(msg)])
        else:
            self.queued.append(msg)

    def cache_written(self) -> None:
        """Acknowledge what the writer finished (the hello lists the new version), or say why
        a delta was refused; then release the spawns that waited for it."""
        for msg, reason in self.writer.finished():
            if reason is None:
                self.to_controller(self.hello())
                continue
            log.warning("agent %s: weights v%d not cached: %s", self.node, msg.version, reason)
            self.to_controller(WeightsRefused(msg.version, reason))
        if not self.writer.busy:
            for spec in self.after_cache:
                self.spawn(spec)
            self.after_cache.clear()

    def owns(self, pid: int) -> bool:
        """Only the zygote's children may be killed on a controller's request."""
        if self.zygote is None or pid <= 0:
            return False
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        return ppid == self.zygote.pid

    def on_back(self) -> None:
        frames = self.back.recv_multipart(copy=False)
        try:
            msg = self.codec.decode(frames[1:])
        except BadMessage as exc:
            log.warning("agent %s: bad message from the zygote: %s", self.node, exc)
            return
        if isinstance(msg, Heartbeat):
            if not self.zygote_ready:
                self.zygote_ready = True
                log.info("agent %s: zygote ready (pid %d)", self.node, msg.pid)
                for spec in self.queued:
                    self.back.send_multipart([ZYGOTE_IDENTITY, *self.codec.encode(spec)])
                self.queued.clear()
        elif isinstance(msg, Exited):
            self.functions.discard(msg.function_id)
            self.to_controller(msg)

    # ------------------------------------------------------------------ main loop

    def serve(self) -> int:
        """Serve until ``stop``; on every way out (a failed bind too) release what was made."""
        try:
            # Weights arrive as tensors: import torch now, not in the middle of a message, where
            # the seconds it takes would silence this agent past the controller's deadline.
            import torch  # noqa: F401

            ctx = zmq.Context()
            guard: Guard | None = None
            sockets: list[zmq.Socket] = []  # closed before term(), which waits for them all
            try:
                guard = Guard(ctx, self.keys)
                self.front = ctx.socket(zmq.ROUTER)
                sockets.append(self.front)
                self.back = ctx.socket(zmq.ROUTER)
                sockets.append(self.back)
                self._serve(guard)
            finally:
                self.stop_zygote("agent shutdown")
                if guard is not None:
                    guard.stop()
                for sock in sockets:
                    sock.close(linger=0)
                ctx.term()
        finally:
            self.close()
        return 0

    def _serve(self, guard: Guard) -> None:
        self.front.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.front.setsockopt(zmq.LINGER, 0)
        self.keys.server(self.front)
        guard.watch(self.front, f"agent {self.node}")
        self.front.bind(self.listen)
        self.back.setsockopt(zmq.LINGER, 0)
        self.back_endpoint = f"ipc://{self.dir}/agent"
        self.back.bind(self.back_endpoint)
        self.start_zygote()
        print(
            f"rlhfless agent {self.node}: listening on {self.listen}, {self.devices.slots} "
            f"{self.devices.kind} slot(s), weight cache {self.cache_dir}",
            file=sys.stderr,
            flush=True,
        )
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        while not self.stop:
            # While weights are written, look for the writer's end often: a delta's sender
            # waits for the acknowledgement.
            for sock, _ in poller.poll(CACHE_POLL_MS if self.writer.busy else POLL_MS):
                if sock is self.front:
                    self.on_front()
                else:
                    self.on_back()
            self.cache_written()
            self.check()

    def check(self) -> None:
        if self.zygote is not None and self.zygote.poll() is not None:
            log.warning(
                "agent %s: the zygote exited (%s); restarting it", self.node, self.zygote.returncode
            )
            self.zygote = None
            for fid in sorted(self.functions):
                self.to_controller(Exited(fid, 0, -9, ["(the node's zygote exited)"]))
            self.functions.clear()
            self.after_cache.clear()
            self.start_zygote()
        silent = time.monotonic() - self.last_seen
        if self.controller is not None and silent > self.controller_timeout_s:
            log.warning(
                "agent %s: no word from the controller for %.1fs: stopping its functions",
                self.node,
                silent,
            )
            if self.functions:
                self.stop_zygote("controller lost")
                self.start_zygote()
            self.controller = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="rlhfless node agent")
    parser.add_argument("--listen", required=True, help="tcp://HOST:PORT")
    parser.add_argument("--keys", required=True, help="key directory (rlhfless keys init)")
    parser.add_argument("--slots", type=int, default=None, help="slots (default: GPUs or cores)")
    parser.add_argument("--node", default="", help="node name in billing (default: host name)")
    parser.add_argument("--preload", default=",".join(DEFAULT_PRELOAD))
    parser.add_argument("--controller-timeout", type=float, default=10.0)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    agent = Agent(
        args.listen,
        args.keys,
        args.slots,
        args.node,
        tuple(filter(None, args.preload.split(","))),
        args.controller_timeout,
        cache_dir=args.cache_dir,
    )

    def _stop(*_: object) -> None:
        agent.stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    exit_now(agent.serve())  # serve released what it made (its zygote, sockets, cache)


if __name__ == "__main__":
    main()
