"""Simulated functions on a cluster of nodes, recorded as the runtime's billing events.

A :class:`FnRecord` is one function process: the slots it holds on one node, when it was
requested, ready, busy and exited. :meth:`Cluster.events` turns them into
:class:`~rlhfless.runtime.messages.BillingEvent` records, so the simulated bill comes from the
same :class:`~rlhfless.cost_models.Ledger` (same billing rules) as a real run's.

Locality: :meth:`Cluster.cached` says whether a node still holds a role's weights in host memory
(a function of that role exited there within the keep-alive), so a new function starts warm.
"""

from __future__ import annotations

import msgspec

from rlhfless.runtime.messages import BillingEvent


class FnRecord(msgspec.Struct, kw_only=True):
    function_id: str
    role: str  # stage: rollout, reference, trainer, engine (serverful: every stage)
    node: int
    slot: int
    slots: int
    requested_at: float
    ready_at: float
    exited_at: float = 0.0
    busy: list[tuple[float, float]] = []

    def add_busy(self, start: float, end: float) -> None:
        if end > start:
            self.busy.append((start, end))


class Cluster:
    def __init__(self, nodes: int, gpus_per_node: int, device_kind: str) -> None:
        self.nodes, self.gpus_per_node, self.device_kind = nodes, gpus_per_node, device_kind
        self.records: list[FnRecord] = []
        self._cache: dict[tuple[int, str], float] = {}  # (node, role) -> last exit
        self._open: dict[tuple[int, int], FnRecord] = {}  # (node, gpu) -> its latest rental

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def place(self, count: int, slots: int) -> list[tuple[int, int]]:
        """(node, first slot) for ``count`` functions of ``slots`` slots: the first (heaviest)
        on node 0, the learner's node (locality), filling node by node."""
        per_node = self.gpus_per_node // slots
        if count > per_node * self.nodes:
            raise ValueError(f"{count} functions of {slots} slots do not fit on the cluster")
        return [(i // per_node, (i % per_node) * slots) for i in range(count)]

    def start(
        self, role: str, node: int, slot: int, slots: int, requested_at: float, ready_at: float
    ) -> FnRecord:
        rec = FnRecord(
            function_id=f"{role}-{len(self.records)}",
            role=role,
            node=node,
            slot=slot,
            slots=slots,
            requested_at=requested_at,
            ready_at=ready_at,
        )
        self.records.append(rec)
        return rec

    def exit(self, rec: FnRecord, t: float) -> None:
        rec.exited_at = max(t, rec.ready_at)
        key = (rec.node, rec.role)
        self._cache[key] = max(self._cache.get(key, -1e300), rec.exited_at)

    def use(
        self,
        role: str,
        node: int,
        slot: int,
        slots: int,
        boot: float,
        ready: float,
        busy: list[tuple[float, float]],
        end: float,
        hold: float,
    ) -> None:
        """Serverless holding, per GPU: a stage needs GPUs ``slot .. slot + slots - 1`` of
        ``node`` from ``ready`` (after a ``boot``-second start) until ``end``. A GPU still held
        from an earlier use (released at most ``hold`` seconds ago: cheaper to keep than to
        restart under the cost model's rules) continues its rental; otherwise the old rental
        ends at its last use and a new one starts ``boot`` seconds before ``ready``."""
        for gpu in range(slot, slot + slots):
            key = (node, gpu)
            rec = self._open.get(key)
            if rec is None or ready - boot > rec.exited_at + hold:
                rec = self.start(role, node, gpu, 1, ready - boot, ready)
                self._open[key] = rec
            for s, e in busy:
                rec.add_busy(s, e)
            rec.exited_at = max(rec.exited_at, end)
        cached = (node, role)
        self._cache[cached] = max(self._cache.get(cached, -1e300), end)

    def cached(self, node: int, role: str, t: float, keep_alive: float) -> bool:
        last = self._cache.get((node, role))
        return last is not None and t - last <= keep_alive

    def events(self) -> list[BillingEvent]:
        return [
            BillingEvent(
                function_id=r.function_id,
                actor=f"sim:{r.role}",
                stage=r.role,
                node=f"n{r.node}",
                slot=r.slot,
                slots=r.slots,
                device_kind=self.device_kind,
                requested_at=r.requested_at,
                ready_at=r.ready_at,
                busy=sorted(r.busy),
                released_at=r.exited_at,
                exited_at=r.exited_at,
                exit_code=0,
            )
            for r in self.records
        ]
