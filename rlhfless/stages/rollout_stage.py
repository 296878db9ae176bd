"""The rollout stage as the pipeline runs it: plan (scaler) -> generate on k functions ->
resume cut sequences on fewer functions -> observe (the scaler learns lengths and speeds).

A cut function's sequences move to the resume function either as their KV caches or by
re-prefill there, whichever :class:`~rlhfless.scaling.transfer.TransferParams` says is faster
(:meth:`transfer`: KV bytes per token from the model config, bandwidth and latency from
``[rollout]``, the prefill rate the scaler has measured); the outcome counts both.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from rlhfless.cost_models import Lifetime
from rlhfless.scaling import Scaler, TransferParams, kv_bytes_per_token

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
    # How the cut sequences moved: migrations (one per cutting function) by method, and the
    # state tokens that arrived as a shipped KV cache vs were re-prefilled on the resume function.
    ship_kv_migrations: int = 0
    reprefill_migrations: int = 0
    kv_shipped_tokens: int = 0
    reprefill_tokens: int = 0
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
        self._kv_bytes: float | None = None
        self.scaler.transfer_source = self.transfer  # plan cuts with the costs executed below

    def transfer(self) -> TransferParams | None:
        """Ship-KV vs re-prefill costs for this run's model; None: never ship (vLLM, bandwidth 0)."""
        cfg = self.p.cfg.rollout
        if cfg.engine != "hf" or cfg.kv_bandwidth_bytes_per_s <= 0:
            return None
        if self._kv_bytes is None:
            self._kv_bytes = model_kv_bytes_per_token(self.p.model_dir, self.p.cfg.model.dtype)
        return TransferParams(
            kv_bytes_per_token=self._kv_bytes,
            bandwidth_bytes_per_s=cfg.kv_bandwidth_bytes_per_s,
            latency_seconds=cfg.kv_latency_s,
            prefill_tokens_per_s=self.scaler.throughput.params().prefill_tokens_per_s,
        )

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
        transfer = self.transfer() if cut is not None else None
        ship_kv = msgspec.to_builtins(transfer) if transfer is not None else None

        async def run_function(index: int, rows: list[int]) -> dict[str, Any]:
            async def work(h: Any) -> dict[str, Any]:
                started.append(h.pid)
                if p.on_rollout_started is not None and len(started) == len(groups):
                    p.on_rollout_started(list(started))
                await self._prepare(h)
                return await h.generate(
                    [prompt_ids[i] for i in rows], g, cfg.max_new_tokens, cfg.temperature,
                    seed_of(p.cfg.run.seed, step, index), cfg.shared_prefix, cfg.greedy, cut,
                    ship_kv=ship_kv,
                )  # fmt: skip

            return await p._with_function(ROLLOUT, args, "rollout", work, leases=leases)

        parts = await asyncio.gather(*(run_function(i, rows) for i, rows in enumerate(groups)))
        n = len(prompt_ids) * g
        response_ids: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[Any] = [None] * n
        finish = [""] * n
        cut_at: list[int] = []  # global sample index of every cut sequence
        kv_at: dict[int, Any] = {}  # global sample index -> its shipped KV cache
        methods: list[str] = []  # one per migration (a function that cut)
        for rows, part in zip(groups, parts, strict=True):
            self._check_version(part)
            move = part.get("migration")
            if move is not None:
                methods.append(move["method"])
            for j, (ids, lp, why) in enumerate(
                zip(part["response_ids"], part["logprobs"], part["finish"], strict=True)
            ):
                k = rows[j // g] * g + j % g
                response_ids[k], logprobs[k], finish[k] = ids, lp, why
                if why == "cut":
                    cut_at.append(k)
                    if move is not None and move["kv"] is not None:
                        kv_at[k] = move["kv"][j]
        extra = [parts[0]] if not cut_at else []
        if cut_at:  # consolidate every function's stragglers on one function; the rest are free
            kv = [kv_at.get(k) for k in cut_at] if kv_at else None
            resumed = await self._resume(
                step, prompt_ids, cut_at, response_ids, logprobs, leases, kv
            )
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
            ship_kv_migrations=methods.count("ship_kv"),
            reprefill_migrations=methods.count("reprefill"),
            kv_shipped_tokens=extra[0].get("kv_tokens", 0) if cut_at else 0,
            reprefill_tokens=extra[0]["prefill_tokens"] if cut_at else 0,
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
        kv: list[Any] | None = None,
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
                **({"kv": kv} if kv is not None else {}),
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


def model_kv_bytes_per_token(model_dir: str | Path, dtype: str) -> float:
    """KV cache bytes per token of the model in ``model_dir`` (its config.json) at ``dtype``."""
    c = json.loads((Path(model_dir) / "config.json").read_text())
    c = c.get("text_config", c)  # multimodal configs nest the language model's
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    return kv_bytes_per_token(
        c["num_hidden_layers"],
        c.get("num_key_value_heads") or heads,
        head_dim,
        2 if dtype in ("bfloat16", "float16") else 4,
    )
