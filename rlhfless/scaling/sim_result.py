"""What a simulated rollout (:func:`~rlhfless.scaling.simulate.simulate_rollout`) reports: each
function's life (:class:`SimFunction`) and the totals (:class:`SimResult`). Split from the
simulator (which re-exports both) to keep that module to the simulation itself."""

from __future__ import annotations

import msgspec

from rlhfless.cost_models import CostModel, Lifetime
from rlhfless.scaling.curve import life_usd, new_lives_usd


class SimFunction(msgspec.Struct, kw_only=True):
    function_id: str
    cold_start_seconds: float
    requested_at: float = 0.0  # < 0 when pre-warmed before the rollout started
    ready_at: float
    finished_at: float = 0.0  # its last sequence finished (or it was cut)
    released_at: float = 0.0
    busy: list[tuple[float, float]] = []
    tokens: int = 0  # decode tokens produced here
    finished: int = 0  # sequences finished here
    cut_at: float | None = None
    warm: bool = False  # reused from an earlier rollout (curve.life_usd prices it by the second)

    @property
    def held_seconds(self) -> float:
        return self.released_at - self.requested_at

    @property
    def busy_seconds(self) -> float:
        return sum(e - s for s, e in self.busy)

    @property
    def idle_seconds(self) -> float:
        return max(0.0, self.held_seconds - self.cold_start_seconds - self.busy_seconds)

    def lifetime(self) -> Lifetime:
        return Lifetime(
            requested_at=self.requested_at,
            ready_at=self.ready_at,
            exited_at=self.released_at,
            busy=tuple(self.busy),
            label=self.function_id,
        )


class SimResult(msgspec.Struct, kw_only=True):
    makespan: float
    functions: list[SimFunction]
    moves: int  # sequences migrated
    cuts: int  # functions cut
    tokens_per_sequence: list[int]  # decode tokens each sequence got, over all functions
    finish_times: list[float] = []  # when each sequence finished (same order)

    @property
    def tail_seconds(self) -> float:
        """Rollout tail latency as Seer reports it: from the median sequence's finish to the
        last one's (0 without finish times)."""
        if not self.finish_times:
            return 0.0
        s = sorted(self.finish_times)
        return s[-1] - s[(len(s) - 1) // 2]

    @property
    def function_seconds(self) -> float:
        return sum(f.held_seconds for f in self.functions)

    @property
    def busy_seconds(self) -> float:
        return sum(f.busy_seconds for f in self.functions)

    @property
    def idle_seconds(self) -> float:
        return sum(f.idle_seconds for f in self.functions)

    @property
    def cold_seconds(self) -> float:
        return sum(f.cold_start_seconds for f in self.functions)

    def usd(
        self,
        model: CostModel,
        device_kind: str,
        continuous: bool = False,
        slots_per_function: int = 1,
    ) -> float:
        """Dollars under ``model``'s rules (a warm function by the second, as
        :func:`~rlhfless.scaling.curve.life_usd` prices it; new ones as the model rents them,
        :func:`~rlhfless.scaling.curve.new_lives_usd`); ``continuous``: rate x held seconds
        (a serverful slot rented for the whole job, where a per-start minimum does not recur)."""
        if continuous:
            return model.rate(device_kind) * self.function_seconds * slots_per_function
        warm = sum(
            life_usd(model, device_kind, 0.0, f.held_seconds, 0.0, slots_per_function, warm=True)
            for f in self.functions
            if f.warm
        )
        new = [f.lifetime() for f in self.functions if not f.warm]
        return warm + new_lives_usd(model, device_kind, new, slots_per_function)
