"""The hand-over state of a training function (policy trainer, PPO critic), written behind it.

Functions are released between stages, so a trainer may come back cold; its state (weights,
optimiser, version) lives in a node-local directory swapped in atomically, and a warm function
keeps it in memory. Writing that directory inside every step put the write on the critical path
of the iteration: ~0.5-0.65 s of each step for the 75M model (600 MB of AdamW moments; measured
with py-spy in the pipeline, docs/vllm.md). So it is written *behind* the step instead, on a
thread, while the controller runs the next rollout. Nothing is lost when the function dies first:

* every reply carries ``durable_version``, the last version whose state is on disk;
* the controller keeps each step's inputs until a reply says they are durable, and sends the
  ones that are not along with the next step (``replay``);
* a cold function whose state is older than the run replays those steps first, then trains;
* a released function finishes its write before its process exits (``rlhfless_on_release``);
* a lock file serialises writers and loaders, so a cold function never reads a half-swapped
  directory while an old one is still writing (the kernel drops the lock if the writer dies).

``check_version`` still stops a function whose state is older than anything it can replay.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from rlhfless.stages.common import atomic_dir_write, recover_dir


class HandOverError(RuntimeError):
    """The hand-over state could not be written, or is older than anything the run can replay."""


def check_version(role: str, have: int, expected: int | None) -> None:
    """A cold function that found stale (or no) hand-over state must not train on silently."""
    if expected is not None and have != expected:
        raise HandOverError(
            f"{role} state is at version {have} but the run is at version {expected}: the "
            "hand-over state directory is stale or was lost; resume from a checkpoint"
        )


class StateDir:
    """Weights (safetensors), optimiser (torch.save, tensors only) and the version."""

    def __init__(self, path: str | Path, durable: bool = False) -> None:
        self.path = Path(path)
        self.durable = durable  # checkpoints: fsync; the per-step hand-over: page cache is enough

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def exists(self) -> bool:
        with self.locked():
            return recover_dir(self.path)

    def save(
        self,
        module: torch.nn.Module,
        opt: torch.optim.Optimizer,
        version: int,
        weights_file: Path | None = None,
    ) -> None:
        """``weights_file``: a safetensors file of these exact weights (the one just published),
        hard-linked instead of serialising the model again."""

        def write(tmp: Path) -> None:
            if not _link(weights_file, tmp / "weights.safetensors"):
                save_model(module, str(tmp / "weights.safetensors"))  # handles tied embeddings
            torch.save(opt.state_dict(), tmp / "optimizer.pt")
            (tmp / "version").write_text(str(version))

        with self.locked():
            atomic_dir_write(self.path, write, durable=self.durable)

    def load(self, module: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
        with self.locked():
            recover_dir(self.path)
            if is_sharded(self.path):  # written by a sharded trainer: any gang size reads it
                load_sharded(self.path, module, opt)
                return int((self.path / "version").read_text())
            load_model(module, str(self.path / "weights.safetensors"))
            opt.load_state_dict(torch.load(self.path / "optimizer.pt", weights_only=True))
            return int((self.path / "version").read_text())


def is_sharded(path: Path) -> bool:
    """A state directory that ``torch.distributed.checkpoint`` wrote (stages/sharded_state.py)."""
    return (path / ".metadata").is_file()


def load_sharded(
    path: Path, module: torch.nn.Module, opt: torch.optim.Optimizer, group: Any = None
) -> None:
    """Read a sharded (DCP) state into ``module`` and ``opt``, whatever gang size wrote it:
    DCP reshards by each tensor's global offsets. A plain module takes whole tensors; a
    sharded one (``group``: its ranks) takes its own shard. Keys are parameter names, so the
    optimiser's state lands on the same parameters at any size."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    msd, osd = get_state_dict(module, opt)  # the target's layout (creates Adam's moments)
    with warnings.catch_warnings():  # one process reading a sharded state is meant (no_dist)
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp_load(
            {"model": msd, "optim": osd}, checkpoint_id=str(path), process_group=group,
            no_dist=group is None,
        )  # fmt: skip
    set_state_dict(module, opt, model_state_dict=msd, optim_state_dict=osd)


def _link(src: Path | None, dest: Path) -> bool:
    """Safe because no published file is rewritten in place (a new version is a new file)."""
    if src is None:
        return False
    try:
        os.link(src, dest)
    except OSError:  # gone, or another file system
        return False
    return True


class HandOver:
    """A training function's state directory, written behind its steps on one thread."""

    def __init__(
        self,
        path: str | Path,
        module: torch.nn.Module,
        opt: torch.optim.Optimizer,
        state: StateDir | None = None,
        version: int | None = None,
    ) -> None:
        """``state``: how the directory is written (a sharded trainer's is collective);
        ``version``: the state was loaded already (a sharded trainer loads before sharding)."""
        self.state = state or StateDir(path)
        self.module, self.opt = module, opt
        if version is None:
            version = self.state.load(module, opt) if self.state.exists() else 0
        self.version = version
        self.durable = self.version  # the last version whose state is complete on disk
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def unsaved(self) -> bool:
        return self.durable != self.version and self._writer is None

    def stepped(self) -> None:
        """The in-memory state moved on one version (after an optimiser step)."""
        self.wait()
        self.version += 1

    def write_behind(self, weights_file: Path | None = None) -> None:
        """Start writing the current version on a thread (no-op when it is already written or
        being written). Nothing may change the module or optimiser until :meth:`wait`."""
        if not self.unsaved:
            return
        version = self.version

        def run() -> None:
            try:
                self.state.save(self.module, self.opt, version, weights_file)
                self.durable = version
            except BaseException as exc:  # surfaced by wait(), in the next call
                self._error = exc

        self._writer = threading.Thread(target=run, name="handover-write", daemon=True)
        self._writer.start()

    def wait(self) -> None:
        """Block until the write behind has landed; raise if it failed."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None:
            exc, self._error = self._error, None
            raise HandOverError(f"writing the hand-over state to {self.state.path} failed: {exc}")

    def flush(self) -> int:
        """Write the current version now (if not yet written) and wait; the durable version."""
        self.write_behind()
        self.wait()
        return self.durable

    def catch_up(
        self, role: str, expected: int | None, replay: list[dict[str, Any]] | None, apply: Any
    ) -> int:
        """Bring a function whose state is older than ``expected`` up to it by re-running the
        steps in ``replay`` (``{"version": v, "args": {...}}``, the inputs that produced
        version v) that it lacks, through ``apply(**args)``; then check the version. Returns
        the number of steps replayed."""
        self.wait()
        done = 0
        if expected is not None and self.version < expected:
            for entry in sorted(replay or [], key=lambda e: e["version"]):
                if entry["version"] == self.version + 1:
                    apply(**entry["args"])
                    self.stepped()
                    done += 1
        check_version(role, self.version, expected)
        return done
