import shutil
import subprocess
from collections.abc import AsyncIterator

import pytest

from rlhfless.runtime import Runtime

PROBE = "tests.gpu.actors:CudaProbe"
HOG = "tests.gpu.actors:CudaHog"
TENSORS = "tests.gpu.actors:CudaTensors"


def nvidia_smi(query: str) -> list[list[str]]:
    """Rows of ``nvidia-smi --query-gpu=QUERY`` (the controller never initialises CUDA)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        pytest.skip("nvidia-smi is not on PATH")
    out = subprocess.run(
        [exe, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, timeout=20, check=True,
    )  # fmt: skip
    return [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines() if line]


@pytest.fixture
async def gpu_rt() -> AsyncIterator[Runtime]:
    """One slot per visible GPU (the runtime's default); released functions exit at once."""
    async with Runtime(preload=("torch",), keep_alive_s=0.0) as runtime:
        yield runtime
