"""A gang's rendezvous: the address the runtime picks, and what each member does with it.

``torch.distributed``'s rendezvous store and its gloo/NCCL links are unauthenticated by design,
so nothing here ever listens on all interfaces: the store listens on exactly the address the
runtime chose (loopback on one machine), and gloo binds the interface that routes to it.

Runs on both sides: the controller builds a member's environment (:func:`member_env`); the
function process reads it back (:func:`member`) and prepares its side (:func:`prepare_member`)
before the actor's module is imported. It imports nothing of the runtime's, so a function
process pays for none of it.
"""

from __future__ import annotations

import array
import datetime
import fcntl
import os
import random
import socket
import struct
from typing import Any

import msgspec

GANG_ENV = "RLHFLESS_GANG"  # the gang's id; its presence marks a function as a gang member
_STORE_TIMEOUT_S = 300.0  # how long members may wait on the store (torch's own default)
_SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address
_held: list[Any] = []  # rank 0's store (and its socket): alive as long as the process


class Member(msgspec.Struct, frozen=True, kw_only=True):
    """What a gang member is told: its place in the gang and where to meet the others."""

    gang_id: str
    rank: int
    world_size: int
    local_rank: int  # its index among the members on its node
    local_world_size: int  # members on its node
    host: str  # the rendezvous address (rank 0's node, on the interface the config names)
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def member_env(m: Member) -> dict[str, str]:
    """The environment of a member: torch's ``env://`` variables plus the gang id.

    ``TORCHELASTIC_USE_AGENT_STORE`` makes every rank a client of the store that
    :func:`prepare_member` starts in rank 0 (bound to ``host`` only); torch's own rank-0 store
    would listen on every interface.
    """
    return {
        GANG_ENV: m.gang_id,
        "RANK": str(m.rank),
        "WORLD_SIZE": str(m.world_size),
        "LOCAL_RANK": str(m.local_rank),
        "LOCAL_WORLD_SIZE": str(m.local_world_size),
        "MASTER_ADDR": m.host,
        "MASTER_PORT": str(m.port),
        "TORCHELASTIC_USE_AGENT_STORE": "True",
    }


def member() -> Member:
    """This process's place in its gang (call it in a gang actor's ``__init__``)."""
    env = os.environ
    if GANG_ENV not in env:
        raise RuntimeError("this process is not a gang member (started by Runtime.spawn_gang)")
    return Member(
        gang_id=env[GANG_ENV],
        rank=int(env["RANK"]),
        world_size=int(env["WORLD_SIZE"]),
        local_rank=int(env["LOCAL_RANK"]),
        local_world_size=int(env["LOCAL_WORLD_SIZE"]),
        host=env["MASTER_ADDR"],
        port=int(env["MASTER_PORT"]),
    )


def prepare_member() -> None:
    """In a function process, before the actor starts: nothing for a function outside a gang;
    for a member, gloo bound to the interface that reaches the rendezvous address, and in rank
    0 the store, listening on that address only."""
    if GANG_ENV not in os.environ:
        return
    m = member()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", interface_toward(m.host))
    if m.rank == 0:
        _held.append(_start_store(m))


def _start_store(m: Member) -> Any:
    from torch.distributed import TCPStore  # type: ignore[attr-defined]  # members use torch

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((m.host, m.port))
    sock.listen(128)
    timeout = datetime.timedelta(seconds=_STORE_TIMEOUT_S)
    store = TCPStore(
        m.host, m.port, m.world_size, True, timeout,
        wait_for_workers=False, master_listen_fd=sock.fileno(),
    )  # fmt: skip
    return (sock, store)


def interface_toward(host: str) -> str:
    """The name of the interface this machine reaches ``host`` through ("lo" for loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))  # UDP connect: a route lookup, no packet sent
        local = str(s.getsockname()[0])
        for _, name in socket.if_nameindex():
            if _ipv4_of(s, name) == local:
                return name
    raise OSError(f"no interface of this machine holds {local} (the route toward {host})")


def _ipv4_of(s: socket.socket, name: str) -> str | None:
    request = array.array("B", struct.pack("256s", name.encode()[:15]))
    try:
        fcntl.ioctl(s.fileno(), _SIOCGIFADDR, request, True)
    except OSError:  # no IPv4 address on it
        return None
    return socket.inet_ntoa(request.tobytes()[20:24])


def free_port(host: str) -> int:
    """A port free on ``host`` now (this machine): the kernel picks it, the member binds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def remote_port() -> int:
    """A port for a rendezvous on another machine, which this one cannot probe: drawn from a
    range above the usual ephemeral one; a port taken there fails the gang's start clearly."""
    return random.SystemRandom().randrange(20000, 32000)
