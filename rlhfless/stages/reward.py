"""The reward stage: rule-based verifiers of a task (a reward model plugs in the same way)."""

from __future__ import annotations

from typing import Any

import msgspec

from rlhfless.adapters.hf import load_tokenizer
from rlhfless.stages.common import task_from_config
from rlhfless.stages.config import TaskConfig


class RewardActor:
    """Scores responses with the task's verifier (decodes token ids with the model's tokenizer)."""

    def __init__(self, model_dir: str, task: dict[str, Any]) -> None:
        self.task = task_from_config(msgspec.convert(task, TaskConfig))
        self.tokenizer = load_tokenizer(model_dir)

    def score(self, prompt_index: list[int], response_ids: list[list[int]]) -> list[float]:
        out = []
        for i, ids in zip(prompt_index, response_ids, strict=True):
            text = self.tokenizer.decode(ids)
            out.append(float(self.task.score(self.task.get(i), text)))
        return out
