"""The node-local policy weight cache: one file per version, written once per node.

A second function on a node loads a version from this node's cache (page cache, /dev/shm when
the agent puts its cache there) instead of receiving it over the network again. The format is
a small msgpack header and raw tensor bytes: no pickle, and loading is a zero-copy mmap view.
The header keeps each tensor's crc32, so a weights delta (``delta.py``) can check that the base
it was made against is the base this node holds without reading the bytes again.

Only the newest :data:`KEEP_VERSIONS` versions stay: the current one, and the one before it as
the base of the next delta. Older files are removed as a new one lands (a function still
mapping one keeps its pages: unlinking never pulls them from under a reader).
"""

from __future__ import annotations

import mmap
import os
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

WEIGHTS_ENV = "RLHFLESS_WEIGHTS_DIR"  # set in every function: this node's cache directory
KEEP_VERSIONS = 2  # the current version, and its predecessor as the next delta's base
# name -> (dtype, shape, offset, nbytes, crc32 of the bytes)
Header = dict[str, tuple[str, list[int], int, int, int]]
_HEADER = msgspec.msgpack.Decoder(Header)


def path_of(directory: str | os.PathLike[str], version: int) -> Path:
    return Path(directory) / f"v{version}.rlw"


def versions(directory: str | os.PathLike[str]) -> list[int]:
    """Versions cached in ``directory``, oldest first."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = [int(p.stem[1:]) for p in root.glob("v*.rlw") if p.stem[1:].isdigit()]
    return sorted(found)


def raw_bytes(t: Any) -> Any:
    """A tensor's bytes as a flat uint8 numpy array (a view when it is contiguous on the CPU).
    Viewing as uint8 works for the dtypes numpy lacks (bf16) and for 0-d and empty tensors."""
    import torch

    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def crc_of(t: Any) -> int:
    """crc32 of a tensor's bytes (~3.5 GB/s on one core): cheap enough to check every version."""
    return zlib.crc32(raw_bytes(t))


def save(
    directory: str | os.PathLike[str],
    version: int,
    tensors: Mapping[str, Any],
    crcs: Mapping[str, int] | None = None,
    keep: int = KEEP_VERSIONS,
) -> int:
    """Write ``tensors`` as ``version``; returns the bytes written. Atomic (rename).

    ``crcs``: the tensors' crc32s where the caller has them already (a checked delta); the
    others are computed here. Then all but the newest ``keep`` versions are removed.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    header: Header = {}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        raw = raw_bytes(t)
        crc = crcs[name] if crcs is not None and name in crcs else zlib.crc32(raw)
        header[name] = (str(t.dtype).removeprefix("torch."), list(t.shape), offset, raw.nbytes, crc)
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
    prune(root, keep)
    return offset


def prune(directory: str | os.PathLike[str], keep: int = KEEP_VERSIONS) -> None:
    """Remove all but the newest ``keep`` versions (the agent's cache is RAM: /dev/shm);
    ``keep = 0`` removes every version."""
    cached = versions(directory)
    for old in cached[:-keep] if keep > 0 else cached:
        path_of(directory, old).unlink(missing_ok=True)


def _cached(version: int, directory: str | os.PathLike[str] | None) -> Path:
    root = directory or os.environ.get(WEIGHTS_ENV)
    if not root:
        raise FileNotFoundError(f"no weight cache: {WEIGHTS_ENV} is not set in this function")
    p = path_of(root, version)
    if not p.exists():
        raise FileNotFoundError(f"weights version {version} are not cached on this node ({p})")
    return p


def _map(p: Path) -> tuple[mmap.mmap, Header, int]:
    with open(p, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    size = int.from_bytes(mm[:8], "little")
    return mm, _HEADER.decode(mm[8 : 8 + size]), 8 + size


def crcs(version: int, directory: str | os.PathLike[str] | None = None) -> dict[str, int]:
    """The crc32 of each tensor of a cached ``version`` (from its header: no bytes are read)."""
    mm, header, _ = _map(_cached(version, directory))
    mm.close()
    return {name: entry[4] for name, entry in header.items()}


def load(version: int, directory: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Tensors of ``version`` from this node's cache (read-only mmap views, no copy)."""
    import torch

    from rlhfless.runtime.messages import _torch_dtype

    mm, header, base = _map(_cached(version, directory))
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only mmap: torch warns, we never write
        for name, (dtype, shape, offset, nbytes, _) in header.items():
            if nbytes == 0:
                out[name] = torch.empty(shape, dtype=_torch_dtype(dtype))
                continue
            flat = torch.frombuffer(mm, dtype=torch.uint8, count=nbytes, offset=base + offset)
            out[name] = flat.view(_torch_dtype(dtype)).reshape(shape)
    return out
