"""The rollout function of ``benchmarks/publish.py``, importable by path in a function."""

from __future__ import annotations

from typing import Any

from rlhfless.runtime.delta import apply_in_place, as_delta
from rlhfless.stages.rollout import RolloutActor


class DeltaRollout(RolloutActor):
    """A rollout function that also takes a version as a delta written into its engine's own
    parameters (only the changed elements are written; runtime/delta.py checks the base and
    the result by crc). RolloutActor itself takes whole versions only."""

    def load_delta(self, delta: Any) -> int:
        d = as_delta(delta)
        apply_in_place(self.engine.model.state_dict(), d, self.engine.version)
        self.engine.version = d.version
        return d.version
