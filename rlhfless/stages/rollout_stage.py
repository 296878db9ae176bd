"""The rollout stage as the pipeline runs it: plan (scaler) -> generate on k functions ->
resume cut sequences on fewer functions -> observe (the scaler learns lengths and speeds).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import TYPE_CHECKING, Any

import msgspec

from rlhfless.cost_models import Lifetime
from rlhfless.scaling import Scaler

if TYPE_CHECKING:
    from rlhfless.stages.pipeline import Pipeline
    from rlhfless.stages.tasks import Prompt

ROLLOUT = "rlhfless.stages.rollout:RolloutActor"


class RolloutOutcome(msgspec.Struct, kw_only=True):
    response_ids: list[list[int]]  # group-major, sample g of prompt i at i * G + g
    logprobs: list[Any]
    finish: list[str]
    prefill_tokens: int
    prefill_saved: int = 0  # tokens of a batch-wide common prefix not prefilled again
    decode_tokens: int
    functions: int  # generate functions (the resume function, if any, is counted in `resumed`)
    migrated: int  # sequences cut and continued on another function
    resumed: int  # functions that continued cut sequences (0 or 1)
    policy: str
    predicted_seconds: float  # the scaler's makespan (incl. cold starts it expected)
    predicted_usd: float
    seconds: float  # measured makespan of the stage
    usd: float  # the stage's function leases priced under the scaler's cost model


def seed_of(*parts: object) -> int:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF


class RolloutStage:
    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        cfg = pipeline.cfg
        self.scaler = Scaler(
            cfg.scaling, slots=cfg.rollout.functions, device_kind=pipeline.rt.devices.kind
        )
        self.warm = 0  # rollout functions released by the last iteration (likely still warm)
        self.weight_loads: list[float] = []

    def actor_args(self) -> tuple[Any, ...]:
        """RolloutActor's constructor arguments: same arguments, same warm function."""
        cfg = self.p.cfg
        return (self.p.model_dir, cfg.model.dtype, cfg.rollout.engine)

    async def _prepare(self, h: Any) -> None:
        p = self.p
        if (p.weights is not None or p.weights_cached) and await h.version() != p.version:
            t0 = time.perf_counter()
            if p.weights_cached:  # sent to this function's node once by the runtime
                await h.load_cached(p.version)
            else:
                await h.load_weights(p.weights, p.version)
            self.weight_loads.append(time.perf_counter() - t0)

    async def run(
        self, step: int, prompts: list[Prompt], prompt_ids: list[list[int]]
    ) -> RolloutOutcome:
        p, cfg, g = self.p, self.p.cfg.rollout, self.p.cfg.train.group_size
        t0 = time.perf_counter()
        plan = self.scaler.plan([q.id for q in prompts], prompt_ids, g, warm=self.warm)
        groups = [grp for grp in plan.groups if grp]
        # Cutting pays only when stragglers of several functions can consolidate on fewer.
        cut = plan.cut_threshold if plan.cut != "none" and len(groups) > 1 else None
        cold0 = len(p.rt.stats.cold_start_s)
        self.weight_loads: list[float] = []
        leases: list[tuple[float, bool]] = []
        started: list[int] = []
        args = self.actor_args()

        async def run_function(index: int, rows: list[int]) -> dict[str, Any]:
            async def work(h: Any) -> dict[str, Any]:
                started.append(h.pid)
                if p.on_rollout_started is not None and len(started) == len(groups):
                    p.on_rollout_started(list(started))
                await self._prepare(h)
                return await h.generate(
                    [prompt_ids[i] for i in rows], g, cfg.max_new_tokens, cfg.temperature,
                    seed_of(p.cfg.run.seed, step, index), cfg.shared_prefix, cfg.greedy, cut,
                )  # fmt: skip

            return await p._with_function(ROLLOUT, args, "rollout", work, leases=leases)

        parts = await asyncio.gather(*(run_function(i, rows) for i, rows in enumerate(groups)))
        n = len(prompt_ids) * g
        response_ids: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[Any] = [None] * n
        finish = [""] * n
        cut_at: list[int] = []  # global sample index of every cut sequence
        for rows, part in zip(groups, parts, strict=True):
            self._check_version(part)
            for j, (ids, lp, why) in enumerate(
                zip(part["response_ids"], part["logprobs"], part["finish"], strict=True)
            ):
                k = rows[j // g] * g + j % g
                response_ids[k], logprobs[k], finish[k] = ids, lp, why
                if why == "cut":
                    cut_at.append(k)
        extra = [parts[0]] if not cut_at else []
        if cut_at:  # consolidate every function's stragglers on one function; the rest are free
            resumed = await self._resume(step, prompt_ids, cut_at, response_ids, logprobs, leases)
            self._check_version(resumed)
            for k, ids, lp, why in zip(
                cut_at, resumed["response_ids"], resumed["logprobs"], resumed["finish"], strict=True
            ):
                response_ids[k], logprobs[k], finish[k] = ids, lp, why
            extra = [resumed]
        seconds = time.perf_counter() - t0
        calls = [*parts, *(extra if cut_at else [])]
        self.scaler.observe(
            [q.id for q in prompts],
            [[len(response_ids[i * g + s]) for s in range(g)] for i in range(len(prompts))],
            decode=[
                (c["steps"], c["decode_tokens"], c["decode_seconds"]) for c in calls if c["steps"]
            ],
            prefill=[(c["prefill_tokens"], c["prefill_seconds"]) for c in calls],
            cold_starts=p.rt.stats.cold_start_s[cold0:],
            weight_loads=self.weight_loads,
        )
        self.warm = len(groups)
        return RolloutOutcome(
            response_ids=response_ids, logprobs=logprobs, finish=finish,
            prefill_tokens=sum(c["prefill_tokens"] for c in calls),
            prefill_saved=sum(c.get("prefill_saved", 0) for c in calls),
            decode_tokens=sum(c["decode_tokens"] for c in calls),
            functions=len(groups), migrated=len(cut_at), resumed=1 if cut_at else 0,
            policy=plan.policy, predicted_seconds=plan.predicted_seconds, predicted_usd=plan.predicted_usd,
            seconds=seconds, usd=self._price(leases),
        )  # fmt: skip

    async def _resume(
        self,
        step: int,
        prompt_ids: list[list[int]],
        cut_at: list[int],
        response_ids: list[list[int]],
        logprobs: list[Any],
        leases: list[tuple[float, bool]],
    ) -> dict[str, Any]:
        p, cfg, g = self.p, self.p.cfg.rollout, self.p.cfg.train.group_size
        partial = [
            {
                "prompt_index": k // g,
                "token_ids": response_ids[k],
                "logprobs": [float(x) for x in logprobs[k]],
                "finish_reason": "cut",
            }
            for k in cut_at
        ]

        async def work(h: Any) -> dict[str, Any]:
            await self._prepare(h)
            return await h.resume(
                prompt_ids,
                partial,
                cfg.max_new_tokens,
                cfg.temperature,
                seed_of(p.cfg.run.seed, step, "resume"),
                cfg.greedy,
            )

        return await p._with_function(ROLLOUT, self.actor_args(), "rollout", work, leases=leases)

    def _check_version(self, part: dict[str, Any]) -> None:
        if part["version"] != self.p.version:  # never mix weights versions in one batch
            raise RuntimeError(
                f"rollout served version {part['version']}, expected {self.p.version}"
            )

    def _price(self, leases: list[tuple[float, bool]]) -> float:
        """The stage's leases under the scaler's cost model: a cold lease is a new function life
        (minimum charge and all); a warm one extends a life already paid for, second by second.
        Warm-pool idle time between iterations is not in this figure (the run's ledger has it).
        """
        model, kind = self.scaler.model, self.scaler.device_kind
        usd = 0.0
        for seconds, warm in leases:
            if warm:
                usd += model.rate(kind) * seconds
            else:
                usd += model.price(
                    kind, Lifetime.planned(cold_start_seconds=0.0, busy_seconds=seconds)
                ).usd
        return usd
