"""Reading and writing billing-event files: JSONL, one :class:`BillingEvent` per line."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import msgspec

from rlhfless.cost_models.errors import BillingFileError
from rlhfless.runtime.messages import BillingEvent, billing_from_json, billing_to_json


class NoBillingEvents(BillingFileError):
    """A billing file without a single event. Priced, it gives all zeros, which reads like a
    free run; a caller that wants that to fail asks for ``allow_empty=False``."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(
            path,
            "no billing events in it (empty, or only blank lines); a run writes a function's "
            "event when the function exits, so check the path or price the file once the run "
            "has finished a function",
        )


def read_billing_events(path: Path | str, *, allow_empty: bool = True) -> list[BillingEvent]:
    """Every event in ``path``. Blank lines are skipped; any other bad line is an error that
    names its line number (a truncated last line from a crashed run included: fix or cut it).
    A file with no events is :class:`NoBillingEvents` unless ``allow_empty``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BillingFileError(path, f"cannot read it ({exc.strerror or exc})") from None
    events = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(billing_from_json(line))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BillingFileError(path, f"not a billing event: {exc}", line=number) from None
    if not events and not allow_empty:
        raise NoBillingEvents(path)
    return events


def write_billing_events(path: Path | str, events: Iterable[BillingEvent]) -> None:
    """Write ``events`` as JSONL (what the runtime's pool writes; handy for tests and tools)."""
    Path(path).write_bytes(b"".join(billing_to_json(e) + b"\n" for e in events))


def latest_time(events: Iterable[BillingEvent]) -> float:
    """The latest time any event mentions: a natural ``now`` for pricing a live run's file."""
    latest = 0.0
    for e in events:
        times = [e.requested_at, e.ready_at, e.released_at, e.exited_at]
        times += [t for pair in (*e.busy, *e.leases) for t in pair]
        latest = max([latest, *(t for t in times if t is not None)])
    return latest
