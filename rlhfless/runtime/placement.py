"""Which node a new function goes to. Pure: the runtime builds the views, this ranks them."""

from __future__ import annotations

import msgspec


class NodeView(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    slots: int
    busy: int  # live functions that are not idle in the warm pool
    live: int  # every live function, warm ones included
    warm_actor: bool  # holds a warm function of the same actor class
    has_version: bool  # its weight cache holds the current policy version


def choose(views: list[NodeView]) -> str:
    """Locality first among nodes with a free slot, then the least-loaded node.

    Preference, in order: (a) a warm function of the same actor (its imports and caches are
    hot), (b) the current weight version cached (no network transfer), (c) the least load.
    Locality never overloads a node: when no node has a free slot, only load counts.
    """
    if not views:
        raise ValueError("no live node to place a function on")
    free = [v for v in views if v.busy < v.slots]
    if free:
        return min(free, key=_preference).name
    return min(views, key=lambda v: (v.busy / v.slots, v.live / v.slots, v.name)).name


def _preference(v: NodeView) -> tuple[bool, bool, float, int, str]:
    return (not v.warm_actor, not v.has_version, v.busy / v.slots, v.live, v.name)


def place_gang(
    views: list[NodeView], slot_busy: dict[str, list[int]], n: int
) -> list[tuple[str, int]]:
    """(node, slot) for each of a gang's ``n`` members, in rank order, one slot each.

    ``slot_busy[node][slot]`` counts the live functions on that slot that are not idle in the
    warm pool. Packed on one node when one has ``n`` free slots (the preferred such node, by
    :func:`choose`'s order): its collectives then never leave the machine. Else spread over the
    nodes with the most free slots (ranks grouped by node); else :func:`_least_busy`.
    """
    if n < 1:
        raise ValueError(f"a gang has at least one member, not {n}")
    total = sum(v.slots for v in views)
    if n > total:
        raise ValueError(f"a gang of {n} needs {n} slots; the nodes up have {total}")
    order = sorted(views, key=_preference)

    def free(v: NodeView) -> list[int]:
        return [s for s, busy in enumerate(slot_busy[v.name]) if busy == 0]

    for v in order:
        if len(free(v)) >= n:
            return [(v.name, s) for s in free(v)[:n]]
    spread = [(v.name, s) for v in sorted(order, key=lambda v: -len(free(v))) for s in free(v)]
    if len(spread) >= n:
        return spread[:n]
    return _least_busy(order, slot_busy, n)


def _least_busy(
    order: list[NodeView], slot_busy: dict[str, list[int]], n: int
) -> list[tuple[str, int]]:
    """Too few free slots anywhere: members share the least-busy slots (each spawn then waits
    for room under ``max_functions_per_slot``), on one node when one has ``n`` slots at all."""
    big = [v for v in order if v.slots >= n]
    if big:  # the node whose n least-busy slots are least busy (ties: preference order)
        v = min(big, key=lambda v: sum(sorted(slot_busy[v.name])[:n]))
        least = sorted(range(v.slots), key=lambda s: (slot_busy[v.name][s], s))[:n]
        return [(v.name, s) for s in sorted(least)]
    slots = [(v.name, s) for v in order for s in range(v.slots)]  # grouped by node, in order
    least_busy = set(sorted(slots, key=lambda ns: slot_busy[ns[0]][ns[1]])[:n])
    return [ns for ns in slots if ns in least_busy]
