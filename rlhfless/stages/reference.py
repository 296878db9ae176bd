"""The reference stage: log-probs of the samples under the frozen initial policy (KL term)."""

from __future__ import annotations

from typing import Any

from rlhfless.adapters.hf import HFEngine
from rlhfless.stages.common import DTYPES, function_device


class ReferenceActor:
    def __init__(self, model_dir: str, dtype: str = "float32") -> None:
        self.engine = HFEngine.load(model_dir, dtype=DTYPES[dtype], device=function_device())

    def logprobs(
        self,
        prompt_ids: list[list[int]],
        response_ids: list[list[int]],
        temperature: float,
        group_size: int = 0,
    ) -> list[Any]:
        """Log-probs of the responses' tokens. ``group_size``: one forward pass per group of
        that many rows, so a sample's log-probs depend on its own group only, not on how the
        batch was split (the streamed iteration scores chunks, the staged one the batch)."""
        return [
            lp
            for lo, hi in blocks(len(prompt_ids), group_size)
            for lp in self.engine.logprobs(
                prompt_ids[lo:hi], response_ids[lo:hi], temperature=temperature
            )
        ]


def blocks(n: int, size: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of ``size`` rows covering ``n`` (one range when size is 0)."""
    step = size if size > 0 else max(n, 1)
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)]
