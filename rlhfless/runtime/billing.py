"""Per-function billing records: the runtime's side of the bill (times only, no prices)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from rlhfless.runtime.messages import BillingEvent, billing_to_json

BUSY_GAP_S = 0.001


class BillingRecord:
    """Mutable while the function lives; :meth:`event` freezes it into a :class:`BillingEvent`."""

    def __init__(
        self, function_id: str, actor: str, stage: str, node: str, slot: int, device_kind: str
    ) -> None:
        self.function_id = function_id
        self.actor = actor
        self.stage = stage
        self.node = node
        self.slot = slot
        self.device_kind = device_kind
        self.requested_at = time.time()
        self.ready_at: float | None = None
        self.busy: list[tuple[float, float]] = []
        self.leases: list[tuple[float, float]] = []
        self.released_at: float | None = None
        self.exited_at: float | None = None
        self.exit_code: int | None = None
        self.warm_starts = 0
        self._in_flight = 0
        self._busy_since = 0.0
        self._lease_since: float | None = self.requested_at

    def call_started(self) -> None:
        if self._in_flight == 0:
            self._busy_since = time.time()
        self._in_flight += 1

    def call_ended(self) -> None:
        if self._in_flight == 0:  # the function's exit already closed the busy interval
            return
        self._in_flight -= 1
        if self._in_flight == 0:
            end = time.time()
            # Back-to-back calls (gap under BUSY_GAP_S) extend one interval: the record stays
            # small for a million calls, and no bill has a finer grain than that.
            if self.busy and self._busy_since - self.busy[-1][1] < BUSY_GAP_S:
                self.busy[-1] = (self.busy[-1][0], end)
            else:
                self.busy.append((self._busy_since, end))

    def lease(self) -> None:
        self.warm_starts += 1
        self._lease_since = time.time()

    def release(self) -> None:
        now = time.time()
        if self._lease_since is not None:
            self.leases.append((self._lease_since, now))
            self._lease_since = None
        self.released_at = now

    def exited(self, exit_code: int | None) -> None:
        now = time.time()
        if self._in_flight:  # calls cut short by death still count as busy time
            self.busy.append((self._busy_since, now))
            self._in_flight = 0
        if self._lease_since is not None:
            self.release()
        self.exited_at = now
        self.exit_code = exit_code

    def event(self) -> BillingEvent:
        return BillingEvent(
            function_id=self.function_id,
            actor=self.actor,
            stage=self.stage,
            node=self.node,
            slot=self.slot,
            device_kind=self.device_kind,
            requested_at=self.requested_at,
            ready_at=self.ready_at,
            busy=list(self.busy),
            leases=list(self.leases),
            released_at=self.released_at,
            exited_at=self.exited_at,
            exit_code=self.exit_code,
            warm_starts=self.warm_starts,
        )


class BillingLog:
    """Finished functions' events: a list, a JSONL file when asked, and async subscribers."""

    def __init__(self, path: str | None) -> None:
        self.events: list[BillingEvent] = []
        self._subscribers: list[asyncio.Queue[BillingEvent | None]] = []
        self._file: Any = None
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._file = open(path, "ab")  # noqa: SIM115 - closed in close()

    def publish(self, event: BillingEvent) -> None:
        self.events.append(event)
        if self._file is not None:
            self._file.write(billing_to_json(event) + b"\n")
            self._file.flush()  # a crash later loses no finished function's bill
        for queue in self._subscribers:
            queue.put_nowait(event)

    async def stream(self) -> AsyncIterator[BillingEvent]:
        queue: asyncio.Queue[BillingEvent | None] = asyncio.Queue()
        self._subscribers.append(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._subscribers.remove(queue)

    def close(self) -> None:
        for queue in self._subscribers:
            queue.put_nowait(None)
        if self._file is not None:
            self._file.close()
            self._file = None
