"""Synthetic long-tailed response lengths for the scaling tests (seeded, pure Python)."""

from __future__ import annotations

import random

from rlhfless.scaling import GroupWork


def lognormal_groups(
    n: int, g: int, seed: int = 0, median: float = 200.0, sigma: float = 0.8, cap: int = 2048
) -> list[list[int]]:
    rng = random.Random(seed)
    mu = __import__("math").log(median)
    return [[min(cap, int(rng.lognormvariate(mu, sigma))) for _ in range(g)] for _ in range(n)]


def heavy_tail_groups(
    n: int, g: int, seed: int = 0, median: int = 200, cap: int = 4096
) -> list[list[int]]:
    """5% of samples are 10x the median, the rest spread narrowly around it."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        group = []
        for _ in range(g):
            x = median * 10 if rng.random() < 0.05 else rng.randint(median // 2, median * 3 // 2)
            group.append(min(cap, x))
        out.append(group)
    return out


def works_from(groups: list[list[int]], prompt: int = 100) -> list[GroupWork]:
    return [
        GroupWork(group_id=i, prefill_tokens=prompt, lengths=tuple(float(x) for x in ls))
        for i, ls in enumerate(groups)
    ]
