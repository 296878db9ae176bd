"""One rollout's samples as its functions' replies come in, and, when the iteration streams,
the hand-on of every complete group to the scoring side while the tail still decodes.

Samples are indexed group-major (sample g of prompt i at ``i * G + g``) whatever function,
row or cut produced them, so the batch a stage returns does not depend on the plan.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from rlhfless.stages.groups import GroupAssembler
from rlhfless.stages.protocol import FinishedSample, GenerateReply, reply

if TYPE_CHECKING:
    from rlhfless.stages.groups import GroupSink


class RolloutBatch:
    """The stage's samples as the functions' replies come in (group-major sample index)."""

    def __init__(self, n: int) -> None:
        self.response_ids: list[list[int]] = [[] for _ in range(n)]
        self.logprobs: list[Any] = [None] * n
        self.finish = [""] * n
        self.calls: list[GenerateReply] = []  # every generate / resume reply
        self.stream: GroupStream | None = None  # set when the rollout streams its groups

    def absorb(self, part: GenerateReply, own: list[int]) -> list[tuple[int, int]]:
        """Take a reply's samples (own rows, then joiners by key); (key, row) of those cut."""
        keys = [*own, *part.joined]
        cut = []
        for r, (k, ids, lp, why) in enumerate(
            zip(keys, part.response_ids, part.logprobs, part.finish, strict=True)
        ):
            self.response_ids[k], self.logprobs[k], self.finish[k] = ids, lp, why
            if why == "cut":
                cut.append((k, r))
        if self.stream is not None:
            self.stream.take([self.sample(k) for k in keys if self.finish[k] != "cut"])
        return cut

    def sample(self, key: int) -> FinishedSample:
        return FinishedSample(
            key=key, token_ids=self.response_ids[key], logprobs=self.logprobs[key],
            finish=self.finish[key],
        )  # fmt: skip


class GroupStream:
    """A streamed rollout's hand-on: finished samples -> complete groups -> the sink."""

    def __init__(self, sink: GroupSink, prompts: int, group_size: int) -> None:
        self.sink = sink
        self.groups = GroupAssembler(prompts, group_size, parts=sink.parts)

    def take(self, samples: list[FinishedSample]) -> None:
        for sample in samples:
            group = self.groups.add(sample)
            if group is not None:
                self.sink.send(group)

    def settle(self, batch: RolloutBatch) -> None:
        """The batch as handed on: each sample's first final copy (a function re-run after
        a death may have decoded it again); every group must have gone out."""
        missing = self.groups.missing()
        if missing:
            raise RuntimeError(f"streamed rollout ended without groups {missing[:5]}")
        for key, s in self.groups.samples.items():
            batch.response_ids[key], batch.logprobs[key], batch.finish[key] = (
                s.token_ids, s.logprobs, s.finish,
            )  # fmt: skip

    async def poll(self, running: dict[int, Any], every: float) -> None:
        """Take what the running functions finished, every ``every`` seconds, once a slot is
        free to score it on: before that, groups could only wait, and each poll takes a little
        of the decoding functions' time."""
        while True:
            await asyncio.sleep(every)
            if self.sink.free_slots == 0:
                continue
            for h in list(running.values()):
                try:
                    taken = await h.take_finished()
                except Exception:  # died or ended meanwhile: its reply or re-run carries them
                    continue
                self.take(reply(taken, list[FinishedSample]))
