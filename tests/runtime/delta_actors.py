"""Receivers of published weights for the delta tests (importable by path in a function)."""

from __future__ import annotations

from typing import Any

import torch

from rlhfless.runtime.delta import apply_in_place, as_delta
from rlhfless.runtime.weights import load


class CachedWeights:
    """Reads a version from its node's cache, where the runtime put it (whole or by delta)."""

    def tensors(self, version: int) -> dict[str, torch.Tensor]:
        return load(version)


class HeldWeights:
    """Holds weights in memory, as an engine does, and takes the next version whole or as a
    delta written in place."""

    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] = {}
        self.version = -1

    def load_full(self, tensors: dict[str, torch.Tensor], version: int) -> int:
        self.weights = {k: v.clone() for k, v in tensors.items()}  # frames are read-only
        self.version = version
        return version

    def load_delta(self, delta: Any) -> int:
        d = as_delta(delta)
        apply_in_place(self.weights, d, self.version)
        self.version = d.version
        return d.version

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.weights
