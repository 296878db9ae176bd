"""A token prefix common to every distinct prompt of a batch, prefilled once.

Chat templates put the same system prompt in front of every user turn (SmolLM2-Instruct: its
default system prompt inside "<|im_start|>system ... <|im_end|>\\n<|im_start|>user\\n"), so a batch
of distinct prompts shares a long token prefix. ``HFEngine.prefill`` runs that prefix once (batch
of 1), expands its KV to the distinct prompts, then runs only the suffixes on top of it. The helpers
here decide how long the shared part is and lay out the suffix batch; the forwards stay in
``hf.py``.

Suffix layout (``suffix_batch``): the suffixes are left-padded, so the padding sits BETWEEN the
common prefix and each suffix: row = [prefix | pad ... pad | suffix]. Those pads have attention
mask 0 and each suffix token gets position id ``cut + j``, exactly where it sits in its own prompt,
so rotary embeddings and attention see what an unpadded prompt would (transformers builds the
causal mask from the cache offset and the 2D mask, and reads positions only from ``position_ids``).
Every row ends in a real token, so one ``logits_to_keep=1`` gives each prompt's next-token logits.

The vLLM adapter needs none of this: vLLM's automatic prefix caching already reuses the KV blocks
of any prefix its requests share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEFAULT_MIN_COMMON_PREFIX = 16  # below this, a separate batch-1 forward costs more than it saves


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and attention mask of ``seqs`` right-aligned in one ``[len(seqs), max_len]`` batch."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


def common_prefix_len(seqs: Sequence[Sequence[int]], min_len: int | None) -> int:
    """Tokens to prefill once for all of ``seqs``; 0 when sharing is off or not worth it.

    The longest common prefix, capped at ``shortest - 1``: decoding starts from the logits at each
    prompt's last token, and the suffix pass computes them only if every prompt keeps at least one
    token of its own (a prompt that IS the common prefix then contributes its last token).
    """
    if min_len is None or len(seqs) < 2:
        return 0  # one distinct prompt is prefilled once anyway
    first = seqs[0]
    n = min(len(s) for s in seqs) - 1
    for s in seqs[1:]:
        n = next((i for i in range(n) if s[i] != first[i]), n)
    return n if n >= min_len else 0


@dataclass
class SuffixBatch:
    """What follows the common prefix, in the layout the second prefill forward takes."""

    ids: torch.Tensor  # [D, W] each prompt's tokens after the prefix, left-padded
    mask: torch.Tensor  # [D, cut + W] the prefix (all 1), then padding (0), then the suffix (1)
    position_ids: torch.Tensor  # [D, W] cut + j for suffix token j: its place in its own prompt


def suffix_batch(seqs: Sequence[Sequence[int]], cut: int, pad_id: int) -> SuffixBatch:
    ids, tail = left_pad([list(s[cut:]) for s in seqs], pad_id)
    # Pads get the row's first suffix position; they are masked, so the value only has to be valid.
    position_ids = cut + (tail.cumsum(-1) - 1).clamp(min=0)
    mask = torch.cat([tail.new_ones((len(seqs), cut)), tail], dim=-1)
    return SuffixBatch(ids=ids, mask=mask, position_ids=position_ids)
