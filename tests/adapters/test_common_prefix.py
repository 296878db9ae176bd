"""A token prefix common to all distinct prompts is prefilled once, and changes no output."""

from pathlib import Path

import pytest
import torch

from rlhfless.adapters.common_prefix import common_prefix_len, suffix_batch
from rlhfless.adapters.hf import EngineError, Generation, HFEngine, PrefixKV
from rlhfless.adapters.tiny import TinyTokenizer

# A "system prompt" in the tiny alphabet: BOS + 29 characters = 30 tokens in front of every prompt.
SYSTEM = "abcdefgh=0123456789xhgfedcba="
SUFFIXES = ["3xa", "12x45b", "7", "40xh99=ab", "1xd", "ee"]  # different lengths on purpose


def _prompts(engine: HFEngine, suffixes: list[str] = SUFFIXES) -> list[list[int]]:
    return [engine.tokenizer.encode_prompt(SYSTEM + s) for s in suffixes]


def _prefix_len(engine: HFEngine) -> int:
    return len(engine.tokenizer.encode_prompt(SYSTEM))


def _same(a: Generation, b: Generation, tol: float = 1e-4) -> None:
    """Same tokens and finish reasons; log-probs within ``tol`` (fp32)."""
    assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples]
    assert [s.finish_reason for s in a.samples] == [s.finish_reason for s in b.samples]
    for x, y in zip(a.samples, b.samples, strict=True):
        assert max(abs(p - q) for p, q in zip(x.logprobs, y.logprobs, strict=True)) < tol


# -- the pure helpers ------------------------------------------------------------------------


def test_common_prefix_len_caps_and_thresholds() -> None:
    a, b = [1, 5, 6, 7, 8], [1, 5, 6, 7, 9, 9]
    assert common_prefix_len([a, b], 2) == 4
    assert common_prefix_len([a, b], 5) == 0  # shorter than the minimum: not shared
    assert common_prefix_len([a, b], None) == 0  # off
    assert common_prefix_len([a], 1) == 0  # one prompt: nothing to share
    assert common_prefix_len([a, [2, *a[1:]]], 1) == 0  # differ at the first token
    # A prompt that IS the common prefix keeps its last token for the suffix pass.
    assert common_prefix_len([a[:4], a], 1) == 3


def test_suffix_batch_pads_between_prefix_and_suffix() -> None:
    tail = suffix_batch([[1, 2, 3, 7], [1, 2, 3, 8, 9, 9]], cut=3, pad_id=0)
    assert tail.ids.tolist() == [[0, 0, 7], [8, 9, 9]]
    assert tail.mask.tolist() == [[1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1]]
    # Real tokens sit at their positions in their own prompt (pads: any valid value, masked).
    assert tail.position_ids[0, -1].item() == 3 and tail.position_ids[1].tolist() == [3, 4, 5]


# -- the engine ------------------------------------------------------------------------------


def test_greedy_equals_no_common_prefix_and_naive(engine: HFEngine) -> None:
    prompts = _prompts(engine)
    kw = dict(group_size=3, max_new_tokens=24, greedy=True)
    on = engine.generate(prompts, **kw)
    off = engine.generate(prompts, min_common_prefix=None, **kw)
    naive = engine.generate(prompts, shared_prefix=False, **kw)
    assert on.common_prefix_tokens == _prefix_len(engine) and off.common_prefix_tokens == 0
    _same(on, off)
    _same(on, naive)


def test_padding_in_the_middle_changes_nothing(engine: HFEngine) -> None:
    # Each prompt alone has no padding at all; in the batch its suffix is padded on the left.
    prompts = _prompts(engine)
    batched = engine.generate(prompts, group_size=1, max_new_tokens=16, greedy=True)
    for i, p in enumerate(prompts):
        alone = engine.generate([p], group_size=1, max_new_tokens=16, greedy=True)
        assert alone.common_prefix_tokens == 0
        _same(Generation([batched.samples[i]], 1, 0, 0, 0.0, 0.0), alone)


def test_sampling_with_a_seed_is_identical(engine: HFEngine) -> None:
    # Same batch shape and row order, so multinomial consumes the generator the same way; the
    # probabilities differ by float rounding only (~1e-7), far below any draw's margin here.
    prompts = _prompts(engine)
    kw = dict(group_size=8, max_new_tokens=32, temperature=1.0, seed=7)
    on = engine.generate(prompts, **kw)
    off = engine.generate(prompts, min_common_prefix=None, **kw)
    _same(on, off)


def test_prefill_tokens_drop_by_the_shared_prefix(engine: HFEngine) -> None:
    prompts = _prompts(engine)
    dup = [*prompts, prompts[2]]  # a duplicate is one distinct prompt, as before
    on = engine.generate(dup, group_size=4, max_new_tokens=4, seed=0)
    off = engine.generate(dup, group_size=4, max_new_tokens=4, seed=0, min_common_prefix=None)
    saved = (len(prompts) - 1) * _prefix_len(engine)
    assert off.prefill_tokens == sum(len(p) for p in prompts)
    assert off.prefill_tokens - on.prefill_tokens == saved == on.prefill_tokens_saved
    assert off.prefill_tokens_saved == 0


def test_rollout_logprobs_match_recomputation(engine: HFEngine) -> None:
    prompts = _prompts(engine)
    gen = engine.generate(prompts, group_size=4, max_new_tokens=24, temperature=0.7, seed=5)
    resp = [s.token_ids for s in gen.samples]
    recomputed = engine.logprobs([prompts[s.prompt_index] for s in gen.samples], resp, 0.7)
    for r, s in zip(recomputed, gen.samples, strict=True):
        assert (r - torch.tensor(s.logprobs)).abs().max().item() < 1e-4


def test_shipped_common_prefix_kv_decodes_elsewhere(engine: HFEngine, tiny_dir: Path) -> None:
    prompts = _prompts(engine)
    pre = engine.prefill(prompts)
    assert pre.common == _prefix_len(engine)
    shipped = PrefixKV.from_tensors(
        pre.prompts, {k: v.clone() for k, v in pre.to_tensors().items()}
    )
    kw = dict(group_size=4, max_new_tokens=20, temperature=1.0, seed=9)
    remote = HFEngine.load(tiny_dir).generate(prompts, prefix=shipped, **kw)
    _same(remote, engine.generate(prompts, **kw))


@pytest.mark.parametrize(
    "suffixes, expect_common",
    [
        (["3xa"], 0),  # one prompt
        (["3xa", "3xa", "3xa"], 0),  # all identical: one distinct prompt
        (["", "12x45b", "7"], -1),  # a prompt IS the common prefix: all but its last token shared
        (["", "", "9"], -1),  # ... twice, as one distinct prompt
    ],
)
def test_degenerate_batches(engine: HFEngine, suffixes: list[str], expect_common: int) -> None:
    prompts = _prompts(engine, suffixes)
    common = _prefix_len(engine) + expect_common if expect_common else 0
    kw = dict(group_size=2, max_new_tokens=16, greedy=True)
    on = engine.generate(prompts, **kw)
    assert on.common_prefix_tokens == common
    _same(on, engine.generate(prompts, min_common_prefix=None, **kw))
    _same(on, engine.generate(prompts, shared_prefix=False, **kw))


def test_no_or_short_common_prefix_is_not_shared(engine: HFEngine) -> None:
    tok = engine.tokenizer
    assert isinstance(tok, TinyTokenizer)
    no_common = [tok.encode(SYSTEM + "1"), tok.encode("h" + SYSTEM)]  # no BOS: differ at token 0
    short = [tok.encode_prompt("abcdefgh" + s) for s in ("1x2", "33")]  # 9 common tokens < 16
    for prompts in (no_common, short):
        on = engine.generate(prompts, group_size=2, max_new_tokens=8, greedy=True)
        assert on.common_prefix_tokens == 0 == on.prefill_tokens_saved
        assert on.prefill_tokens == sum(len(p) for p in prompts)
    # Lowering the threshold shares the short one.
    low = engine.generate(short, 2, 8, greedy=True, min_common_prefix=4)
    assert low.common_prefix_tokens == 9
    _same(low, engine.generate(short, 2, 8, greedy=True, min_common_prefix=None))
    with pytest.raises(EngineError, match="min_common_prefix"):
        engine.generate(short, 2, 8, min_common_prefix=0)


@pytest.mark.parametrize("arch", ["qwen2-eager", "llama-sdpa", "llama-eager"])
def test_other_attention_paths_agree(engine: HFEngine, arch: str) -> None:
    # position_ids + a 2D mask with zeros mid-row must work in eager attention and in Llama too.
    from transformers import AutoModelForCausalLM, LlamaConfig

    family, attn = arch.split("-")
    if family == "qwen2":
        model = engine.model
    else:
        tok = engine.tokenizer
        cfg = LlamaConfig(
            vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
        )  # fmt: skip
        torch.manual_seed(1)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.set_attn_implementation(attn)
    other = HFEngine(model, engine.tokenizer)
    prompts = _prompts(other)
    kw = dict(group_size=2, max_new_tokens=16, greedy=True)
    on = other.generate(prompts, **kw)
    assert on.common_prefix_tokens == _prefix_len(other)
    _same(on, other.generate(prompts, shared_prefix=False, **kw))
