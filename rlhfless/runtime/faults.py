"""An opt-in fault injector: kills leased functions at a set rate, as spot preemption would.

Spot and preemptible capacity takes machines away while they work. To show that a job loses no
sample when that happens, and what the wasted work costs, a runtime started with
``RuntimeConfig.kill_rate > 0`` runs a :class:`FaultInjector`: every ``tick_s`` it looks at each
function a caller holds (state ``leased``, ready) and SIGKILLs it with probability
``1 - exp(-kill_rate x dt / 3600)``, dt the measured seconds since the last look. So
``kill_rate`` is the expected kills per function-hour of leased time (a Poisson process per
function), and a function-hour is the unit a spot interruption rate is quoted in.

``kill_max`` caps the number of kills (0: no cap), so a demonstration can inject faults without
exceeding what the caller's re-runs absorb (the stages re-run one unit of work at most twice).

The choice is seeded (``RuntimeConfig.kill_seed``): the same seed draws the same sequence of
random numbers (which functions die still depends on timing, as preemption does). The kill goes
through the runtime's own path (local pid, or the node's agent), so the death is what any other
death is: pending calls raise ``FunctionDied`` and the function's billing event records exit
code -9 at the end of its lease, which the ledger counts as lost work. Mechanism only: it knows
nothing of what the functions do.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("rlhfless.runtime")

TICK_S = 0.05  # how often the injector looks: short against any function's lease


@dataclass(frozen=True)
class Kill:
    """One injected kill: when (Unix seconds), which function, hosting what."""

    at: float
    function_id: str
    actor: str
    stage: str


def kill_probability(kill_rate: float, dt: float) -> float:
    """Probability that a Poisson process of ``kill_rate`` per hour fires within ``dt`` seconds."""
    return 1.0 - math.exp(-kill_rate * dt / 3600.0)


@dataclass
class FaultInjector:
    """Kills leased functions of ``functions()`` at ``kill_rate`` per function-hour.

    ``functions`` returns the runtime's live function states; ``kill`` ends one. Both are the
    runtime's own, so the injector has no other access to it.
    """

    kill_rate: float
    seed: int
    functions: Callable[[], Iterable[Any]]
    kill: Callable[[Any], None]
    kill_max: int = 0  # stop after this many kills; 0 = no cap
    tick_s: float = TICK_S
    kills: list[Kill] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.kill_rate) and self.kill_rate >= 0):
            raise ValueError(f"kill_rate must be a finite number >= 0, got {self.kill_rate}")
        self._rng = random.Random(self.seed)
        self._killed: set[str] = set()  # one kill per function: a second would count no death

    def step(self, dt: float) -> list[Kill]:
        """Look once at every leased function; kill each with the probability ``dt`` gives."""
        p = kill_probability(self.kill_rate, dt)
        done: list[Kill] = []
        for fn in list(self.functions()):
            if self.kill_max and len(self.kills) + len(done) >= self.kill_max:
                break
            if fn.state != "leased" or not fn.ready.done() or not fn.pid:
                continue
            if fn.function_id in self._killed:  # dying: its exit is not reported yet
                continue
            if self._rng.random() < p:
                kill = Kill(time.time(), fn.function_id, fn.actor, fn.record.stage)
                log.warning(
                    "fault injector: killing function %s (%s, stage %s)",
                    kill.function_id, kill.actor, kill.stage or "-",
                )  # fmt: skip
                self.kill(fn)
                self._killed.add(fn.function_id)
                done.append(kill)
        self.kills.extend(done)
        return done

    async def run(self) -> None:
        """Step every ``tick_s`` until cancelled (the runtime cancels it when it closes)."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            self.step(now - last)
            last = now
