"""Weights deltas: send a receiver only what changed since a version it already holds.

Per tensor, compared bitwise (integer views of the bytes: NaN payloads and signed zeros are
told apart, so the rebuilt tensor is exact, never merely ``==``):

* ``same``   nothing changed: only the crc travels;
* ``sparse`` the flat positions of the changed elements and their new values, when those take
  fewer bytes than the tensor;
* ``full``   the whole tensor: a new name, another shape or dtype, or too much changed.

An Adam step in float32 moves nearly every element, so a float32 delta is mostly ``full``; in
bf16 (what a GPU rollout engine holds) a small step changes only the elements whose rounding
flips, a few percent (verl measures 1-3% per step), and the delta is a fraction of the bytes.

The receiver rebuilds the version and checks it: the crc32 of every base tensor it reuses must
be the sender's (the base is the bytes the delta was made against, not just the same version
number), and the crc32 of every tensor it built must be the sender's too. Any mismatch, or a
malformed delta, raises :class:`WeightsDeltaError` with one line naming the problem: a delta
never yields silently wrong weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec

from rlhfless.runtime.errors import WeightsDeltaError
from rlhfless.runtime.messages import TensorChange, WeightsDelta
from rlhfless.runtime.weights import crc_of, crcs, load, save, versions

SAMPLE_STRIDE = 61  # prime: a sample does not fall on one column of a row-major matrix
SAMPLE_MARGIN = 0.05  # sampled this far above break-even, the tensor goes whole unexamined
# Tensors diffed or rebuilt at once (their copies, compares and crcs release the GIL).
DIFF_THREADS = min(8, os.cpu_count() or 1)


class WeightTraffic(msgspec.Struct, kw_only=True):
    """Weight bytes sent to one node, and what full versions would have taken."""

    sent_bytes: int = 0  # tensor bytes on the wire (deltas and full versions)
    full_bytes: int = 0  # the same versions sent whole
    deltas: int = 0  # versions sent as deltas
    fulls: int = 0  # versions sent whole (no common base, or the delta would not pay)
    refused: int = 0  # deltas the node could not apply (then sent whole)
    # In the sender: a delta's diff, send and wait for the node's answer; a whole version's
    # hand-off to the socket (a spawn that needs it confirmed waits for that after).
    seconds: float = 0.0

    @property
    def saved_bytes(self) -> int:
        return self.full_bytes - self.sent_bytes


def _dtype_name(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


def _bits(t: Any) -> Any:
    """A flat integer view of ``t``'s elements (same bytes), or None for 16-byte elements."""
    import torch

    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    kind = ints.get(t.element_size())
    return None if kind is None else t.contiguous().reshape(-1).view(kind)


# ---------------------------------------------------------------------------------------------
# Sender


def diff(
    base: Mapping[str, Any],
    new: Mapping[str, Any],
    version: int,
    base_version: int,
    base_crcs: Mapping[str, int] | None = None,
    new_crcs: Mapping[str, int] | None = None,
) -> WeightsDelta:
    """``new`` (``version``) as changes against ``base`` (``base_version``); crcs the caller
    has already (a cache header) are used, the others computed. Tensors are compared on
    DIFF_THREADS threads: the comparisons, numpy's nonzero and crc32 release the GIL."""

    def one(name: str) -> TensorChange:
        n = new[name]
        n_crc = new_crcs[name] if new_crcs is not None and name in new_crcs else crc_of(n)
        b = base.get(name)
        if b is None or b.dtype != n.dtype or b.shape != n.shape:
            return _full(n, n_crc)
        b_crc = base_crcs[name] if base_crcs is not None and name in base_crcs else crc_of(b)
        return change_of(b, n, b_crc, n_crc)

    with ThreadPoolExecutor(DIFF_THREADS, thread_name_prefix="rlhfless-diff") as pool:
        return WeightsDelta(version, base_version, dict(zip(new, pool.map(one, new), strict=True)))


def _full(n: Any, n_crc: int) -> TensorChange:
    return TensorChange("full", _dtype_name(n), list(n.shape), n_crc, values=n.contiguous())


def change_of(b: Any, n: Any, b_crc: int, n_crc: int) -> TensorChange:
    """One tensor's change, base ``b`` -> ``n`` (same dtype and shape): the smallest form."""
    import numpy as np  # as torch: loaded where tensors are (the codec's frames use it too)
    import torch

    b_bits, n_bits = _bits(b), _bits(n)
    if b_bits is None:  # 16-byte elements (complex128): whole or nothing
        same = torch.equal(b.reshape(-1).view(torch.uint8), n.reshape(-1).view(torch.uint8))
        return _same(n, n_crc, b_crc) if same else _full(n, n_crc)
    index_dtype = torch.int32 if n.numel() < 2**31 else torch.int64
    # The changed fraction above which positions + values outweigh the tensor itself.
    break_even = n.element_size() / (index_dtype.itemsize + n.element_size())
    if _sampled_fraction(b_bits, n_bits) > break_even + SAMPLE_MARGIN:
        return _full(n, n_crc)
    # numpy's nonzero takes half the time of torch's on the CPU (and tells the count too).
    positions = np.flatnonzero((b_bits != n_bits).cpu().numpy())
    if len(positions) == 0:
        return _same(n, n_crc, b_crc)
    if len(positions) >= break_even * n.numel():
        return _full(n, n_crc)
    index = torch.from_numpy(positions)
    values = n.contiguous().reshape(-1)[index.to(n.device)]
    return TensorChange(
        "sparse", _dtype_name(n), list(n.shape), n_crc, b_crc, index.to(index_dtype), values
    )


def _sampled_fraction(b_bits: Any, n_bits: Any) -> float:
    """The changed fraction of every SAMPLE_STRIDE-th element (0 for small tensors): where most
    elements changed (float32 after an Adam step) the whole tensor goes, and comparing all of
    them would only confirm it. A sample only ever picks "full", which is always exact."""
    import torch

    if b_bits.numel() < 64 * SAMPLE_STRIDE:
        return 0.0
    sample = b_bits[::SAMPLE_STRIDE] != n_bits[::SAMPLE_STRIDE]
    return int(torch.count_nonzero(sample)) / int(sample.numel())


def _same(n: Any, n_crc: int, b_crc: int) -> TensorChange:
    return TensorChange("same", _dtype_name(n), list(n.shape), n_crc, b_crc)


def wire_bytes(delta: WeightsDelta) -> int:
    """Tensor bytes a delta puts on the wire (its small msgpack header aside)."""
    total = 0
    for c in delta.tensors.values():
        for t in (c.index, c.values):
            if t is not None:
                total += t.numel() * t.element_size()
    return total


# ---------------------------------------------------------------------------------------------
# Receiver


def apply(
    base: Mapping[str, Any],
    delta: WeightsDelta,
    held_version: int,
    base_crcs: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The tensors of ``delta.version``, built from ``base`` (the receiver's ``held_version``)
    and checked against the sender's crcs. ``base_crcs``: the base's crcs where the receiver
    knows them (a cache header), else they are computed. ``base`` is never written."""
    _check_base_version(delta, held_version)

    def one(name: str) -> Any:
        change = delta.tensors[name]
        b = _checked_base(name, change, base, base_crcs, delta)
        return b if change.kind == "same" else _built(name, change, b, delta)

    with ThreadPoolExecutor(DIFF_THREADS, thread_name_prefix="rlhfless-apply") as pool:
        return dict(zip(delta.tensors, pool.map(one, delta.tensors), strict=True))


def as_delta(value: Any) -> WeightsDelta:
    """A :class:`WeightsDelta` that arrived as a call argument (a struct travels as its
    fields); a malformed one raises :class:`WeightsDeltaError`."""
    if isinstance(value, WeightsDelta):
        return value
    try:
        return msgspec.convert(value, WeightsDelta)
    except msgspec.ValidationError as exc:
        raise WeightsDeltaError(f"not a weights delta: {exc}; send the full version") from None


def _check_base_version(delta: WeightsDelta, held_version: int) -> None:
    if delta.base != held_version:
        raise _error(
            delta, f"it was made against v{delta.base}, this receiver holds v{held_version}"
        )


def _error(delta: WeightsDelta, problem: str) -> WeightsDeltaError:
    return WeightsDeltaError(
        f"weights delta v{delta.base} -> v{delta.version}: {problem}; send the full version"
    )


def _checked_base(
    name: str,
    change: TensorChange,
    base: Mapping[str, Any],
    base_crcs: Mapping[str, int] | None,
    delta: WeightsDelta,
) -> Any:
    """The base tensor a same/sparse change reuses, once its bytes are the sender's base."""
    if change.kind == "full":
        return None
    b = base.get(name)
    if b is None:
        raise _error(delta, f"tensor {name!r} is not in the base held here")
    if _dtype_name(b) != change.dtype or list(b.shape) != change.shape:
        raise _error(
            delta,
            f"tensor {name!r} is {_dtype_name(b)} {list(b.shape)} here, "
            f"{change.dtype} {change.shape} in the delta",
        )
    held = base_crcs[name] if base_crcs is not None and name in base_crcs else crc_of(b)
    if held != change.base_crc:
        raise _error(
            delta,
            f"tensor {name!r} of the base held here is not the sender's v{delta.base} "
            f"(crc {held:#010x}, sender's {change.base_crc:#010x})",
        )
    return b


def _built(name: str, change: TensorChange, b: Any, delta: WeightsDelta) -> Any:
    """A sparse or full change's tensor, checked against the sender's crc."""
    if change.kind == "full":
        _check_tensor(name, "values", change.values, change.dtype, delta, shape=change.shape)
        out = change.values
    else:
        index, values = _checked_sparse(name, change, b.numel(), delta)
        out = b.contiguous().reshape(-1).clone()
        out.index_copy_(0, index, values)
        out = out.reshape(change.shape)
    if crc_of(out) != change.crc:
        raise _error(delta, f"tensor {name!r} built here does not match the sender's crc")
    return out


def _check_tensor(
    name: str, what: str, t: Any, dtype: str, delta: WeightsDelta, shape: list[int] | None = None
) -> None:
    import torch

    if not isinstance(t, torch.Tensor):
        raise _error(delta, f"tensor {name!r}: {what} is {type(t).__name__}, not a tensor")
    if _dtype_name(t) != dtype:
        raise _error(delta, f"tensor {name!r}: {what} are {_dtype_name(t)}, expected {dtype}")
    if shape is not None and list(t.shape) != shape:
        raise _error(delta, f"tensor {name!r}: {what} have shape {list(t.shape)}, not {shape}")


def _checked_sparse(
    name: str, change: TensorChange, numel: int, delta: WeightsDelta
) -> tuple[Any, Any]:
    """A sparse change's (int64 index, values), after checking that they fit the tensor."""
    import torch

    index, values = change.index, change.values
    if not isinstance(index, torch.Tensor) or index.dtype not in (torch.int32, torch.int64):
        raise _error(delta, f"tensor {name!r}: the sparse index is not an int32/int64 tensor")
    _check_tensor(name, "values", values, change.dtype, delta)
    if index.dim() != 1 or values.dim() != 1 or len(index) != len(values):
        raise _error(
            delta,
            f"tensor {name!r}: {list(index.shape)} positions for {list(values.shape)} values",
        )
    low, high = (int(x) for x in torch.aminmax(index)) if len(index) else (0, -1)
    if low < 0 or high >= numel:
        raise _error(delta, f"tensor {name!r}: a position is outside its {numel} elements")
    return index.long(), values


def apply_in_place(tensors: Mapping[str, Any], delta: WeightsDelta, held_version: int) -> None:
    """Write ``delta`` into ``tensors`` (a receiver's own weights, e.g. an engine's parameters,
    which must hold exactly the base): only the changed elements are written.

    Everything that can be checked first is (the names, shapes, the base's crcs, the sparse
    parts), so a bad delta leaves the weights untouched. The written tensors are checked after;
    a mismatch there (a corrupt value) has changed them: reload the full version.
    """
    _check_base_version(delta, held_version)
    if set(tensors) != set(delta.tensors):
        extra, missing = set(tensors) - set(delta.tensors), set(delta.tensors) - set(tensors)
        raise _error(delta, f"names differ from the weights held here: +{sorted(missing)} "
                     f"-{sorted(extra)}")  # fmt: skip
    sparse = {name: _checked_in_place(name, c, tensors, delta) for name, c in delta.tensors.items()}
    for name, change in delta.tensors.items():
        t, part = tensors[name], sparse[name]
        if change.kind == "full":
            t.copy_(change.values)
        elif part is not None:
            t.view(-1).index_copy_(0, part[0].to(t.device), part[1].to(t.device))
    for name, change in delta.tensors.items():
        if change.kind != "same" and crc_of(tensors[name]) != change.crc:
            raise _error(delta, f"tensor {name!r} does not match the sender's crc after "
                         "writing it: reload the full version")  # fmt: skip


def _checked_in_place(
    name: str, change: TensorChange, tensors: Mapping[str, Any], delta: WeightsDelta
) -> tuple[Any, Any] | None:
    """Checks one change against the receiver's own tensor; a sparse one's (index, values)."""
    t = tensors[name]
    if not t.is_contiguous():
        raise _error(delta, f"tensor {name!r} held here is not contiguous: cannot write in place")
    if change.kind == "full":
        _check_tensor(name, "weights held here", t, change.dtype, delta, shape=change.shape)
        _check_tensor(name, "values", change.values, change.dtype, delta, shape=change.shape)
        return None
    _checked_base(name, change, tensors, None, delta)
    return _checked_sparse(name, change, t.numel(), delta) if change.kind == "sparse" else None


def apply_to_cache(directory: str | os.PathLike[str], delta: WeightsDelta) -> int:
    """A node's cache takes ``delta``: the base comes from the cache (checked by its header's
    crcs), the rebuilt version is cached whole; returns its bytes. Nothing is written unless
    every tensor checked out."""
    held = versions(directory)
    if delta.base not in held:
        raise _error(delta, f"this node holds no v{delta.base} (it holds {held or 'nothing'})")
    built = apply(load(delta.base, directory), delta, delta.base, crcs(delta.base, directory))
    return save(directory, delta.version, built, {n: c.crc for n, c in delta.tensors.items()})
