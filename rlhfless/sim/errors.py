"""The simulator's errors: bad names, bad settings, bad trace files. Each says what to do."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class SimError(ValueError):
    """Base of every error :mod:`rlhfless.sim` raises for bad input."""


class UnknownName(SimError):
    def __init__(self, what: str, name: str, known: Iterable[str]) -> None:
        self.what, self.name = what, name
        super().__init__(f"unknown {what} {name!r}; known: {', '.join(sorted(known))}")


class BadSetting(SimError):
    def __init__(self, name: str, value: object, expected: str) -> None:
        self.name, self.expected = name, expected
        super().__init__(f"{name} = {value!r} is not valid: expected {expected}")


class BadSweep(SimError):
    def __init__(self, text: str, why: str) -> None:
        super().__init__(
            f"bad --sweep {text!r}: {why} (expected KEY=V1,V2,..., e.g. nodes=4,8,16,32)"
        )


class BadTrace(SimError):
    def __init__(self, path: Path | str, why: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(
            f"{where}: {why} (each line: "
            '{"prompt_id": ..., "lengths": [int, ...], "prompt_tokens": int})'
        )
