"""What the staged and the streamed iteration share: the batch, advantages, the closing update.

Both run the same algorithm on the same samples; they differ only in when each stage's work
runs (stages/staged.py, stages/streamed.py). What one iteration produced is an
:class:`Outcome`, which the pipeline turns into its metrics.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import torch

from rlhfless.stages import algorithms as alg
from rlhfless.stages.common import RolloutBatch, pad_rows
from rlhfless.stages.protocol import CRITIC, TRAINER, Published, StepStats, reply

if TYPE_CHECKING:
    from rlhfless.stages.config import TrainConfig
    from rlhfless.stages.rollout_stage import RolloutOutcome
    from rlhfless.stages.run_state import RunState

R = TypeVar("R")


class Outcome:
    """One iteration's results, however its stages were scheduled."""

    def __init__(self, rollout: RolloutOutcome, batch: RolloutBatch) -> None:
        self.rollout, self.batch = rollout, batch
        self.rewards = torch.zeros(0)
        self.train: StepStats | None = None
        self.critic: StepStats | None = None
        self.published: Published | None = None
        self.step_args: dict[str, Any] = {}
        self.critic_args: dict[str, Any] = {}
        # Wall seconds per phase; they add up to the iteration (streamed: scoring and training
        # that overlapped the rollout are inside "rollout" and reported under "overlapped").
        self.times: dict[str, float] = {}
        self.busy: dict[str, float] = {}  # seconds each scoring/training function worked
        self.overlapped = 0.0  # of those, seconds that ran while the rollout still decoded
        # Streamed GRPO: what ran after the rollout's end (StreamedIteration.after_rollout).
        self.after_rollout: dict[str, float] = {}
        self.trained_open = 0  # streamed GRPO: samples trained while their group decoded


class Clock:
    """Adds up wall seconds by name: ``await clock.timed("score", work)``."""

    def __init__(self, times: dict[str, float]) -> None:
        self.times = times

    async def timed(self, name: str, work: Awaitable[R]) -> R:
        t0 = time.perf_counter()
        try:
            return await work
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0


def make_batch(
    prompt_index: list[int], prompt_ids: list[list[int]], rollout: RolloutOutcome, g: int,
    version: int,
) -> RolloutBatch:  # fmt: skip
    return RolloutBatch(
        prompt_index=[i for i in prompt_index for _ in range(g)],
        prompt_ids=[ids for ids in prompt_ids for _ in range(g)],
        response_ids=rollout.response_ids,
        logprobs=rollout.logprobs,
        finish=rollout.finish,
        version=version,
    )


def grpo_rows(rewards: torch.Tensor, lengths: list[int], cfg: TrainConfig) -> list[torch.Tensor]:
    """GRPO advantages as per-token rows (one value per response, repeated on its tokens).
    Groups are normalised on their own, so a chunk of whole groups gives the batch's values."""
    adv = alg.grpo_advantages(rewards, cfg.group_size, scale_by_std=cfg.scale_adv_by_std)
    return [torch.full((n,), float(a)) for a, n in zip(adv, lengths, strict=True)]


def ppo_advantages(
    cfg: TrainConfig, scores: torch.Tensor, batch: RolloutBatch,
    ref: list[torch.Tensor] | None, values: list[torch.Tensor] | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:  # fmt: skip
    """GAE over the whole batch, whitened over the whole batch (why PPO's update waits)."""
    lengths = [len(r) for r in batch.response_ids]
    width = max(1, max(lengths))
    mask = torch.zeros(len(lengths), width)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    logp = pad_rows(batch.logprobs, width)
    kl = alg.kl_estimate(logp, pad_rows(ref, width), "k1") if ref is not None else None
    token_r = alg.token_rewards(scores, mask, kl, cfg.kl_coef)
    adv, ret = alg.gae(
        token_r, pad_rows(values, width) if values else torch.zeros_like(mask), mask,
        cfg.gamma, cfg.lam,
    )  # fmt: skip
    adv = alg.masked_whiten(adv, mask)
    return [adv[i, :n] for i, n in enumerate(lengths)], [ret[i, :n] for i, n in enumerate(lengths)]


async def train_staged(p: RunState, out: Outcome) -> None:
    """The policy step on the whole batch (and the critic's, for PPO), then the new weights."""
    cfg = p.cfg

    async def train(h: Any) -> tuple[StepStats, Published]:
        stats = await h.step(**out.step_args, expected_version=p.version, replay=p.unsaved[TRAINER])
        published = await p.at_home(TRAINER, h, h.weights(*p.weights_route()))
        return reply(stats, StepStats), reply(published, Published)

    async def critic() -> None:
        out.critic = reply(await p.with_function(
            CRITIC, p.critic_args(), "critic",
            lambda h: p.at_home(CRITIC, h, h.step(
                **out.critic_args, expected_version=p.version, replay=p.unsaved[CRITIC]
            )), node=p.home(CRITIC),
        ), StepStats)  # fmt: skip

    async def policy() -> None:
        out.train, out.published = await p.with_function(
            TRAINER, p.trainer_args(), "train", train, threads=p.trainer_threads(),
            node=p.home(TRAINER),
        )  # fmt: skip

    await gather(policy(), *([critic()] if cfg.train.uses_critic else []))


async def gather(*work: Awaitable[Any]) -> list[Any]:
    """Run ``work`` side by side; the first failure cancels the rest and is raised."""
    results: list[Any] = [None] * len(work)

    async def one(i: int, w: Awaitable[Any]) -> None:
        results[i] = await w

    async with first_error(), anyio.create_task_group() as tg:
        for i, w in enumerate(work):
            tg.start_soon(one, i, w)
    return results


@contextlib.asynccontextmanager
async def first_error() -> AsyncIterator[None]:
    """A task group's failure as its first error, not an exception group: the stages' callers
    (the CLI's one-line errors, the retry on a dead function) handle the error itself."""
    try:
        yield
    except BaseExceptionGroup as group:
        raise first_leaf(group) from None


def first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
