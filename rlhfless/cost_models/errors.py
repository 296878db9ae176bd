"""Every exception the cost models raise, in one place. Each message says what to do next.

All derive from :class:`CostModelError`, so a caller (the CLI, the scaler) can catch one class.
None of them is raised for a programming error inside this package; those stay ``TypeError`` etc.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class CostModelError(Exception):
    """Base class of the cost models' errors."""


class PriceFileError(CostModelError):
    """A price file (TOML) is unreadable or breaks the schema.

    The message names the file, the ``[[prices]]`` row (1-based, ``None`` for the ``[model]``
    table or the file as a whole) and the field, so the user can go straight to the line.
    """

    def __init__(
        self,
        path: Path | str,
        problem: str,
        *,
        row: int | None = None,
        field: str | None = None,
        device_kind: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.row = row
        self.field = field
        self.problem = problem
        where = str(path)
        if row is not None:
            where += f": [[prices]] row {row}"
            if device_kind:
                where += f" (device_kind {device_kind!r})"
        elif field is not None:
            where += ": [model]"
        if field is not None:
            where += f": field {field!r}"
        super().__init__(
            f"{where}: {problem}. See docs/cost_models.md for the price-file format, or start "
            "from a shipped file in rlhfless/cost_models/prices/."
        )


class NoInstanceFits(CostModelError):
    """A model that rents whole instances has no shape holding a function's slots."""


class UnknownDeviceKind(CostModelError):
    """A cost model was asked about a device kind it has no price for."""

    def __init__(
        self, model: str, device_kind: str, known: Iterable[str], normalised: str = ""
    ) -> None:
        self.model = model
        self.device_kind = device_kind
        self.known = tuple(sorted(known))
        shown = repr(device_kind)
        if normalised and normalised != device_kind:
            shown += f" (read as {normalised!r})"
        super().__init__(
            f"cost model {model!r} has no price for device kind {shown}; it prices "
            f"{', '.join(self.known) or 'nothing'}. Pick another model, or pass a price file "
            "with a row for this kind (--prices FILE)."
        )


class UnknownModel(CostModelError):
    """A cost model name that is neither built in nor defined by a price file passed in."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = tuple(sorted(known))
        super().__init__(
            f"no cost model named {name!r}; available: {', '.join(self.known)}. "
            "A price file passed with --prices defines the model named in its [model] table."
        )


class BadBillingEvent(CostModelError):
    """A billing event whose times cannot describe a real lifetime (e.g. ready before requested)."""

    def __init__(self, function_id: str, problem: str) -> None:
        self.function_id = function_id
        super().__init__(
            f"billing event of function {function_id!r}: {problem}. The event was recorded "
            "wrongly; fix its producer (or the file) rather than the cost model."
        )


class FunctionStillAlive(CostModelError):
    """A function has no ``exited_at`` and no ``now`` was given to price it up to."""

    def __init__(self, function_id: str) -> None:
        self.function_id = function_id
        super().__init__(
            f"function {function_id!r} has not exited (exited_at is null), so its bill is not "
            "final. Pass now=<unix seconds> (CLI: --now SECONDS, or --now end for the latest time "
            "in the file) to price it up to that moment."
        )


class BillingFileError(CostModelError):
    """A billing-event JSONL file is unreadable or has a line that is not a billing event."""

    def __init__(self, path: Path | str, problem: str, *, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(
            f"{where}: {problem}. Each line must be one BillingEvent as JSON "
            "(rlhfless.runtime.messages.billing_to_json)."
        )


class PlotUnavailable(CostModelError):
    """``--plot`` needs matplotlib, which is an optional dependency."""

    def __init__(self) -> None:
        super().__init__(
            "--plot needs matplotlib, which is not installed. Install it (pip install matplotlib, "
            "or the project's plot extra) or leave out --plot; the table and --json work without it."
        )
