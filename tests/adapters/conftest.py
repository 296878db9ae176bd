from pathlib import Path

import pytest
import torch

from rlhfless.adapters.hf import HFEngine
from rlhfless.adapters.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture
def engine(tiny_dir: Path) -> HFEngine:
    torch.manual_seed(0)
    return HFEngine.load(tiny_dir)


@pytest.fixture
def prompts(engine: HFEngine) -> list[list[int]]:
    # Different lengths on purpose: left padding must not change any prompt's outputs.
    texts = ["3xa", "12xb", "7xc", "40xh", "1xd"]
    return [engine.tokenizer.encode_prompt(t) for t in texts]
