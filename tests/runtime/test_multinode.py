"""Many machines for real: one agent per network namespace, the controller in the root one."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import torch
import zmq

from rlhfless.runtime import FunctionDied, NodeLost, Runtime
from rlhfless.runtime.auth import Keys, keys_init
from rlhfless.runtime.messages import Codec, Heartbeat
from tests.runtime import netns
from tests.runtime.conftest import ECHO

_WHY = netns.why_not()
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(120),
    pytest.mark.skipif(_WHY is not None, reason=f"no network namespaces here: {_WHY}"),
]
TIMEOUT_S = 2.0  # node_timeout_s of these tests: detection within TIMEOUT_S + one heartbeat


@pytest.fixture
def keys(tmp_path: Path) -> str:
    return str(keys_init(tmp_path / "keys"))


@pytest.fixture
def hosts(tmp_path: Path, keys: str) -> Iterator[list[netns.Host]]:
    hs = netns.make_hosts(2, tmp_path)
    try:
        for i, h in enumerate(hs):
            h.start_agent(keys, f"host{i}")
        yield hs
    finally:
        netns.remove_hosts(hs)


@pytest.fixture
async def rt(hosts: list[netns.Host], keys: str) -> AsyncIterator[Runtime]:
    async with Runtime(
        preload=("torch",),
        agents=tuple(h.address for h in hosts),
        keys_dir=keys,
        local_node=False,
        node_timeout_s=TIMEOUT_S,
        node_heartbeat_s=0.25,
        join_timeout_s=60,
    ) as runtime:
        yield runtime


async def test_spawn_call_tensors_across_hosts(rt: Runtime) -> None:
    assert sorted(rt.nodes()) == ["host0", "host1"]
    for node in ("host0", "host1"):
        h = await rt.spawn(ECHO, "p:", node=node)
        assert await h.hello("x") == "p:x"
        big = torch.arange(4 << 20, dtype=torch.float32)  # 16 MB each way
        assert torch.equal(await h.double(big), big * 2)
        await h.release()
    # Placement spreads cold starts over the least-loaded nodes.
    hs = [await rt.spawn(ECHO, i) for i in range(4)]
    assert sorted(h.function_id.split("-")[0] for h in hs) == ["host0"] * 2 + ["host1"] * 2
    await asyncio.gather(*(h.release() for h in hs))
    # A warm function of the same actor and arguments is reused, on its node.
    again = await rt.spawn(ECHO, 0)
    assert again.warm


@pytest.mark.slow  # the default run kills an agent mid-rollout (tests/stages/test_train_across_hosts.py)
async def test_kill_9_agent_mid_call_then_readmitted(rt: Runtime, hosts: list[netns.Host]) -> None:
    h0 = await rt.spawn(ECHO, node="host0")
    h1 = await rt.spawn(ECHO, node="host1")
    pending = asyncio.create_task(h0.sleep(60))
    await asyncio.sleep(0.3)
    assert hosts[0].agent is not None
    os.kill(hosts[0].agent.pid, signal.SIGKILL)
    killed_at = time.time()
    with pytest.raises(NodeLost) as info:
        await asyncio.wait_for(pending, TIMEOUT_S + 3)
    detect_s = time.time() - killed_at
    assert isinstance(info.value, FunctionDied) and info.value.node == "host0"
    assert detect_s < TIMEOUT_S + 1.0, detect_s
    assert await h1.echo(7) == 7  # the rest keeps going
    assert "host0" not in rt.nodes()
    ev = next(e for e in rt.billing_events if e.function_id == h0.function_id)
    assert ev.exited_at is not None and ev.exited_at - killed_at < TIMEOUT_S + 1.0
    assert ev.busy and ev.busy[-1][1] == ev.exited_at  # billing stops at the moment of loss
    hosts[0].stop_agent()
    hosts[0].start_agent(str(Path(hosts[0].log or ".").parent / "keys"), "host0")
    deadline = time.monotonic() + 60
    while "host0" not in rt.nodes() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert "host0" in rt.nodes(), "a restarted agent is re-admitted"
    h = await rt.spawn(ECHO, node="host0")
    assert await h.echo(3) == 3


async def test_link_down_is_detected_and_link_up_readmits(
    rt: Runtime, hosts: list[netns.Host]
) -> None:
    h1 = await rt.spawn(ECHO, node="host1")
    pending = asyncio.create_task(h1.sleep(60))
    await asyncio.sleep(0.3)
    hosts[1].link(up=False)
    t0 = time.monotonic()
    with pytest.raises(NodeLost):
        await asyncio.wait_for(pending, TIMEOUT_S + 3)
    assert time.monotonic() - t0 < TIMEOUT_S + 1.0
    h0 = await rt.spawn(ECHO)  # placed on the node that is left
    assert h0.function_id.startswith("host0") and await h0.echo(1) == 1
    readmitted = rt.cluster.readmitted if rt.cluster else 0
    hosts[1].link(up=True)
    t0 = time.monotonic()
    while "host1" not in rt.nodes():
        assert time.monotonic() - t0 < 20, "host1 not re-admitted within 20 s of link up"
        await asyncio.sleep(0.1)
    assert rt.cluster is not None and rt.cluster.readmitted == readmitted + 1
    h1 = await rt.spawn(ECHO, node="host1")  # and it serves again
    assert await h1.echo(2) == 2


async def test_weights_sent_once_per_node_per_version(rt: Runtime) -> None:
    w = {"a": torch.ones(1 << 18), "b": torch.full((1 << 16,), 2.0)}  # 1.25 MB
    nbytes = sum(t.numel() * 4 for t in w.values())
    rt.publish_weights(1, w)
    handles = [
        await rt.spawn("tests.runtime.actors:WeightUser", env={"i": str(i)}, node=node)
        for i in range(2)
        for node in ("host0", "host1")
    ]
    totals = await asyncio.gather(*(h.total(1) for h in handles))
    assert totals == [float((1 << 18) + 2 * (1 << 16))] * 4
    assert rt.weight_bytes_sent() == {"host0": nbytes, "host1": nbytes}
    rt.publish_weights(2, w)
    h = await rt.spawn("tests.runtime.actors:WeightUser", env={"i": "9"}, node="host0")
    assert await h.total(2) == totals[0]
    # v2 has v1's bytes and host0 holds v1: the delta carries no tensor bytes (runtime/delta.py)
    assert rt.weight_bytes_sent() == {"host0": nbytes, "host1": nbytes}
    assert rt.weight_traffic()["host0"].full_bytes == 2 * nbytes


async def test_unauthenticated_clients_are_refused_while_serving(
    rt: Runtime, hosts: list[netns.Host], tmp_path: Path
) -> None:
    other = Keys(keys_init(tmp_path / "other"))  # a key pair the agents do not allow
    mine = Keys(tmp_path / "keys")
    # Blocking sockets, off the event loop: the runtime must keep heartbeating meanwhile.
    answers = await asyncio.to_thread(_intrude, hosts[0].address, mine, other)
    assert answers == {"plaintext": False, "no key": False, "wrong key": False}
    assert "host0" in rt.nodes()
    h = await rt.spawn(ECHO, node="host0")  # the agent keeps serving the real controller
    assert await h.echo(5) == 5
    log = (hosts[0].log or Path()).read_text()
    assert log.count("refused a peer") >= 3, log[-2000:]


def _intrude(address: str, mine: Keys, other: Keys) -> dict[str, bool]:
    ctx = zmq.Context()
    codec = Codec()
    answers = {}
    for kind in ("plaintext", "no key", "wrong key"):
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        if kind == "no key":  # CURVE client without a key of its own (a throwaway one)
            pub, sec = zmq.curve_keypair()
            s.curve_publickey, s.curve_secretkey = pub, sec
            s.curve_serverkey = mine.server_public
        elif kind == "wrong key":
            s.curve_publickey, s.curve_secretkey = other.client_public, other.client_secret
            s.curve_serverkey = mine.server_public
        s.connect(f"tcp://{address}")
        s.send_multipart(codec.encode(Heartbeat("intruder", time.time())))
        answers[kind] = bool(s.poll(1500))  # an accepted Heartbeat would get a NodeHello back
        s.close()
    ctx.term()
    return answers
