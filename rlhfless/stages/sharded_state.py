"""A sharded trainer's hand-over state and checkpoints: ``torch.distributed.checkpoint`` (DCP).

Every rank writes its own shards of the weights and of AdamW's moments into one directory and
rank 0 writes DCP's metadata (each shard's global offsets), so a later gang of *any* size, or a
single process (``handover.load_sharded``), reads back exactly its own part. The directory is
swapped in atomically as the single-process one is (``common.atomic_dir_write``): rank 0 holds
the lock and does the swap, the other ranks write into the temporary directory it made.

The write runs behind the step on a thread (stages/handover.py), so its collectives use a
process group of their own: the main thread's next forward all-gathers on the default group at
the same time, and one group must see its collectives in the same order on every rank. The
state dicts are taken on the main thread before the thread starts (DTensor views of the live
shards; nothing changes them until ``HandOver.wait``).

Limit: every rank must see the same directory, so a gang spanning machines needs the run
directory on shared storage (one machine: the node-local disk, as for one process).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from rlhfless.stages.common import atomic_dir_write, recover_dir
from rlhfless.stages.handover import HandOver, StateDir, is_sharded, load_sharded


class ShardedStateDir(StateDir):
    """A state directory written and read by every rank of a gang together (collective)."""

    def __init__(self, path: str | Path, group: Any, durable: bool = False) -> None:
        super().__init__(path, durable)
        self.group = group  # the gloo group the state's collectives run on
        self.rank = dist.get_rank(group)
        self.snapshot: tuple[dict[str, Any], dict[str, Any]] | None = None  # see ShardedHandOver

    def _rank0(self, fn: Any) -> Any:
        """``fn()`` on rank 0 (the one that locks and swaps), its result on every rank."""
        box = [fn() if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def exists(self) -> bool:
        return bool(self._rank0(lambda: StateDir.exists(self)))

    def written_by_one(self) -> bool:
        """The directory holds a single process's state (safetensors + torch.save)."""

        def plain() -> bool:
            with self.locked():
                return recover_dir(self.path) and not is_sharded(self.path)

        return bool(self._rank0(plain))

    def save(
        self,
        module: torch.nn.Module,
        opt: torch.optim.Optimizer,
        version: int,
        weights_file: Path | None = None,
    ) -> None:
        """Collective: every rank calls it. ``weights_file`` is unused (shards, not a file)."""
        msd, osd = self.snapshot or get_state_dict(module, opt)
        self.snapshot = None
        state = {"model": msd, "optim": osd}

        def write(tmp: Path) -> None:
            dist.barrier(group=self.group)  # tmp exists: the others may write into it
            dcp_save(state, checkpoint_id=str(tmp), process_group=self.group)
            (tmp / "version").write_text(str(version))
            (tmp / "ranks").write_text(str(dist.get_world_size(self.group)))

        if self.rank == 0:
            with self.locked():
                atomic_dir_write(self.path, write, durable=self.durable)
        else:
            dist.barrier(group=self.group)
            tmp = self.path.with_name(self.path.name + ".tmp")
            dcp_save(state, checkpoint_id=str(tmp), process_group=self.group)
        dist.barrier(group=self.group)  # swapped in: durable on every rank

    def load(self, module: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
        """Collective: this rank's shards of a sharded directory written at any gang size."""
        if self.rank == 0:
            with self.locked():
                recover_dir(self.path)
                dist.barrier(group=self.group)
                load_sharded(self.path, module, opt, self.group)
                dist.barrier(group=self.group)  # everyone read it: writers may swap it
        else:
            dist.barrier(group=self.group)
            load_sharded(self.path, module, opt, self.group)
            dist.barrier(group=self.group)
        return int((self.path / "version").read_text())


class ShardedHandOver(HandOver):
    """The hand-over written behind the step by every rank (see the module's docstring)."""

    state: ShardedStateDir

    def write_behind(self, weights_file: Path | None = None) -> None:
        if self.unsaved:  # the state dicts on this (the main) thread; the write on the writer's
            self.state.snapshot = get_state_dict(self.module, self.opt)
        super().write_behind(None)
