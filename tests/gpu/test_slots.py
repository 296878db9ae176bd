"""Every function sees exactly its own GPU, and the zygote never initialises CUDA before it forks."""

import pytest

from rlhfless.runtime import Runtime
from tests.gpu.conftest import HOG, PROBE, nvidia_smi

pytestmark = [pytest.mark.gpu, pytest.mark.anyio, pytest.mark.timeout(120)]


async def test_each_slot_sees_only_its_own_gpu(gpu_rt: Runtime) -> None:
    uuids = {int(i): u for i, u in nvidia_smi("index,uuid")}
    assert gpu_rt.devices.gpu and gpu_rt.devices.slots == len(uuids)
    for slot in range(gpu_rt.devices.slots):
        h = await gpu_rt.spawn(PROBE, slot=slot)
        info = await h.info()
        assert info["visible"] == str(slot)
        assert info["device_count"] == 1
        # cuda:0 inside the function is the GPU nvidia-smi numbers `slot` (catches a CUDA
        # device order that differs from nvidia-smi's PCI order)
        assert info["uuid"] is not None and uuids[slot].endswith(info["uuid"])
        await h.release()


async def test_the_zygote_has_no_cuda_after_forking_cuda_functions(gpu_rt: Runtime) -> None:
    hog = await gpu_rt.spawn(HOG, 64)  # a forked function that initialises CUDA
    assert await hog.allocated() >= 64 << 20
    probe = await gpu_rt.spawn(PROBE)  # forked from the same zygote afterwards
    info = await probe.info()
    assert info["initialised_at_fork"] is False
    assert info["bad_fork"] is False
    assert info["device_count"] >= 1  # and CUDA works in it
