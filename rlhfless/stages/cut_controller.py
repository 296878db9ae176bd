"""Cut-and-migrate while one rollout runs, the way the scaler and the simulator model it.

Every ``scaling.cut_poll_s`` the controller reads the running functions' progress and asks
``Scaler.migration`` which functions to cut and where each unfinished sequence goes (the
horizon guard included, unless ``scaling.cut_guard = false``). A function told to cut stops at
its next step and returns; the rollout stage then hands its unfinished sequences (tokens so far
kept, :meth:`CutController.rows`) to the controller, which puts them into the running batches of
their planned receivers (``RolloutActor.admit``, ``adapters/decode.py``). Sequences that no
running function takes (all were ending) are left for the stage to resume on one function.

Each poll re-estimates what every unfinished sequence has left from what the rollout has shown
so far (:class:`~rlhfless.scaling.online.SiblingPredictor`): a group's finished samples predict
their running siblings, a running sample is at least as long as it already is, and a prompt
never seen before is predicted as soon as its first sample finishes. The plan-time prediction
(earlier epochs only) is where each estimate starts. Every cut decision is logged
(:class:`CutDecision`, in the iteration's metrics). The HF engine starts every row of a function
at once, so there are no not-yet-started groups to move: only running sequences are.

The controller decides and moves; it starts no function and owns no lease (the stage does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec

from rlhfless.scaling.migrate import FunctionProgress, SequenceProgress, cut_due
from rlhfless.scaling.online import SampleReport, SiblingPredictor
from rlhfless.stages.protocol import CutRow, GenerateReply, RolloutProgress, reply

if TYPE_CHECKING:
    from rlhfless.scaling import Scaler
    from rlhfless.stages.rollout_batch import RolloutBatch

log = logging.getLogger("rlhfless.rollout")


class Moves:
    """Cut sequences handed over: where each one is now, and what the moves cost."""

    def __init__(self) -> None:
        self.rows: dict[int, CutRow] = {}  # key -> the row last handed over
        self.dest: dict[int, int] = {}  # key -> the function the cut's plan sends it to
        self.cutting: set[int] = set()  # functions told to cut: no longer receivers
        self.receivers: set[int] = set()
        self.methods: list[str] = []  # one per hand-over (a function's cut)
        self.resumed = 0  # resume functions started for what no running function took
        self.reprefill_tokens = 0  # state tokens the resume function re-prefilled

    def unfinished(self, finish: list[str]) -> list[int]:
        """Keys still cut once every function replied (nobody took them, or the taker died)."""
        return [k for k in self.rows if finish[k] == "cut"]


class CutDecision(msgspec.Struct, frozen=True, kw_only=True):
    """One poll that cut: when, which functions, how many sequences moved, and on what the
    estimates of the unfinished sequences rested (counts by source)."""

    at: float  # seconds since the rollout was requested
    cut: list[int]  # function indices told to cut
    moved: int  # sequences the plan sends elsewhere
    estimates: dict[str, int]  # "siblings" / "prior" / "default" -> unfinished sequences


class CutController:
    """Cuts and hand-overs of one rollout.

    ``running``: function index -> handle while its generate runs (the stage keeps it current);
    ``owners``: each function's sample keys; ``work``: each function's predicted tokens (a
    hand-over tries the longest first: it runs long enough anyway).
    """

    def __init__(
        self,
        scaler: Scaler,
        group_size: int,
        prompt_ids: list[list[int]],
        owners: list[list[int]],
        work: list[float],
        running: dict[int, Any],
    ) -> None:
        self.scaler = scaler
        self.g = group_size
        self.prompt_ids = prompt_ids
        self.owners = owners
        self.work = work
        self.running = running
        self.moves = Moves()
        self.decisions: list[CutDecision] = []
        self.siblings: SiblingPredictor | None = None  # set by watch(): the rollout's prompts
        self.prompt_keys: list[str] = []

    async def watch(self, prompt_keys: list[Any], started: float) -> None:
        """Poll, plan and cut until cancelled. ``started``: when the rollout was requested
        (``time.perf_counter``), the start of the clock the decisions are logged on."""
        kind, tau = self.scaler.cut_in_force()
        self.prompt_keys = [str(k) for k in prompt_keys]
        self.siblings = SiblingPredictor.from_predictor(
            self.scaler.predictor, prompt_keys, self.g, self.scaler.max_new_tokens
        )
        while True:
            await asyncio.sleep(self.scaler.config.cut_poll_s)
            try:
                await self._cut_once(kind, tau, started)
            except Exception as exc:  # a bad poll must not end cutting for the whole rollout
                log.warning("rollout: planning a cut failed (%r); trying again", exc)

    async def _cut_once(self, kind: str, tau: float, started: float) -> None:
        """One poll: read progress, re-estimate, plan, cut."""
        moves = self.moves
        live = {i: h for i, h in self.running.items() if i not in moves.cutting}
        if len(live) < 2:
            return
        replies = await asyncio.gather(
            *(h.progress() for h in live.values()), return_exceptions=True
        )
        ready = {
            i: reply(r, RolloutProgress)
            for i, r in zip(live, replies, strict=True)
            if isinstance(r, dict)
        }
        for i, r in ready.items():
            self._observe(i, r)
        counts = ((r.finished, r.total, len(r.own) + len(r.joined)) for r in ready.values())
        if not cut_due(kind, tau, counts):  # nothing to plan yet: keep the CPU for the functions
            return
        max_batch = self.scaler.throughput.params().max_batch
        now = [self._progress(i, r, max_batch) for i, r in ready.items()]
        elapsed = time.perf_counter() - started
        plan = self.scaler.migration(now)
        if plan.cut:
            self._log(elapsed, [int(f) for f in plan.cut], len(plan.moves), now)
        for fid in plan.cut:
            h = self.running.get(int(fid))
            if h is not None and await h.cut_now():
                moves.cutting.add(int(fid))
                moves.dest.update(
                    {int(m.seq_id): int(m.dest) for m in plan.moves if m.source == fid}
                )  # this stage's sequence ids are sample keys

    def _observe(self, index: int, progress: RolloutProgress) -> None:
        """Feed one function's progress to the online predictor (by prompt and sample)."""
        assert self.siblings is not None
        own = self.owners[index]
        seen = [(own[r], m, False) for r, m in progress.own]
        seen += [(own[r], m, True) for r, m in progress.ended_own]
        seen += [(k, m, False) for k, m in progress.joined]
        seen += [(k, m, True) for k, m in progress.ended_joined]
        self.siblings.observe(
            SampleReport(self.prompt_keys[k // self.g], k % self.g, m, finished=done)
            for k, m, done in seen
        )

    def _progress(self, index: int, progress: RolloutProgress, max_batch: int) -> FunctionProgress:
        siblings, g = self.siblings, self.g
        assert siblings is not None

        def seq(key: int, produced: int) -> SequenceProgress:
            left = siblings.remaining_of(self.prompt_keys[key // g], produced)
            return SequenceProgress(
                seq_id=key, prompt_tokens=len(self.prompt_ids[key // g]), produced=produced,
                predicted_remaining=left,
            )  # fmt: skip

        own = self.owners[index]
        unfinished = [seq(own[r], m) for r, m in progress.own]
        unfinished += [seq(key, m) for key, m in progress.joined]
        return FunctionProgress(
            function_id=str(index), assigned=progress.total, finished=progress.finished,
            unfinished=tuple(unfinished), max_batch=max_batch,
        )  # fmt: skip

    def _log(self, at: float, cut: list[int], moved: int, now: list[FunctionProgress]) -> None:
        assert self.siblings is not None
        sources: dict[str, int] = {}
        for f in now:
            for q in f.unfinished:
                src = self.siblings.source(self.prompt_keys[int(q.seq_id) // self.g])
                sources[src] = sources.get(src, 0) + 1
        self.decisions.append(CutDecision(at=at, cut=cut, moved=moved, estimates=sources))
        log.info("rollout: cut %s at %.2f s, %d sequences move (%s)", cut, at, moved, sources)

    def rows(
        self, stragglers: list[tuple[int, int]], part: GenerateReply, batch: RolloutBatch
    ) -> list[CutRow]:
        """What another function needs to continue each cut sequence (key, sample row)."""
        move = part.migration
        shipped = move.kv if move is not None and move.method == "ship_kv" else None
        return [
            CutRow(
                key=k,
                prompt=self.prompt_ids[k // self.g],
                token_ids=batch.response_ids[k],
                logprobs=[float(x) for x in batch.logprobs[k]],
                kv=shipped[r] if shipped is not None else None,
                rng=part.rng[r] if part.rng else None,
            )
            for k, r in stragglers
        ]

    async def hand_over(self, rows: list[CutRow]) -> None:
        """Into the running batches of functions still generating: where the cut's plan sent
        each sequence, else the one with the longest predicted work. What every one refuses
        (all ending) waits for the stage's resume."""
        moves = self.moves
        moves.methods.append("ship_kv" if any(r.kv is not None for r in rows) else "reprefill")
        by_dest: dict[int | None, list[CutRow]] = {}
        for row in rows:
            moves.rows[row.key] = row
            by_dest.setdefault(moves.dest.pop(row.key, None), []).append(row)
        for dest, some in by_dest.items():
            await self._admit(dest, some)

    async def _admit(self, dest: int | None, rows: list[CutRow]) -> None:
        """Offer ``rows`` to the planned receiver first, then by predicted work, until one
        takes them."""
        receivers = [i for i in self.running if i not in self.moves.cutting]
        order = sorted(receivers, key=lambda i: -self.work[i])
        if dest in order:
            order.remove(dest)
            order.insert(0, dest)
        for index in order:
            h = self.running.get(index)
            if h is None:
                continue
            try:
                taken = await h.admit(rows)
            except Exception as exc:  # it died meanwhile: its own retry does not carry these
                log.warning("rollout function %s could not take stragglers: %s", index, exc)
                continue
            if taken:
                self.moves.receivers.add(index)
                return
