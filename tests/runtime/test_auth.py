"""CURVE keys and the allow-list, in one process (no namespaces needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq

from rlhfless.runtime.auth import Guard, KeyError_, Keys, keys_init
from rlhfless.runtime.placement import NodeView, choose


def test_keys_init_layout_and_refuses_to_overwrite(tmp_path: Path) -> None:
    root = keys_init(tmp_path / "k")
    assert sorted(p.name for p in root.iterdir()) == [
        "client.key", "client.key_secret", "clients", "server.key", "server.key_secret",
    ]  # fmt: skip
    assert (root / "server.key_secret").stat().st_mode & 0o077 == 0
    with pytest.raises(FileExistsError):
        keys_init(root)
    with pytest.raises(KeyError_, match="rlhfless keys init"):
        Keys(tmp_path / "missing")


def test_only_allowed_client_keys_get_through(tmp_path: Path) -> None:
    keys = Keys(keys_init(tmp_path / "k"))
    other = Keys(keys_init(tmp_path / "other"))
    ctx = zmq.Context()
    guard = Guard(ctx, keys)
    server = ctx.socket(zmq.ROUTER)
    server.linger = 0
    keys.server(server)
    guard.watch(server, "test")
    port = server.bind_to_random_port("tcp://127.0.0.1")
    got = {}
    try:
        for kind in ("allowed", "wrong key", "plaintext"):
            c = ctx.socket(zmq.DEALER)
            c.linger = 0
            if kind == "allowed":
                keys.client(c)
            elif kind == "wrong key":
                other.client(c)
                c.curve_serverkey = keys.server_public
            c.connect(f"tcp://127.0.0.1:{port}")
            c.send(kind.encode())
            got[kind] = server.recv_multipart()[1] if server.poll(1000) else None
            c.close()
    finally:
        server.close()
        guard.stop()
        ctx.term()
    assert got == {"allowed": b"allowed", "wrong key": None, "plaintext": None}
    assert guard.refused >= 2


def test_placement_prefers_warm_then_weights_then_load() -> None:
    def v(name: str, busy: int = 0, warm: bool = False, has: bool = False) -> NodeView:
        return NodeView(name=name, slots=2, busy=busy, live=busy, warm_actor=warm, has_version=has)

    assert choose([v("a", busy=1), v("b")]) == "b"  # least loaded
    assert choose([v("a", busy=1, has=True), v("b")]) == "a"  # weights cached beats load
    assert choose([v("a", has=True), v("b", busy=1, warm=True)]) == "b"  # warm actor first
    assert choose([v("a", busy=2, warm=True), v("b", busy=1)]) == "b"  # never overload for it
    assert choose([v("a", busy=3), v("b", busy=2)]) == "b"  # all full: the least loaded
