"""Finished samples in, complete groups out: how a streamed rollout hands its work on.

GRPO's advantage of a sample needs only its own group's rewards, so a group (the G samples of
one prompt) is the unit that scoring and training can take while the rest of the batch still
decodes. Samples arrive from the functions' progress (``RolloutActor.take_finished``) and from
their final replies, possibly twice, possibly from a function that continued a cut sequence:
the first final copy of each sample wins, and each group is handed on exactly once.
"""

from __future__ import annotations

import math

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from rlhfless.stages.protocol import FinishedSample


class Group(msgspec.Struct, frozen=True, kw_only=True):
    """The G finished samples of the batch's prompt ``index`` (sample s has key index*G + s);
    ``complete=False``: one sample of it that just ended, its others still decoding."""

    index: int
    samples: list[FinishedSample]
    complete: bool = True


class GroupAssembler:
    """Collects finished samples by key; says when a group has all of its G samples."""

    def __init__(self, prompts: int, group_size: int, parts: bool = False) -> None:
        self.g, self.parts = group_size, parts
        self.samples: dict[int, FinishedSample] = {}
        self._count = [0] * prompts
        self.sent: set[int] = set()

    def add(self, sample: FinishedSample) -> Group | None:
        """Take one sample (a repeat is ignored); the group it completes, if it does, or with
        ``parts`` the sample as a part of its incomplete group."""
        if sample.finish == "cut" or sample.key in self.samples:
            return None
        self.samples[sample.key] = sample
        i = sample.key // self.g
        self._count[i] += 1
        if self._count[i] < self.g:
            return Group(index=i, samples=[sample], complete=False) if self.parts else None
        self.sent.add(i)
        return Group(index=i, samples=[self.samples[i * self.g + s] for s in range(self.g)])

    def missing(self) -> list[int]:
        return [i for i, n in enumerate(self._count) if n < self.g]


class GroupSink:
    """Where a streamed rollout sends complete groups, and says when its functions end.

    ``free_slots`` is what the consumers may use: the runtime's slots not held by a running
    rollout function. Scoring and training wait for one, so they never slow the rollout down.
    """

    def __init__(self, slots: int, parts: bool = False) -> None:
        self.slots, self.parts = slots, parts  # parts: send the samples of incomplete groups too
        self._running = 0
        self.tx: MemoryObjectSendStream[Group]
        self.rx: MemoryObjectReceiveStream[Group]
        self.tx, self.rx = anyio.create_memory_object_stream[Group](math.inf)
        self._changed = anyio.Event()
        self.rollout_done = False

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - self._running)

    def started(self, functions: int) -> None:
        self._running = functions
        self._poke()

    def function_done(self) -> None:
        self._running = max(0, self._running - 1)
        self._poke()

    def send(self, group: Group) -> None:
        self.tx.send_nowait(group)

    def close(self) -> None:
        """The rollout ended: every group was sent; all slots are free."""
        self.rollout_done = True
        self._running = 0
        self.tx.close()
        self._poke()

    async def wait_for_slot(self) -> None:
        while self.free_slots == 0 and not self.rollout_done:
            await self._changed.wait()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
