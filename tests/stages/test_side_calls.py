"""A rollout function is released only once the calls beside its generate have returned, so
the runtime keeps it warm (stages/side_calls.py). A real runtime and function."""

from __future__ import annotations

import asyncio
import time

import pytest

from rlhfless.runtime import Runtime
from rlhfless.stages.side_calls import SideCalls
from tests.runtime.conftest import ECHO

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_release_waits_for_side_calls_and_none_starts_after() -> None:
    async with Runtime(slots=1, keep_alive_s=30, preload=("torch",)) as rt:
        bare = await rt.spawn(ECHO)
        in_flight = asyncio.create_task(bare.sleep(0.3))
        await asyncio.sleep(0.05)
        await bare.release()  # a call in flight: the runtime retires the function
        assert rt.warm_count(ECHO) == 0
        await asyncio.gather(in_flight, return_exceptions=True)

        h = await rt.spawn(ECHO)
        side = SideCalls(h, {"count": -1})
        slow = asyncio.create_task(side.sleep(0.3))
        await asyncio.sleep(0.05)
        side.close()
        t0 = time.perf_counter()
        await side.quiet()
        assert slow.done() and time.perf_counter() - t0 >= 0.2
        assert await side.count() == -1  # closed: the idle answer, and no call made
        with pytest.raises(RuntimeError, match="generate has ended"):
            await side.echo(1)
        await h.release()
        assert rt.warm_count(ECHO) == 1  # released quiet: kept warm
