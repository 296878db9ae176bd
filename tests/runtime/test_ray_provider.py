"""The ray provider for real: a local Ray cluster of two Ray nodes, one rlhfless agent on each.

Both Ray nodes run on this machine (two raylets joined to one head), so they share an IP but
not a node id. The cluster is ours alone: it is stopped by the pids of its `ray start --block`
processes, never with `ray stop` (which would stop every Ray on the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlhfless.runtime import Runtime
from rlhfless.runtime.auth import keys_init
from rlhfless.runtime.ray_provider import RayAgents, RayProviderError
from tests.runtime.conftest import ECHO

ray = pytest.importorskip(
    "ray", reason="the ray provider tests need Ray: pip install 'rlhfless[ray]'"
)
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
# Ray's token auth is on by default and the token is cached per process on first use, so every
# cluster this process makes shares one token (a file of our own, not ~/.ray/auth_token).
_TOKEN = secrets.token_hex(32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_line(log: Path, text: str, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _reload_ray_config() -> None:
    """Ray reads RAY_AUTH_MODE once, at import; re-read it (as Ray does when it changes it)."""
    from ray._raylet import Config

    Config.initialize("")


@contextlib.contextmanager
def local_ray_cluster(nodes: int = 2, cpus: int = 1) -> Iterator[str]:
    """A head and ``nodes - 1`` workers (``ray start --block``), lean; yields the GCS address.

    This process (the driver) gets the cluster's token settings while the cluster is up.
    """
    with pytest.MonkeyPatch.context() as mp:
        try:
            with _cluster(mp, nodes, cpus) as address:
                yield address
        finally:
            mp.undo()
            _reload_ray_config()


@contextlib.contextmanager
def _cluster(monkeypatch: pytest.MonkeyPatch, nodes: int, cpus: int) -> Iterator[str]:
    temp = tempfile.mkdtemp(prefix="rr", dir="/tmp")  # short: Ray's unix sockets live under it
    token = Path(temp) / "token"
    token.write_text(_TOKEN)
    env = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # SIGTERM stops a node now, no draining
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # the driver (this process) needs the same token settings
    _reload_ray_config()
    # Workers, the agents they start and those agents' functions import the tests' actors.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--num-cpus", str(cpus), "--num-gpus", "0",
              "--object-store-memory", str(80 << 20), "--disable-usage-stats"]  # fmt: skip
    ray_cli = str(Path(sys.executable).with_name("ray"))
    procs: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + 60
    try:
        for i in range(nodes):
            head = i == 0
            args = (
                ["--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", temp]
                if head
                else ["--address", address]
            )
            log = Path(temp) / f"node{i}.log"
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [ray_cli, "start", *args, *common],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, **env},
                        cwd=ROOT,
                        start_new_session=True,
                    )
                )
            _wait_line(log, "Ray runtime started.", procs[-1], deadline)
        yield address
    finally:
        _stop_cluster(procs, temp)


def _stop_cluster(procs: list[subprocess.Popen[bytes]], temp: str) -> None:
    for p in reversed(procs):  # workers first, the head (GCS) last
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)  # `ray start --block` then stops its node's processes
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # its own session: only our node's processes
            p.wait(10)
    for pid in pids_mentioning(temp):  # anything of ours that escaped its process group
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(temp, ignore_errors=True)


def pids_mentioning(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if text.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
    return pids


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _tree(agents: RayAgents) -> set[int]:
    """The agents, their zygotes and functions, and their janitors (found by the agent's
    command line, which the forked janitor shares)."""
    pids = {p for pid in agents.pids for p in {pid, *_descendants(pid)}}
    for address in agents.addresses:
        pids.update(pids_mentioning(f"tcp://{address}\0"))
    return pids


def weight_caches(name: str) -> list[Path]:
    """The weight cache the ray provider made for the agent ``name`` (in /dev/shm)."""
    return list(Path("/dev/shm").glob(f"rlhfless-weights-{name}-*"))


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever reaps here, if anyone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with local_ray_cluster(nodes=2, cpus=1) as address:
        yield address


async def test_unreachable_cluster_fails_fast() -> None:
    t0 = time.monotonic()
    with pytest.raises(RayProviderError, match="cannot reach the Ray cluster"):
        RayAgents.start(f"127.0.0.1:{_free_port()}", "/nonexistent")
    assert time.monotonic() - t0 < 10


async def test_one_agent_per_ray_node_then_a_runtime_across_them(
    cluster: str, tmp_path: Path
) -> None:
    keys = str(keys_init(tmp_path / "keys"))
    t0 = time.monotonic()
    # A key directory that is not on the nodes fails on the node, and leaves nothing placed
    # (the next start reserves the same CPUs).
    with pytest.raises(RayProviderError, match="cannot load CURVE keys"):
        await asyncio.to_thread(RayAgents.start, cluster, str(tmp_path / "nokeys"), timeout_s=30)
    assert not ray.is_initialized()
    # Off the event loop, as an async controller calls it (ray.init from a worker thread).
    agents = await asyncio.to_thread(RayAgents.start, cluster, keys, timeout_s=60)
    started_s = time.monotonic() - t0
    try:
        ray_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(ray_nodes) == 2
        assert {a.node_id for a in agents.agents} == ray_nodes  # one agent per node
        names = sorted(a.name for a in agents.agents)
        assert len(set(names)) == 2 and all(n.startswith("ray-") for n in names)
        assert all(a.slots == 1 and a.gpus == 0 for a in agents.agents)
        assert len(set(agents.addresses)) == 2 and len(agents.describe()) == 2
        print("\n".join(agents.describe()), f"\nagents up in {started_s:.1f}s")
        # The agents' process trees and weight caches, to check that close() leaves nothing.
        trees = _tree(agents)
        assert len(trees) >= 6, trees  # per node: the agent, its zygote, its janitor
        assert all(len(weight_caches(name)) == 1 for name in names)

        async with Runtime(
            preload=("torch",),
            agents=agents.addresses,
            keys_dir=keys,
            local_node=False,
            join_timeout_s=60,
        ) as rt:
            assert sorted(rt.nodes()) == names
            for name in names:
                h = await rt.spawn(ECHO, "p:", node=name)
                assert await h.hello(name) == f"p:{name}"
                await h.release()
        assert {e.node for e in rt.billing_events} == set(names)  # billed to both Ray nodes
    finally:
        agents.close()
    agents.close()  # idempotent
    assert not ray.is_initialized()  # start() joined Ray, so close() left it
    deadline = time.monotonic() + 10
    while any(_running(p) for p in trees) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not [p for p in trees if _running(p)], "an agent (or its zygote) outlived close()"
    assert not [c for name in names for c in weight_caches(name)], (
        "a weight cache outlived its agent"
    )
    print(f"total {time.monotonic() - t0:.1f}s")


async def test_agent_dies_with_its_actor(cluster: str, tmp_path: Path) -> None:
    """No orphans when Ray kills the actor (or its node) without asking the agent first."""
    keys = str(keys_init(tmp_path / "keys"))
    agents = await asyncio.to_thread(RayAgents.start, cluster, keys, preload=(), timeout_s=60)
    try:
        trees = _tree(agents)
        for actor in agents._actors:
            ray.kill(actor)  # the worker dies at once: the agent gets SIGTERM from the kernel
        deadline = time.monotonic() + 15
        while any(_running(p) for p in trees) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not [p for p in trees if _running(p)]
        assert not [c for a in agents.agents for c in weight_caches(a.name)]  # it cleaned up
    finally:
        agents.close()
