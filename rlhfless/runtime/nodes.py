"""The controller's side of many machines: remote nodes (agents), their links and liveness.

Each agent gets its own DEALER (CURVE client) for control traffic. Remote functions connect to
the runtime's one ROUTER, which also binds a CURVE tcp endpoint (libzmq copies socket options
into a listener at bind time, so the ipc:// endpoint bound earlier stays plain and local
behaviour does not change). Liveness: the controller heartbeats every agent each
``node_heartbeat_s``; an agent that answers nothing for ``node_timeout_s`` is lost: its
functions fail with :class:`NodeLost` and their billing stops at that moment. The link keeps
trying; an agent that answers again is re-admitted (and told to kill any stale functions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import zmq
import zmq.asyncio

from rlhfless.runtime.auth import Guard, Keys
from rlhfless.runtime.devices import NodeDevices
from rlhfless.runtime.errors import BadMessage, FunctionDied, NodeLost, SpawnError
from rlhfless.runtime.messages import (
    Codec,
    Exited,
    Heartbeat,
    Kill,
    NodeHello,
    WeightsRefused,
)
from rlhfless.runtime.publish import WeightSender

if TYPE_CHECKING:
    from rlhfless.runtime.config import RuntimeConfig
    from rlhfless.runtime.state import FunctionState

log = logging.getLogger("rlhfless.nodes")
RECONNECT_S = 2.0  # a node not up gets a fresh connection this often


def parse_address(address: str) -> tuple[str, int]:
    hostport = address.removeprefix("tcp://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"agent address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def local_ip_toward(host: str) -> str:
    """This machine's address on the route to ``host`` (no packet is sent: UDP connect)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))
        return str(s.getsockname()[0])


class RemoteNode:
    def __init__(self, address: str) -> None:
        self.address = address
        self.host, self.port = parse_address(address)
        self.name = f"{self.host}:{self.port}"  # until the agent says its name
        self.state = "joining"  # joining | up | lost
        self.devices: NodeDevices | None = None
        self.endpoint = ""  # the controller's CURVE endpoint as this node reaches it
        self.last_seen = 0.0
        self.lost_at: float | None = None
        self.connected_at = 0.0  # when the current socket was made
        self.linked = False  # a message went out on the current socket (its handshake is done)
        self.versions: set[int] = set()  # weight versions the agent says it holds
        self.sent: set[int] = set()  # versions sent on this link, maybe not yet confirmed
        self.bytes_sent = 0  # weight bytes sent to this node
        # Versions on their way to the node, until its hello lists them -> the sender's deadline.
        # Heartbeats queue behind them on the one link (hundreds of MB take seconds), so while
        # one is in flight the node's silence is judged by that deadline, not node_timeout_s.
        self.receiving: dict[int, float] = {}
        self.sock: zmq.asyncio.Socket | None = None
        self.sync: zmq.Socket | None = None  # the same socket, synchronous API
        self.reader: asyncio.Task[None] | None = None
        self.joined = asyncio.Event()


class ClusterHost(Protocol):
    """What the cluster needs of the runtime that owns it (the runtime is one; naming only this
    keeps the cluster below the runtime, with no import back up): its settings, node name and
    ROUTER socket, the published weights, its functions and what to do when one exits."""

    config: RuntimeConfig
    node: str
    _ctx: zmq.asyncio.Context
    _sock: zmq.asyncio.Socket
    _weights: tuple[int, dict[str, Any], int] | None
    _weights_dir: str
    _fns: dict[str, FunctionState]

    def _on_exited(
        self,
        fid: str,
        pid: int,
        code: int | None,
        tail: list[str],
        death: FunctionDied | None = None,
    ) -> None: ...
    def _background(self, coro: Any) -> None: ...
    async def _notify_room(self) -> None: ...


class Cluster:
    def __init__(self, rt: ClusterHost) -> None:
        cfg = rt.config
        self.rt = rt
        self.keys = Keys(cfg.keys_dir or "")
        self.nodes = [RemoteNode(a) for a in cfg.agents]
        self.codec = Codec()
        self.lost_events = 0
        self.readmitted = 0
        self.guard: Guard | None = None
        self.port = 0
        self.tasks: list[asyncio.Task[Any]] = []
        self.sender = WeightSender(self._send, self.codec, rt._weights_dir, cfg.weight_deltas)

    async def start(self) -> None:
        rt = self.rt
        self.guard = Guard(rt._ctx, self.keys)
        self.keys.server(rt._sock)
        self.guard.watch(rt._sock, "controller")
        rt._sock.bind(f"tcp://{rt.config.listen_host}:0")
        self.port = int(rt._sock.get_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
        for node in self.nodes:
            node.endpoint = f"tcp://{local_ip_toward(node.host)}:{self.port}"
            self._connect(node)
        self.tasks.append(asyncio.create_task(self._liveness(), name="rlhfless-liveness"))
        await self._ping_all()
        waits = [asyncio.ensure_future(n.joined.wait()) for n in self.nodes]
        _, pending = await asyncio.wait(waits, timeout=rt.config.join_timeout_s)
        for task in pending:
            task.cancel()
        missing = [n.address for n in self.nodes if n.state != "up"]
        if missing:
            log.warning("agents not answering after %ss: %s", rt.config.join_timeout_s, missing)
        if len(missing) == len(self.nodes) and not rt.config.local_node:
            raise SpawnError(
                f"no agent answered within {rt.config.join_timeout_s}s: {missing} (are they "
                "running, reachable, and using the same key directory?)"
            )

    def _connect(self, node: RemoteNode) -> None:
        sock = self.rt._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue control messages for an absent agent
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        # A SYN into a dead link otherwise waits out the kernel's retries (minutes): give up
        # after a second and try again, so a link that comes back is used within a second.
        sock.setsockopt(zmq.CONNECT_TIMEOUT, 1000)
        self.keys.client(sock)
        sock.connect(f"tcp://{node.host}:{node.port}")
        node.sock = sock
        node.connected_at = time.monotonic()
        node.linked = False
        node.sync = zmq.Socket.shadow(sock.underlying)
        node.reader = asyncio.create_task(self._read(node, sock), name=f"rlhfless-node-{node.host}")

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        for node in self.nodes:
            if node.reader is not None:
                node.reader.cancel()
        await asyncio.gather(
            *self.tasks, *(n.reader for n in self.nodes if n.reader), return_exceptions=True
        )
        try:
            for node in self.nodes:
                if node.sock is not None:
                    node.sock.close(linger=0)
        finally:
            if self.guard is not None:
                self.guard.stop()

    # ------------------------------------------------------------------ views for placement

    def up(self) -> list[RemoteNode]:
        return [n for n in self.nodes if n.state == "up"]

    def by_name(self, name: str) -> RemoteNode | None:
        for node in self.nodes:
            if node.name == name:
                return node
        return None

    # ------------------------------------------------------------------ sending

    def _send_now(self, node: RemoteNode, msg: Any) -> bool:
        if node.sock is None or node.sync is None or node.sock.closed:  # no shadow of a closed one
            return False
        try:  # through the synchronous API: the asyncio one turns Again into a future's error
            node.sync.send_multipart(self.codec.encode(msg), zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:  # e.g. the socket closed by lost() meanwhile: liveness decides
            log.debug("send to node %s failed: %s", node.name, exc)
            return False
        node.linked = True  # IMMEDIATE: a send succeeds only over a finished handshake
        return True

    async def _send(self, node: RemoteNode, frames: list[Any], timeout: float) -> None:
        sock = node.sock
        assert sock is not None
        try:
            await asyncio.wait_for(sock.send_multipart(frames, copy=False), timeout)
        except TimeoutError:
            raise SpawnError(f"node {node.name} did not take a message within {timeout}s") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if node.sock is sock or (task is not None and task.cancelling()):
                raise  # a real cancellation of the caller
            # lost() closed the socket under the send: the node is gone, not the caller.
            raise SpawnError(f"node {node.name} was lost while sending to it") from None

    @staticmethod
    @contextlib.contextmanager
    def _node_failure_is_lost(fn: FunctionState) -> Iterator[None]:
        """The node was up when ``fn`` was placed there; losing it since is the node's failure,
        and callers re-run the work of lost functions (:class:`NodeLost` is a FunctionDied)."""
        try:
            yield
        except SpawnError as exc:
            raise NodeLost(fn.function_id, fn.actor, fn.record.node, str(exc)) from None

    async def launch(self, fn: FunctionState, deadline: float) -> None:
        """Send ``fn``'s spawn to its node; :class:`NodeLost` if the node goes meanwhile."""
        with self._node_failure_is_lost(fn):
            node = self._up(fn.record.node)
            # The agent handles its messages in order: the weights are in its cache before the
            # function starts, so no confirmation is needed here.
            if fn.uses_weights:
                await self.ensure_weights(node, deadline, confirmed=False)
            left = max(0.1, deadline - time.monotonic())
            await self._send(node, self.codec.encode(fn.spec), left)

    def _up(self, name: str) -> RemoteNode:
        node = self.by_name(name)
        if node is None or node.state != "up":
            raise SpawnError(f"node {name} is not up")
        return node

    def has_current(self, node: RemoteNode) -> bool:
        weights = self.rt._weights
        return weights is None or weights[0] in node.versions | node.sent

    async def ensure_weights(self, node: RemoteNode, deadline: float, confirmed: bool) -> None:
        """Send the current weights to ``node`` unless it has them: once per node and version.

        ``confirmed`` waits until the agent says the version is in its cache: a warm function
        that loads it next reads the cache directly, not through the agent.
        """
        weights = self.rt._weights
        if weights is None:
            return
        version, tensors, nbytes = weights
        if version not in node.versions and version not in node.sent:
            # Claimed before the send yields: concurrent spawns on this node send it once.
            node.sent.add(version)
            node.receiving[version] = deadline
            try:
                node.bytes_sent += await self.sender.send(node, version, tensors, nbytes, deadline)
            except BaseException:
                node.sent.discard(version)
                node.receiving.pop(version, None)
                raise
        while confirmed and version not in node.versions:
            if node.state != "up":
                raise SpawnError(f"node {node.name} was lost while taking weights v{version}")
            if time.monotonic() > deadline:
                raise SpawnError(f"node {node.name} did not confirm weights v{version} in time")
            await asyncio.sleep(0.005)

    async def refresh_warm(self, fn: FunctionState, deadline: float) -> None:
        """Before warm ``fn`` is handed out again: its node holds the current weights (confirmed),
        so it finds them in its cache; :class:`NodeLost` if the node goes meanwhile."""
        with self._node_failure_is_lost(fn):
            await self.ensure_weights(self._up(fn.record.node), deadline, confirmed=True)

    def kill(self, fn: FunctionState) -> None:
        node = self.by_name(fn.record.node)
        if node is not None and fn.pid:
            self._send_now(node, Kill(fn.function_id, fn.pid))

    # ------------------------------------------------------------------ receiving

    async def _read(self, node: RemoteNode, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart(copy=False)
            try:
                msg = self.codec.decode(frames)
            except BadMessage as exc:
                log.warning("node %s: rejected a message: %s", node.name, exc)
                continue
            node.last_seen = time.monotonic()
            if isinstance(msg, NodeHello):
                self._hello(node, msg)
            elif isinstance(msg, WeightsRefused):
                self.sender.refused(node.name, msg)
            elif isinstance(msg, Exited):
                fn = self.rt._fns.get(msg.function_id)
                if fn is not None and fn.record.node == node.name:
                    self.rt._on_exited(msg.function_id, msg.pid, msg.exit_code, msg.stderr_tail)

    def _hello(self, node: RemoteNode, msg: NodeHello) -> None:
        node.versions = set(msg.weight_versions)
        for version in node.versions:
            node.receiving.pop(version, None)
        if node.state == "up":
            return
        names = {n.name for n in self.nodes if n is not node} | {self.rt.node}
        if node.state == "joining":
            node.name = msg.node if msg.node not in names else f"{msg.node}@{node.port}"
            node.devices = NodeDevices(msg.device_kind, msg.slots, msg.gpu, msg.cores)
        else:  # re-admission: whatever survived there was declared lost; make sure it is gone
            self.readmitted += 1
            for fn in list(self.rt._fns.values()):
                if fn.record.node == node.name and fn.pid:
                    self._send_now(node, Kill(fn.function_id, fn.pid))
            log.warning("node %s is back: re-admitted", node.name)
        node.state = "up"
        node.lost_at = None
        node.joined.set()
        self.rt._background(self.rt._notify_room())

    # ------------------------------------------------------------------ liveness

    async def _ping_all(self) -> None:
        for node in self.nodes:
            self._send_now(node, Heartbeat("controller", time.time()))

    async def _liveness(self) -> None:
        period = self.rt.config.node_heartbeat_s
        timeout = self.rt.config.node_timeout_s
        last_tick = time.monotonic()
        while True:
            await self._ping_all()
            now = time.monotonic()
            stalled = now - last_tick - period
            last_tick = now
            if stalled > timeout / 2:
                # This loop (the controller) was blocked, not the agents: their answers may be
                # queued unread. Judge them again after a fresh round, never on stale clocks.
                log.warning("controller stalled %.1fs: node liveness deadlines restart", stalled)
                for node in self.nodes:
                    node.last_seen = max(node.last_seen, now)
                await asyncio.sleep(period)
                continue
            for node in self.nodes:
                receiving = any(deadline > now for deadline in node.receiving.values())
                if node.state == "up" and now - node.last_seen > timeout and not receiving:
                    self.lost(node, f"no answer for {now - node.last_seen:.1f}s")
                elif node.state != "up" and now - node.connected_at > self._patience(node):
                    # libzmq may stop retrying a connect that failed while the route was gone
                    # (link down): a fresh socket tries again, so a link that returns is seen.
                    self._reconnect(node)
            await asyncio.sleep(period)

    @staticmethod
    def _patience(node: RemoteNode) -> float:
        """How long a not-up node's socket is given before a fresh one replaces it.

        A socket whose handshake finished is waiting for the agent's hello; replacing it then
        starts the handshake over and, on a loaded machine where the round trip takes longer
        than RECONNECT_S, would never let the agent answer in time (re-admission flaked so).
        """
        return RECONNECT_S * (4 if node.linked else 1)

    def lost(self, node: RemoteNode, why: str) -> None:
        """Fail the node's functions now (billing stops now); reconnect from scratch."""
        node.state = "lost"
        node.lost_at = time.time()
        node.versions.clear()  # unknown after a loss: resend on the next spawn there
        node.sent.clear()
        node.receiving.clear()
        self.lost_events += 1
        log.warning("node %s lost: %s", node.name, why)
        for fn in list(self.rt._fns.values()):
            if fn.record.node == node.name and fn.state != "dead":
                self.rt._on_exited(
                    fn.function_id,
                    fn.pid,
                    None,
                    [],
                    death=NodeLost(fn.function_id, fn.actor, node.name, why),
                )
        self._reconnect(node)  # a fresh socket drops anything queued for the old connection

    def _reconnect(self, node: RemoteNode) -> None:
        if node.reader is not None:
            node.reader.cancel()
        if node.sock is not None:
            node.sock.close(linger=0)
        self._connect(node)
