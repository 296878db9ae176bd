"""The streamed iteration: scoring and training on complete groups while the rollout tail decodes.

    rollout ──groups──▶ reward || reference || critic values ──chunks──▶ trainer: forward+backward
       (k functions)      (on slots the finished rollout              (GRPO; PPO collects them)
                           functions released)
    ... after the last group: optimiser step (GRPO) or whole-batch advantages and update (PPO)
        -> publish weights

A rollout function hands back each group (the G samples of one prompt) as soon as it is complete
(``RolloutStage.run(sink=...)``). Scoring waits for a free slot, then takes every group that is
ready as one chunk. GRPO's advantages need only a group's own rewards, so the trainer runs the
forward and backward of each scored chunk at once, sums the gradients unnormalised, and steps the
optimiser once after the last group (``TrainerActor.begin_step / accumulate / finish_step``): the
same samples, rewards and update as the staged iteration, up to float summation order. PPO
whitens advantages over the whole batch, so its scoring streams and its update waits.

One failing stage cancels the others (anyio task group). A scoring or training function that
dies is replaced and its work re-run; the trainer's replacement first replays the chunks the
dead one had taken (``Held.on_start``), so no sample and no step is lost.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec
import torch

from rlhfless.stages.groups import Group, GroupSink
from rlhfless.stages.iteration import (
    Outcome,
    first_error,
    gather,
    grpo_rows,
    make_batch,
    ppo_advantages,
    train_staged,
)
from rlhfless.stages.leases import Held
from rlhfless.stages.protocol import CRITIC, REFERENCE, REWARD, TRAINER, Published, StepStats, reply
from rlhfless.stages.train_plan import Chunk, TrainCall, TrainPlan, merge_chunks

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from rlhfless.stages.config import Config
    from rlhfless.stages.rollout_stage import RolloutOutcome, RolloutStage
    from rlhfless.stages.run_state import RunState
    from rlhfless.stages.tasks import Prompt


T = TypeVar("T")


class StreamedIteration:
    def __init__(
        self, p: RunState, rollout: RolloutStage, step: int, prompts: list[Prompt],
        prompt_ids: list[list[int]],
    ) -> None:  # fmt: skip
        self.p, self.step, self.prompts, self.prompt_ids = p, step, prompts, prompt_ids
        self.rollout_stage = rollout
        self.g = p.cfg.train.group_size
        self.chunks: list[Chunk] = []
        self.open_max = open_groups(p.cfg)
        self.rollout: RolloutOutcome | None = None
        self.rollout_end = math.inf
        self.train_stats: StepStats | None = None
        self.published: Published | None = None
        self.held: dict[str, Held] = {}
        self.sent: list[TrainCall] = []  # what the trainer took (replayed after a death)
        self.scored: set[int] = set()  # samples scored (a group's parts come before it)
        self.stepped = False  # the trainer's finish_step ran
        self.sink: GroupSink | None = None
        self._threads = 0  # the trainer's CPU threads as last set
        self.scored_at = math.inf  # when the last chunk was scored
        # Each forward and backward call: (start, end, response lengths of its chunk).
        self.trained: list[tuple[float, float, list[int]]] = []

    async def run(self) -> Outcome:
        p, t0 = self.p, time.perf_counter()
        slots = sum(d.slots for d in p.rt.nodes().values())
        sink = self.sink = GroupSink(slots, parts=self.open_max > 0)
        tx, rx = anyio.create_memory_object_stream[Chunk](math.inf)
        try:
            async with first_error(), anyio.create_task_group() as tg:
                tg.start_soon(self._rollout, sink)
                tg.start_soon(self._score, sink, tx)
                tg.start_soon(self._train if not p.cfg.train.uses_critic else self._collect, rx)
        finally:
            with anyio.CancelScope(shield=True):
                for held in self.held.values():
                    await held.release()
        streamed = time.perf_counter()
        out = self._outcome()
        if p.cfg.train.uses_critic:  # whole-batch whitening: the update waits for every group
            await train_staged(p, out)
        end = time.perf_counter()
        self._times(out, t0, streamed, end)
        return out

    # ------------------------------------------------------------------ the three streams

    async def _rollout(self, sink: GroupSink) -> None:
        self.rollout = await self.rollout_stage.run(
            self.step, self.prompts, self.prompt_ids, sink=sink
        )
        self.rollout_end = time.perf_counter()

    async def _score(self, sink: GroupSink, tx: MemoryObjectSendStream[Chunk]) -> None:
        async with tx:
            while groups := await _next_groups(sink):
                tx.send_nowait(await self._score_chunk(groups))
        self.scored_at = time.perf_counter()
        for stage in ("reward", "reference", "critic"):  # done: their slots go to the trainer
            if stage in self.held:
                await self.held[stage].release()

    async def _score_chunk(self, groups: list[Group]) -> Chunk:
        p, cfg = self.p, self.p.cfg
        samples = [s for grp in groups for s in grp.samples if s.key not in self.scored]
        samples = list({s.key: s for s in samples}.values())
        self.scored.update(s.key for s in samples)
        if not samples:
            return Chunk(rows=[], prompt_ids=[], response_ids=[], logprobs=[], rewards=[])
        rows = [s.key for s in samples]
        prompt_ids = [self.prompt_ids[k // self.g] for k in rows]
        response_ids = [s.token_ids for s in samples]
        index = [self.prompts[k // self.g].index for k in rows]
        jobs = [self._scorer("reward").call(lambda h: h.score(index, response_ids))]
        if cfg.train.uses_reference:
            jobs.append(self._scorer("reference").call(
                lambda h: h.logprobs(prompt_ids, response_ids, cfg.rollout.temperature, self.g)
            ))  # fmt: skip
        if cfg.train.uses_critic:
            jobs.append(self._scorer("critic").call(
                lambda h: h.values(
                    prompt_ids, response_ids, expected_version=p.version, group_size=self.g
                )
            ))  # fmt: skip
        results = await gather(*jobs)
        return Chunk(
            rows=rows, prompt_ids=prompt_ids, response_ids=response_ids,
            logprobs=[s.logprobs for s in samples], rewards=list(results[0]),
            ref=results[1] if cfg.train.uses_reference else None,
            values=results[-1] if cfg.train.uses_critic else None,
        )  # fmt: skip

    async def _collect(self, rx: MemoryObjectReceiveStream[Chunk]) -> None:
        async with rx:
            async for chunk in rx:
                self.chunks.append(chunk)

    async def _train(self, rx: MemoryObjectReceiveStream[Chunk]) -> None:
        """GRPO: forward and backward of every scored chunk as it comes; one step at the end."""
        p, cfg = self.p, self.p.cfg
        trainer = self.held["train"] = p.leases.held(
            TRAINER, p.trainer_args(), "train", threads=p.trainer_threads(),
            node=p.home(TRAINER), on_start=self._start_trainer,
        )  # fmt: skip
        # One micro-batch per call where the trainer is one process: its threads then follow
        # the machine between micro-batches (a gang's ranks share each call's micro-batches).
        per_mb = cfg.train.slots == 1
        plan = TrainPlan(cfg.train, cfg.rollout.temperature, self.open_max, per_mb)
        async with rx:
            async for chunk in rx:
                # What was scored while the trainer worked goes in together; and once the
                # rollout has ended its threads stay put, so a call per micro-batch would only
                # add calls (an iteration with no tail trains everything after it).
                chunks = [chunk, *_queued(rx)]
                self.chunks += chunks
                plan.per_micro_batch = per_mb and not self._rollout_done()
                for call in plan.take(merge_chunks(chunks)):
                    await trainer.call(lambda h, call=call: self._train_call(h, call))
                    self.sent.append(call)
        stats = await trainer.call(self._finish)
        self.train_stats = reply(stats, StepStats)
        self.published = reply(
            await trainer.call(lambda h: h.weights(*p.weights_route())), Published
        )

    # ------------------------------------------------------------------ functions

    def _scorer(self, stage: str) -> Held:
        held = self.held.get(stage)
        if held is None:
            held = self.held[stage] = self._new_scorer(stage)
        return held

    def _new_scorer(self, stage: str) -> Held:
        p, cfg = self.p, self.p.cfg
        if stage == "reward":
            return p.leases.held(REWARD, (p.model_dir, msgspec.to_builtins(cfg.task)), "reward")
        if stage == "reference":
            return p.leases.held(REFERENCE, (p.model_dir, cfg.model.dtype), "reference")

        async def start_critic(h: Any) -> None:
            p.homes[CRITIC] = h.node
            await h.sync(p.version, p.unsaved[CRITIC])

        return p.leases.held(
            CRITIC, p.critic_args(), "critic", node=p.home(CRITIC), on_start=start_critic
        )

    async def _start_trainer(self, h: Any) -> None:
        """A new trainer function (the first, or one replacing a dead one): open the step at
        the run's version, then replay the chunks (and the step) the dead one had taken."""
        p = self.p
        p.homes[TRAINER] = h.node
        await h.begin_step(p.version, p.unsaved[TRAINER])
        self._threads = 0
        for call in self.sent:
            await self._run(h, call)
        if self.stepped:
            await h.finish_step()

    async def _run(self, h: Any, call: TrainCall) -> tuple[float, float]:
        """A trainer call's forward and backward; returns when it started and ended."""
        await self._share_machine(h)
        t = time.perf_counter()
        await getattr(h, call.method)(**call.args)
        return t, time.perf_counter()

    async def _train_call(self, h: Any, call: TrainCall) -> None:
        """A new call's forward and backward, timed (a new trainer's start and replay are not)."""
        start, end = await self._run(h, call)
        self.trained.append((start, end, [len(r) for r in call.args["response_ids"]]))

    def _rollout_done(self) -> bool:
        return self.sink is not None and self.sink.rollout_done

    async def _finish(self, h: Any) -> Any:
        await self._share_machine(h)
        stats = await h.finish_step()
        self.stepped = True
        return stats

    async def _share_machine(self, h: Any) -> None:
        """While the rollout decodes, the trainer uses the cores of the slots it freed; after
        it, every core the trainer may use (CPU slots; a GPU function has its own device)."""
        p, sink = self.p, self.sink
        threads = p.trainer_threads()
        if sink is not None and not sink.rollout_done:
            threads = min(threads, p.rt.threads * max(1, sink.free_slots))
        if threads != self._threads:
            self._threads = await h.set_threads(threads)

    # ------------------------------------------------------------------ the outcome

    def _outcome(self) -> Outcome:
        p, cfg = self.p, self.p.cfg
        assert self.rollout is not None  # the task group ran it to the end or raised
        batch = make_batch(
            [q.index for q in self.prompts], self.prompt_ids, self.rollout, self.g, p.version
        )
        out = Outcome(self.rollout, batch)
        n = len(batch.response_ids)
        rewards, ref, values = [0.0] * n, [None] * n, [None] * n
        for c in self.chunks:
            for j, k in enumerate(c.rows):
                rewards[k] = c.rewards[j]
                ref[k] = c.ref[j] if c.ref is not None else None
                values[k] = c.values[j] if c.values is not None else None
        out.rewards = torch.tensor(rewards, dtype=torch.float32)
        refs = ref if cfg.train.uses_reference else None
        if cfg.train.uses_critic:
            advantages, returns = ppo_advantages(cfg.train, out.rewards, batch, refs, values)
            out.critic_args = {
                "prompt_ids": batch.prompt_ids, "response_ids": batch.response_ids,
                "old_values": values, "returns": returns,
            }  # fmt: skip
        else:
            lengths = [len(r) for r in batch.response_ids]
            advantages = grpo_rows(out.rewards, lengths, cfg.train)
            out.train, out.published = self.train_stats, self.published
        out.step_args = {  # what a later cold trainer replays (RunState.unsaved)
            "prompt_ids": batch.prompt_ids, "response_ids": batch.response_ids,
            "old_logprobs": batch.logprobs, "advantages": advantages, "ref_logprobs": refs,
            "temperature": cfg.rollout.temperature,
        }  # fmt: skip
        return out

    def _times(self, out: Outcome, t0: float, streamed: float, end: float) -> None:
        """Wall phases that add up to the iteration, and how much work overlapped the rollout:
        the rollout, the scoring left after it, then the training left after that (GRPO: the
        last chunks, the optimiser step and the weights; PPO: the whole update)."""
        rollout_end = min(self.rollout_end, streamed)
        scored = min(max(self.scored_at, rollout_end), streamed)
        out.times = {
            "rollout": rollout_end - t0,
            "score": scored - rollout_end,
            "train": end - scored,
        }
        for stage, held in self.held.items():
            out.busy[stage] = sum(b - a for a, b in held.calls)
            out.overlapped += sum(max(0.0, min(b, rollout_end) - a) for a, b in held.calls)
        if self.trained:
            out.after_rollout = after_rollout(self.trained, rollout_end, end)
        out.trained_open = sum(
            len(c.args["response_ids"]) for c in self.sent if c.method == "accumulate_open"
        )


def open_groups(cfg: Config) -> int:
    """How many groups the trainer may train sample by sample while they decode
    (stages/open_groups.py): ``pipeline.open_groups`` for GRPO without a KL term on one trainer
    function; 0 otherwise (a KL term needs a sum of its own; a sharded trainer's ranks would
    each find other samples waiting, and their collectives must pair up)."""
    t = cfg.train
    if t.algo != "grpo" or t.uses_reference or t.slots > 1:
        return 0
    return cfg.pipeline.open_groups


def after_rollout(
    trained: list[tuple[float, float, list[int]]], rollout_end: float, end: float
) -> dict[str, float]:
    """What GRPO's streamed step did after the rollout's end, from its ``trained`` chunks
    ((start, end, response lengths) of each forward and backward): the forward and backward
    of the groups not trained by then, and the rest (step, weights, waits). The measure of
    what streaming left behind the tail (docs/streaming.md)."""
    late = [(a, b, n) for a, b, n in trained if b > rollout_end]
    lengths = [x for _, _, n in late for x in n]
    return {
        "seconds": end - rollout_end,
        "forward_backward": sum(b - max(a, rollout_end) for a, b, _ in late),
        "tokens": float(sum(lengths)),
        "longest": float(max(lengths, default=0)),
        "samples": float(len(lengths)),
    }


def _queued(rx: MemoryObjectReceiveStream[T]) -> list[T]:
    """What is already waiting in ``rx`` (none at its end), taken together."""
    out = []
    while True:
        try:
            out.append(rx.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            return out


async def _next_groups(sink: GroupSink) -> list[Group]:
    """Every group ready now, once a slot is free (waits for the first); [] at the end."""
    await sink.wait_for_slot()
    try:
        first = await sink.rx.receive()
    except anyio.EndOfStream:
        return []
    return [first, *_queued(sink.rx)]
