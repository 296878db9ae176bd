"""HFEngine on the tiny model: shared-prefix prefill, log-prob agreement, values, weights."""

from pathlib import Path

import pytest
import torch

from rlhfless.adapters.hf import (
    EngineError,
    HFEngine,
    PrefixKV,
    ValueModel,
    pack_sequences,
    response_logprobs,
    values,
)


def _flat_prompts(gen, prompts):
    return [prompts[s.prompt_index] for s in gen.samples]


def test_shared_prefix_greedy_equals_naive(engine: HFEngine, prompts: list[list[int]]) -> None:
    shared = engine.generate(prompts, group_size=4, max_new_tokens=24, greedy=True)
    naive = engine.generate(
        prompts, group_size=4, max_new_tokens=24, greedy=True, shared_prefix=False
    )
    assert [s.token_ids for s in shared.samples] == [s.token_ids for s in naive.samples]
    assert [s.finish_reason for s in shared.samples] == [s.finish_reason for s in naive.samples]
    for a, b in zip(shared.samples, naive.samples, strict=True):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-4


def test_shared_prefix_greedy_equals_each_prompt_alone(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    batched = engine.generate(prompts, group_size=2, max_new_tokens=16, greedy=True)
    for i, p in enumerate(prompts):
        alone = engine.generate([p], group_size=1, max_new_tokens=16, greedy=True)
        assert batched.samples[2 * i].token_ids == alone.samples[0].token_ids


def test_shared_prefix_sampling_equals_naive_for_the_same_seed(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    kw = dict(group_size=8, max_new_tokens=32, temperature=1.0, seed=7)
    shared = engine.generate(prompts, **kw)
    naive = engine.generate(prompts, shared_prefix=False, **kw)
    assert [s.token_ids for s in shared.samples] == [s.token_ids for s in naive.samples]


def test_prefill_counts_each_distinct_prompt_once(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    dup = [*prompts, prompts[0]]  # the same prompt twice in a batch is prefilled once too
    shared = engine.generate(dup, group_size=8, max_new_tokens=4, seed=0)
    naive = engine.generate(dup, group_size=8, max_new_tokens=4, seed=0, shared_prefix=False)
    distinct = sum(len(p) for p in prompts)
    assert shared.prefill_tokens == distinct
    assert naive.prefill_tokens == 8 * sum(len(p) for p in dup)
    assert shared.decode_tokens == sum(len(s.token_ids) for s in shared.samples)


def test_samples_are_group_major_and_seeded(engine: HFEngine, prompts: list[list[int]]) -> None:
    a = engine.generate(prompts, group_size=3, max_new_tokens=16, seed=11)
    b = engine.generate(prompts, group_size=3, max_new_tokens=16, seed=11)
    c = engine.generate(prompts, group_size=3, max_new_tokens=16, seed=12)
    assert [s.prompt_index for s in a.samples] == [i for i in range(len(prompts)) for _ in range(3)]
    assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples]
    assert [s.token_ids for s in a.samples] != [s.token_ids for s in c.samples]


def test_eos_ends_a_sample_and_length_caps_it(engine: HFEngine, prompts: list[list[int]]) -> None:
    eos = engine.tokenizer.eos_id
    gen = engine.generate(prompts, group_size=8, max_new_tokens=20, seed=3)
    reasons = {s.finish_reason for s in gen.samples}
    assert reasons == {"eos", "length"}  # the random tiny model does both at this length
    for s in gen.samples:
        assert len(s.logprobs) == len(s.token_ids) <= 20
        assert eos not in s.token_ids[:-1]
        if s.finish_reason == "eos":
            assert s.token_ids[-1] == eos
        else:
            assert len(s.token_ids) == 20 and s.token_ids[-1] != eos


def test_rollout_logprobs_match_recomputation(engine: HFEngine, prompts: list[list[int]]) -> None:
    for temperature in (1.0, 0.7):
        gen = engine.generate(
            prompts, group_size=4, max_new_tokens=24, temperature=temperature, seed=5
        )
        resp = [s.token_ids for s in gen.samples]
        recomputed = engine.logprobs(_flat_prompts(gen, prompts), resp, temperature=temperature)
        diff = max(
            (r - torch.tensor(s.logprobs)).abs().max().item()
            for r, s in zip(recomputed, gen.samples, strict=True)
        )
        assert diff < 1e-4


def test_response_logprobs_has_grad_and_zero_padding(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    gen = engine.generate(prompts, group_size=2, max_new_tokens=12, seed=1)
    resp = [s.token_ids for s in gen.samples]
    batch = pack_sequences(_flat_prompts(gen, prompts), resp, engine.tokenizer.pad_id)
    lp = response_logprobs(engine.model, batch)
    assert lp.shape == batch.response_mask.shape and lp.dtype == torch.float32
    assert torch.all(lp[batch.response_mask == 0] == 0)
    lp.sum().backward()
    grads = [p.grad for p in engine.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    no_grad = engine.logprobs(_flat_prompts(gen, prompts), resp)
    for i, r in enumerate(no_grad):
        assert torch.allclose(lp[i, : len(r)].detach(), r, atol=1e-6)


def test_weights_round_trip_with_version(engine: HFEngine, tiny_dir: Path, prompts) -> None:
    other = HFEngine.load(tiny_dir)
    sd = {k: v + 0.05 * torch.randn_like(v) for k, v in engine.state_dict().items()}
    before = other.generate(prompts, 1, 12, greedy=True)
    other.load_state_dict(sd, version=3)
    assert other.version == 3
    after = other.generate(prompts, 1, 12, greedy=True)
    assert [s.token_ids for s in before.samples] != [s.token_ids for s in after.samples]
    engine.load_state_dict(sd, version=3)
    same = engine.generate(prompts, 1, 12, greedy=True)
    assert [s.token_ids for s in same.samples] == [s.token_ids for s in after.samples]


def test_value_model_values_per_response_token(tiny_dir: Path, engine: HFEngine, prompts) -> None:
    critic = ValueModel.from_pretrained(tiny_dir)
    torch.nn.init.normal_(critic.head.weight)  # zero init would make every value trivially 0
    resp = [[5, 6, 7], [8], [9, 10, 11, 12, 2]]
    vs = values(critic, prompts[:3], resp, engine.tokenizer.pad_id)
    assert [v.shape[0] for v in vs] == [3, 1, 5]
    # A value depends only on the tokens before it: padding and later tokens change nothing.
    alone = values(critic, prompts[:1], [resp[0][:2]], engine.tokenizer.pad_id)[0]
    assert torch.allclose(alone, vs[0][:2], atol=1e-5)
    batch = pack_sequences(prompts[:3], resp, engine.tokenizer.pad_id)
    out = critic(batch)
    out.sum().backward()
    assert critic.head.weight.grad is not None


def test_bad_inputs_are_named(engine: HFEngine, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="temperature"):
        engine.generate([[1, 3]], 2, 4, temperature=0.0)
    with pytest.raises(EngineError, match="empty prompt"):
        engine.generate([[]], 2, 4)
    with pytest.raises(EngineError, match="config.json"):
        HFEngine.load(tmp_path)


def test_prefix_from_another_engine_gives_the_same_samples(
    engine: HFEngine, tiny_dir: Path, prompts: list[list[int]]
) -> None:
    # A prefill function computes the KV; a decode function (another engine) decodes from it.
    prefill_fn, decode_fn = engine, HFEngine.load(tiny_dir)
    shipped = PrefixKV.from_tensors(
        prefill_fn.prefill(prompts).prompts,
        {k: v.clone() for k, v in prefill_fn.prefill(prompts).to_tensors().items()},
    )
    kw = dict(group_size=4, max_new_tokens=20, temperature=1.0, seed=9)
    local = prefill_fn.generate(prompts, **kw)
    remote = decode_fn.generate(prompts, prefix=shipped, **kw)
    assert remote.prefill_tokens == 0
    assert [s.token_ids for s in remote.samples] == [s.token_ids for s in local.samples]
    with pytest.raises(EngineError, match="not in the given prefix"):
        decode_fn.generate([[1, 9, 9, 9]], 1, 4, prefix=shipped)


def test_cut_then_resume_equals_uncut_under_greedy(
    engine: HFEngine, prompts: list[list[int]]
) -> None:
    full = engine.generate(prompts, group_size=2, max_new_tokens=24, greedy=True)
    steps = []
    cut = engine.generate(
        prompts, 2, 24, greedy=True, stop=lambda done, total: steps.append(done) or len(steps) >= 6
    )
    assert {s.finish_reason for s in cut.samples} == {"cut"}  # greedy random model: no EOS
    assert all(len(s.token_ids) == 6 for s in cut.samples)
    resumed = engine.resume(prompts, cut.samples, max_new_tokens=24, greedy=True)
    for a, b in zip(resumed.samples, full.samples, strict=True):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-4
    assert resumed.decode_tokens == sum(24 - 6 for _ in cut.samples)
