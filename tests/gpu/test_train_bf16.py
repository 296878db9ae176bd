"""A bf16 training step on the GPU with the project's engine, scoring and loss: sampled tokens
given a positive advantage become more likely, and everything stays finite and in bf16."""

from pathlib import Path

import pytest
import torch

from rlhfless.adapters.hf import HFEngine, pack_sequences, response_logprobs
from rlhfless.adapters.tiny import build_tiny_model
from rlhfless.stages import algorithms as alg

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(120)]


@torch.no_grad()
def mean_logprob(model: torch.nn.Module, batch) -> float:
    mask = batch.response_mask
    return float((response_logprobs(model, batch) * mask).sum() / mask.sum())


def test_bf16_policy_step_on_the_gpu(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "model", seed=0, size="small")
    engine = HFEngine.load(model_dir, dtype=torch.bfloat16, device="cuda")
    prompts = [engine.tokenizer.encode_prompt(p) for p in ("abx3=", "cx5=")]
    gen = engine.generate(prompts, group_size=4, max_new_tokens=12, seed=0)
    responses = [s.token_ids for s in gen.samples]
    assert all(len(r) > 0 for r in responses)
    prompt_rows = [prompts[s.prompt_index] for s in gen.samples]
    old = engine.logprobs(prompt_rows, responses)
    assert all(t.isfinite().all() for t in old)

    model = engine.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = pack_sequences(prompt_rows, responses, engine.tokenizer.pad_id, engine.device)
    mask = batch.response_mask
    old_rows = torch.zeros_like(mask)
    for i, t in enumerate(old):
        old_rows[i, : len(t)] = t.to(engine.device)
    adv = torch.ones(len(responses), device=engine.device)  # every sampled token was good
    before = mean_logprob(model, batch)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        logp = response_logprobs(model, batch)
        loss, _clip = alg.policy_loss(logp, old_rows, adv, mask)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        assert loss.isfinite() and norm.isfinite() and float(norm) > 0
        opt.step()
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cuda" for p in model.parameters())
    after = mean_logprob(model, batch)
    assert after > before + 0.01, f"mean log-prob {before:.4f} -> {after:.4f}"
