"""Sending a policy version to a node: whole, or as a delta against a version it holds.

The cluster (``nodes.py``) sends each version to each node once; this module decides how.
When the node's cache holds an earlier version that this machine's cache holds too (the
newest such is the base), the version goes as a :class:`~rlhfless.runtime.messages.WeightsDelta`
(``delta.py``) if that is under :data:`DELTA_PAYS_BELOW` of the full bytes; the node rebuilds
the version in its cache, checks every tensor's crc and acknowledges, or refuses (one line
saying why), and then the full version follows. A delta is computed once per (base, version)
on a thread, from this machine's cache, and shared by every node that holds that base.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from rlhfless.runtime.delta import WeightTraffic, diff, wire_bytes
from rlhfless.runtime.errors import SpawnError
from rlhfless.runtime.messages import Codec, Weights, WeightsDelta, WeightsRefused
from rlhfless.runtime.weights import crcs, load, versions

log = logging.getLogger("rlhfless.nodes")
# A delta this close to the full size saves too little wire time to pay for the node's rebuild
# (a copy of each changed tensor and a crc pass on top of the write a full version costs too).
DELTA_PAYS_BELOW = 0.8


class Receiver(Protocol):
    """A node weights are sent to, as the sender reads it (``nodes.RemoteNode`` is one)."""

    name: str
    state: str  # joining | up | lost
    versions: set[int]  # weight versions the node says it holds


N = TypeVar("N", bound=Receiver)


class WeightSender(Generic[N]):
    def __init__(
        self,
        send: Callable[[N, list[Any], float], Awaitable[None]],
        codec: Codec,
        cache_dir: str,
        deltas: bool,
    ) -> None:
        self._send = send
        self._codec = codec
        self.cache_dir = cache_dir  # this machine's cache: the bases deltas are made against
        self.deltas = deltas  # RuntimeConfig.weight_deltas
        self.traffic: dict[str, WeightTraffic] = {}  # per node
        self._refusals: dict[tuple[str, int], str] = {}  # (node, version) -> the node's reason
        self._diffs: dict[tuple[int, int], asyncio.Task[tuple[WeightsDelta, int]]] = {}

    def published(self) -> None:
        """A new version is current: deltas made for earlier ones are of no further use."""
        self._diffs.clear()

    def refused(self, node: str, msg: WeightsRefused) -> None:
        self._refusals[(node, msg.version)] = msg.reason

    async def send(
        self, node: N, version: int, tensors: dict[str, Any], nbytes: int, deadline: float
    ) -> int:
        """Send ``version`` (``nbytes`` whole) to ``node``; returns the bytes sent."""
        t0 = time.perf_counter()
        traffic = self.traffic.setdefault(node.name, WeightTraffic())
        made = await self._delta_for(node, version, nbytes)
        if made is not None and await self._delta_taken(node, made[0], deadline, traffic):
            sent, how = made[1], f"delta against v{made[0].base}"
            traffic.deltas += 1
        else:
            left = max(0.1, deadline - time.monotonic())
            await self._send(node, self._codec.encode(Weights(version, tensors)), left)
            # A refused delta crossed the link too.
            sent, how = nbytes + (made[1] if made is not None else 0), "whole"
            traffic.fulls += 1
        traffic.sent_bytes += sent
        traffic.full_bytes += nbytes
        traffic.seconds += time.perf_counter() - t0
        log.info(
            "weights v%d -> node %s %s: %.1f of %.1f MB (%.0f%% saved) in %.2fs",
            version, node.name, how, sent / 1e6, nbytes / 1e6,
            100 * (1 - sent / nbytes) if nbytes else 0.0, time.perf_counter() - t0,
        )  # fmt: skip
        return sent

    async def _delta_for(
        self, node: N, version: int, nbytes: int
    ) -> tuple[WeightsDelta, int] | None:
        """The delta for ``node`` (and its wire bytes) when it has a base and the delta pays."""
        if not self.deltas:
            return None
        here = set(versions(self.cache_dir))
        bases = [v for v in node.versions if v < version and v in here]
        if not bases or version not in here:
            return None
        key = (max(bases), version)
        if key not in self._diffs:
            self._diffs[key] = asyncio.create_task(
                asyncio.to_thread(self._diff, *key), name=f"rlhfless-delta-v{key[0]}-v{key[1]}"
            )
        try:
            # Shielded: another node may wait for the same delta when this send is cancelled.
            made = await asyncio.shield(self._diffs[key])
        except Exception as exc:  # e.g. the base was pruned by a newer version meanwhile
            log.warning("no delta v%d -> v%d (%s): sending it whole", *key, exc)
            return None
        return made if made[1] < DELTA_PAYS_BELOW * nbytes else None

    def _diff(self, base: int, version: int) -> tuple[WeightsDelta, int]:
        d = self.cache_dir
        delta = diff(
            load(base, d), load(version, d), version, base, crcs(base, d), crcs(version, d)
        )
        return delta, wire_bytes(delta)

    async def _delta_taken(
        self, node: N, delta: WeightsDelta, deadline: float, traffic: WeightTraffic
    ) -> bool:
        """Send the delta and wait for the node's answer: applied (True) or refused (False).

        Always confirmed, even where a whole version is not: after a refusal the node has
        nothing, and the spawn that follows must find the full version in its cache.
        """
        key = (node.name, delta.version)
        self._refusals.pop(key, None)
        left = max(0.1, deadline - time.monotonic())
        await self._send(node, self._codec.encode(delta), left)
        while delta.version not in node.versions:
            if key in self._refusals:
                log.warning("node %s refused %s", node.name, self._refusals.pop(key))
                traffic.refused += 1
                return False
            if node.state != "up":
                raise SpawnError(f"node {node.name} was lost while taking weights v{delta.version}")
            if time.monotonic() > deadline:
                raise SpawnError(
                    f"node {node.name} did not confirm weights v{delta.version} in time"
                )
            await asyncio.sleep(0.005)
        return True
