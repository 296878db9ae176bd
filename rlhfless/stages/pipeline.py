"""The RLHF job on the runtime: one synchronous iteration at a time, every stage in functions
started on demand.

    plan -> rollout on N functions, scoring and gradient accumulation on finished groups side
         by side (stages/streamed.py; or each stage after the last: stages/staged.py)
         -> optimiser step -> publish weights

Each stage spawns its functions (warm from the pool when one is kept alive), calls them, and
releases them as soon as the stage is done. A function that dies mid-stage has its unfinished
work re-run on a new function (stages/leases.py), so an iteration never loses a sample.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import torch

from rlhfless.adapters.hf import load_tokenizer
from rlhfless.runtime import Runtime
from rlhfless.stages.common import atomic_file_write, task_from_config
from rlhfless.stages.config import Config
from rlhfless.stages.iteration import Outcome
from rlhfless.stages.protocol import CRITIC, TRAINER, Published, reply
from rlhfless.stages.rollout_stage import SCALER_STATE, RolloutOutcome, RolloutStage
from rlhfless.stages.run_state import RunState
from rlhfless.stages.samples import Scored
from rlhfless.stages.staged import staged_iteration
from rlhfless.stages.streamed import StreamedIteration
from rlhfless.stages.tasks import Prompt, batch_for_step

log = logging.getLogger("rlhfless.pipeline")
R = TypeVar("R")


class IterationMetrics(msgspec.Struct, kw_only=True):
    iteration: int
    version: int  # policy version after this iteration's update
    reward_mean: float
    reward_std: float
    response_len_mean: float
    response_len_max: int
    samples: int
    loss: float
    kl: float
    clip_frac: float
    grad_norm: float
    value_loss: float | None = None
    # Wall time per phase (rollout, score, train): they add up to the iteration. Streamed,
    # the scoring and training that ran while the rollout decoded are inside "rollout" and
    # counted in overlapped_seconds; "score" and "train" are what was left after it.
    stage_seconds: dict[str, float]
    busy_seconds: dict[str, float] = {}  # seconds each stage's functions worked (may overlap)
    overlapped_seconds: float = 0.0  # of busy_seconds, the part while the rollout still ran
    # Streamed GRPO, the time after the rollout's end: "seconds" in all; "forward_backward" of
    # the groups that were not trained by then ("tokens" in them, their "longest" response,
    # "samples"); the rest is the optimiser step, the weights and waits. Empty when staged.
    after_rollout: dict[str, float] = {}
    # Streamed GRPO: samples handed to the trainer while others of their group still decoded
    # (pipeline.open_groups; one whose tokens left the clip range waits there for the group);
    # the rest trained with their whole group.
    trained_open: int = 0
    streamed: bool = False  # pipeline.stream
    started_at: float = 0.0  # Unix seconds (the billing events' clock): the timeline's window
    tokens: dict[str, int]  # prefill / decode / train tokens
    functions: dict[str, int]  # functions used per stage this iteration
    cold_starts: int  # new processes started this iteration
    warm_starts: int  # spawns served by warm functions this iteration
    retries: int  # units of work re-run after a function died
    # training steps re-run from kept inputs: a cold trainer's state lacked them (its function
    # died before the state written behind the step landed; stages/handover.py)
    replayed: int = 0
    scaling: dict[str, Any]  # the rollout plan: policy, functions, predicted vs actual time and $
    seconds: float
    # Across machines: policy weight bytes sent to nodes this iteration ("sent": whole versions
    # and deltas, runtime/publish.py) and what whole versions would have been ("whole").
    weight_bytes: dict[str, int] = {}


class Pipeline:
    """The RLHF job on a runtime. Embed it: create a Runtime, then call :meth:`run_iteration`."""

    def __init__(
        self, runtime: Runtime, config: Config, model_dir: str | Path, run_dir: str | Path
    ) -> None:
        self.state = RunState(runtime, config, model_dir, run_dir)
        self.rt, self.cfg = runtime, config
        self.task = task_from_config(config.task, config.rollout.max_new_tokens)
        self.tokenizer = load_tokenizer(self.state.model_dir)
        self.rollout_stage = RolloutStage(self.state)
        self.last_lengths: list[dict[str, Any]] = []
        self.last_scored: Scored | None = None  # the last iteration's samples and rewards

    # The run's state as the pipeline's own attributes: embedding code and tests read them.
    @property
    def version(self) -> int:
        return self.state.version

    @property
    def weights(self) -> dict[str, torch.Tensor] | str | None:
        return self.state.weights

    @property
    def unsaved(self) -> dict[str, list[dict[str, Any]]]:
        return self.state.unsaved

    @property
    def on_rollout_started(self) -> Callable[[list[int]], Any] | None:
        return self.state.on_rollout_started

    @on_rollout_started.setter
    def on_rollout_started(self, hook: Callable[[list[int]], Any] | None) -> None:
        self.state.on_rollout_started = hook

    @property
    def retries(self) -> int:
        return self.state.leases.retries

    async def restore_weights(self) -> None:
        """After a resume: the trainer loads the restored state; rollouts get its weights."""
        s = self.state
        published = await s.with_function(
            TRAINER, s.trainer_args(), "train",
            lambda h: s.at_home(TRAINER, h, h.weights(*s.weights_route())),
            threads=s.trainer_threads(), node=s.home(TRAINER),
        )  # fmt: skip
        s.publish(reply(published, Published))

    async def persist_state(self) -> None:
        """Make every role's hand-over state durable at the run's version: a checkpoint copies
        ``run_dir/state`` next. A role's function that died before its write landed is
        replaced by one that replays the missing steps."""
        s = self.state
        roles = [(TRAINER, s.trainer_args(), "train", s.trainer_threads())]
        if self.cfg.train.uses_critic:
            roles.append((CRITIC, s.critic_args(), "critic", None))
        for role, args, stage, threads in roles:
            await s.with_function(
                role, args, stage,
                lambda h, role=role: s.at_home(role, h, h.persist(s.version, s.unsaved[role])),
                threads=threads, node=s.home(role),
            )  # fmt: skip
            s.unsaved[role] = []
        # The scaler's length history and calibrated speeds: a resumed run plans with them
        # instead of the priors (a checkpoint copies this file with the roles' state).
        s.state_dir.mkdir(parents=True, exist_ok=True)
        state = msgspec.json.encode(self.rollout_stage.scaler.to_dict())
        atomic_file_write(s.state_dir / SCALER_STATE, state)

    # ------------------------------------------------------------------ one iteration

    async def run_iteration(self, step: int) -> IterationMetrics:
        """plan -> rollout, scoring and training (streamed or staged) -> step -> publish."""
        t_start, started_at = time.perf_counter(), time.time()
        stats0 = (self.rt.stats.functions_started, self.rt.stats.warm_starts, self.retries)
        sent0, whole0 = self.state.weight_bytes()
        prompts: list[Prompt] = batch_for_step(
            self.task, step, self.cfg.train.batch_prompts, self.cfg.run.seed
        )
        prompt_ids = [self.tokenizer.encode_prompt(p.text) for p in prompts]
        s, rollout = self.state, self.rollout_stage
        if self.cfg.pipeline.stream:
            out = await StreamedIteration(s, rollout, step, prompts, prompt_ids).run()
        else:
            out = await staged_iteration(s, rollout, step, prompts, prompt_ids)
        assert out.train is not None and out.published is not None  # both paths set them
        if out.train.replayed:
            log.warning(
                "the trainer came back cold without its last %d step(s) on disk: replayed them",
                out.train.replayed,
            )
        s.stepped(TRAINER, out.step_args, out.train)
        if out.critic is not None:
            s.stepped(CRITIC, out.critic_args, out.critic)
        s.publish(out.published)
        self.last_lengths = self._lengths(prompts, prompt_ids, out)
        self.last_scored = Scored(
            prompts=prompts, response_ids=out.batch.response_ids, rewards=out.rewards.tolist()
        )
        metrics = self._metrics(step, out, stats0, time.perf_counter() - t_start)
        metrics.started_at = started_at
        if self.rt.cluster is not None:
            sent, whole = self.state.weight_bytes()
            metrics.weight_bytes = {"sent": sent - sent0, "whole": whole - whole0}
        return metrics

    def _lengths(
        self, prompts: list[Prompt], prompt_ids: list[list[int]], out: Outcome
    ) -> list[dict[str, Any]]:
        """Per-prompt response lengths: the trace that benchmarks/scaling.py replays (--trace)."""
        g, ids = self.cfg.train.group_size, out.batch.response_ids
        return [
            {"prompt_id": q.id, "lengths": [len(r) for r in ids[i * g : (i + 1) * g]],
             "prompt_tokens": len(prompt_ids[i]), "max_new_tokens": self.cfg.rollout.max_new_tokens}
            for i, q in enumerate(prompts)
        ]  # fmt: skip

    def _metrics(
        self, step: int, out: Outcome, stats0: tuple[int, int, int], seconds: float
    ) -> IterationMetrics:
        cfg, rollout, train = self.cfg, out.rollout, out.train
        assert train is not None
        lengths = [len(r) for r in out.batch.response_ids]
        functions = {
            "rollout": rollout.functions + rollout.resume_functions,
            "reward": 1,
            "train": cfg.train.slots,  # a sharded trainer's gang counts every rank
        }
        if cfg.train.uses_reference:
            functions["reference"] = cfg.train.reference_slots  # a gang counts every rank
        if cfg.train.uses_critic:
            functions["critic"] = 2 * cfg.train.critic_slots  # values, then the update
        rewards = out.rewards
        return IterationMetrics(
            iteration=step,
            version=self.version,
            reward_mean=float(rewards.mean()),
            reward_std=float(rewards.std()) if len(rewards) > 1 else 0.0,
            response_len_mean=sum(lengths) / len(lengths),
            response_len_max=max(lengths),
            samples=len(lengths),
            loss=train.loss, kl=train.kl, clip_frac=train.clip_frac, grad_norm=train.grad_norm,
            value_loss=out.critic.value_loss if out.critic is not None else None,
            stage_seconds=out.times,
            busy_seconds=out.busy,
            overlapped_seconds=out.overlapped,
            after_rollout=out.after_rollout,
            trained_open=out.trained_open,
            streamed=cfg.pipeline.stream,
            tokens={
                "prefill": rollout.prefill_tokens,
                "prefill_saved": rollout.prefill_saved,
                "decode": rollout.decode_tokens,
                "train": sum(lengths),
            },
            functions=functions,
            cold_starts=self.rt.stats.functions_started - stats0[0],
            warm_starts=self.rt.stats.warm_starts - stats0[1],
            retries=self.retries - stats0[2],
            replayed=train.replayed,
            scaling=_scaling_row(rollout),
            seconds=seconds,
        )  # fmt: skip


def _scaling_row(rollout: RolloutOutcome) -> dict[str, Any]:
    """The rollout plan: policy, functions, cuts, predicted vs actual time and dollars."""
    return {
        "policy": rollout.policy,
        "functions": rollout.functions,
        "migrated": rollout.migrated,
        # functions that continued them: running ones that took them in, plus any
        # started only to resume what none took
        "resumed": rollout.resumed,
        "resume_functions": rollout.resume_functions,
        # how the cut sequences moved (rollout_stage.py): KV shipped vs re-prefilled
        "ship_kv_migrations": rollout.ship_kv_migrations,
        "reprefill_migrations": rollout.reprefill_migrations,
        "kv_shipped_tokens": rollout.kv_shipped_tokens,
        "reprefill_tokens": rollout.reprefill_tokens,
        "predicted_seconds": rollout.predicted_seconds,
        "seconds": rollout.seconds,
        "predicted_usd": rollout.predicted_usd,
        "usd": rollout.usd,
        "finished_at": rollout.finished_at,  # each generate function's end, from the start
        "decode": rollout.decode,  # each call's decode steps and seconds, in reply order
        "cut_decisions": msgspec.to_builtins(rollout.cut_decisions),  # cut_controller.py
    }
