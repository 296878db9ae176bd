"""KV caches that move between functions: a prefilled prefix, and the rows of cut sequences.

Two shipments leave one function's KV cache for another's:

* ``PrefixKV``: prefilled prompts (the prefill function's half of prefill/decode
  disaggregation), expanded on the decode function to every sample of a group.
* **Cut rows** (cut-and-migrate): when a generate function cuts its unfinished sequences it can
  export each one's cache (:func:`export_rows`), and the resume function continues them from it
  (:func:`resume_prefix`) instead of re-prefilling prompt + partial response.

A cut row's state: at a cut the last sampled token has not been fed to the model yet, so the
cache holds K and V of ``prompt + tokens[:-1]`` (n tokens) and the next forward feeds
``tokens[-1]`` at position n. :func:`export_rows` takes exactly those n real columns of the row
(mask 1; left padding, the padding between a common prefix and a suffix, and nothing else is
dropped), in order, as one tensor ``[2 (K, V), layers, kv_heads, n, head_dim]``. Rotary
embeddings are applied to K before it is cached, so a column carries its position with it and
moving it to another column changes nothing; only ``position_ids`` of new tokens (n, n + 1, ...)
and the attention mask (which columns are real) matter.

:func:`resume_prefix` lays the rows out the way the engine lays out prompts: left-padded to the
widest (pad columns zero and masked), then feeds every row's last token at its own position n in
one forward. The result is a ``PrefixKV`` whose logits are each row's next-token logits, which
``HFEngine.generate(prefix=...)`` decodes from. Rows that arrive without a cache (the sender chose
re-prefill, or could not export) are prefilled here over ``prompt + tokens[:-1]`` and join the
same batch, so one decode serves both.

Only full-attention caches are exported: a sliding-window layer keeps fewer columns than the mask
and :func:`export_rows` then returns nothing (the pipeline re-prefills). The vLLM engine cannot
import a cache; it always re-prefills.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from rlhfless.adapters.errors import EngineError

if TYPE_CHECKING:
    from torch import nn


class PrefillEngine(Protocol):
    """What the decode loop and :func:`resume_prefix` use of an engine (``HFEngine`` is one):
    a protocol here rather than an import of hf.py, which imports both."""

    @property
    def model(self) -> Any: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def tokenizer(self) -> Any: ...
    def prefill(
        self, prompts: Sequence[Sequence[int]], min_common_prefix: int | None = ...
    ) -> PrefixKV: ...


def cache_kwarg(model: nn.Module) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` in 5.2x; accept either version."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def kv_of(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def cache_of(keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], config) -> Any:
    """A fresh DynamicCache holding these per-layer KV tensors."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
        cache.update(k, v, layer)
    return cache


@dataclass
class PrefixKV:
    """Prefilled prompts: per-layer KV [P, kv_heads, L, head_dim] and last logits.

    Rows are left-padded, or [common prefix | pad | suffix] when a common prefix was prefilled
    once; either way ``mask`` marks the real tokens, which are all a decode step needs.
    """

    prompts: list[list[int]]  # row i holds the KV of prompts[i]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor  # [P, L] attention mask (0 = padding)
    logits: torch.Tensor  # [P, V] logits at each prompt's last position
    seconds: float = 0.0
    tokens: int = 0  # prompt tokens run through the model (padding and the reuse not counted)
    common: int = 0  # length of the prefix common to all prompts, prefilled once (0: none)

    def cache_for(self, index: torch.Tensor, config) -> Any:
        """A fresh DynamicCache whose row j is this prefix's row ``index[j]``."""
        return cache_of(
            [k.index_select(0, index) for k in self.keys],
            [v.index_select(0, index) for v in self.values],
            config,
        )

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor dict for the runtime's zero-copy frames (prompts travel as ids)."""
        out = {"mask": self.mask, "logits": self.logits}
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            out[f"k{i}"], out[f"v{i}"] = k, v
        return out

    @classmethod
    def from_tensors(cls, prompts: list[list[int]], tensors: dict[str, torch.Tensor]) -> PrefixKV:
        n = sum(1 for name in tensors if name.startswith("k"))
        return cls(
            prompts=[list(p) for p in prompts],
            keys=[tensors[f"k{i}"] for i in range(n)],
            values=[tensors[f"v{i}"] for i in range(n)],
            mask=tensors["mask"],
            logits=tensors["logits"],
        )

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.to_tensors().values())


# -- cut rows ------------------------------------------------------------------------------


def exportable(cache: Any, mask: torch.Tensor) -> bool:
    """Every layer keeps one column per mask column (full attention; no sliding window)."""
    layers = getattr(cache, "layers", ())
    if any(getattr(layer, "is_sliding", False) for layer in layers):
        return False
    return all(k.shape[-2] == mask.shape[-1] for k, _ in kv_of(cache))


def export_rows(
    cache: Any, mask: torch.Tensor, active: torch.Tensor, keep: torch.Tensor
) -> dict[int, torch.Tensor]:
    """The real-token KV of the batch rows selected by ``keep``, keyed by ``active[row]``.

    ``cache`` and ``mask`` (``[B, W]``) are the decode batch at a cut; ``active[b]`` is batch row
    b's sample index. Each value is ``[2, layers, kv_heads, n, head_dim]``, n = ``mask[b].sum()``
    (prompt + tokens fed so far). Empty when the cache cannot be exported.
    """
    if not exportable(cache, mask):
        return {}
    kv = kv_of(cache)
    rows = keep.nonzero().squeeze(-1).tolist()
    return {int(active[b]): _row(kv, mask, b) for b in rows}


def _row(
    kv: Sequence[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor, b: int
) -> torch.Tensor:
    real = mask[b].bool()
    k = torch.stack([layer_k[b][:, real] for layer_k, _ in kv])
    v = torch.stack([layer_v[b][:, real] for _, layer_v in kv])
    return torch.stack([k, v])


def kv_tokens(row: torch.Tensor) -> int:
    """Tokens whose K and V a shipped row holds."""
    return int(row.shape[3])


def import_rows(
    rows: Sequence[torch.Tensor], config, device: torch.device
) -> tuple[Any, torch.Tensor]:
    """A DynamicCache and ``[R, W]`` attention mask holding ``rows`` left-padded to the widest."""
    width = max(kv_tokens(r) for r in rows)
    _, layers, heads, _, dim = rows[0].shape
    kv = rows[0].new_zeros((2, layers, len(rows), heads, width, dim), device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        n = kv_tokens(r)
        if n:
            kv[:, :, i, :, width - n :] = r.to(device)
            mask[i, width - n :] = 1
    return cache_of(list(kv[0]), list(kv[1]), config), mask


def resume_prefix(
    engine: PrefillEngine, seqs: Sequence[Sequence[int]], shipped: Sequence[torch.Tensor | None]
) -> PrefixKV:
    """The decode state of ``seqs`` (prompt + partial response each) from their shipped caches.

    ``shipped[j]`` holds K and V of ``seqs[j][:-1]`` (from :func:`export_rows`), or is None: that
    row is prefilled here. ``tokens`` of the result counts only the tokens prefilled here.
    """
    t0 = time.perf_counter()
    model = engine.model
    rows = list(shipped)
    for j, (seq, row) in enumerate(zip(seqs, rows, strict=True)):
        if row is not None and kv_tokens(row) != len(seq) - 1:
            raise EngineError(
                f"shipped KV of row {j} holds {kv_tokens(row)} tokens, its prompt + partial "
                f"response has {len(seq)} (a cut row's cache holds all but the last token)"
            )
    missing = [j for j, r in enumerate(rows) if r is None and len(seqs[j]) > 1]
    prefilled = 0
    if missing:  # re-prefill what arrived without a cache, then take its rows like shipped ones
        pre = engine.prefill([list(seqs[j][:-1]) for j in missing])
        prefilled = pre.tokens
        row_of = {tuple(p): i for i, p in enumerate(pre.prompts)}
        kv = list(zip(pre.keys, pre.values, strict=True))
        for j in missing:
            rows[j] = _row(kv, pre.mask, row_of[tuple(seqs[j][:-1])])
    like = next(r for r in rows if r is not None)
    rows = [r if r is not None else like[:, :, :, :0] for r in rows]  # one-token rows: no KV
    cache, mask = import_rows(rows, model.config, engine.device)
    last = torch.tensor([[s[-1]] for s in seqs], dtype=torch.long, device=engine.device)
    position = mask.sum(-1, keepdim=True)  # real tokens before the last one: its position
    mask = torch.cat([mask, mask.new_ones((len(seqs), 1))], dim=-1)
    logits = model(
        input_ids=last,
        attention_mask=mask,
        position_ids=position,
        use_cache=True,
        **{cache_kwarg(model): cache},
    ).logits[:, -1, :]
    kv = kv_of(cache)
    return PrefixKV(
        prompts=[list(s) for s in seqs],
        keys=[k for k, _ in kv],
        values=[v for _, v in kv],
        mask=mask,
        logits=logits,
        seconds=time.perf_counter() - t0,
        tokens=prefilled,
    )
