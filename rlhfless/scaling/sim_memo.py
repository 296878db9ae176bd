"""Simulated rollouts kept by their inputs: the planner simulates the same candidates again at
each k grid and iteration, and a rollout asked for again gets a copy of the first answer.

A key is equal only for inputs that simulate the same: their repr, hashed (a float's repr
gives back its exact bits: -0.0, inf and int vs float included), and the functions the
simulator calls through its module's namespace (a caller may replace them: a result planned by
other functions is never handed out). Inputs whose repr does not spell them out (a numpy
array's repr elides) are not kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec

from rlhfless.scaling.sim_result import SimResult
from rlhfless.scaling.throughput import ThroughputParams
from rlhfless.scaling.transfer import TransferParams

_PLAIN = (int, float, bool, str, type(None))


class SimMemo:
    """Results by key, the oldest dropped past ``cap``; every answer is a copy."""

    def __init__(self, cap: int = 512) -> None:
        self.cap = cap
        self._results: dict[tuple[object, ...], SimResult] = {}

    def get(self, key: tuple[object, ...] | None) -> SimResult | None:
        kept = self._results.get(key) if key is not None else None
        return None if kept is None else copied(kept)

    def put(self, key: tuple[object, ...] | None, result: SimResult) -> None:
        if key is None:
            return
        if len(self._results) >= self.cap:
            del self._results[next(iter(self._results))]  # the oldest
        self._results[key] = copied(result)


def result_key(inputs: tuple[object, ...], hooks: Sequence[object]) -> tuple[object, ...] | None:
    """A key equal only for ``inputs`` that simulate the same with these ``hooks`` (held by
    the key, so an id is never reused); None where the inputs cannot be keyed safely."""
    if not all(spelled_out(x) for x in inputs):
        return None
    text = repr(inputs).encode()
    return (hashlib.sha256(text).digest(), len(text), tuple(hooks))


def spelled_out(x: object) -> bool:
    """Whether repr(x) spells x out exactly: a plain scalar, a settings struct of plain
    fields, or a list or tuple of plain numbers or of such rows (exact types: no subclass)."""
    if type(x) in _PLAIN:
        return True
    if isinstance(x, ThroughputParams | TransferParams):
        exact = type(x) in (ThroughputParams, TransferParams)
        return exact and all(type(getattr(x, f)) in _PLAIN for f in x.__struct_fields__)
    if not (isinstance(x, list | tuple) and type(x) in (list, tuple)):
        return False
    rows = [r for r in x if type(r) in (list, tuple)]
    if rows and len(rows) != len(x):
        return False
    cells = {type(v) for r in rows for v in r} if rows else {type(v) for v in x}
    return cells <= {int, float, bool}


def copied(r: SimResult) -> SimResult:
    """A copy through which nobody can change the kept result: new lists and functions (their
    items are immutable)."""
    return msgspec.structs.replace(
        r,
        functions=[msgspec.structs.replace(f, busy=list(f.busy)) for f in r.functions],
        tokens_per_sequence=list(r.tokens_per_sequence),
        finish_times=list(r.finish_times),
    )
