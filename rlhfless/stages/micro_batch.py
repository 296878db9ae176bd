"""How a training batch is cut into micro-batches, and what its loss averages over.

Shared by the policy trainer and the PPO critic (``stages/trainer.py``, ``stages/critic.py``).
"""

from __future__ import annotations


def micro_batches(lengths: list[int], parts: int, token_budget: int) -> list[list[int]]:
    """Sample indices in micro-batches of similar length: sorted, then cut so that each has at
    most ``token_budget`` padded tokens (0 = no limit), and at least ``parts`` micro-batches.

    Padding to the longest sample of a batch wastes most of the compute when lengths are
    long-tailed; sorting first keeps the long samples together.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    parts = max(1, min(parts, len(order)))
    per_part = -(-len(order) // parts)
    out: list[list[int]] = []
    current: list[int] = []
    for i in order:
        widest = max(lengths[i], *(lengths[j] for j in current)) if current else lengths[i]
        too_wide = token_budget and current and widest * (len(current) + 1) > token_budget
        if current and (len(current) >= per_part or too_wide):
            out.append(current)
            current = []
        current.append(i)
    if current:
        out.append(current)
    return out


def group_micro_batches(lengths: list[int], group_size: int, token_budget: int) -> list[list[int]]:
    """Micro-batches that never mix groups (rows i*G .. i*G+G-1): each group's rows cut by
    ``token_budget`` as :func:`micro_batches` cuts a batch. A micro-batch's rows, and so its
    forward pass, are then the same however the batch was split into chunks: the streamed and
    the staged first epoch compute the very same per-micro-batch gradients."""
    out: list[list[int]] = []
    for lo in range(0, len(lengths), group_size):
        part = micro_batches(lengths[lo : lo + group_size], 1, token_budget)
        out += [[lo + i for i in idx] for idx in part]
    return out


def units(response_ids: list[list[int]], agg: str) -> float:
    """What a loss of ``agg`` averages over: response tokens, or responses with tokens."""
    if agg == "seq-mean-token-mean":
        return float(sum(1 for r in response_ids if r))
    return float(sum(len(r) for r in response_ids))
