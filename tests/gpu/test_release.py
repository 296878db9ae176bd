"""Releasing a function gives its GPU memory back: at once with no keep-alive, and after the
keep-alive when it waited warm (a warm function holds its memory meanwhile)."""

import time

import anyio
import pytest

from rlhfless.runtime import Runtime
from tests.gpu.conftest import HOG, PROBE

pytestmark = [pytest.mark.gpu, pytest.mark.anyio, pytest.mark.timeout(120)]

MIB = 1 << 20
HOG_MIB = 2048
SLACK = 256 * MIB  # the hog's CUDA context and allocator rounding come and go with it


async def free_after(probe, baseline: int, deadline_s: float) -> tuple[int, float]:
    """Poll the device's free memory until it is back near ``baseline`` or the deadline."""
    t0 = time.monotonic()
    free = await probe.free_bytes()
    while free < baseline - SLACK and time.monotonic() - t0 < deadline_s:
        await anyio.sleep(0.1)
        free = await probe.free_bytes()
    return free, time.monotonic() - t0


async def test_release_without_keep_alive_frees_the_gpu_memory(gpu_rt: Runtime) -> None:
    probe = await gpu_rt.spawn(PROBE, slot=0)  # holds its own context throughout
    baseline = await probe.free_bytes()
    hog = await gpu_rt.spawn(HOG, HOG_MIB, slot=0)
    assert await probe.free_bytes() <= baseline - HOG_MIB * MIB
    await hog.release()
    free, waited = await free_after(probe, baseline, 15.0)
    assert free >= baseline - SLACK, (
        f"{(baseline - free) / MIB:.0f} MiB still held {waited:.1f} s after release"
    )


async def test_a_warm_function_holds_its_memory_until_its_keep_alive_ends() -> None:
    async with Runtime(preload=("torch",), keep_alive_s=3.0) as rt:
        probe = await rt.spawn(PROBE, slot=0)
        baseline = await probe.free_bytes()
        hog = await rt.spawn(HOG, HOG_MIB, slot=0)
        await hog.release()  # warm now, for reuse: its memory stays allocated
        await anyio.sleep(1.0)
        assert await probe.free_bytes() <= baseline - HOG_MIB * MIB
        free, waited = await free_after(probe, baseline, 15.0)
        assert free >= baseline - SLACK, f"still held {waited:.1f} s after the keep-alive"
        await probe.release()
