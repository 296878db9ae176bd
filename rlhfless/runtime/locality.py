"""Where functions go across nodes, and the policy weights each node caches.

A mixin of :class:`rlhfless.runtime.runtime.Runtime` (see :mod:`rlhfless.runtime.pool`):
the nodes that can take functions now, locality-aware placement, and weight publishing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec

from rlhfless.runtime.config import RuntimeConfig
from rlhfless.runtime.delta import WeightTraffic
from rlhfless.runtime.devices import NodeDevices
from rlhfless.runtime.nodes import Cluster
from rlhfless.runtime.placement import NodeView, choose
from rlhfless.runtime.state import FunctionState
from rlhfless.runtime.weights import save

log = logging.getLogger("rlhfless.runtime")


class Locality:
    # The runtime's state these methods use (set in Runtime.__init__ and start()).
    config: RuntimeConfig
    node: str
    devices: NodeDevices
    cluster: Cluster | None
    ray_agents: Any
    _fns: dict[str, FunctionState]
    _weights: tuple[int, dict[str, Any], int] | None
    _weights_dir: str

    async def _place_ray_agents(self) -> None:
        """Provider "ray": one agent per Ray node (placed by Ray), then joined like static ones."""
        from rlhfless.runtime.ray_provider import RayAgents  # ray is an optional extra

        cfg = self.config
        assert cfg.keys_dir is not None  # RuntimeConfig checks this for provider "ray"
        self.ray_agents = await asyncio.to_thread(
            RayAgents.start,
            cfg.ray_address,
            cfg.keys_dir,
            preload=cfg.preload,
            timeout_s=cfg.join_timeout_s,
        )
        for line in self.ray_agents.describe():
            log.info("ray provider: %s", line)
        self.config = msgspec.structs.replace(cfg, agents=(*cfg.agents, *self.ray_agents.addresses))

    def nodes(self) -> dict[str, NodeDevices]:
        """Nodes that can take functions now: this machine (unless excluded) and live agents."""
        out = {self.node: self.devices} if self.config.local_node or self.cluster is None else {}
        for remote in self.cluster.up() if self.cluster else []:
            assert remote.devices is not None  # set when the agent joined
            out[remote.name] = remote.devices
        return out

    def _devices_of(self, node: str | None) -> NodeDevices:
        if node is None or node == self.node:
            return self.devices
        return self.nodes()[node]

    def _place(self, path: str) -> str:
        nodes = self.nodes()
        if len(nodes) == 1:
            return next(iter(nodes))
        return choose(self._node_views(path))

    def _node_views(self, path: str) -> list[NodeView]:
        """What placement ranks each node up by (gangs use them too: gangs.py)."""
        nodes = self.nodes()
        views = []
        for name, devices in nodes.items():
            live = [f for f in self._fns.values() if f.record.node == name and f.state != "dead"]
            if name == self.node:
                has = True  # written here at publish time
            else:
                remote = self.cluster.by_name(name) if self.cluster else None
                has = (
                    remote is not None
                    and self.cluster is not None
                    and self.cluster.has_current(remote)
                )
            views.append(
                NodeView(
                    name=name,
                    slots=devices.slots,
                    busy=sum(f.state != "warm" for f in live),
                    live=len(live),
                    warm_actor=any(f.state == "warm" and f.actor == path for f in live),
                    has_version=has,
                )
            )
        return views

    def publish_weights(self, version: int, tensors: dict[str, Any]) -> None:
        """Make ``version`` current: cached here now, sent to each other node once, lazily.

        A function loads it with :func:`rlhfless.runtime.weights.load` from its node's cache.
        """
        nbytes = save(self._weights_dir, version, tensors)
        self._weights = (version, dict(tensors), nbytes)
        if self.cluster is not None:
            self.cluster.sender.published()

    def weight_bytes_sent(self) -> dict[str, int]:
        """Weight bytes sent over the network, per remote node (locality: once per version)."""
        return {n.name: n.bytes_sent for n in self.cluster.nodes} if self.cluster else {}

    def weight_traffic(self) -> dict[str, WeightTraffic]:
        """Per remote node: weight bytes sent, what whole versions would have taken (the bytes
        saved by deltas), versions sent as deltas and whole, and the seconds it took."""
        if self.cluster is None:
            return {}
        return {k: msgspec.structs.replace(v) for k, v in self.cluster.sender.traffic.items()}
