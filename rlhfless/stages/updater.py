"""The base of the functions that update a model: the policy trainer and the PPO critic.

Their state (weights, optimiser, version) is handed over through a node-local state directory,
written behind each step (``stages/handover.py``); a cold function replays the steps its loaded
state lacks from kept inputs, so none is lost. A warm function keeps it in memory.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import torch

from rlhfless.stages.handover import HandOver, StateDir


class Updater:
    """What the trainer and the critic share: state handed over through ``self.handover``
    (stages/handover.py), re-run from kept inputs by ``self._update`` when a cold function's
    state lacks steps. A subclass sets the model, optimiser and hand-over, and ``_update``."""

    role = ""
    handover: HandOver
    model: torch.nn.Module
    opt: torch.optim.Optimizer

    def _update(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        raise NotImplementedError

    def _share(self, parts: list[list[int]]) -> list[tuple[list[int], bool]]:
        """The micro-batches this process runs, each with whether it counts: all of them here;
        a rank of a gang takes its share (stages/sharded.py)."""
        return [(idx, True) for idx in parts]

    def _summed(self, values: list[float]) -> list[float]:
        """Statistics of the whole batch from this process's micro-batches: its own here; a
        gang adds up its ranks' (stages/sharded.py)."""
        return values

    @property
    def version(self) -> int:
        return self.handover.version

    def _catch_up(self, expected_version: int | None, replay: list[dict[str, Any]] | None) -> int:
        return self.handover.catch_up(self.role, expected_version, replay, self._update)

    def _step(
        self, expected_version: int | None, replay: list[dict[str, Any]] | None, *args: Any
    ) -> dict[str, Any]:
        """One update at the run's version: land the last write, replay what a cold function's
        state lacks, update, move the version on; the reply says what is durable."""
        self.handover.flush()  # the last step's state, if nothing started its write
        replayed = self._catch_up(expected_version, replay)
        t0 = time.perf_counter()
        stats: dict[str, Any] = self._update(*args)
        self.handover.stepped()
        stats["version"] = self.version
        stats["durable_version"] = self.handover.durable
        stats["replayed"] = replayed
        stats["seconds"] = time.perf_counter() - t0  # the update alone
        return stats

    def sync(
        self, expected_version: int | None = None, replay: list[dict[str, Any]] | None = None
    ) -> int:
        """Catch up to the run's version (a cold function replays what its state lacks) once,
        before a streamed stage's calls, which then need not carry the replay each."""
        return self._catch_up(expected_version, replay)

    def set_threads(self, threads: int) -> int:
        """Use ``threads`` CPU threads from now on: a streamed step shares the machine with the
        rollout tail until it ends (on a GPU each function has its own device anyway)."""
        torch.set_num_threads(max(1, threads))
        return torch.get_num_threads()

    def persist(
        self, expected_version: int | None = None, replay: list[dict[str, Any]] | None = None
    ) -> int:
        """Make the hand-over state durable at the run's version (before a checkpoint copies
        it): catch up from ``replay`` if this function came back cold, write, wait."""
        self.handover.flush()
        self._catch_up(expected_version, replay)
        return self.handover.flush()

    def save_checkpoint(self, path: str) -> str:
        self.handover.wait()
        StateDir(path, durable=True).save(self.model, self.opt, self.version)
        return path

    def rlhfless_on_release(self) -> None:
        """Released (scaled to zero): land the write behind before the process exits."""
        self.handover.flush()

    def memory(self) -> dict[str, int]:
        """Bytes this process holds of parameters, gradients and optimiser state (a sharded
        trainer's rank: its shards)."""

        def nbytes(t: torch.Tensor) -> int:
            local = t.to_local() if hasattr(t, "to_local") else t
            return local.numel() * local.element_size()

        params = list(self.model.parameters())
        moments = [
            v for s in self.opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)
        ]
        return {
            "param_bytes": sum(nbytes(p) for p in params),
            "grad_bytes": sum(nbytes(p.grad) for p in params if p.grad is not None),
            "optim_bytes": sum(nbytes(m) for m in moments),
            # the process's peak resident memory (Linux: KiB), shared libraries included
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
