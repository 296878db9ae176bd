"""The ``ray`` node provider: one rlhfless node agent on every node of an existing Ray cluster.

For each alive Ray node, :meth:`RayAgents.start` places one Ray actor pinned to that node
(``NodeAffinitySchedulingStrategy(soft=False)``). The actor starts ``rlhfless agent`` as its
child process, listening on ``tcp://<node ip>:<free port>``, and returns that address; the
controller then joins the agents exactly as with the ``static`` provider.

What goes through Ray: only its control plane. Ray pickles this module's actor class (by
reference: the worker imports ``rlhfless``) and the few strings and numbers of ``start`` and
``stop``. No rlhfless data goes through Ray: calls, tensors and weights flow over our CURVE
sockets, and secret keys never enter Ray's object store.

Choices, and why:

* **Resources.** The actor reserves the node's *whole* ``CPU`` and ``GPU`` totals for its
  lifetime. The agent advertises that many slots (GPUs, else whole CPUs) and fills them with
  functions Ray does not see, so anything Ray scheduled beside it would oversubscribe the node.
  A node that is partly busy therefore holds the actor back until it frees up (``timeout_s``
  then names it). ``memory`` is not reserved (the agent has no fixed need); nodes with neither
  a CPU nor a GPU (a head started with ``--num-cpus 0``, the usual "no work on the head") are
  skipped. Reserving every GPU also makes Ray hand the actor GPUs ``0..n-1``, which is what the
  agent's slot ``i`` -> ``CUDA_VISIBLE_DEVICES=i`` binding assumes (checked on the node).
* **Keys.** ``keys_dir`` must be readable at the same path on every node (a shared file
  system, or the directory copied to each machine, as with ``rlhfless keys init``); the actor
  checks it there before starting the agent.
* **Lifetimes.** The agent dies with its actor. ``close()`` asks each actor to SIGTERM its
  agent (which stops its functions and removes its weight cache), then kills the actor. If an
  actor dies first, Ray SIGKILLs its child, the agent; where Ray is set not to, Linux sends the
  agent SIGTERM (parent-death signal). Either way a small janitor process forked by the agent
  kills what is left of the agent's session and removes its /dev/shm cache. The actors are
  owned by this driver (not detached), so a controller that dies takes its actors, and so its
  agents, with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from rlhfless.runtime import scratch
from rlhfless.runtime.errors import RuntimeErrorBase

log = logging.getLogger("rlhfless.ray")

READY_TEXT = "listening on"  # the agent prints "rlhfless agent NODE: listening on ..." once bound
BIND_RETRIES = 3  # the free port we picked can be taken before the agent binds it
STOP_GRACE_S = 20.0  # agent shutdown takes its zygote down (up to 10 s in agent.py)
CONNECT_CHECK_S = 5.0  # ray.init() on an unreachable address retries for minutes; fail first


class RayProviderError(RuntimeErrorBase):
    """The Ray cluster could not be joined, or an agent could not be placed on a node."""


@dataclass(frozen=True)
class PlacedAgent:
    node_id: str  # Ray node id (hex)
    node_ip: str
    address: str  # "host:port" the controller connects to
    name: str  # agent node name used in billing, e.g. "ray-<first 8 of node id>"
    slots: int
    gpus: int


def _import_ray() -> ModuleType:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "the ray provider needs Ray on this machine and on every Ray node: "
            "pip install 'rlhfless[ray]'"
        ) from exc
    module: ModuleType = ray  # untyped for mypy (pyproject.toml): Any, narrowed here
    return module


def _check_reachable(ray_address: str) -> None:
    """Fail in seconds, not minutes, when nothing answers at the cluster's address."""
    hostport = ray_address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if ray_address == "auto" or not sep or not port.isdigit():
        return  # "auto" and odd forms: ray.init() reports these itself, quickly
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_CHECK_S).close()
    except OSError as exc:
        raise RayProviderError(
            f"cannot reach the Ray cluster at {ray_address!r}: {exc} (is `ray start --head` "
            "running there, and is this the GCS address it printed?)"
        ) from None


def _host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _free_port(ip: str) -> int:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


class _AgentHost:
    """The Ray actor on one node: runs the rlhfless agent there as its child process."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.tail: deque[str] = deque(maxlen=40)
        self.ready = threading.Event()

    def start(
        self, node_ip: str, keys_dir: str, name: str, slots: int, gpus: int,
        preload: tuple[str, ...], timeout_s: float,
    ) -> tuple[str, int]:  # fmt: skip
        """Start the agent; return its ``host:port`` and pid once it listens."""
        from rlhfless.runtime.auth import KeyError_, Keys

        try:
            Keys(keys_dir)  # the same path must hold the keys on every node
        except KeyError_ as exc:
            raise RayProviderError(f"on {name} ({node_ip}): {exc}") from None
        if gpus:
            self._check_gpus(name, gpus)
        deadline = time.monotonic() + timeout_s
        for _ in range(BIND_RETRIES):
            address = _host_port(node_ip, _free_port(node_ip))
            if self._launch(address, keys_dir, name, slots, preload, deadline):
                assert self.proc is not None
                return address, self.proc.pid
            if not any("Address already in use" in line for line in self.tail):
                break
        tail = "\n".join(f"    {line}" for line in self.tail) or "    (no output)"
        raise RayProviderError(f"the agent on {name} ({node_ip}) did not start:\n{tail}")

    def _check_gpus(self, name: str, gpus: int) -> None:
        import ray

        ids = [str(i) for i in ray.get_gpu_ids()]
        if ids != [str(i) for i in range(gpus)]:
            raise RayProviderError(
                f"on {name}: Ray gave the agent GPUs {ids}, but its slot i binds "
                f"CUDA_VISIBLE_DEVICES=i; start that Ray node with all of its GPUs visible"
            )

    def _launch(
        self, address: str, keys_dir: str, name: str, slots: int,
        preload: tuple[str, ...], deadline: float,
    ) -> bool:  # fmt: skip
        self.ready.clear()
        self.tail.clear()
        # Its own session: the janitor can then kill the agent's whole process group (zygote,
        # functions) without touching this worker. Started from the worker's main thread (Ray
        # runs a sync actor's methods there): a parent-death signal follows the thread that
        # forked, so that thread must outlive the agent.
        proc = subprocess.Popen(
            [sys.executable, "-m", __name__, "--listen", f"tcp://{address}", "--keys", keys_dir,
             "--slots", str(slots), "--node", name, "--preload", ",".join(preload)],
            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1,
            start_new_session=True,
        )  # fmt: skip
        self.proc = proc
        threading.Thread(target=self._forward, args=(proc,), daemon=True).start()
        while time.monotonic() < deadline and proc.poll() is None:
            if self.ready.wait(0.1):
                return True
        if proc.poll() is None:  # out of time: do not leave it behind
            proc.kill()
            proc.wait()
            self.tail.append(f"(no '{READY_TEXT}' before the deadline)")
        else:
            time.sleep(0.2)  # let the reader take the last lines
        return False

    def _forward(self, proc: subprocess.Popen[str]) -> None:
        """Copy the agent's stderr to this worker's (Ray's logs) and watch for readiness."""
        assert proc.stderr is not None
        for line in proc.stderr:
            self.tail.append(line.rstrip())
            sys.stderr.write(line)
            if READY_TEXT in line:
                self.ready.set()

    def stop(self, timeout_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM the agent (it stops its functions), then SIGKILL; return its exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


@dataclass(frozen=True)
class _NodePlan:
    node_id: str
    node_ip: str
    cpus: float
    gpus: int

    @property
    def slots(self) -> int:
        return self.gpus or int(self.cpus)

    @property
    def name(self) -> str:
        return f"ray-{self.node_id[:8]}"


def _plan(nodes: list[dict[str, Any]]) -> list[_NodePlan]:
    plans = []
    for n in nodes:
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        plan = _NodePlan(
            n["NodeID"], n["NodeManagerAddress"], float(res.get("CPU", 0)), int(res.get("GPU", 0))
        )
        if plan.slots < 1:
            log.info("ray provider: skipping node %s (no whole CPU and no GPU)", plan.node_id)
            continue
        plans.append(plan)
    return plans


class RayAgents:
    """The agents placed on a Ray cluster; ``close()`` takes them (and their actors) down."""

    def __init__(
        self, ray: ModuleType, agents: list[PlacedAgent], actors: list[Any], pids: list[int],
        owns_ray: bool,
    ) -> None:  # fmt: skip
        self.agents = agents
        self._ray = ray
        self._actors = actors
        self._pids = pids
        self._owns_ray = owns_ray
        self._closed = False

    @classmethod
    def start(
        cls,
        ray_address: str,
        keys_dir: str,
        *,
        preload: tuple[str, ...] = ("torch",),
        timeout_s: float = 60.0,
    ) -> RayAgents:
        """Join the Ray cluster at ``ray_address`` (what ``ray.init`` takes: ``host:port``,
        ``auto`` or ``ray://host:10001``) and place one agent on each node that has a CPU or
        GPU. Blocks until every agent listens, or raises :class:`RayProviderError` within
        about ``timeout_s``. A Ray already initialised in this process is used as it is."""
        ray = _import_ray()
        keys_dir = os.path.abspath(os.path.expanduser(keys_dir))
        owns_ray = not ray.is_initialized()
        if owns_ray:
            _check_reachable(ray_address)
            try:
                ray.init(address=ray_address)
            except Exception as exc:  # ray raises ConnectionError, RuntimeError, ...
                raise RayProviderError(
                    f"cannot join the Ray cluster at {ray_address!r}: {exc}"
                ) from exc
        plans = _plan(ray.nodes())
        if not plans:
            if owns_ray:
                ray.shutdown()
            raise RayProviderError(
                f"the Ray cluster at {ray_address!r} has no alive node with a CPU or a GPU"
            )
        placed = cls(ray, [], [], [], owns_ray)
        try:
            placed._place(plans, keys_dir, preload, timeout_s)
        except BaseException:
            placed.close()  # nothing half-placed keeps its node's resources
            raise
        return placed

    def _place(
        self, plans: list[_NodePlan], keys_dir: str, preload: tuple[str, ...], timeout_s: float
    ) -> None:
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor_cls = ray.remote(_AgentHost)
        deadline = time.monotonic() + timeout_s
        refs = []
        for p in plans:
            actor = actor_cls.options(
                num_cpus=p.cpus,
                num_gpus=p.gpus,
                max_restarts=0,  # a lost node is the runtime's business (NodeLost), not Ray's
                scheduling_strategy=NodeAffinitySchedulingStrategy(p.node_id, soft=False),
            ).remote()
            self._actors.append(actor)
            # The actor waits for the agent a little less than we wait for the actor, so a
            # slow agent is reported as such rather than as a node that never scheduled.
            refs.append(
                actor.start.remote(
                    p.node_ip, keys_dir, p.name, p.slots, p.gpus, preload, 0.9 * timeout_s
                )
            )
        by_ref = dict(zip(refs, plans, strict=True))
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if pending:
            names = ", ".join(f"{by_ref[r].name} ({by_ref[r].node_ip})" for r in pending)
            raise RayProviderError(
                f"no agent started within {timeout_s:.0f}s on {names}: each agent reserves its "
                "node's whole CPU/GPU totals, so other Ray work there holds it back"
            )
        for ref, p in by_ref.items():
            try:
                address, pid = ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
            except Exception as exc:
                cause = getattr(exc, "cause", None) or exc
                raise RayProviderError(f"placing the agent on {p.name}: {cause}") from None
            self._pids.append(pid)
            self.agents.append(PlacedAgent(p.node_id, p.node_ip, address, p.name, p.slots, p.gpus))

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(a.address for a in self.agents)

    @property
    def pids(self) -> tuple[int, ...]:
        """The agent processes' pids, each on its own node (for logs and tests)."""
        return tuple(self._pids)

    def describe(self) -> list[str]:
        return [
            f"{a.name}: Ray node {a.node_id[:12]} at {a.node_ip}, agent tcp://{a.address} "
            f"(pid {pid}), {a.slots} {'GPU' if a.gpus else 'CPU'} slot(s)"
            for a, pid in zip(self.agents, self._pids, strict=True)
        ]

    def close(self) -> None:
        """Stop every agent (gracefully, then by force) and kill its actor. Idempotent."""
        if self._closed:
            return
        self._closed = True
        ray = self._ray
        if ray.is_initialized() and self._actors:
            stops = [a.stop.remote() for a in self._actors]
            with contextlib.suppress(Exception):  # an actor already dead stopped its agent
                ray.wait(stops, num_returns=len(stops), timeout=STOP_GRACE_S + 5)
            for a in self._actors:
                with contextlib.suppress(Exception):
                    ray.kill(a)  # its agent, if still there, gets SIGTERM from the kernel
        self._actors.clear()
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> RayAgents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- agent process


def _running(pid: int) -> bool:
    """Alive and not a zombie (a dead worker stays a zombie until its raylet reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _start_janitor(agent: int, worker: int, cache: str) -> None:
    """Fork a detached process that cleans up after the agent, however the agent ends.

    Ray SIGKILLs a worker's child processes when the worker exits (``ray.kill``, the driver's
    death), so the agent's own shutdown may never run: its functions would be orphaned and its
    /dev/shm weight cache (RAM, possibly GBs) would stay. A grandchild in its own session is not
    among those children; it kills the agent's process group (zygote, functions) and removes the
    cache once the agent is gone, or once the worker has been gone for ``STOP_GRACE_S``. Forked
    before any thread or heavy import exists, so it is small and the fork is safe.
    """
    middle = os.fork()
    if middle:
        os.waitpid(middle, 0)  # it exits at once; the janitor is then nobody's child here
        return
    try:
        os.setsid()  # out of the agent's process group, which the janitor kills
        if os.fork():
            return
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # let go of the actor's stderr pipe
            os.dup2(devnull, fd)
        worker_gone_at: float | None = None
        while _running(agent):
            if worker_gone_at is None and not _running(worker):
                worker_gone_at = time.monotonic()
            if worker_gone_at is not None and time.monotonic() - worker_gone_at > STOP_GRACE_S:
                os.kill(agent, signal.SIGKILL)  # SIGTERM did not stop it in time
            time.sleep(0.5)
        with contextlib.suppress(OSError):
            os.killpg(agent, signal.SIGKILL)  # whatever of its session is left
        shutil.rmtree(cache, ignore_errors=True)
    finally:
        os._exit(0)


def _agent_main(argv: list[str]) -> None:
    """``python -m rlhfless.runtime.ray_provider AGENT-ARGS``: the agent, tied to its actor."""
    from rlhfless.runtime.procutil import die_with_parent

    # SIGTERM, not SIGKILL, where the worker dies without Ray killing us: the agent then stops
    # its functions itself. Where Ray does kill us, the janitor cleans up.
    die_with_parent(signal.SIGTERM)
    # The weight cache lives in /dev/shm (RAM): ours, so that it goes with the agent.
    node = argv[argv.index("--node") + 1] if "--node" in argv else "agent"
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    # Marked with its owner (scratch.make): if the janitor dies with us, the next agent or
    # runtime on this machine sweeps it.
    cache = scratch.make(f"rlhfless-weights-{node}-", shm)
    _start_janitor(os.getpid(), os.getppid(), cache)

    from rlhfless.runtime.agent import main  # zmq, and torch at serve(): after the fork

    try:
        main([*argv, "--cache-dir", cache])
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    _agent_main(sys.argv[1:])
