"""A small discrete-event engine: a heap of timestamped events run in a deterministic order.

Events at the same time run by ``priority`` (lower first), then in the order they were
scheduled (a sequence number), so a simulation gives the same result on every run and
platform. An action may schedule further events, never in the past.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from rlhfless.sim.errors import SimError

Action = Callable[[float], None]


class Engine:
    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, int, str, Action]] = []
        self._seq = itertools.count()
        self.processed = 0
        self.log: list[tuple[float, str]] | None = None  # set to [] to record (time, name)

    def at(self, time: float, action: Action, name: str = "", priority: int = 0) -> None:
        """Run ``action(time)`` at ``time`` (>= now)."""
        if time < self.now - 1e-9:
            raise SimError(f"event {name!r} scheduled at {time} before now ({self.now})")
        heapq.heappush(self._heap, (max(time, self.now), priority, next(self._seq), name, action))

    def after(self, delay: float, action: Action, name: str = "", priority: int = 0) -> None:
        self.at(self.now + max(0.0, delay), action, name, priority)

    def run(self, until: float | None = None) -> float:
        """Process events (up to ``until``); returns the time of the last one."""
        while self._heap and (until is None or self._heap[0][0] <= until):
            time, _, _, name, action = heapq.heappop(self._heap)
            self.now = time
            if self.log is not None:
                self.log.append((time, name))
            action(time)
            self.processed += 1
        return self.now

    @property
    def pending(self) -> int:
        return len(self._heap)
