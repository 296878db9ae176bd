"""The rollout stage: sample G responses per prompt with the current policy weights.

With cut-and-migrate on, the stage's controller reads each function's progress
(:meth:`RolloutActor.progress`) and tells the ones its plan cuts to stop
(:meth:`RolloutActor.cut_now`); a cut function returns its unfinished sequences cut, tokens so
far kept (``cut_threshold`` instead lets a function cut itself once that share of its sequences
has finished). The stage hands them at once to a function that is still generating
(:meth:`RolloutActor.admit`): they join its running batch and come back with its result
(``adapters/decode.py``). Where none takes them (all have ended), they are resumed together on
one function (:meth:`RolloutActor.resume`). Nothing is truncated.

Each function's cut is one migration: given the stage's ``TransferParams`` (``ship_kv``), the
function asks :meth:`~rlhfless.scaling.transfer.TransferParams.choose` whether shipping its cut
rows' KV cache beats re-prefilling them on the resume function, and returns the caches only
then (``adapters/kv_transfer.py``), so a cache that would be recomputed anyway never travels.
"""

from __future__ import annotations

import asyncio
import functools
import math
from typing import Any

import msgspec
import torch

from rlhfless.adapters.decode import Inbox, Joiner
from rlhfless.adapters.hf import Generation, HFEngine, Sample
from rlhfless.scaling.transfer import TransferParams
from rlhfless.stages.common import DTYPES, function_device
from rlhfless.stages.protocol import (
    CutRow,
    FinishedSample,
    GenerateReply,
    Migration,
    RolloutProgress,
    reply,
)


def _pack(gen: Generation, version: int, migration: Migration | None = None) -> GenerateReply:
    return GenerateReply(
        response_ids=[s.token_ids for s in gen.samples],
        logprobs=[torch.tensor(s.logprobs, dtype=torch.float32) for s in gen.samples],
        finish=[s.finish_reason for s in gen.samples],
        version=version,
        prefill_tokens=gen.prefill_tokens,
        prefill_saved=gen.prefill_tokens_saved,
        decode_tokens=gen.decode_tokens,
        prefill_seconds=gen.prefill_seconds,
        decode_seconds=gen.decode_seconds,
        steps=gen.steps
        if gen.steps >= 0
        else max((len(s.token_ids) for s in gen.samples), default=0),
        kv_tokens=gen.kv_tokens,
        joined=list(gen.joined),
        joined_prefill=gen.joined_prefill_tokens,
        rng=[gen.rng.get(r) for r in range(len(gen.samples))] if gen.rng else None,
        migration=migration,
    )


def _migration(
    prompt_len: list[int], gen: Generation, transfer: TransferParams | None
) -> Migration | None:
    """This function's cut as one migration: its state tokens and how they move (None: no cut).

    ``prompt_len[r]``: the prompt length of sample r (own samples and joiners alike)."""
    cut = [r for r, s in enumerate(gen.samples) if s.finish_reason == "cut"]
    if not cut:
        return None
    # The receiver needs the KV of prompt + tokens[:-1]; the last token is fed there either way.
    tokens = sum(prompt_len[r] + len(gen.samples[r].token_ids) - 1 for r in cut)
    method = "reprefill"
    if transfer is not None and all(r in gen.kv for r in cut):
        method, _ = transfer.choose(tokens)
    kv = [gen.kv.get(r) for r in range(len(gen.samples))] if method == "ship_kv" else None
    return Migration(method=method, tokens=tokens, kv=kv)


class RolloutActor:
    """Hosts an engine; receives versioned weights; never mixes versions within one call."""

    def __init__(self, model_dir: str, dtype: str = "float32", engine: str = "hf") -> None:
        self.inbox = Inbox()
        self._decoding = False  # a generate's decode thread is running
        self._joiner_prompts: dict[int, int] = {}  # key -> prompt length of an admitted sequence
        self._own_ids: list[int] | None = None  # the running generate's own rows' ids
        if engine == "hf":
            self.engine = HFEngine.load(model_dir, dtype=DTYPES[dtype], device=function_device())
        elif engine == "vllm":  # imported here: vLLM lives in its own venv (docs/vllm.md)
            from rlhfless.adapters.vllm import VLLMEngine

            self.engine = VLLMEngine.load(model_dir, dtype=DTYPES[dtype])
        else:
            raise ValueError(f"unknown rollout engine {engine!r}; choose 'hf' or 'vllm'")

    def version(self) -> int:
        return self.engine.version

    def load_weights(self, weights: dict[str, Any] | str, version: int) -> int:
        """A state dict sent as tensors, or the path of a node-local safetensors file."""
        if isinstance(weights, str) and not isinstance(self.engine, HFEngine):
            self.engine.load_file(weights, version)
        elif isinstance(weights, str):
            from safetensors.torch import load_model

            load_model(self.engine.model, weights)
            self.engine.version = version
        else:
            self.engine.load_state_dict(weights, version)
        return version

    def load_cached(self, version: int) -> int:
        """``version`` from this node's weight cache, where the runtime sent it once per node."""
        from rlhfless.runtime.weights import load

        self.engine.load_state_dict(load(version), version)
        return version

    async def generate(
        self,
        prompts: list[list[int]],
        group_size: int,
        max_new_tokens: int,
        temperature: float,
        seed: int,
        shared_prefix: bool = True,
        greedy: bool = False,
        cut_threshold: float | None = None,
        ship_kv: dict[str, float] | None = None,
        join: bool = False,
        keys: list[int] | None = None,
        stream: bool = False,
        ids: list[int] | None = None,
    ) -> GenerateReply:
        """``ship_kv``: the stage's ``TransferParams`` (as a dict); None never ships a cache.

        ``stream``: samples that end are handed out while the call runs (:meth:`take_finished`),
        each under its id in ``ids`` (the own rows' batch indices; their row by default).

        ``join``: other functions' cut sequences may join this call while it runs (:meth:`admit`);
        they come back after the own samples, ``joined`` naming their keys. ``keys``: each
        sample's sampling key (HF engine; ``adapters/decode.py``), else made from ``seed``."""
        stop = None
        if cut_threshold is not None:
            # Cut once this share of the function's sequences is done (the paper's per-function
            # threshold); the rest come back with finish_reason "cut" and their tokens so far.
            need = math.ceil(cut_threshold * len(prompts) * group_size)
            stop = lambda finished, total: finished >= need and finished < total  # noqa: E731
        transfer = None
        kw: dict[str, Any] = {}
        if ship_kv is not None and isinstance(self.engine, HFEngine):
            transfer = msgspec.convert(ship_kv, TransferParams)
            kw["ship_kv"] = True  # export the cut rows' KV; shipped if choose() says so
        if keys is not None and isinstance(self.engine, HFEngine):
            kw["rng"] = keys
        call = functools.partial(
            self.engine.generate, prompts, group_size, max_new_tokens, temperature=temperature,
            seed=seed, greedy=greedy, shared_prefix=shared_prefix, stop=stop,
        )  # fmt: skip
        self._own_ids = ids
        if not ((join or stream) and isinstance(self.engine, HFEngine)):  # vLLM: no joining
            gen = call(**kw)  # inline, as any synchronous method: nothing can join
        else:
            # Opened here, on the event loop, before the decode starts on a worker thread: an
            # admit() sent right after this call is handled after this point, so it is taken.
            if self._decoding:  # a cancelled caller does not stop the thread of its call
                raise RuntimeError("a generate is still decoding on this function")
            self.inbox.open()
            threads = torch.get_num_threads()  # the function's CPU share, set on this thread

            def decode() -> Generation:
                torch.set_num_threads(threads)  # a new thread starts with every core
                try:
                    return call(inbox=self.inbox, **kw)
                finally:
                    self._decoding = False

            # The decode runs off the event loop, so admit(), progress() and cut_now() reach it.
            self._decoding = True
            try:
                gen = await asyncio.to_thread(decode)
            finally:
                for j in self.inbox.close():  # a failed decode took them: refuse, forget them
                    self._joiner_prompts.pop(j.key, None)
        lens = [len(prompts[s.prompt_index]) for s in gen.samples[: len(prompts) * group_size]]
        lens += [self._joiner_prompts.pop(key) for key in gen.joined]
        return _pack(gen, self.engine.version, _migration(lens, gen, transfer))

    async def admit(self, rows: list[Any]) -> bool:
        """Cut sequences of another function (:class:`CutRow` each), to continue inside the
        running :meth:`generate`. False: no generate is running here (or it is ending); the
        rows were not taken and must go elsewhere.
        """
        joiners = [
            Joiner(
                key=r.key,
                prompt=r.prompt,
                partial=Sample(-1, r.token_ids, r.logprobs, "cut"),
                kv=r.kv,
                rng=r.rng,
            )
            for r in reply(rows, list[CutRow])
        ]
        for j in joiners:  # before the offer: the generate may take them at once
            self._joiner_prompts[j.key] = len(j.prompt)
        if self.inbox.offer(joiners):
            return True
        for j in joiners:
            self._joiner_prompts.pop(j.key, None)
        return False

    async def progress(self) -> RolloutProgress | None:
        """The running generate's progress after its last step (None: none running yet)."""
        p = self.inbox.progress if self.inbox.is_open else None
        if p is None:
            return None
        return RolloutProgress(
            finished=p.finished, total=p.total, own=p.own, joined=p.joined,
            ended_own=p.ended_own, ended_joined=p.ended_joined,
        )  # fmt: skip

    async def take_finished(self) -> list[FinishedSample]:
        """Samples of the running generate that ended since the last take (``stream``)."""
        ids = self._own_ids
        return [
            FinishedSample(
                key=r.key if r.key is not None else (ids[r.row] if ids is not None else r.row),
                token_ids=r.token_ids,
                logprobs=torch.tensor(r.logprobs, dtype=torch.float32),
                finish=r.reason,
            )
            for r in self.inbox.take_finished()
        ]

    async def cut_now(self) -> bool:
        """Cut the running generate at its next step (the controller's plan); False: none runs."""
        return self.inbox.request_cut()

    def resume(
        self,
        prompts: list[list[int]],
        partial: list[dict[str, Any]],
        max_new_tokens: int,
        temperature: float,
        seed: int,
        greedy: bool = False,
        kv: list[Any] | None = None,
        rng: list[Any] | None = None,
    ) -> GenerateReply:
        """Continue cut samples (``partial[j]["prompt_index"]`` indexes ``prompts``) to the end.

        ``kv[j]``: sample j's shipped cache, or None to re-prefill it (always, on vLLM).
        ``rng[j]``: its sampling key (HF engine), to continue its draws where they stopped.
        """
        samples = [msgspec.convert(p, Sample) for p in partial]
        kw: dict[str, Any] = {}
        if isinstance(self.engine, HFEngine):
            kw = {k: v for k, v in (("kv", kv), ("rng", rng)) if v is not None}
        gen = self.engine.resume(prompts, samples, max_new_tokens, temperature, seed, greedy, **kw)
        return _pack(gen, self.engine.version)
