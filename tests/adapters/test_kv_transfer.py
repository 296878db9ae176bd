"""Cut sequences continued from their shipped KV caches (adapters/kv_transfer.py), fp32 tiny model.

What holds: under greedy decoding a sample cut, shipped and resumed is the sample generated
without a cut, token for token, with log-probs within 1e-5 (the decode batches differ in padding
and composition, so only the float summation order differs). Under sampling, a resume given the
cut samples' sampling keys (``Generation.rng``) draws what the uncut run draws, whether from a
shipped cache or by re-prefill; without the keys it draws fresh tokens, the same both ways for the
same seed: the migration method never changes the sample.
"""

import pytest
import torch
from msgspec.structs import replace

from rlhfless.adapters.hf import EngineError, HFEngine, Sample
from rlhfless.adapters.kv_transfer import export_rows, import_rows, kv_tokens
from rlhfless.runtime.messages import Call, Codec

LOGPROB_TOL = 1e-5


def _cut_after(steps: int):
    seen: list[int] = []
    return lambda finished, total: seen.append(finished) or len(seen) >= steps


def _shipped(gen) -> list[torch.Tensor]:
    return [gen.kv[r] for r in range(len(gen.samples))]


def _max_diff(a: Sample, b: Sample) -> float:
    return max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True))


def test_greedy_resume_from_shipped_kv_equals_the_uncut_samples(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    full = engine.generate(prompts, group_size=2, max_new_tokens=24, greedy=True)
    cut = engine.generate(prompts, 2, 24, greedy=True, stop=_cut_after(6), ship_kv=True)
    assert {s.finish_reason for s in cut.samples} == {"cut"}  # greedy random model: no EOS
    # Each row holds exactly prompt + tokens fed so far (the last sampled token is not yet fed).
    for s, row in zip(cut.samples, _shipped(cut), strict=True):
        assert kv_tokens(row) == len(prompts[s.prompt_index]) + len(s.token_ids) - 1
    resumed = engine.resume(prompts, cut.samples, 24, greedy=True, kv=_shipped(cut))
    assert resumed.prefill_tokens == 0  # nothing recomputed
    assert resumed.kv_tokens == sum(kv_tokens(r) for r in _shipped(cut))
    for a, b in zip(resumed.samples, full.samples, strict=True):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert _max_diff(a, b) < LOGPROB_TOL
    assert resumed.decode_tokens == sum(24 - 6 for _ in cut.samples)
    assert resumed.steps == 24 - 6  # steps run by the resume, not the cut samples' earlier ones


def test_rows_of_different_prompt_and_partial_lengths_in_one_resume_batch(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    # Two functions cut at different steps (and hold prompts of different lengths): their rows
    # meet in one resume batch, left-padded to the widest like prompts are.
    first, second = prompts[:3], prompts[3:]
    full = engine.generate(prompts, 2, 30, greedy=True)
    a = engine.generate(first, 2, 30, greedy=True, stop=_cut_after(4), ship_kv=True)
    b = engine.generate(second, 2, 30, greedy=True, stop=_cut_after(11), ship_kv=True)
    moved = [*a.samples, *(replace(s, prompt_index=s.prompt_index + 3) for s in b.samples)]
    kv = [*_shipped(a), *_shipped(b)]
    assert len({kv_tokens(r) for r in kv}) >= 3 and len({len(s.token_ids) for s in moved}) == 2
    resumed = engine.resume(prompts, moved, 30, greedy=True, kv=kv)
    for got, want in zip(resumed.samples, full.samples, strict=True):
        assert got.token_ids == want.token_ids
        assert _max_diff(got, want) < LOGPROB_TOL


def test_rows_with_and_without_a_shipped_cache_share_one_resume(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    full = engine.generate(prompts, 2, 24, greedy=True)
    cut = engine.generate(prompts, 2, 24, greedy=True, stop=_cut_after(5), ship_kv=True)
    kv = [r if i % 2 else None for i, r in enumerate(_shipped(cut))]  # half re-prefilled here
    resumed = engine.resume(prompts, cut.samples, 24, greedy=True, kv=kv)
    redo = [s for i, s in enumerate(cut.samples) if i % 2 == 0]
    assert resumed.prefill_tokens > 0 and resumed.kv_tokens > 0
    assert resumed.prefill_tokens <= sum(
        len(prompts[s.prompt_index]) + len(s.token_ids) - 1 for s in redo
    )
    for got, want in zip(resumed.samples, full.samples, strict=True):
        assert got.token_ids == want.token_ids
        assert _max_diff(got, want) < LOGPROB_TOL


def test_a_common_prefix_layout_exports_only_real_tokens(engine: HFEngine) -> None:
    # A shared system prompt is prefilled once: rows are [prefix | pad | suffix | generated].
    system = engine.tokenizer.encode_prompt("abcdefgh0123456789abcdefgh")
    prompts = [system + engine.tokenizer.encode(t) for t in ("3xa", "12xbc", "7x")]
    full = engine.generate(prompts, 2, 20, greedy=True)
    cut = engine.generate(prompts, 2, 20, greedy=True, stop=_cut_after(7), ship_kv=True)
    assert full.common_prefix_tokens >= 16
    resumed = engine.resume(prompts, cut.samples, 20, greedy=True, kv=_shipped(cut))
    assert [s.token_ids for s in resumed.samples] == [s.token_ids for s in full.samples]


def test_sampled_resume_draws_the_same_tokens_from_a_shipped_cache_as_by_reprefill(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    cut = engine.generate(prompts, 4, 32, seed=3, stop=_cut_after(3), ship_kv=True)
    partial = [s for s in cut.samples if s.finish_reason == "cut"]
    rows = [r for r, s in enumerate(cut.samples) if s.finish_reason == "cut"]
    assert len(partial) >= 4
    kv = [cut.kv[r] for r in rows]
    shipped = engine.resume(prompts, partial, 32, seed=11, kv=kv)
    redone = engine.resume(prompts, partial, 32, seed=11)
    assert redone.prefill_tokens > 0 and shipped.prefill_tokens == 0
    for a, b in zip(shipped.samples, redone.samples, strict=True):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert _max_diff(a, b) < LOGPROB_TOL


def test_a_sampled_resume_with_the_cut_sampling_keys_is_the_uncut_sample(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    full = engine.generate(prompts, 4, 32, seed=3)
    cut = engine.generate(prompts, 4, 32, seed=3, stop=_cut_after(3), ship_kv=True)
    rows = [r for r, s in enumerate(cut.samples) if s.finish_reason == "cut"]
    partial = [cut.samples[r] for r in rows]
    rng = [cut.rng[r] for r in rows]
    for kv in ([cut.kv[r] for r in rows], None):  # shipped cache, and re-prefill
        resumed = engine.resume(prompts, partial, 32, seed=99, kv=kv, rng=rng)
        for got, r in zip(resumed.samples, rows, strict=True):
            assert got.token_ids == full.samples[r].token_ids
            assert _max_diff(got, full.samples[r]) < LOGPROB_TOL


def test_shipped_rows_survive_the_runtime_wire_format(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    full = engine.generate(prompts, 1, 16, greedy=True)
    cut = engine.generate(prompts, 1, 16, greedy=True, stop=_cut_after(4), ship_kv=True)
    codec = Codec()
    frames = codec.encode(Call(call_id=1, method="resume", args=[_shipped(cut)], kwargs={}))
    msg = codec.decode([bytes(f) for f in frames])
    kv = msg.args[0]
    assert all(torch.equal(a, b) for a, b in zip(kv, _shipped(cut), strict=True))
    resumed = engine.resume(prompts, cut.samples, 16, greedy=True, kv=kv)
    assert [s.token_ids for s in resumed.samples] == [s.token_ids for s in full.samples]


def test_export_then_import_round_trips_a_left_padded_batch(engine: HFEngine) -> None:
    pre = engine.prefill([[1, 5, 6, 7], [1, 8], [1, 9, 9]], min_common_prefix=None)
    cache = pre.cache_for(torch.arange(3), engine.model.config)
    rows = export_rows(cache, pre.mask, torch.tensor([10, 11, 12]), torch.ones(3, dtype=bool))
    assert sorted(rows) == [10, 11, 12] and [kv_tokens(rows[r]) for r in rows] == [4, 2, 3]
    again, mask = import_rows([rows[10], rows[11], rows[12]], engine.model.config, engine.device)
    assert torch.equal(mask, pre.mask)
    for (k, v), k0, v0 in zip(
        [(layer.keys, layer.values) for layer in again.layers], pre.keys, pre.values, strict=True
    ):
        real = pre.mask.bool()[:, None, :, None].expand_as(k0)
        assert torch.equal(k[real], k0[real]) and torch.equal(v[real], v0[real])
        assert not k[~real].any()  # padding columns are zero (and masked)


def test_a_shipped_row_of_the_wrong_length_is_refused(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    cut = engine.generate(prompts, 1, 16, greedy=True, stop=_cut_after(4), ship_kv=True)
    kv = _shipped(cut)
    kv[0] = kv[0][:, :, :, :-1]
    with pytest.raises(EngineError, match="shipped KV of row 0 holds"):
        engine.resume(prompts, cut.samples, 16, greedy=True, kv=kv)


def test_no_cache_is_exported_unless_asked(engine: HFEngine, prompts: list[list[int]]) -> None:
    cut = engine.generate(prompts, 1, 16, greedy=True, stop=_cut_after(4))
    assert cut.kv == {}
