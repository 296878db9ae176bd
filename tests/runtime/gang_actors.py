"""Gang actors for the runtime's gang tests (functions import them by path)."""

from __future__ import annotations

import datetime
import os
import sys
import time

import torch
import torch.distributed as dist

from rlhfless.runtime.rendezvous import member


class AllReduce:
    """Joins its gang's gloo process group in ``__init__`` from what the runtime told it.

    ``hang_rank`` never becomes ready (it sleeps in ``__init__``); ``fail_rank`` raises in
    :meth:`all_reduce` (the others then wait in the collective).
    """

    def __init__(self, hang_rank: int = -1, fail_rank: int = -1) -> None:
        self.member = member()
        self.fail_rank = fail_rank
        print(f"rank {self.member.rank} of {self.member.world_size} starting", file=sys.stderr)
        if self.member.rank == hang_rank:
            time.sleep(3600)
        dist.init_process_group(
            "gloo",
            rank=self.member.rank,
            world_size=self.member.world_size,
            timeout=datetime.timedelta(seconds=60),
        )

    def info(self) -> dict[str, object]:
        return {
            "rank": dist.get_rank(),
            "world_size": dist.get_world_size(),
            "address": self.member.address,
            "pid": os.getpid(),
            "interface": os.environ.get("GLOO_SOCKET_IFNAME"),
        }

    def all_reduce(
        self, values: list[float], hold_rank: int = -1, hold_s: float = 0.0
    ) -> list[float]:
        """Sum of ``values * (rank + 1)`` over the ranks; ``hold_rank`` joins ``hold_s`` late."""
        rank = dist.get_rank()
        if rank == self.fail_rank:
            raise ValueError(f"rank {rank} refuses")
        if rank == hold_rank:
            time.sleep(hold_s)
        t = torch.tensor(values, dtype=torch.float64) * (rank + 1)
        dist.all_reduce(t)
        return [float(x) for x in t]
