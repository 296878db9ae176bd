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
        return min(
            free,
            key=lambda v: (not v.warm_actor, not v.has_version, v.busy / v.slots, v.live, v.name),
        ).name
    return min(views, key=lambda v: (v.busy / v.slots, v.live / v.slots, v.name)).name
