"""Engine over a transformers causal LM: sampling with shared-prefix prefill, log-probs, values.

Layout used everywhere (generation, log-prob recomputation, values): prompts are LEFT-padded to a
common width and responses follow, RIGHT-padded. Every response then starts at the same column, so
one forward with ``logits_to_keep`` yields exactly the response positions, and the recomputation
sees the same positions and masks the rollout saw (its log-probs match to ~1e-6 in fp32).

Shared-prefix prefill: each distinct prompt is prefilled once (all of them in one left-padded
batch) and its KV cache rows are then gathered G times, one per sample of its group; decoding runs
over the expanded cache. Prefill work drops by G and the decode is identical to prefilling every
sample separately (greedy outputs equal token for token; tested). On top of that, a token prefix
common to all the distinct prompts (a chat template's system prompt) is prefilled once and only the
suffixes after it are run per prompt (``common_prefix.py``; vLLM's automatic prefix caching does
the same for the vLLM adapter).

Log-probs are of ``logits / temperature`` (temperature 1 under greedy decoding), the distribution
the tokens were actually drawn from; pass the same temperature to ``logprobs`` when recomputing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import torch
from torch import nn

from rlhfless.adapters.common_prefix import (
    DEFAULT_MIN_COMMON_PREFIX,
    common_prefix_len,
    left_pad,
    suffix_batch,
)
from rlhfless.adapters.decode import Decoded, Inbox, decode
from rlhfless.adapters.errors import EngineError
from rlhfless.adapters.kv_transfer import PrefixKV, resume_prefix
from rlhfless.adapters.kv_transfer import cache_kwarg as _cache_kwarg
from rlhfless.adapters.kv_transfer import cache_of as _cache_of
from rlhfless.adapters.kv_transfer import kv_of as _kv_of
from rlhfless.adapters.sample import Sample
from rlhfless.adapters.scoring import (  # re-exported: the engine's public surface
    PackedBatch,
    ValueModel,
    pack_sequences,
    response_logprobs,
    values,
)
from rlhfless.adapters.smollm2 import smollm2_dir
from rlhfless.adapters.tiny import TinyTokenizer, is_tiny_model_dir

__all__ = [
    "EngineError",
    "Generation",
    "HFEngine",
    "HFTokenizer",
    "PackedBatch",
    "PrefixKV",
    "Sample",
    "ValueModel",
    "load_tokenizer",
    "pack_sequences",
    "response_logprobs",
    "smollm2_dir",
    "values",
]


class Generation(msgspec.Struct):
    """Result of one ``generate`` call; ``samples[i * group_size + g]`` is sample g of prompt i."""

    samples: list[Sample]
    group_size: int
    prefill_tokens: int  # prompt tokens actually run through the model (no padding)
    decode_tokens: int  # generated tokens (EOS included)
    prefill_seconds: float
    decode_seconds: float
    common_prefix_tokens: int = 0  # prefix shared by all distinct prompts, prefilled once
    prefill_tokens_saved: int = 0  # (distinct prompts - 1) * common_prefix_tokens, not recomputed
    # generate(ship_kv=True): sample index -> KV of each cut sample (kv_transfer.export_rows)
    kv: dict[int, Any] = {}
    kv_tokens: int = 0  # resume / joiners: tokens whose KV arrived shipped, not re-prefilled
    # Keys of the sequences that joined this generate (adapters/decode.py), in the order of
    # ``samples[len(prompts) * group_size:]``.
    joined: list[int] = []
    joined_prefill_tokens: int = 0  # joiners' prompt + partial tokens re-prefilled here
    steps: int = -1  # decode steps run by this call (-1: not reported; the longest sample's)
    # Sampling: sample index -> its sampling key at a cut (continue with resume(rng=...)).
    rng: dict[int, Any] = {}


class HFTokenizer:
    """A transformers tokenizer behind the same small interface as ``TinyTokenizer``."""

    def __init__(self, tok, extra_eos: Sequence[int] = ()) -> None:
        self.tok = tok
        self.eos_id: int = tok.eos_token_id
        self.pad_id: int = tok.pad_token_id if tok.pad_token_id is not None else self.eos_id
        self.bos_id: int | None = tok.bos_token_id
        self.eos_ids = frozenset({self.eos_id, *extra_eos})
        self.vocab_size: int = len(tok)

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def encode_prompt(self, text: str) -> list[int]:
        """The chat-templated user turn when the tokenizer has a template, else plain encoding."""
        if getattr(self.tok, "chat_template", None):
            text = self.tok.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            return self.encode(text)
        return list(self.tok.encode(text, add_special_tokens=True))

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special)


Tokenizer = TinyTokenizer | HFTokenizer


def load_tokenizer(model_dir: str | Path) -> Tokenizer:
    """The tokenizer of a model dir without its weights (the controller and reward need only it)."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    if is_tiny_model_dir(model_dir):
        return TinyTokenizer.load(model_dir)
    try:
        try:
            eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
        except OSError:  # no generation_config.json: the model config may still name an EOS
            eos = getattr(AutoConfig.from_pretrained(model_dir), "eos_token_id", None)
        extra = [eos] if isinstance(eos, int) else list(eos or [])
        return HFTokenizer(AutoTokenizer.from_pretrained(model_dir), extra_eos=extra)
    except (OSError, ValueError) as exc:  # transformers' own words, without its traceback
        raise EngineError(f"cannot load the tokenizer of {model_dir}: {exc}") from exc


class HFEngine:
    """A causal LM, its tokenizer and a weights version, on one device."""

    def __init__(
        self, model: nn.Module, tokenizer: Tokenizer, device: str | torch.device = "cpu"
    ) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.version = 0  # weights version; set by load_state_dict, reported with every rollout

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> HFEngine:
        """Load a tiny-model dir (``build_tiny_model``) or a plain transformers model dir."""
        from transformers import AutoModelForCausalLM

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise EngineError(f"{model_dir} has no config.json; it is not a model directory")
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        except Exception as exc:  # missing, corrupt or unknown: its words, not its traceback
            raise EngineError(f"cannot load the model in {model_dir}: {exc}") from exc
        return cls(model, load_tokenizer(model_dir), device)

    # -- weights ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        self.model.load_state_dict(state_dict, strict=True)
        self.version = version

    # -- generation ------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(
        self,
        prompts: Sequence[Sequence[int]],
        min_common_prefix: int | None = DEFAULT_MIN_COMMON_PREFIX,
    ) -> PrefixKV:
        """KV of each distinct prompt, computed once; hand it to ``generate(prefix=...)``.

        When the distinct prompts all start with the same ``>= min_common_prefix`` tokens, that
        prefix is run once and only the rest of each prompt after it (None: never).
        This is the prefill function's half of prefill/decode disaggregation: the result can be
        shipped (``PrefixKV.to_tensors``) to decode functions that never run these prompts.
        """
        if min_common_prefix is not None and min_common_prefix < 1:
            raise EngineError(f"min_common_prefix must be >= 1 or None (got {min_common_prefix})")
        distinct = [list(k) for k in dict.fromkeys(tuple(p) for p in prompts)]
        if not distinct or any(len(p) == 0 for p in distinct):
            raise EngineError("an empty prompt cannot be decoded from; every prompt needs a token")
        cut = common_prefix_len(distinct, min_common_prefix)
        return self._prefill_common(distinct, cut) if cut else self._prefill(distinct)

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        """One prefill forward into ``cache``; the logits at each row's last column."""
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=position_ids.to(self.device),
            use_cache=True,
            logits_to_keep=1,
            **{_cache_kwarg(self.model): cache},
        )
        return out.logits[:, -1, :]

    def _prefill(self, seqs: list[list[int]]) -> PrefixKV:
        t0 = time.perf_counter()
        ids, mask = left_pad(seqs, self.tokenizer.pad_id)
        cache = _cache_of([], [], self.model.config)
        logits = self._forward(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), cache)
        return self._prefix_kv(seqs, cache, mask, logits, t0, sum(len(p) for p in seqs))

    def _prefill_common(self, seqs: list[list[int]], cut: int) -> PrefixKV:
        """``seqs[0][:cut]`` (common to all) on one row, then every suffix on top of its KV."""
        t0 = time.perf_counter()
        head = torch.tensor([seqs[0][:cut]], dtype=torch.long)
        cache = _cache_of([], [], self.model.config)
        self._forward(head, torch.ones_like(head), torch.arange(cut).unsqueeze(0), cache)
        # Every distinct prompt continues from this one row of KV: broadcast it to all of them.
        kv = _kv_of(cache)
        cache = _cache_of(
            [k.expand(len(seqs), -1, -1, -1) for k, _ in kv],
            [v.expand(len(seqs), -1, -1, -1) for _, v in kv],
            self.model.config,
        )
        tail = suffix_batch(seqs, cut, self.tokenizer.pad_id)
        logits = self._forward(tail.ids, tail.mask, tail.position_ids, cache)
        tokens = cut + sum(len(p) - cut for p in seqs)
        return self._prefix_kv(seqs, cache, tail.mask, logits, t0, tokens, common=cut)

    def _prefix_kv(
        self,
        seqs: list[list[int]],
        cache: Any,
        mask: torch.Tensor,
        logits: torch.Tensor,
        t0: float,
        tokens: int,
        common: int = 0,
    ) -> PrefixKV:
        kv = _kv_of(cache)
        return PrefixKV(
            prompts=seqs,
            keys=[k for k, _ in kv],
            values=[v for _, v in kv],
            mask=mask.to(self.device),
            logits=logits,
            seconds=time.perf_counter() - t0,
            tokens=tokens,
            common=common,
        )

    @torch.no_grad()
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
        min_common_prefix: int | None = DEFAULT_MIN_COMMON_PREFIX,
        ship_kv: bool = False,
        inbox: Inbox | None = None,
        rng: Sequence[int | None] | None = None,
        drawn_before: Sequence[int] | None = None,
    ) -> Generation:
        """Sample ``group_size`` responses per prompt (token ids, not text).

        ``shared_prefix``: prefill each distinct prompt once and expand its KV to its G samples
        (False: prefill every sample separately, the naive path); with it, a token prefix that all
        distinct prompts share, ``>= min_common_prefix`` long, is prefilled once for all of them
        (None: off). ``prefix``: KV from
        ``prefill`` (possibly another function's); every prompt must be in it, and nothing is
        prefilled here. ``stop(finished, total)`` is asked after every decode step; when it says
        True the unfinished samples end with ``finish_reason="cut"`` and their tokens so far
        (cut-and-migrate: continue them elsewhere with ``resume``); with ``ship_kv`` their KV
        comes back in ``Generation.kv``, for ``resume(kv=...)`` to continue without re-prefill.
        ``inbox``: cut sequences of other functions join this batch while it runs
        (``adapters/decode.py``); they come back after the own samples, ``Generation.joined``
        naming each one's key. Sampling: sample i's n-th token is drawn at ``uniform(key, n)``
        (``adapters/decode.py``), its key made from ``(seed, i)`` or given as ``rng[i]`` after
        ``drawn_before[i]`` earlier draws; a cut sample's key comes back in ``Generation.rng``,
        so it continues elsewhere as it would have here.
        """
        check_generate(prompts, group_size, max_new_tokens, temperature, greedy)
        row_prompt = [i for i in range(len(prompts)) for _ in range(group_size)]
        pre, src = self._rows(prompts, row_prompt, prefix, shared_prefix, min_common_prefix)
        t1 = time.perf_counter()
        if seed is None:
            seed = int(torch.randint(2**62, ()).item())
        temp = 1.0 if greedy else float(temperature)
        out = decode(
            self, pre, src, max_new_tokens, temp, greedy, seed, stop, ship_kv, inbox, rng,
            drawn_before,
        )  # fmt: skip
        return _generation(out, row_prompt, group_size, pre, prefix, time.perf_counter() - t1)

    def _rows(
        self, prompts: Sequence[Sequence[int]], row_prompt: list[int], prefix: PrefixKV | None,
        shared_prefix: bool, min_common_prefix: int | None,
    ) -> tuple[PrefixKV, list[int]]:  # fmt: skip
        """The prefilled KV the decode starts from, and each sample row's row in it."""
        if prefix is not None:  # prefilled elsewhere (a prefill function): nothing to run here
            pre = prefix
        elif shared_prefix:  # one row per distinct prompt (duplicates across groups too)
            pre = self.prefill(prompts, min_common_prefix)
        else:  # naive baseline: every sample prefilled on its own row
            return self._prefill([list(prompts[i]) for i in row_prompt]), list(
                range(len(row_prompt))
            )
        row_of = {tuple(p): i for i, p in enumerate(pre.prompts)}
        missing = [i for i, p in enumerate(prompts) if tuple(p) not in row_of]
        if missing:
            raise EngineError(
                f"prompts {missing[:5]} are not in the given prefix; prefill them first"
            )
        return pre, [row_of[tuple(prompts[i])] for i in row_prompt]

    @torch.no_grad()
    def resume(
        self,
        prompts: Sequence[Sequence[int]],
        partial: Sequence[Sample],
        max_new_tokens: int,
        temperature: float = 1.0,
        seed: int | None = None,
        greedy: bool = False,
        kv: Sequence[Any] | None = None,
        rng: Sequence[Any] | None = None,
    ) -> Generation:
        """Continue cut samples: ``partial[j]`` continues ``prompts[partial[j].prompt_index]``.

        Each comes back whole (old tokens and log-probs, then the new ones), capped at
        ``max_new_tokens`` in total; ``prefill_tokens`` counts the recomputed prompt + partial
        KV, the price of migrating without shipping KV. ``kv[j]``: sample j's cache as
        ``generate(ship_kv=True)`` exported it, or None to re-prefill that one
        (``kv_transfer.resume_prefix``); ``kv_tokens`` counts the tokens not recomputed.
        ``rng[j]``: sample j's sampling key at its cut (``Generation.rng``): with it a sampled
        continuation is the one the uncut run draws.
        """
        if not partial:
            raise EngineError("resume needs at least one cut sample")
        budgets = [max_new_tokens - len(s.token_ids) for s in partial]
        if min(budgets) < 1:
            raise EngineError(
                f"a cut sample already has {max(len(s.token_ids) for s in partial)} tokens, "
                f"no room left under max_new_tokens={max_new_tokens}"
            )
        seqs = [[*prompts[s.prompt_index], *s.token_ids] for s in partial]
        pre = None
        if kv is not None and any(k is not None for k in kv):  # shipped caches: no re-prefill
            pre = resume_prefix(self, seqs, kv)
        # shared_prefix=False: every continuation is its own sequence, even if two coincide.
        more = self.generate(
            seqs, 1, max(budgets), temperature, seed, greedy, shared_prefix=False, prefix=pre,
            # A cut sample's key, and the draws it made before the cut (vLLM reuses resume but
            # samples its own way: nothing to pass there).
            **(
                {"rng": rng, "drawn_before": [len(s.token_ids) for s in partial]}
                if rng is not None
                else {}
            ),
        )  # fmt: skip
        out: list[Sample] = []
        for s, m, budget in zip(partial, more.samples, budgets, strict=True):
            toks, lps, why = m.token_ids[:budget], m.logprobs[:budget], m.finish_reason
            if len(m.token_ids) > budget:
                why = "length"
            out.append(
                Sample(
                    prompt_index=s.prompt_index,
                    token_ids=[*s.token_ids, *toks],
                    logprobs=[*s.logprobs, *lps],
                    finish_reason=why,
                )
            )
        return Generation(
            samples=out,
            group_size=1,
            prefill_tokens=more.prefill_tokens if pre is None else pre.tokens,
            decode_tokens=sum(
                len(o.token_ids) - len(p.token_ids) for o, p in zip(out, partial, strict=True)
            ),
            prefill_seconds=more.prefill_seconds if pre is None else pre.seconds,
            decode_seconds=more.decode_seconds,
            kv_tokens=sum(k.shape[3] for k in kv if k is not None) if pre is not None else 0,
            steps=more.steps,  # the partial tokens were decoded before the cut, elsewhere
        )

    # -- scoring ---------------------------------------------------------------------------

    def pack(
        self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]
    ) -> PackedBatch:
        return pack_sequences(prompt_ids, response_ids, self.tokenizer.pad_id, self.device)

    @torch.no_grad()
    def logprobs(
        self,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        temperature: float = 1.0,
        micro_batch: int = 64,
    ) -> list[torch.Tensor]:
        """Per-token log-probs of each response (1-D float32 tensor per sample, its own length)."""
        out: list[torch.Tensor] = []
        for s in range(0, len(prompt_ids), micro_batch):
            batch = self.pack(prompt_ids[s : s + micro_batch], response_ids[s : s + micro_batch])
            lp = response_logprobs(self.model, batch, temperature).cpu()
            out.extend(lp[i, : len(r)] for i, r in enumerate(response_ids[s : s + micro_batch]))
        return out


def check_generate(
    prompts: Sequence[Sequence[int]], group_size: int, max_new_tokens: int, temperature: float,
    greedy: bool,
) -> None:  # fmt: skip
    """What any engine's ``generate`` refuses, one clear error each (HF's and vLLM's)."""
    if not prompts or group_size < 1 or max_new_tokens < 1:
        raise EngineError(
            f"need prompts, group_size >= 1 and max_new_tokens >= 1 (got {len(prompts)} "
            f"prompts, group_size={group_size}, max_new_tokens={max_new_tokens})"
        )
    if not greedy and temperature <= 0:
        raise EngineError(
            f"temperature must be > 0 when sampling (got {temperature}); use greedy=True"
        )
    if any(len(p) == 0 for p in prompts):
        raise EngineError("an empty prompt cannot be decoded from; every prompt needs a token")


def _generation(
    out: Decoded, row_prompt: list[int], group_size: int, pre: PrefixKV,
    prefix: PrefixKV | None, seconds: float,
) -> Generation:  # fmt: skip
    """A decode's outcome as ``generate`` returns it: own samples first, then joiners."""
    n = len(row_prompt)
    samples = [
        Sample(
            prompt_index=row_prompt[r] if r < n else out.joined[r - n].partial.prompt_index,
            token_ids=out.tokens[r],
            logprobs=out.logprobs[r],
            finish_reason=out.reasons[r],  # type: ignore[arg-type]
        )
        for r in range(len(out.tokens))
    ]
    here = prefix is None  # prefilled here (else another function paid for it)
    return Generation(
        samples=samples,
        group_size=group_size,
        prefill_tokens=(pre.tokens if here else 0) + out.joined_prefill_tokens,
        decode_tokens=out.decode_tokens,
        prefill_seconds=(pre.seconds if here else 0.0) + out.joined_prefill_seconds,
        decode_seconds=seconds - out.joined_prefill_seconds,
        common_prefix_tokens=pre.common if here else 0,
        prefill_tokens_saved=(len(pre.prompts) - 1) * pre.common if here else 0,
        kv=out.shipped,
        rng=out.rng,
        kv_tokens=out.kv_tokens,
        joined=[j.key for j in out.joined],
        joined_prefill_tokens=out.joined_prefill_tokens,
        steps=out.steps,
    )
