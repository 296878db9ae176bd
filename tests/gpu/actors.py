"""Actors for the GPU tests (functions import them by path). Each touches CUDA only inside its
own function process, never in the zygote it was forked from."""

from __future__ import annotations

import os

import torch


class CudaProbe:
    """What a function sees of the GPU. Its first lines run before anything here touches CUDA:
    whatever CUDA state they find was inherited from the zygote at fork."""

    def __init__(self) -> None:
        self.initialised_at_fork = torch.cuda.is_initialized()
        self.bad_fork = torch.cuda._is_in_bad_fork()  # torch's own flag: forked after CUDA init

    def info(self) -> dict[str, object]:
        count = torch.cuda.device_count()
        props = torch.cuda.get_device_properties(0) if count else None
        return {
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device_count": count,
            "uuid": str(props.uuid) if props is not None else None,
            "name": props.name if props is not None else None,
            "initialised_at_fork": self.initialised_at_fork,
            "bad_fork": self.bad_fork,
            "pid": os.getpid(),
        }

    def free_bytes(self) -> int:
        """Free memory of the whole device (every process's allocations count)."""
        return int(torch.cuda.mem_get_info()[0])


class CudaHog:
    """Holds ``mib`` MiB of device memory for as long as it lives."""

    def __init__(self, mib: int) -> None:
        self.block = torch.empty(mib << 20, dtype=torch.uint8, device="cuda")
        torch.cuda.synchronize()

    def allocated(self) -> int:
        return int(torch.cuda.memory_allocated())

    def getpid(self) -> int:
        return os.getpid()


class CudaTensors:
    """Makes and takes CUDA tensors (the runtime sends them as host frames)."""

    def make(self, rows: int, cols: int, dtype: str) -> torch.Tensor:
        """A non-contiguous CUDA tensor (every other column of an arange)."""
        t = torch.arange(rows * cols * 2, device="cuda").reshape(rows, cols * 2)
        return t.to(getattr(torch, dtype))[:, ::2]

    def double_on_gpu(self, t: torch.Tensor) -> dict[str, object]:
        """Move what arrived to the GPU, double it there, hand back the CUDA result."""
        arrived = str(t.device)
        return {"arrived_on": arrived, "out": t.to("cuda") * 2}
