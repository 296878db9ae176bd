"""Shared prompt prefixes: find them, prefill each once, and decide how other functions get them.

Two kinds of sharing:

1. **Identical prompts.** A GRPO group is one prompt sampled G times (``group_size``), and a batch
   may repeat a prompt: each distinct prompt is prefilled once.
2. **Common prefixes across distinct prompts** (a system prompt, a few-shot preamble). Distinct
   prompts are sorted; adjacent ones share their longest common prefix (LCP). A run of adjacent
   prompts shares the minimum LCP inside it; the run is either served by that one prefix or split
   at its smallest LCP into two runs with longer prefixes, whichever saves more prefill tokens
   (a Cartesian-tree recursion, so "system prompt + few-shot block A" and "... block B" each get
   their own longer prefix when that is better). Only prefixes of at least ``min_len`` tokens
   used by at least 2 distinct prompts count. One prefix per prompt (no nesting).

Tokens saved are against naive prefill, where every sample prefills its whole prompt.

Across functions (:func:`plan_prefix_routes`): a prefix (or a whole prompt, when a group is split)
used on several functions is prefilled on its *home* function (the one with most users) and
either shipped as KV to the others or recomputed there, whichever
:meth:`~rlhfless.scaling.transfer.TransferParams.choose` says is cheaper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from rlhfless.scaling.errors import BadScalingInput, BadScalingSetting
from rlhfless.scaling.transfer import TransferMethod, TransferParams


class SharedPrefix(msgspec.Struct, frozen=True, kw_only=True):
    tokens: tuple[int, ...]  # the prefix's token ids
    prompts: list[int]  # distinct-prompt indices (into PrefixPlan.distinct) that start with it

    @property
    def length(self) -> int:
        return len(self.tokens)


class PrefixPlan(msgspec.Struct, kw_only=True):
    distinct: list[int]  # per distinct prompt: index of its first occurrence in the input
    prompt_to_distinct: list[int]  # per input prompt: its distinct prompt
    lengths: list[int]  # per distinct prompt: its tokens
    samples: list[int]  # per distinct prompt: samples decoded from it (occurrences x group)
    prefixes: list[SharedPrefix]
    prefix_of: list[int]  # per distinct prompt: index into prefixes, -1 for none
    naive_prefill_tokens: int  # every sample prefills its whole prompt
    planned_prefill_tokens: int  # each shared prefix once + each distinct prompt's rest once

    @property
    def tokens_saved(self) -> int:
        return self.naive_prefill_tokens - self.planned_prefill_tokens


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _best_runs(lcp: list[int], min_len: int) -> list[tuple[int, int, int]]:
    """Runs (lo, hi, length) over sorted prompts lo..hi (inclusive) maximising saved tokens.

    ``lcp[i]`` is the LCP of sorted prompts i and i+1. Iterative post-order over the Cartesian
    tree (split at the minimum LCP) so that thousands of prompts need no deep recursion.
    """
    n = len(lcp) + 1
    best: dict[tuple[int, int], tuple[int, list[tuple[int, int, int]]]] = {}
    stack: list[tuple[int, int, bool]] = [(0, n - 1, False)]
    while stack:
        lo, hi, ready = stack.pop()
        if hi <= lo:
            best[(lo, hi)] = (0, [])
            continue
        cut = min(range(lo, hi), key=lambda i: (lcp[i], i))
        if not ready:
            stack.append((lo, hi, True))
            stack.append((lo, cut, False))
            stack.append((cut + 1, hi, False))
            continue
        length = lcp[cut]
        whole = (hi - lo) * length if length >= min_len else 0
        left, right = best.pop((lo, cut)), best.pop((cut + 1, hi))
        split = left[0] + right[0]
        if whole > 0 and whole >= split:
            best[(lo, hi)] = (whole, [(lo, hi, length)])
        else:
            best[(lo, hi)] = (split, left[1] + right[1])
    return best[(0, n - 1)][1]


def plan_prefixes(
    prompts: Sequence[Sequence[int]], group_size: int = 1, min_len: int = 16
) -> PrefixPlan:
    """Deduplicate ``prompts`` (each sampled ``group_size`` times) and find shared prefixes."""
    if not (isinstance(group_size, int) and group_size >= 1):
        raise BadScalingSetting("group_size", group_size, "an integer >= 1")
    if not (isinstance(min_len, int) and min_len >= 1):
        raise BadScalingSetting("prefix min_len", min_len, "an integer >= 1 (tokens)")
    index: dict[tuple[int, ...], int] = {}
    distinct: list[int] = []
    keys: list[tuple[int, ...]] = []
    samples: list[int] = []
    to_distinct: list[int] = []
    for i, p in enumerate(prompts):
        key = tuple(p)
        d = index.get(key)
        if d is None:
            d = index[key] = len(distinct)
            distinct.append(i)
            keys.append(key)
            samples.append(0)
        samples[d] += group_size
        to_distinct.append(d)
    naive = sum(len(p) for p in prompts) * group_size
    prefixes: list[SharedPrefix] = []
    prefix_of = [-1] * len(keys)
    if len(keys) >= 2:
        order = sorted(range(len(keys)), key=lambda d: keys[d])
        lcp = [_lcp(keys[order[i]], keys[order[i + 1]]) for i in range(len(order) - 1)]
        for lo, hi, length in _best_runs(lcp, min_len):
            members = sorted(order[lo : hi + 1])
            for d in members:
                prefix_of[d] = len(prefixes)
            prefixes.append(SharedPrefix(tokens=keys[order[lo]][:length], prompts=members))
    planned = sum(p.length for p in prefixes) + sum(
        len(keys[d]) - (prefixes[prefix_of[d]].length if prefix_of[d] >= 0 else 0)
        for d in range(len(keys))
    )
    return PrefixPlan(
        distinct=distinct,
        prompt_to_distinct=to_distinct,
        lengths=[len(k) for k in keys],
        samples=samples,
        prefixes=prefixes,
        prefix_of=prefix_of,
        naive_prefill_tokens=naive,
        planned_prefill_tokens=planned,
    )


class PrefixRoute(msgspec.Struct, frozen=True, kw_only=True):
    """A prefix or whole prompt used on several functions: prefilled on ``home``, then moved."""

    kind: Literal["prefix", "prompt"]
    index: int  # into PrefixPlan.prefixes (kind "prefix") or PrefixPlan.distinct ("prompt")
    tokens: int
    home: int  # function that prefills it
    others: list[int]  # functions that receive it
    method: TransferMethod
    seconds: float  # per receiving function
    recompute_seconds: float  # what recomputing it on each would cost instead


def plan_prefix_routes(
    plan: PrefixPlan,
    functions_of: Sequence[Sequence[int]],
    transfer: TransferParams | None = None,
) -> list[PrefixRoute]:
    """Routes for prefixes / prompts whose users run on more than one function.

    ``functions_of[d]`` lists the functions the samples of distinct prompt ``d`` run on (one
    function when its group was kept together, several when it was split).
    """
    transfer = transfer or TransferParams()
    if len(functions_of) != len(plan.distinct):
        raise BadScalingInput(
            "plan_prefix_routes",
            f"functions_of has {len(functions_of)} entries for {len(plan.distinct)} distinct prompts",
        )
    routes: list[PrefixRoute] = []

    def route(kind: Literal["prefix", "prompt"], index: int, tokens: int, users: list[int]) -> None:
        counts: dict[int, int] = {}
        for f in users:
            counts[f] = counts.get(f, 0) + 1
        if len(counts) < 2 or tokens == 0:
            return
        home = min(counts, key=lambda f: (-counts[f], f))
        method, seconds = transfer.choose(tokens)
        routes.append(
            PrefixRoute(
                kind=kind,
                index=index,
                tokens=tokens,
                home=home,
                others=sorted(f for f in counts if f != home),
                method=method,
                seconds=seconds,
                recompute_seconds=transfer.reprefill_seconds(tokens),
            )
        )

    for q, pref in enumerate(plan.prefixes):
        users = [f for d in pref.prompts for f in set(functions_of[d])]
        route("prefix", q, pref.length, users)
    for d, fs in enumerate(functions_of):
        if len(set(fs)) > 1:
            # The prompt's own part; its shared prefix (if any) was routed above.
            q = plan.prefix_of[d]
            rest = plan.lengths[d] - (plan.prefixes[q].length if q >= 0 else 0)
            route("prompt", d, rest, list(fs))
    return routes
