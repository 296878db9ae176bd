"""Moving a sequence's state to another function: ship its KV cache, or recompute it there.

Both cut-and-migrate (a sequence's prompt + partial response) and shared prefixes (a prompt
prefix used on several functions) face the same choice, decided by :meth:`TransferParams.choose`:

* ship KV:   ``latency_seconds + tokens * kv_bytes_per_token / bandwidth_bytes_per_s``
* re-prefill: ``tokens / prefill_tokens_per_s`` on the receiving function.

``kv_bytes_per_token`` is ``2 (K and V) * layers * kv_heads * head_dim * bytes per value``
(:func:`kv_bytes_per_token`). The defaults are a 7B model with grouped-query attention (Qwen2.5-7B:
28 layers, 4 KV heads of 128, bf16 -> 57,344 B/token) shipped at 10 GB/s (100 GbE is 12.5 GB/s;
PCIe and NVLink within a node are faster), against a 12k tokens/s prefill. At those numbers
shipping is ~15x cheaper per token plus a 5 ms fixed cost, so it wins above ~65 tokens; an engine
that cannot import a KV cache sets ``bandwidth_bytes_per_s = 0`` to always re-prefill.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from rlhfless.scaling.errors import BadScalingSetting

TransferMethod = Literal["ship_kv", "reprefill"]


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int = 2) -> float:
    """Bytes of KV cache per token: ``2 * layers * kv_heads * head_dim * dtype_bytes``."""
    for name, value in (
        ("layers", layers),
        ("kv_heads", kv_heads),
        ("head_dim", head_dim),
        ("dtype_bytes", dtype_bytes),
    ):
        if not (isinstance(value, int) and value >= 1):
            raise BadScalingSetting(name, value, "an integer >= 1")
    return float(2 * layers * kv_heads * head_dim * dtype_bytes)


class TransferParams(msgspec.Struct, frozen=True, kw_only=True):
    kv_bytes_per_token: float = 57344.0  # Qwen2.5-7B, bf16 (see module docstring)
    bandwidth_bytes_per_s: float = 10e9  # 0 = the engine cannot import KV: always re-prefill
    latency_seconds: float = 0.005  # per shipment: connection, header, cache insert
    prefill_tokens_per_s: float = 12000.0  # re-prefill rate on the receiving function

    def __post_init__(self) -> None:
        for name in ("kv_bytes_per_token", "bandwidth_bytes_per_s", "latency_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise BadScalingSetting(name, value, "a finite number >= 0")
        if not (math.isfinite(self.prefill_tokens_per_s) and self.prefill_tokens_per_s > 0):
            raise BadScalingSetting(
                "prefill_tokens_per_s", self.prefill_tokens_per_s, "a finite number > 0"
            )

    def ship_seconds(self, tokens: float) -> float:
        if self.bandwidth_bytes_per_s <= 0:
            return math.inf
        return self.latency_seconds + tokens * self.kv_bytes_per_token / self.bandwidth_bytes_per_s

    def reprefill_seconds(self, tokens: float) -> float:
        return tokens / self.prefill_tokens_per_s

    def choose(self, tokens: float) -> tuple[TransferMethod, float]:
        """The cheaper way to get ``tokens`` tokens of state onto another function, and its seconds."""
        ship, redo = self.ship_seconds(tokens), self.reprefill_seconds(tokens)
        return ("ship_kv", ship) if ship < redo else ("reprefill", redo)
