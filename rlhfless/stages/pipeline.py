"""One synchronous RLHF iteration on the runtime, every stage in functions started on demand.

    plan -> rollout on N functions -> reward || reference || critic -> advantages -> train
         -> publish weights

Each stage spawns its functions (warm from the pool when one is kept alive), calls them, and
releases them as soon as the stage is done. A function that dies mid-stage has its unfinished
work re-run on a new function, so an iteration never loses a sample.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import torch

from rlhfless.adapters.hf import load_tokenizer
from rlhfless.runtime import ActorInitError, FunctionDied, Runtime
from rlhfless.stages import algorithms as alg
from rlhfless.stages.common import RolloutBatch, atomic_file_write, pad_rows, task_from_config
from rlhfless.stages.config import Config
from rlhfless.stages.rollout_stage import SCALER_STATE, RolloutStage
from rlhfless.stages.tasks import Prompt, batch_for_step

log = logging.getLogger("rlhfless.pipeline")
R = TypeVar("R")

ROLLOUT = "rlhfless.stages.rollout:RolloutActor"
REWARD = "rlhfless.stages.reward:RewardActor"
REFERENCE = "rlhfless.stages.reference:ReferenceActor"
TRAINER = "rlhfless.stages.trainer:TrainerActor"
CRITIC = "rlhfless.stages.trainer:CriticActor"
MAX_RETRIES = 2  # re-runs of one unit of work after its function died


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
    stage_seconds: dict[str, float]  # wall time per stage
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


class Pipeline:
    """The RLHF job on a runtime. Embed it: create a Runtime, then call :meth:`run_iteration`."""

    def __init__(
        self, runtime: Runtime, config: Config, model_dir: str | Path, run_dir: str | Path
    ) -> None:
        self.rt = runtime
        self.cfg = config
        self.model_dir = str(model_dir)
        self.run_dir = Path(run_dir)
        self.state_dir = self.run_dir / "state"
        self.task = task_from_config(config.task, config.rollout.max_new_tokens)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.version = 0
        # None: the model dir's weights; a dict of tensors; or a node-local file's path.
        self.weights: dict[str, torch.Tensor] | str | None = None
        # Per role (trainer, critic): the node whose disk holds its hand-over state; later steps
        # go back there. If it is lost, placement picks another; the version check then says
        # whether run_dir/state is shared storage that the new node can read.
        self.homes: dict[str, str] = {}
        # Per role: the steps whose hand-over state may not be on disk yet (written behind the
        # step, stages/handover.py), as {"version", "args"}; sent along with the role's next
        # call so that a function that came back cold replays them instead of losing them.
        self.unsaved: dict[str, list[dict[str, Any]]] = {TRAINER: [], CRITIC: []}
        self.retries = 0
        self.on_rollout_started: Callable[[list[int]], Any] | None = None  # test hook: pids
        self.rollout_stage = RolloutStage(self)
        self.last_lengths: list[dict[str, Any]] = []

    async def restore_weights(self) -> None:
        """After a resume: the trainer loads the restored state; rollouts get its weights."""
        published = await self._with_function(
            TRAINER,
            self._trainer_args(),
            "train",
            lambda h: self._at_home(TRAINER, h, h.weights(*self._weights_route())),
            threads=self._trainer_threads(),
            node=self._home(TRAINER),
        )
        self._publish(published)

    def _weights_route(self) -> tuple[str, int]:
        """Where the trainer puts weights larger than rollout.weights_file_mb (node-local file).

        Across machines a file on the trainer's node is no use elsewhere: always inline, and
        the runtime distributes them node by node.
        """
        if self.rt.cluster is not None:
            return str(self.run_dir / "weights"), 1 << 62
        return str(self.run_dir / "weights"), self.cfg.rollout.weights_file_mb << 20

    def _publish(self, published: dict[str, Any]) -> None:
        self.version = published["version"]
        if self.rt.cluster is not None:
            self.rt.publish_weights(self.version, published["state_dict"])
        else:
            self.weights = published.get("path") or published["state_dict"]

    @property
    def weights_cached(self) -> bool:
        """Across machines the runtime sends each version once per node into that node's cache
        (rt.publish_weights) and rollout functions load it there: no per-function copies."""
        return self.rt.cluster is not None and self.version > 0

    def _home(self, role: str) -> str | None:
        return self.homes.get(role)  # _with_function lets placement pick if it is gone

    async def _at_home(self, role: str, h: Any, result: Awaitable[R]) -> R:
        self.homes[role] = h.node
        return await result

    def _trainer_threads(self) -> int:
        return self.cfg.runtime.trainer_threads or self.rt.devices.cores

    def _trainer_args(self) -> tuple[Any, ...]:
        train_cfg = msgspec.to_builtins(self.cfg.train)
        return (self.model_dir, train_cfg, str(self.state_dir / "policy"), self.cfg.model.dtype)

    def _critic_args(self) -> tuple[Any, ...]:
        train_cfg = msgspec.to_builtins(self.cfg.train)
        return (self.model_dir, train_cfg, str(self.state_dir / "critic"), self.cfg.model.dtype)

    def _stepped(self, role: str, args: dict[str, Any], stats: dict[str, Any]) -> None:
        """Keep a step's inputs until a reply says its state is durable."""
        entries = [*self.unsaved[role], {"version": self.version + 1, "args": args}]
        self.unsaved[role] = [e for e in entries if e["version"] > stats["durable_version"]]

    async def persist_state(self) -> None:
        """Make every role's hand-over state durable at the run's version: a checkpoint copies
        ``run_dir/state`` next. A role's function that died before its write landed is
        replaced by one that replays the missing steps."""
        roles = [(TRAINER, self._trainer_args(), "train", self._trainer_threads())]
        if self.cfg.train.uses_critic:
            roles.append((CRITIC, self._critic_args(), "critic", None))
        for role, args, stage, threads in roles:
            await self._with_function(
                role, args, stage,
                lambda h, role=role: self._at_home(
                    role, h, h.persist(self.version, self.unsaved[role])
                ),
                threads=threads, node=self._home(role),
            )  # fmt: skip
            self.unsaved[role] = []
        # The scaler's length history and calibrated speeds: a resumed run plans with them
        # instead of the priors (a checkpoint copies this file with the roles' state).
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = msgspec.json.encode(self.rollout_stage.scaler.to_dict())
        atomic_file_write(self.state_dir / SCALER_STATE, state)

    # ------------------------------------------------------------------ stage helpers

    async def _with_function(
        self,
        actor: str,
        args: tuple[Any, ...],
        stage: str,
        work: Callable[[Any], Awaitable[R]],
        threads: int | None = None,
        leases: list[tuple[float, bool]] | None = None,
        node: str | None = None,
    ) -> R:
        """Spawn (or reuse warm), run ``work(handle)``, release; re-run on a new function if it dies.

        ``leases`` collects (seconds from spawn to release, warm?) per function used, to price
        the stage as it ran.
        """
        for attempt in range(MAX_RETRIES + 1):
            t0 = time.perf_counter()
            if node is not None and node not in self.rt.nodes():
                node = None  # the pinned node is gone: placement picks
            handle = None
            try:  # a node lost while the function starts is a death too (NodeLost)
                handle = await self.rt.spawn(
                    actor, *args, stage=stage, threads=threads, node=node,
                    weights=actor == ROLLOUT,  # only rollouts read the published weights
                )  # fmt: skip
                return await work(handle)
            except FunctionDied as exc:
                if attempt == MAX_RETRIES or _will_fail_again(exc):
                    raise
                self.retries += 1
                log.warning(
                    "%s function %s died (%s); re-running its work",
                    stage,
                    exc.function_id,
                    exc.exit_code,
                )
            finally:
                if handle is not None:
                    await handle.release()
                    if leases is not None:
                        leases.append((time.perf_counter() - t0, handle.warm))
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ one iteration

    async def run_iteration(self, step: int) -> IterationMetrics:
        cfg, g = self.cfg, self.cfg.train.group_size
        t_start = time.perf_counter()
        stats0 = (self.rt.stats.functions_started, self.rt.stats.warm_starts, self.retries)
        times: dict[str, float] = {}
        prompts: list[Prompt] = batch_for_step(
            self.task, step, cfg.train.batch_prompts, cfg.run.seed
        )
        prompt_ids = [self.tokenizer.encode_prompt(p.text) for p in prompts]

        t0 = time.perf_counter()
        rollout = await self.rollout_stage.run(step, prompts, prompt_ids)
        # Per-prompt response lengths: the trace that benchmarks/scaling.py replays (--trace).
        self.last_lengths = [
            {"prompt_id": q.id, "lengths": [len(r) for r in rollout.response_ids[i * g : (i + 1) * g]],
             "prompt_tokens": len(prompt_ids[i]), "max_new_tokens": cfg.rollout.max_new_tokens}
            for i, q in enumerate(prompts)
        ]  # fmt: skip
        times["rollout"] = time.perf_counter() - t0
        batch = RolloutBatch(
            prompt_index=[p.index for p in prompts for _ in range(g)],
            prompt_ids=[ids for ids in prompt_ids for _ in range(g)],
            response_ids=rollout.response_ids,
            logprobs=rollout.logprobs,
            finish=rollout.finish,
            version=self.version,
        )

        # reward || reference || critic values
        t0 = time.perf_counter()
        ppo = cfg.train.algo == "ppo"
        use_ref = cfg.train.uses_reference
        task_cfg = msgspec.to_builtins(cfg.task)

        async def timed(name: str, coro: Awaitable[R]) -> R:
            s = time.perf_counter()
            try:
                return await coro
            finally:
                times[name] = time.perf_counter() - s

        jobs: list[Awaitable[Any]] = [
            timed("reward", self._with_function(
                REWARD, (self.model_dir, task_cfg), "reward",
                lambda h: h.score(batch.prompt_index, batch.response_ids),
            ))
        ]  # fmt: skip
        if use_ref:
            jobs.append(timed("reference", self._with_function(
                REFERENCE, (self.model_dir, cfg.model.dtype), "reference",
                lambda h: h.logprobs(batch.prompt_ids, batch.response_ids, cfg.rollout.temperature),
            )))  # fmt: skip
        if ppo:
            jobs.append(timed("critic", self._with_function(
                CRITIC, self._critic_args(), "critic",
                lambda h: self._at_home(CRITIC, h, h.values(
                    batch.prompt_ids, batch.response_ids,
                    expected_version=self.version, replay=self.unsaved[CRITIC],
                )),
                node=self._home(CRITIC),
            )))  # fmt: skip
        results = await asyncio.gather(*jobs)
        times["score"] = time.perf_counter() - t0
        rewards = torch.tensor(results[0], dtype=torch.float32)
        ref = results[1] if use_ref else None
        old_values = results[-1] if ppo else None

        # advantages (pure functions, here in the controller)
        t0 = time.perf_counter()
        lengths = [len(r) for r in batch.response_ids]
        returns: list[torch.Tensor] | None = None
        if ppo:
            advantages, returns = self._ppo_advantages(rewards, batch, ref, old_values)
        else:
            adv = alg.grpo_advantages(rewards, g, scale_by_std=cfg.train.scale_adv_by_std)
            advantages = [torch.full((n,), float(a)) for a, n in zip(adv, lengths, strict=True)]
        times["advantages"] = time.perf_counter() - t0

        # train (and the critic, for PPO, in parallel), then publish the new weights
        t0 = time.perf_counter()
        trainer_args = self._trainer_args()

        step_args = {
            "prompt_ids": batch.prompt_ids,
            "response_ids": batch.response_ids,
            "old_logprobs": batch.logprobs,
            "advantages": advantages,
            "ref_logprobs": ref,
            "temperature": cfg.rollout.temperature,
        }

        async def train(h: Any) -> tuple[dict[str, float], dict[str, Any]]:
            out = await h.step(
                **step_args, expected_version=self.version, replay=self.unsaved[TRAINER]
            )
            return out, await self._at_home(TRAINER, h, h.weights(*self._weights_route()))

        train_jobs: list[Awaitable[Any]] = [
            self._with_function(
                TRAINER,
                trainer_args,
                "train",
                train,
                threads=self._trainer_threads(),
                node=self._home(TRAINER),
            )
        ]
        if ppo:
            critic_step = {
                "prompt_ids": batch.prompt_ids,
                "response_ids": batch.response_ids,
                "old_values": old_values,
                "returns": returns,
            }
            train_jobs.append(self._with_function(
                CRITIC, self._critic_args(), "critic",
                lambda h: self._at_home(CRITIC, h, h.step(
                    **critic_step, expected_version=self.version, replay=self.unsaved[CRITIC]
                )), node=self._home(CRITIC),
            ))  # fmt: skip
        done = await asyncio.gather(*train_jobs)
        (train_stats, published) = done[0]
        if train_stats["replayed"]:
            log.warning(
                "the trainer came back cold without its last %d step(s) on disk: replayed them",
                train_stats["replayed"],
            )
        self._stepped(TRAINER, step_args, train_stats)
        if ppo:
            self._stepped(CRITIC, critic_step, done[1])
        self._publish(published)
        times["train"] = time.perf_counter() - t0

        started, warm, retries = (
            self.rt.stats.functions_started - stats0[0],
            self.rt.stats.warm_starts - stats0[1],
            self.retries - stats0[2],
        )
        functions = {
            "rollout": rollout.functions + rollout.resume_functions,
            "reward": 1,
            "train": 1,
        }
        if use_ref:
            functions["reference"] = 1
        if ppo:
            functions["critic"] = 2
        return IterationMetrics(
            iteration=step,
            version=self.version,
            reward_mean=float(rewards.mean()),
            reward_std=float(rewards.std()) if len(rewards) > 1 else 0.0,
            response_len_mean=sum(lengths) / len(lengths),
            response_len_max=max(lengths),
            samples=len(lengths),
            loss=train_stats["loss"],
            kl=train_stats["kl"],
            clip_frac=train_stats["clip_frac"],
            grad_norm=train_stats["grad_norm"],
            value_loss=done[1]["value_loss"] if ppo else None,
            stage_seconds=times,
            tokens={
                "prefill": rollout.prefill_tokens,
                "prefill_saved": rollout.prefill_saved,
                "decode": rollout.decode_tokens,
                "train": sum(lengths),
            },
            functions=functions,
            cold_starts=started,
            warm_starts=warm,
            retries=retries,
            replayed=int(train_stats["replayed"]),
            scaling={
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
            },
            seconds=time.perf_counter() - t_start,
        )

    def _ppo_advantages(
        self,
        scores: torch.Tensor,
        batch: RolloutBatch,
        ref: list[torch.Tensor] | None,
        values: list[torch.Tensor] | None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        cfg = self.cfg.train
        lengths = [len(r) for r in batch.response_ids]
        width = max(1, max(lengths))
        mask = torch.zeros(len(lengths), width)
        for i, n in enumerate(lengths):
            mask[i, :n] = 1
        logp = pad_rows(batch.logprobs, width)
        kl = alg.kl_estimate(logp, pad_rows(ref, width), "k1") if ref is not None else None
        token_r = alg.token_rewards(scores, mask, kl, cfg.kl_coef)
        adv, ret = alg.gae(
            token_r,
            pad_rows(values, width) if values else torch.zeros_like(mask),
            mask,
            cfg.gamma,
            cfg.lam,
        )
        adv = alg.masked_whiten(adv, mask)
        return [adv[i, :n] for i, n in enumerate(lengths)], [
            ret[i, :n] for i, n in enumerate(lengths)
        ]


def _will_fail_again(exc: FunctionDied) -> bool:
    """A function whose engine refused its model or settings (EngineError in ``__init__``):
    another one, with the same arguments, would refuse them too."""
    return isinstance(exc, ActorInitError) and exc.remote_type.endswith(".EngineError")
