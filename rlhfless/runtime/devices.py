"""What device slots this machine has, found without importing torch in the controller."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import msgspec


class NodeDevices(msgspec.Struct, frozen=True):
    kind: str  # "cpu" or a normalised GPU name ("h100", "a100", "l40s", ...)
    slots: int  # GPUs, or CPU slots where there is no GPU
    gpu: bool
    cores: int


_GPU_NAMES = ("h200", "h100", "a100", "a10g", "l40s", "l40", "l4", "a40", "a10", "v100", "t4")


def normalise_gpu_name(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'; unknown names become a lowercase slug."""
    low = name.lower()
    for known in _GPU_NAMES:
        if re.search(rf"\b{known}\b", low):
            return known
    return re.sub(r"[^a-z0-9]+", "-", low.removeprefix("nvidia ")).strip("-") or "gpu"


def _gpu_names() -> list[str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def detect(slots: int | None = None, kind: str | None = None) -> NodeDevices:
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    names = _gpu_names()
    if names:
        return NodeDevices(kind or normalise_gpu_name(names[0]), slots or len(names), True, cores)
    return NodeDevices(kind or "cpu", slots or cores, False, cores)
