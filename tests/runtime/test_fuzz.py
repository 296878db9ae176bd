"""Random bytes on every socket are rejected and counted; the runtime keeps serving."""

import asyncio
import contextlib
import os
import random

import msgspec
import pytest
import zmq
import zmq.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhfless.runtime import Runtime
from rlhfless.runtime.function import STATS_METHOD
from tests.runtime.conftest import ECHO

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

frames_strategy = st.lists(st.binary(max_size=64), min_size=0, max_size=5)


def _garbage(rng: random.Random) -> list[bytes]:
    """Random frames, biased towards almost-valid messages (right kind byte, bad body)."""
    n = rng.randint(1, 4)
    frames = [rng.randbytes(rng.randint(0, 40)) for _ in range(n)]
    if rng.random() < 0.6:
        frames[0] = bytes([rng.randint(1, 12)])
    if rng.random() < 0.3 and n > 1:
        frames[1] = msgspec.msgpack.encode([rng.random(), "x", [rng.randbytes(3)], None])
    return frames


async def test_random_bytes_to_the_controller() -> None:
    rng = random.Random(1234)
    async with Runtime(preload=("torch",)) as rt:
        h = await rt.spawn(ECHO)
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(rt.endpoint)
        n = 300
        for _ in range(n):
            frames = _garbage(rng)
            if not any(frames):  # zmq would not deliver an all-empty message? it does; keep it
                frames = [b"\x00"]
            await sock.send_multipart(frames)
        for _ in range(100):  # the receiver works through the queue
            if rt.stats.bad_messages >= n:
                break
            await asyncio.sleep(0.05)
        assert rt.stats.bad_messages == n
        assert await h.echo("alive") == "alive"
        h2 = await rt.spawn(ECHO, "fresh")  # and can still start functions
        assert await h2.hello("!") == "fresh!"
        sock.close()
        ctx.term()


async def test_random_bytes_to_a_function_and_the_zygote() -> None:
    rng = random.Random(99)
    async with Runtime(preload=("torch",)) as rt:
        h = await rt.spawn(ECHO)
        n = 200
        for _ in range(n):
            await rt._send_frames(h.function_id, _garbage(rng))
            await rt._send_frames("zygote", _garbage(rng))
        stats = await h.call(STATS_METHOD)
        assert stats["bad_messages"] == n and stats["pid"] == h.pid
        assert await h.echo(3) == 3
        h2 = await rt.spawn(ECHO, "after")  # the zygote still forks
        assert await h2.hello("x") == "afterx"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frames=frames_strategy)
def test_hypothesis_garbage_never_crashes_the_decoder(frames: list[bytes]) -> None:
    from rlhfless.runtime.errors import BadMessage
    from rlhfless.runtime.messages import Codec

    with contextlib.suppress(BadMessage):  # the only failure allowed: anything else fails
        Codec().decode(frames)


def test_urandom_bodies_for_every_kind() -> None:
    from rlhfless.runtime.errors import BadMessage
    from rlhfless.runtime.messages import KINDS, Codec

    codec = Codec()
    for kind in KINDS:
        for _ in range(200):
            with contextlib.suppress(BadMessage):
                codec.decode([bytes([kind]), os.urandom(random.randint(0, 30)), os.urandom(8)])
