"""The rollout stage as the pipeline runs it: plan (scaler) -> generate on k functions, with
cuts as the plan makes them -> observe (the scaler learns lengths and speeds).

Cut-and-migrate runs the way the scaler and the simulator model it. While the functions
generate, the controller reads their progress every ``scaling.cut_poll_s`` and asks
``Scaler.migration`` which functions to cut and where each unfinished sequence goes (the
horizon guard included, unless ``scaling.cut_guard = false``). A function told to cut stops at
its next step and returns; its unfinished sequences, tokens so far kept, join the running
batches of their planned receivers (``RolloutActor.admit``, ``adapters/decode.py``), which carry
them to the end with their own rows, and the cut function is released at once. Sequences that no
running function takes (all were ending) are resumed together on one function afterwards.

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
from rlhfless.scaling.curve import life_usd
from rlhfless.scaling.migrate import FunctionProgress, SequenceProgress, cut_due
from rlhfless.scaling.predictor import expected_remaining

if TYPE_CHECKING:
    from rlhfless.stages.pipeline import Pipeline
    from rlhfless.stages.tasks import Prompt

ROLLOUT = "rlhfless.stages.rollout:RolloutActor"
log = logging.getLogger("rlhfless.rollout")
curve_log = logging.getLogger("rlhfless.rollout.curve")  # scaling.show_curve
SCALER_STATE = "scaler.json"  # in the run's state dir: what a checkpoint keeps of the scaler


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


class _Batch:
    """The stage's samples as the functions' replies come in (group-major sample index)."""

    def __init__(self, n: int) -> None:
        self.response_ids: list[list[int]] = [[] for _ in range(n)]
        self.logprobs: list[Any] = [None] * n
        self.finish = [""] * n
        self.calls: list[dict[str, Any]] = []  # every generate / resume reply

    def absorb(self, part: dict[str, Any], own: list[int]) -> list[tuple[int, int]]:
        """Take a reply's samples (own rows, then joiners by key); (key, row) of those cut."""
        keys = [*own, *part.get("joined", [])]
        cut = []
        for r, (k, ids, lp, why) in enumerate(
            zip(keys, part["response_ids"], part["logprobs"], part["finish"], strict=True)
        ):
            self.response_ids[k], self.logprobs[k], self.finish[k] = ids, lp, why
            if why == "cut":
                cut.append((k, r))
        return cut


class _Moves:
    """Cut sequences handed over: where each one is now, and what the moves cost."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}  # key -> the row last handed over
        self.dest: dict[int, int] = {}  # key -> the function the cut's plan sends it to
        self.cutting: set[int] = set()  # functions told to cut: no longer receivers
        self.receivers: set[int] = set()
        self.methods: list[str] = []  # one per hand-over (a function's cut)
        self.resumed = 0  # resume functions started for what no running function took
        self.reprefill_tokens = 0  # state tokens the resume function re-prefilled

    def unfinished(self, batch: _Batch) -> list[int]:
        """Keys still cut once every function replied (nobody took them, or the taker died)."""
        return [k for k in self.rows if batch.finish[k] == "cut"]


def seed_of(*parts: object) -> int:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF


class RolloutStage:
    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        cfg = pipeline.cfg
        kind, slots = pipeline.rt.devices.kind, cfg.rollout.functions
        saved = pipeline.state_dir / SCALER_STATE
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
        self.scaler.transfer_source = self.transfer  # plan cuts with the costs executed below
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
        self, step: int, prompts: list[Prompt], prompt_ids: list[list[int]]
    ) -> RolloutOutcome:
        p, cfg, g = self.p, self.p.cfg.rollout, self.p.cfg.train.group_size
        t0 = time.perf_counter()
        # The rollout functions the runtime holds warm now (the last iteration's, unless their
        # keep-alive ran out or another function evicted them): the plan prices them by the
        # second and without a cold start.
        warm = p.rt.warm_count(ROLLOUT, *self.actor_args())
        plan = self.scaler.plan([q.id for q in prompts], prompt_ids, g, warm=warm)
        if p.cfg.scaling.show_curve and plan.decision is not None:
            curve_log.info("iteration %d, %d warm:\n%s", step, warm, plan.decision.render())
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
        batch = _Batch(len(prompt_ids) * g)
        moves = _Moves()
        running: dict[int, Any] = {}  # function index -> handle, while its generate runs
        tasks: dict[asyncio.Task[dict[str, Any]], int] = {}
        # Receivers are tried longest predicted work first: they run long enough anyway.
        work = [sum(plan.predicted_lengths[i] for i in rows) for rows in groups]
        owners = [[i * g + s for i in rows for s in range(g)] for rows in groups]
        # A sample's sampling key follows its index in the batch, not the function or row it is
        # given: the same samples whatever k, assignment or cut.
        base = seed_of(p.cfg.run.seed, step)
        keys = [[fold(row_seed(base, k)) for k in own] for own in owners]

        async def run_function(index: int, rows: list[int]) -> dict[str, Any]:
            async def on(h: Any) -> dict[str, Any]:
                started.append(h.pid)
                if p.on_rollout_started is not None and len(started) == len(groups):
                    p.on_rollout_started(list(started))
                await self._prepare(h)
                running[index] = h
                try:  # cuts are the controller's (_watch): none is decided inside a function
                    return await h.generate(
                        [prompt_ids[i] for i in rows], g, cfg.max_new_tokens, cfg.temperature,
                        seed_of(p.cfg.run.seed, step, index), cfg.shared_prefix, cfg.greedy, None,
                        ship_kv=ship_kv, join=cut is not None, keys=keys[index],
                    )  # fmt: skip
                finally:
                    running.pop(index, None)

            return await p._with_function(ROLLOUT, args, "rollout", on, leases=leases)

        for i, rows in enumerate(groups):
            tasks[asyncio.create_task(run_function(i, rows))] = i
        watch = None
        if cut is not None:
            watch = asyncio.create_task(
                self._watch(running, owners, prompt_ids, [q.id for q in prompts], moves, t0)
            )
        try:
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    i = tasks.pop(task)
                    part = task.result()
                    self._check_version(part)
                    batch.calls.append(part)
                    stragglers = batch.absorb(part, owners[i])
                    if stragglers:
                        rows = self._rows(step, prompt_ids, stragglers, part, batch)
                        await self._hand_over(rows, running, work, moves)
        finally:
            pending = [*tasks, *([watch] if watch is not None else [])]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        left = moves.unfinished(batch)  # taken by no one, or by a function that died since
        if left:
            resumed = await self._resume(step, prompt_ids, [moves.rows[k] for k in left], leases)
            self._check_version(resumed)
            batch.calls.append(resumed)
            batch.absorb({**resumed, "joined": list(left)}, [])
            moves.resumed += 1
            moves.reprefill_tokens += resumed["prefill_tokens"]
        seconds = time.perf_counter() - t0
        response_ids, calls = batch.response_ids, batch.calls
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
        if plan.predicted_seconds > 0 and seconds > 0:  # the cut guard's clock (Scaler.migration)
            self.scaler.observe_makespan(plan.predicted_seconds, seconds)
        return RolloutOutcome(
            response_ids=response_ids, logprobs=batch.logprobs, finish=batch.finish,
            prefill_tokens=sum(c["prefill_tokens"] for c in calls),
            prefill_saved=sum(c.get("prefill_saved", 0) for c in calls),
            decode_tokens=sum(c["decode_tokens"] for c in calls),
            functions=len(groups), migrated=len(moves.rows),
            resumed=len(moves.receivers) + moves.resumed, resume_functions=moves.resumed,
            ship_kv_migrations=moves.methods.count("ship_kv"),
            reprefill_migrations=moves.methods.count("reprefill"),
            kv_shipped_tokens=sum(c.get("kv_tokens", 0) for c in calls),
            reprefill_tokens=moves.reprefill_tokens + sum(c.get("joined_prefill", 0) for c in calls),
            policy=plan.policy, predicted_seconds=plan.predicted_seconds, predicted_usd=plan.predicted_usd,
            seconds=seconds, usd=self._price(leases), function_seconds=sum(t for t, _ in leases),
        )  # fmt: skip

    def _rows(
        self,
        step: int,
        prompt_ids: list[list[int]],
        stragglers: list[tuple[int, int]],
        part: dict[str, Any],
        batch: _Batch,
    ) -> list[dict[str, Any]]:
        """What another function needs to continue each cut sequence (key, sample row)."""
        g = self.p.cfg.train.group_size
        move = part.get("migration") or {}
        shipped = move.get("kv") if move.get("method") == "ship_kv" else None
        return [
            {
                "key": k,
                "prompt": prompt_ids[k // g],
                "token_ids": batch.response_ids[k],
                "logprobs": [float(x) for x in batch.logprobs[k]],
                "kv": shipped[r] if shipped is not None else None,
                "rng": part["rng"][r] if part.get("rng") else None,
            }
            for k, r in stragglers
        ]

    async def _hand_over(
        self,
        rows: list[dict[str, Any]],
        running: dict[int, Any],
        work: list[float],
        moves: _Moves,
    ) -> None:
        """Into the running batches of functions still generating: where the cut's plan sent
        each sequence, else the one with the longest predicted work. What every one refuses
        (all ending) waits for the resume after the stage."""
        moves.methods.append("ship_kv" if any(r["kv"] is not None for r in rows) else "reprefill")
        by_dest: dict[int | None, list[dict[str, Any]]] = {}
        for row in rows:
            moves.rows[row["key"]] = row
            by_dest.setdefault(moves.dest.pop(row["key"], None), []).append(row)
        for dest, some in by_dest.items():
            order = sorted((i for i in running if i not in moves.cutting), key=lambda i: -work[i])
            if dest in order:
                order.remove(dest)
                order.insert(0, dest)
            for index in order:
                h = running.get(index)
                if h is None:
                    continue
                try:
                    taken = await h.admit(some)
                except Exception as exc:  # it died meanwhile: its own retry does not carry these
                    log.warning("rollout function %s could not take stragglers: %s", index, exc)
                    continue
                if taken:
                    moves.receivers.add(index)
                    break

    async def _watch(
        self,
        running: dict[int, Any],
        owners: list[list[int]],
        prompt_ids: list[list[int]],
        prompt_keys: list[Any],
        moves: _Moves,
        started: float,
    ) -> None:
        """The cut as the scaler plans it (``Scaler.migration``), on the functions' live
        progress: every ``scaling.cut_poll_s`` ask the running functions how far they are, let the
        plan pick functions to cut and where each of their unfinished sequences goes, and cut
        them. Their sequences then join the planned receivers (:meth:`_hand_over`).
        ``started``: when the rollout was requested (``time.perf_counter``), the start of the
        clock the plan's makespan is on."""
        g = self.p.cfg.train.group_size
        kind, tau = self.scaler.cut_in_force()
        # The lengths each prompt's samples may have (the predictor's support): a sequence's
        # expected remaining is E[L - produced | L > produced] over them, as in the simulator.
        support = [self.scaler.predictor.support(k) for k in prompt_keys]
        while True:
            await asyncio.sleep(self.scaler.config.cut_poll_s)
            try:
                await self._cut_once(
                    running, owners, prompt_ids, support, kind, tau, g, moves, started
                )
            except Exception as exc:  # a bad poll must not end cutting for the whole rollout
                log.warning("rollout: planning a cut failed (%r); trying again", exc)

    async def _cut_once(
        self, running: dict[int, Any], owners: list[list[int]], prompt_ids: list[list[int]],
        support: list[list[float]], kind: str, tau: float, g: int, moves: _Moves,
        started: float,
    ) -> None:  # fmt: skip
        """One poll of :meth:`_watch`: read progress, plan, cut."""
        live = {i: h for i, h in running.items() if i not in moves.cutting}
        if len(live) < 2:
            return
        replies = await asyncio.gather(
            *(h.progress() for h in live.values()), return_exceptions=True
        )
        ready = {i: r for i, r in zip(live, replies, strict=True) if isinstance(r, dict)}
        counts = (
            (r["finished"], r["total"], len(r["own"]) + len(r["joined"])) for r in ready.values()
        )
        if not cut_due(kind, tau, counts):  # nothing to plan yet: keep the CPU for the functions
            return
        max_batch = self.scaler.throughput.params().max_batch
        now = [
            self._progress(i, r, owners[i], prompt_ids, support, g, max_batch)
            for i, r in ready.items()
        ]
        plan = self.scaler.migration(now, elapsed=time.perf_counter() - started)
        for fid in plan.cut:
            h = running.get(int(fid))
            if h is not None and await h.cut_now():
                moves.cutting.add(int(fid))
                moves.dest.update({m.seq_id: int(m.dest) for m in plan.moves if m.source == fid})

    def _progress(
        self,
        index: int,
        reply: dict[str, Any],
        own: list[int],
        prompt_ids: list[list[int]],
        support: list[list[float]],
        g: int,
        max_batch: int,
    ) -> FunctionProgress:
        def seq(key: int, produced: int) -> SequenceProgress:
            left = expected_remaining(
                support[key // g], produced, max_new_tokens=self.scaler.max_new_tokens
            )
            return SequenceProgress(
                seq_id=key, prompt_tokens=len(prompt_ids[key // g]), produced=produced,
                predicted_remaining=left,
            )  # fmt: skip

        unfinished = [seq(own[r], m) for r, m in reply["own"]]
        unfinished += [seq(key, m) for key, m in reply["joined"]]
        return FunctionProgress(
            function_id=str(index), assigned=reply["total"], finished=reply["finished"],
            unfinished=tuple(unfinished), max_batch=max_batch,
        )  # fmt: skip

    async def _resume(
        self, step: int, prompt_ids: list[list[int]], rows: list[dict[str, Any]],
        leases: list[tuple[float, bool]],
    ) -> dict[str, Any]:  # fmt: skip
        """Continue handed-over ``rows`` (:meth:`_rows`) that no running function took, together
        on one function: from their shipped caches and sampling keys where they have them."""
        p, cfg, g = self.p, self.p.cfg.rollout, self.p.cfg.train.group_size
        partial = [
            {
                "prompt_index": r["key"] // g,
                "token_ids": r["token_ids"],
                "logprobs": r["logprobs"],
                "finish_reason": "cut",
            }
            for r in rows
        ]
        kw = {
            name: [r[name] for r in rows]
            for name in ("kv", "rng")
            if any(r[name] is not None for r in rows)
        }

        async def work(h: Any) -> dict[str, Any]:
            await self._prepare(h)
            return await h.resume(
                prompt_ids, partial, cfg.max_new_tokens, cfg.temperature,
                seed_of(p.cfg.run.seed, step, "resume"), cfg.greedy, **kw,
            )  # fmt: skip

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
        return sum(life_usd(model, kind, 0.0, seconds, warm=warm) for seconds, warm in leases)


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
