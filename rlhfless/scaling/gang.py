"""How many devices a training gang should hold: the cheapest size whose time stays within a
fraction of the fastest size's, the rule :func:`~rlhfless.scaling.choose_k` applies to rollout
functions.

Why. Sharded training does not always get faster with more devices. FSDP moves each step's
weights and gradients (about three times the weight bytes per device per step) over the
network whatever the gang's size, so once compute per device falls below that traffic, a larger
gang only holds more devices for the same seconds. A serverless system pays for every device it
holds: it should hold the fewest that keep the stage fast. The caller estimates each
candidate's seconds and dollars (its time model knows compute, traffic and memory); this module
only chooses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from rlhfless.scaling.errors import BadScalingInput, BadScalingSetting


class GangOption(msgspec.Struct, frozen=True, kw_only=True):
    """One candidate gang: ``devices`` held for an estimated ``seconds`` costing ``usd``."""

    devices: int
    seconds: float
    usd: float

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise BadScalingInput("GangOption", f"devices must be >= 1, got {self.devices}")
        for name in ("seconds", "usd"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise BadScalingInput("GangOption", f"{name} must be a finite number >= 0, "
                                      f"got {value!r}")  # fmt: skip


def cheapest_gang(options: Sequence[GangOption], within_fraction: float) -> GangOption:
    """The cheapest option whose seconds are within ``1 + within_fraction`` of the fastest
    option's; ties go to the faster, then to the fewer devices."""
    if not options:
        raise BadScalingInput("cheapest_gang", "no candidate gang (none fits?)")
    if not (math.isfinite(within_fraction) and within_fraction >= 0):
        raise BadScalingSetting("within_fraction", within_fraction, "a finite number >= 0")
    fastest = min(o.seconds for o in options)
    ok = [o for o in options if o.seconds <= fastest * (1.0 + within_fraction)]
    return min(ok, key=lambda o: (o.usd, o.seconds, o.devices))
