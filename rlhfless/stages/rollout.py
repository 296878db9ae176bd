"""The rollout stage: sample G responses per prompt with the current policy weights."""

from __future__ import annotations

from typing import Any

from rlhfless.adapters.hf import HFEngine
from rlhfless.stages.common import DTYPES


class RolloutActor:
    """Hosts an engine; receives versioned weights; never mixes versions within one call."""

    def __init__(self, model_dir: str, dtype: str = "float32") -> None:
        self.engine = HFEngine.load(model_dir, dtype=DTYPES[dtype])

    def version(self) -> int:
        return self.engine.version

    def load_weights(self, state_dict: dict[str, Any], version: int) -> int:
        self.engine.load_state_dict(state_dict, version)
        return version

    def generate(
        self,
        prompts: list[list[int]],
        group_size: int,
        max_new_tokens: int,
        temperature: float,
        seed: int,
        shared_prefix: bool = True,
    ) -> dict[str, Any]:
        gen = self.engine.generate(
            prompts, group_size, max_new_tokens, temperature=temperature, seed=seed,
            shared_prefix=shared_prefix,
        )  # fmt: skip
        import torch

        return {
            "response_ids": [s.token_ids for s in gen.samples],
            "logprobs": [torch.tensor(s.logprobs, dtype=torch.float32) for s in gen.samples],
            "finish": [s.finish_reason for s in gen.samples],
            "version": self.engine.version,
            "prefill_tokens": gen.prefill_tokens,
            "decode_tokens": gen.decode_tokens,
            "seconds": gen.prefill_seconds + gen.decode_seconds,
        }
