"""A sharded trainer slowed down so that a test can kill a rank at a known point.

The training is the real one; only time is added: each micro-batch's pass sleeps, each update
leaves a marker file (``<state_dir>/../markers/update-v<version>-r<rank>-p<pid>``) as it
starts, and rank 0 holds its hand-over write back for a while, so a test can kill a rank mid-step
or before the state written behind a step is on disk.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rlhfless.stages.sharded import ShardedTrainerActor

PASS_S = 0.05  # added to every micro-batch pass
WRITE_S = 1.5  # rank 0's hand-over write waits this long first


class SlowShardedTrainer(ShardedTrainerActor):
    def __init__(self, model_dir: str, train: dict[str, Any], state_dir: str, *rest: Any) -> None:
        super().__init__(model_dir, train, state_dir, *rest)
        self.markers = Path(state_dir).parent / "markers"
        self.markers.mkdir(parents=True, exist_ok=True)
        save = self.handover.state.save

        def slow_save(*args: Any, **kwargs: Any) -> None:
            if self.rank == 0:
                time.sleep(WRITE_S)
            save(*args, **kwargs)

        self.handover.state.save = slow_save  # type: ignore[method-assign]

    def _update(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        name = f"update-v{self.version}-r{self.rank}-p{os.getpid()}"
        (self.markers / name).write_text("")
        return super()._update(*args, **kwargs)

    def _backward(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(PASS_S)
        super()._backward(*args, **kwargs)
