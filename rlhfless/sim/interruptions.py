"""Spot interruptions: nodes are reclaimed at a mean time between interruptions, and the work
they held re-runs.

Each node (one instance) is interrupted as a Poisson process of rate ``1 / mtbi``. A *unit* of
work, what re-runs as a whole when one of its nodes is lost, of ``d`` seconds on ``n`` nodes is
attempted until one attempt runs ``d`` seconds with no interruption on any of its nodes (rate
``n / mtbi``). Each failed attempt loses the seconds it ran (held and busy, billed, no result)
and then waits ``replace_seconds`` for a new node (a cold start, also held). The draws come
from one seeded generator, so a simulation is the same on every run.

What a unit is decides what an interruption costs each system (:mod:`.systems`, :mod:`.serverless`):

* serverful (one SPMD job on every GPU): a stage on the whole cluster. Losing any node restarts
  the stage on every node, rollout included. This is generous to serverful: a verl job that
  loses a node fails and restarts from its last checkpoint, not from the stage.
* ``rlhfless``: a rollout function is its own unit; a reclaim takes the functions on that node
  (:class:`NodeClock`: one reclaim process per node) and the others decode on. The
  forward passes and the training run as gangs on the whole cluster, and restart as the
  serverful stage does (the runtime replays a gang's step after ``GangMemberDied``). Two
  simplifications: a rollout function re-runs all its work (the runtime keeps the groups that
  finished before the loss: this is an upper bound), and the streamed chunks scored on released
  GPUs while the tail decodes are not interrupted (short units on freed GPUs).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import msgspec

from rlhfless.scaling import SimFunction, SimResult
from rlhfless.sim.errors import BadSetting


class Interruptions(msgspec.Struct, frozen=True, kw_only=True):
    """Spot capacity's reclaim rate: one node is interrupted every ``mtbi_hours`` on average."""

    mtbi_hours: float
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.mtbi_hours > 0 or self.mtbi_hours == float("inf"):
            raise BadSetting("spot_mtbi_hours", self.mtbi_hours, "a finite number of hours > 0")


class Attempts(msgspec.Struct, frozen=True):
    """What one unit's interruptions cost before the attempt that completed."""

    extra_seconds: float  # added to the unit's wall time: lost attempts and replacements
    lost_seconds: float  # of those, the failed attempts' running time (work thrown away)
    interruptions: int

    @property
    def replace_seconds(self) -> float:
        return self.extra_seconds - self.lost_seconds


NONE = Attempts(0.0, 0.0, 0)
# A unit needs e^(rate x seconds) attempts on average: beyond e^12 (~160 000) the job
# would never finish on that capacity, which is a setting to refuse, not to simulate.
MAX_EXPONENT = 12.0


class Interrupter:
    """Draws each unit's interruptions and keeps the totals a report shows."""

    def __init__(self, spec: Interruptions | None, replace_seconds: float) -> None:
        self.spec, self.replace_seconds = spec, replace_seconds
        self.rng = random.Random(spec.seed if spec else 0)
        self.interruptions = 0
        self.lost_gpu_seconds = 0.0

    def attempts(self, seconds: float, nodes: int, gpus: int) -> Attempts:
        """Run a unit of ``seconds`` on ``nodes`` nodes (``gpus`` GPUs held) to completion."""
        if self.spec is None or seconds <= 0:
            return NONE
        rate = nodes / (self.spec.mtbi_hours * 3600.0)
        if rate * seconds > MAX_EXPONENT:  # e^(rate*seconds) attempts expected: never ends
            raise BadSetting(
                "spot_mtbi_hours", self.spec.mtbi_hours,
                f"hours long enough that a {seconds:.0f}-second unit on {nodes} nodes can finish "
                f"(now ~e^{rate * seconds:.0f} attempts expected)",
            )  # fmt: skip
        extra = lost = 0.0
        count = 0
        while (x := self.rng.expovariate(rate)) < seconds:
            lost += x
            extra += x + self.replace_seconds
            count += 1
        self.interruptions += count
        self.lost_gpu_seconds += lost * gpus
        return Attempts(extra, lost, count)


class NodeClock:
    """One node's reclaim times from a rollout's start, drawn as needed: every function on the
    node sees the same reclaims (a reclaim takes the whole instance)."""

    def __init__(self, interrupter: Interrupter) -> None:
        assert interrupter.spec is not None
        self.rng, self.mean = interrupter.rng, interrupter.spec.mtbi_hours * 3600.0
        self.times = [self.rng.expovariate(1.0 / self.mean)]

    def first_in(self, start: float, end: float) -> float | None:
        while self.times[-1] < end:
            self.times.append(self.times[-1] + self.rng.expovariate(1.0 / self.mean))
        return next((t for t in self.times if start <= t < end), None)


def interrupted_functions(
    r: SimResult, interrupter: Interrupter, gpus: int, nodes: Sequence[int]
) -> SimResult:
    """A rollout whose functions (``gpus`` GPUs each, on ``nodes``) lose their node to its
    reclaims: an interrupted function's work starts over after its replacement's start, so it
    finishes (and releases its GPUs) later; its lost attempts are busy at the start of its
    life. A reclaim hits every function its node runs at that moment, and no other."""
    if interrupter.spec is None:
        return r
    clocks: dict[int, NodeClock] = {}
    hit: set[tuple[int, float]] = set()
    functions = []
    for sf, node in zip(r.functions, nodes, strict=True):
        clock = clocks.setdefault(node, NodeClock(interrupter))
        a, lost = sf.ready_at, 0.0
        run = sf.finished_at - sf.ready_at
        while (x := clock.first_in(a, a + run)) is not None:
            hit.add((node, x))
            lost += x - a
            a = x + interrupter.replace_seconds
        x = a - sf.ready_at  # how much later its work starts
        interrupter.lost_gpu_seconds += lost * gpus
        functions.append(sf if x == 0 else _later(sf, x, lost))
    interrupter.interruptions += len(hit)
    makespan = max([r.makespan, *(f.finished_at for f in functions)])
    return msgspec.structs.replace(r, functions=functions, makespan=makespan)


def _later(sf: SimFunction, x: float, lost: float) -> SimFunction:
    return msgspec.structs.replace(
        sf,
        busy=[(sf.ready_at, sf.ready_at + lost)] + [(s + x, e + x) for s, e in sf.busy],
        finished_at=sf.finished_at + x,
        released_at=sf.released_at + x,
        cut_at=None if sf.cut_at is None else sf.cut_at + x,
    )
