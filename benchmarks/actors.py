"""Actors for ``benchmarks/runtime.py``, importable by path (``benchmarks.actors:Echo``).

The same plain classes serve both runtimes: rlhfless imports them by path, Ray wraps them with
``ray.remote``. torch is imported at module level, so a process hosting any of them imports it.
"""

from __future__ import annotations

from typing import Any

import torch


class Echo:
    """Small calls and tensor transfer."""

    def __init__(self) -> None:
        self._out: torch.Tensor | None = None

    def ping(self, x: Any) -> Any:
        return x

    def take(self, t: torch.Tensor) -> int:
        """Receive a tensor, answer with something small (the byte count)."""
        return t.numel() * t.element_size()

    def make(self, nbytes: int) -> int:
        """Build (once) the tensor that :meth:`give` returns, outside the timed calls."""
        self._out = torch.ones(nbytes // 4, dtype=torch.float32)
        return nbytes

    def give(self) -> torch.Tensor:
        assert self._out is not None
        return self._out


class TorchOnly:
    """Cold start: a process that imports torch (this module) and nothing else."""

    def __init__(self) -> None:
        self.threads = torch.get_num_threads()

    def ping(self, x: Any = None) -> Any:
        return x


class TinyLlama:
    """Cold start like a real function: torch + transformers and a tiny model built in __init__."""

    def __init__(self, layers: int = 2) -> None:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
        )
        self.model = LlamaForCausalLM(cfg).eval()
        self.params = sum(p.numel() for p in self.model.parameters())

    def ping(self, x: Any = None) -> Any:
        return x

    def forward_sum(self) -> float:
        with torch.no_grad():
            return float(self.model(torch.arange(8).unsqueeze(0)).logits.sum())
