"""The node-local policy weight cache: one file per version, written once per node.

A second function on a node loads a version from this node's cache (page cache, /dev/shm when
the agent puts its cache there) instead of receiving it over the network again. The format is
a small msgpack header and raw tensor bytes: no pickle, and loading is a zero-copy mmap view.
"""

from __future__ import annotations

import mmap
import os
import warnings
from pathlib import Path
from typing import Any

import msgspec

WEIGHTS_ENV = "RLHFLESS_WEIGHTS_DIR"  # set in every function: this node's cache directory
_HEADER = msgspec.msgpack.Decoder(dict[str, tuple[str, list[int], int, int]])


def path_of(directory: str | os.PathLike[str], version: int) -> Path:
    return Path(directory) / f"v{version}.rlw"


def versions(directory: str | os.PathLike[str]) -> list[int]:
    """Versions cached in ``directory``, oldest first."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = [int(p.stem[1:]) for p in root.glob("v*.rlw") if p.stem[1:].isdigit()]
    return sorted(found)


def save(directory: str | os.PathLike[str], version: int, tensors: dict[str, Any]) -> int:
    """Write ``tensors`` as ``version``; returns the bytes written. Atomic (rename)."""
    import torch

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    header: dict[str, tuple[str, list[int], int, int]] = {}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        header[name] = (str(t.dtype).removeprefix("torch."), list(t.shape), offset, raw.nbytes)
        blobs.append(raw)
        offset += raw.nbytes
    head = msgspec.msgpack.encode(header)
    tmp = root / f".v{version}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for raw in blobs:
            f.write(memoryview(raw))
    os.replace(tmp, path_of(root, version))
    return offset


def load(version: int, directory: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Tensors of ``version`` from this node's cache (read-only mmap views, no copy)."""
    import torch

    from rlhfless.runtime.messages import _torch_dtype

    root = directory or os.environ.get(WEIGHTS_ENV)
    if not root:
        raise FileNotFoundError(f"no weight cache: {WEIGHTS_ENV} is not set in this function")
    p = path_of(root, version)
    if not p.exists():
        raise FileNotFoundError(f"weights version {version} are not cached on this node ({p})")
    with open(p, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    size = int.from_bytes(mm[:8], "little")
    header = _HEADER.decode(mm[8 : 8 + size])
    base = 8 + size
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only mmap: torch warns, we never write
        for name, (dtype, shape, offset, nbytes) in header.items():
            if nbytes == 0:
                out[name] = torch.empty(shape, dtype=_torch_dtype(dtype))
                continue
            flat = torch.frombuffer(mm, dtype=torch.uint8, count=nbytes, offset=base + offset)
            out[name] = flat.view(_torch_dtype(dtype)).reshape(shape)
    return out
