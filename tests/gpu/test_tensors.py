"""CUDA tensors over the runtime's tensor frames: they travel as host bytes, values intact."""

import pytest
import torch

from rlhfless.runtime import Runtime
from rlhfless.runtime.messages import Codec, Result
from tests.gpu.conftest import TENSORS

pytestmark = [pytest.mark.gpu, pytest.mark.anyio, pytest.mark.timeout(120)]


def test_codec_sends_a_cuda_tensor_as_host_frames() -> None:
    t = torch.randn(300, 70, device="cuda", dtype=torch.bfloat16)[:, ::3]  # non-contiguous
    codec = Codec()
    frames = codec.encode(Result(1, {"t": t}))
    out = codec.decode(frames).value["t"]
    assert out.device.type == "cpu" and out.dtype == torch.bfloat16 and out.shape == t.shape
    assert torch.equal(out, t.cpu())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int64"])
async def test_cuda_tensors_to_and_from_a_function(gpu_rt: Runtime, dtype: str) -> None:
    h = await gpu_rt.spawn(TENSORS)
    made = await h.make(64, 33, dtype)
    want = torch.arange(64 * 66).reshape(64, 66).to(getattr(torch, dtype))[:, ::2]
    assert made.device.type == "cpu" and torch.equal(made, want)
    reply = await h.double_on_gpu(want)
    assert reply["arrived_on"] == "cpu"  # the receiver decides where a tensor goes
    assert torch.equal(reply["out"], want * 2)
