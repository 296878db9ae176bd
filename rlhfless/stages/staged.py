"""The staged iteration: each stage waits for the one before it.

    rollout -> reward || reference || critic values -> advantages -> train (|| critic) -> publish

Kept beside the streamed iteration (``pipeline.stream = false``) to compare against it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import torch

from rlhfless.stages.iteration import (
    Clock,
    Outcome,
    gather,
    grpo_rows,
    make_batch,
    ppo_advantages,
    train_staged,
)
from rlhfless.stages.protocol import CRITIC, REFERENCE, REWARD

if TYPE_CHECKING:
    from rlhfless.stages.rollout_stage import RolloutStage
    from rlhfless.stages.run_state import RunState
    from rlhfless.stages.tasks import Prompt


async def staged_iteration(
    p: RunState, rollout_stage: RolloutStage, step: int, prompts: list[Prompt],
    prompt_ids: list[list[int]],
) -> Outcome:  # fmt: skip
    cfg, g = p.cfg, p.cfg.train.group_size
    times: dict[str, float] = {}
    clock = Clock(times)
    rollout = await clock.timed("rollout", rollout_stage.run(step, prompts, prompt_ids))
    batch = make_batch([q.index for q in prompts], prompt_ids, rollout, g, p.version)
    out = Outcome(rollout, batch)
    out.times = times
    rewards, ref, values = await clock.timed("score", _score(p, batch, out.busy))
    out.rewards = torch.tensor(rewards, dtype=torch.float32)
    lengths = [len(r) for r in batch.response_ids]
    if cfg.train.uses_critic:
        advantages, returns = ppo_advantages(cfg.train, out.rewards, batch, ref, values)
        out.critic_args = {
            "prompt_ids": batch.prompt_ids, "response_ids": batch.response_ids,
            "old_values": values, "returns": returns,
        }  # fmt: skip
    else:
        advantages = grpo_rows(out.rewards, lengths, cfg.train)
    out.step_args = {
        "prompt_ids": batch.prompt_ids, "response_ids": batch.response_ids,
        "old_logprobs": batch.logprobs, "advantages": advantages, "ref_logprobs": ref,
        "temperature": cfg.rollout.temperature,
    }  # fmt: skip
    await clock.timed("train", train_staged(p, out))
    return out


async def _score(p: RunState, batch: Any, busy: dict[str, float]) -> tuple[Any, Any, Any]:
    """Reward, reference log-probs and critic values of the whole batch, side by side."""
    cfg, g = p.cfg, p.cfg.train.group_size
    task_cfg = msgspec.to_builtins(cfg.task)
    clock = Clock(busy)
    reward = clock.timed("reward", p.with_function(
        REWARD, (p.model_dir, task_cfg), "reward",
        lambda h: h.score(batch.prompt_index, batch.response_ids),
    ))  # fmt: skip
    jobs = [reward]
    if cfg.train.uses_reference:
        jobs.append(clock.timed("reference", p.with_function(
            REFERENCE, (p.model_dir, cfg.model.dtype), "reference",
            lambda h: h.logprobs(
                batch.prompt_ids, batch.response_ids, cfg.rollout.temperature, g
            ),
        )))  # fmt: skip
    if cfg.train.uses_critic:
        jobs.append(clock.timed("critic", p.with_function(
            CRITIC, p.critic_args(), "critic",
            lambda h: p.at_home(CRITIC, h, h.values(
                batch.prompt_ids, batch.response_ids,
                expected_version=p.version, replay=p.unsaved[CRITIC], group_size=g,
            )),
            node=p.home(CRITIC),
        )))  # fmt: skip
    results = await gather(*jobs)
    ref = results[1] if cfg.train.uses_reference else None
    values = results[-1] if cfg.train.uses_critic else None
    return results[0], ref, values
