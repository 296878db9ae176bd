"""The reference stage: log-probs of the samples under the frozen initial policy (KL term)."""

from __future__ import annotations

from typing import Any

from rlhfless.adapters.hf import HFEngine
from rlhfless.stages.common import DTYPES


class ReferenceActor:
    def __init__(self, model_dir: str, dtype: str = "float32") -> None:
        self.engine = HFEngine.load(model_dir, dtype=DTYPES[dtype])

    def logprobs(
        self, prompt_ids: list[list[int]], response_ids: list[list[int]], temperature: float
    ) -> list[Any]:
        return self.engine.logprobs(prompt_ids, response_ids, temperature=temperature)
