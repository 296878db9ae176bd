"""The rollout stage as the pipeline runs it: plan (scaler) -> generate on k functions, with
cuts as the plan makes them -> observe (the scaler learns lengths and speeds).

The stage starts, runs and releases the functions (each on a lease that is retried when its
function dies, ``RunState.with_function``); the cut-and-migrate controller
(:mod:`rlhfless.stages.cut_controller`) decides cuts and moves cut sequences between them; the
batch and, when the iteration streams, the hand-on of complete groups are
:mod:`rlhfless.stages.rollout_batch`. Sequences that no running function takes (all were ending)
are resumed together on one function afterwards.

A cut sequence's state moves as its KV cache or by re-prefill at the receiver, whichever
:class:`~rlhfless.scaling.transfer.TransferParams` says is faster (:meth:`transfer`: KV bytes
per token from the model config, bandwidth and latency from ``[rollout]``, the prefill rate the
scaler has measured); the outcome counts both.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from rlhfless.adapters.decode import fold, row_seed
from rlhfless.scaling import Scaler, TransferParams, kv_bytes_per_token
from rlhfless.scaling.curve import plan_usd
from rlhfless.stages.cut_controller import CutController, CutDecision, Moves
from rlhfless.stages.protocol import ROLLOUT, CutRow, GenerateReply, reply
from rlhfless.stages.rollout_batch import GroupStream, RolloutBatch
from rlhfless.stages.side_calls import SideCalls

if TYPE_CHECKING:
    from rlhfless.scaling.policy import RolloutPlan
    from rlhfless.stages.groups import GroupSink
    from rlhfless.stages.run_state import RunState
    from rlhfless.stages.tasks import Prompt

curve_log = logging.getLogger("rlhfless.rollout.curve")  # scaling.show_curve
SCALER_STATE = "scaler.json"  # in the run's state dir: what a checkpoint keeps of the scaler


# What RolloutActor answers to the calls beside a generate when none runs (stages/side_calls.py).
IDLE_ANSWERS: dict[str, Any] = {
    "take_finished": [],
    "progress": None,
    "admit": False,
    "cut_now": False,
}


class RolloutOutcome(msgspec.Struct, kw_only=True):
    response_ids: list[list[int]]  # group-major, sample g of prompt i at i * G + g
    logprobs: list[Any]
    finish: list[str]
    prefill_tokens: int
    prefill_saved: int = 0  # tokens of a batch-wide common prefix not prefilled again
    decode_tokens: int
    functions: int  # generate functions (the resume function, if any, is counted in `resumed`)
    migrated: int  # sequences cut and continued on another function
    # Functions that continued cut sequences: generate functions that took them into their
    # running batch, plus a resume function for any that none took.
    resumed: int
    resume_functions: int = 0  # of those, functions started only to resume (none took them)
    # How the cut sequences moved: migrations (one per cutting function) by method, and the
    # state tokens that arrived as a shipped KV cache vs were re-prefilled where they continued.
    ship_kv_migrations: int = 0
    reprefill_migrations: int = 0
    kv_shipped_tokens: int = 0
    reprefill_tokens: int = 0
    policy: str
    predicted_seconds: float  # the scaler's makespan (incl. cold starts it expected)
    predicted_usd: float
    seconds: float  # measured makespan of the stage
    usd: float  # the stage's function leases priced under the scaler's cost model
    function_seconds: float = 0.0  # the stage's function leases added up (spawn to release)
    # Seconds from the stage's start to each generate function's end, in order: the rollout's
    # tail is what runs after the first of them (what a streamed iteration fills).
    finished_at: list[float] = []
    # Each generate / resume call's decode steps and seconds, in the order they replied: how
    # fast each function decoded (a tail that decodes slower beside other work shows here).
    decode: list[tuple[int, float]] = []
    cut_decisions: list[CutDecision] = []  # every poll that cut, and what its estimates rested on


class _Call:
    """One rollout's moving parts: what each function runs, and what has come back."""

    def __init__(
        self, step: int, prompt_ids: list[list[int]], groups: list[list[int]], g: int,
        base_seed: int, sink: GroupSink | None,
    ) -> None:  # fmt: skip
        self.step = step
        self.prompt_ids = prompt_ids
        self.groups = groups  # function index -> its prompts' rows
        self.owners = [[i * g + s for i in rows for s in range(g)] for rows in groups]
        # A sample's sampling key follows its index in the batch, not the function or row it is
        # given: the same samples whatever k, assignment or cut.
        self.keys = [[fold(row_seed(base_seed, k)) for k in own] for own in self.owners]
        self.batch = RolloutBatch(len(prompt_ids) * g)
        if sink is not None:
            self.batch.stream = GroupStream(sink, len(prompt_ids), g)
        self.running: dict[int, Any] = {}  # function index -> SideCalls, while its generate runs
        self.leases: list[tuple[float, bool]] = []
        self.started: list[int] = []  # pids, as functions start
        self.ends: list[float] = []  # seconds from the start to each generate's reply


def seed_of(*parts: object) -> int:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF


class RolloutStage:
    def __init__(self, state: RunState) -> None:
        self.p = state  # settings, the runtime's functions, the weights to load
        cfg = state.cfg
        kind, slots = state.rt.devices.kind, cfg.rollout.functions
        saved = state.state_dir / SCALER_STATE
        if cfg.run.resume and saved.is_file():  # restored from the checkpoint with the roles
            self.scaler = Scaler.from_dict(
                json.loads(saved.read_bytes()), cfg.scaling, slots, kind,
                max_new_tokens=cfg.rollout.max_new_tokens,
            )  # fmt: skip
        else:
            self.scaler = Scaler(
                cfg.scaling,
                slots=slots,
                device_kind=kind,
                max_new_tokens=cfg.rollout.max_new_tokens,
            )
        self.weight_loads: list[float] = []
        self._kv_bytes: float | None = None
        if cfg.scaling.show_curve:  # INFO from this logger only, whatever the root's level
            curve_log.setLevel(logging.INFO)

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
        self,
        step: int,
        prompts: list[Prompt],
        prompt_ids: list[list[int]],
        sink: GroupSink | None = None,
    ) -> RolloutOutcome:
        """``sink``: hand each complete group on as soon as it is (a streamed iteration)."""
        try:
            return await self._run(step, prompts, prompt_ids, sink)
        finally:
            if sink is not None:
                sink.close()

    async def _run(
        self,
        step: int,
        prompts: list[Prompt],
        prompt_ids: list[list[int]],
        sink: GroupSink | None,
    ) -> RolloutOutcome:
        p, g = self.p, self.p.cfg.train.group_size
        t0 = time.perf_counter()
        plan = self._plan(step, prompts, prompt_ids)
        groups = [grp for grp in plan.groups if grp]
        # Cutting pays only when stragglers of several functions can consolidate on fewer.
        cut = plan.cut_threshold if plan.cut != "none" and len(groups) > 1 else None
        cold0 = len(p.rt.stats.cold_start_s)
        self.weight_loads = []
        call = _Call(step, prompt_ids, groups, g, seed_of(p.cfg.run.seed, step), sink)
        # Receivers are tried longest predicted work first: they run long enough anyway.
        work = [sum(plan.predicted_lengths[i] for i in rows) for rows in groups]
        cuts = CutController(self.scaler, g, prompt_ids, call.owners, work, call.running)
        await self._generate(call, cuts, cut is not None, [q.id for q in prompts], sink, t0)
        await self._resume_left(call, cuts.moves)
        if call.batch.stream is not None:
            call.batch.stream.settle(call.batch)
        seconds = time.perf_counter() - t0
        self._observe(prompts, call.batch, cold0, plan, seconds)
        return self._outcome(plan, call, cuts, seconds)

    def _plan(self, step: int, prompts: list[Prompt], prompt_ids: list[list[int]]) -> RolloutPlan:
        p = self.p
        # The rollout functions the runtime holds warm now (the last iteration's, unless their
        # keep-alive ran out or another function evicted them): the plan prices them by the
        # second and without a cold start.
        warm = p.warm_count(ROLLOUT, self.actor_args())
        g = p.cfg.train.group_size
        # Cuts are planned with the costs this stage executes them with (re-prefill only when
        # KV never ships: vLLM, or no link).
        costs = self.transfer() or TransferParams(
            bandwidth_bytes_per_s=0.0,
            prefill_tokens_per_s=self.scaler.throughput.params().prefill_tokens_per_s,
        )
        plan = self.scaler.plan([q.id for q in prompts], prompt_ids, g, warm=warm, transfer=costs)
        if p.cfg.scaling.show_curve and plan.decision is not None:
            curve_log.info("iteration %d, %d warm:\n%s", step, warm, plan.decision.render())
        return plan

    async def _generate(
        self, call: _Call, cuts: CutController, cutting: bool, prompt_keys: list[Any],
        sink: GroupSink | None, t0: float,
    ) -> None:  # fmt: skip
        """Run every function of the plan; the cut controller and the stream's poll beside them."""
        transfer = self.transfer() if cutting else None
        ship_kv = msgspec.to_builtins(transfer) if transfer is not None else None
        tasks = {
            asyncio.create_task(self._function(call, i, cutting, ship_kv, sink is not None)): i
            for i in range(len(call.groups))
        }
        beside: list[asyncio.Task[None]] = []
        if cutting:
            beside.append(asyncio.create_task(cuts.watch(prompt_keys, t0)))
        stream = call.batch.stream
        if sink is not None and stream is not None:
            sink.started(len(call.groups))
            if self.p.cfg.rollout.engine == "hf":  # vLLM decodes inside the call: its groups
                every = self.p.cfg.pipeline.stream_poll_s  # come with its reply
                beside.append(asyncio.create_task(stream.poll(call.running, every)))
        try:
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    index = tasks.pop(task)
                    await self._collect(call, cuts, index, task.result(), sink, t0)
        finally:
            pending: list[asyncio.Task[Any]] = [*tasks, *beside]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _function(
        self, call: _Call, index: int, join: bool, ship_kv: Any, stream: bool
    ) -> GenerateReply:
        """Function ``index``'s share of the batch, on a leased function (retried if it dies)."""
        p, cfg, g = self.p, self.p.cfg.rollout, self.p.cfg.train.group_size
        rows = call.groups[index]

        async def on(h: Any) -> GenerateReply:
            call.started.append(h.pid)
            if p.on_rollout_started is not None and len(call.started) == len(call.groups):
                p.on_rollout_started(list(call.started))
            await self._prepare(h)
            side = call.running[index] = SideCalls(h, IDLE_ANSWERS)
            try:  # cuts are the controller's: none is decided inside a function
                return reply(await h.generate(
                    [call.prompt_ids[i] for i in rows], g, cfg.max_new_tokens, cfg.temperature,
                    seed_of(p.cfg.run.seed, call.step, index), cfg.shared_prefix, cfg.greedy,
                    None, ship_kv=ship_kv, join=join, keys=call.keys[index], stream=stream,
                    ids=call.owners[index],
                ), GenerateReply)  # fmt: skip
            finally:
                call.running.pop(index, None)
                side.close()
                await side.quiet()  # then release: a call in flight would retire it (cold)

        return await p.with_function(ROLLOUT, self.actor_args(), "rollout", on, leases=call.leases)

    async def _collect(
        self, call: _Call, cuts: CutController, index: int, part: GenerateReply,
        sink: GroupSink | None, t0: float,
    ) -> None:  # fmt: skip
        """Function ``index`` replied: take its samples; hand any it was cut from over."""
        self._check_version(part)
        call.batch.calls.append(part)
        call.ends.append(time.perf_counter() - t0)
        stragglers = call.batch.absorb(part, call.owners[index])
        if sink is not None:
            sink.function_done()
        if stragglers:
            await cuts.hand_over(cuts.rows(stragglers, part, call.batch))

    async def _resume_left(self, call: _Call, moves: Moves) -> None:
        """Cut sequences taken by no one (or by a function that died since): on one function."""
        left = moves.unfinished(call.batch.finish)
        if not left:
            return
        rows = [moves.rows[k] for k in left]
        resumed = await self._resume(call.step, call.prompt_ids, rows, call.leases)
        self._check_version(resumed)
        call.batch.calls.append(resumed)
        call.batch.absorb(msgspec.structs.replace(resumed, joined=list(left)), [])
        moves.resumed += 1
        moves.reprefill_tokens += resumed.prefill_tokens

    def _observe(
        self, prompts: list[Prompt], batch: RolloutBatch, cold0: int, plan: RolloutPlan,
        seconds: float,
    ) -> None:  # fmt: skip
        """What the scaler learns from this rollout: lengths, speeds, cold starts, makespan."""
        g, calls = self.p.cfg.train.group_size, batch.calls
        self.scaler.observe(
            [q.id for q in prompts],
            [[len(batch.response_ids[i * g + s]) for s in range(g)] for i in range(len(prompts))],
            decode=[(c.steps, c.decode_tokens, c.decode_seconds) for c in calls if c.steps],
            prefill=[(c.prefill_tokens, c.prefill_seconds) for c in calls],
            cold_starts=self.p.rt.stats.cold_start_s[cold0:],
            weight_loads=self.weight_loads,
        )

    def _outcome(
        self, plan: RolloutPlan, call: _Call, cuts: CutController, seconds: float
    ) -> RolloutOutcome:
        moves = cuts.moves
        batch, calls = call.batch, call.batch.calls
        return RolloutOutcome(
            response_ids=batch.response_ids, logprobs=batch.logprobs, finish=batch.finish,
            prefill_tokens=sum(c.prefill_tokens for c in calls),
            prefill_saved=sum(c.prefill_saved for c in calls),
            decode_tokens=sum(c.decode_tokens for c in calls),
            functions=len(call.groups), migrated=len(moves.rows),
            resumed=len(moves.receivers) + moves.resumed, resume_functions=moves.resumed,
            ship_kv_migrations=moves.methods.count("ship_kv"),
            reprefill_migrations=moves.methods.count("reprefill"),
            kv_shipped_tokens=sum(c.kv_tokens for c in calls),
            reprefill_tokens=moves.reprefill_tokens + sum(c.joined_prefill for c in calls),
            policy=plan.policy, predicted_seconds=plan.predicted_seconds,
            predicted_usd=plan.predicted_usd, seconds=seconds, usd=self._price(call.leases),
            function_seconds=sum(t for t, _ in call.leases), finished_at=call.ends,
            decode=[(c.steps, c.decode_seconds) for c in calls], cut_decisions=cuts.decisions,
        )  # fmt: skip

    async def _resume(
        self, step: int, prompt_ids: list[list[int]], rows: list[CutRow],
        leases: list[tuple[float, bool]],
    ) -> GenerateReply:  # fmt: skip
        """Continue handed-over ``rows`` (``CutController.rows``) that no running function took, together
        on one function: from their shipped caches and sampling keys where they have them."""
        p, cfg, g = self.p, self.p.cfg.rollout, self.p.cfg.train.group_size
        partial = [
            {
                "prompt_index": r.key // g,
                "token_ids": r.token_ids,
                "logprobs": r.logprobs,
                "finish_reason": "cut",
            }
            for r in rows
        ]
        kw = {
            name: [getattr(r, name) for r in rows]
            for name in ("kv", "rng")
            if any(getattr(r, name) is not None for r in rows)
        }

        async def work(h: Any) -> GenerateReply:
            await self._prepare(h)
            return reply(await h.resume(
                prompt_ids, partial, cfg.max_new_tokens, cfg.temperature,
                seed_of(p.cfg.run.seed, step, "resume"), cfg.greedy, **kw,
            ), GenerateReply)  # fmt: skip

        return await p.with_function(ROLLOUT, self.actor_args(), "rollout", work, leases=leases)

    def _check_version(self, part: GenerateReply) -> None:
        if part.version != self.p.version:  # never mix weights versions in one batch
            raise RuntimeError(f"rollout served version {part.version}, expected {self.p.version}")

    def _price(self, leases: list[tuple[float, bool]]) -> float:
        """The stage's leases under the scaler's cost model: a cold lease is a new function life
        (minimum charge and all); a warm one extends a life already paid for, second by second.
        Warm-pool idle time between iterations is not in this figure (the run's ledger has it).
        """
        model, kind = self.scaler.model, self.scaler.device_kind
        warm = {i for i, (_, w) in enumerate(leases) if w}
        return plan_usd(model, kind, [(0.0, seconds, 0.0) for seconds, _ in leases], warm)


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
