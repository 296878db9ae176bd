"""A fresh run's directory hand-over: the earlier run's outputs are set aside, not lost.

A fresh run (no ``--resume``) in a directory holding an earlier run's outputs (the files
from metrics.jsonl to summary.json, and the checkpoint directory when it lies inside the run
directory) first moves them into ``.replaced/``. They stay there until the new run's first
iteration completes (its metrics line is written), then are deleted. Should the new run fail or
be interrupted (Ctrl-C) before that, its own files go to ``failed-attempt/`` (replacing an older
one) and the earlier run's are put back: a run that dies at start-up (a bad engine, an unreachable
agent) neither loses the earlier run nor leaves its history mixed with a new run's. A run killed
outright (SIGKILL) leaves ``.replaced/`` behind; the next run in the directory puts it back first.
Every step is a rename, and a half-done one is finished or undone by the next run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from rlhfless.stages.errors import RunError

# What a run writes into its directory and a fresh run must not mix with its own.
OUTPUTS = (
    "metrics.jsonl",
    "billing.jsonl",
    "lengths.jsonl",
    "samples.jsonl",
    "summary.json",
    "changes.jsonl",
    "state",
    "checkpoints",
)
REPLACED = ".replaced"
FAILED = "failed-attempt"
MANIFEST = "manifest.json"

log = logging.getLogger("rlhfless.run")


def run_outputs(run_dir: Path, checkpoint_root: Path) -> tuple[str, ...]:
    """OUTPUTS, plus the checkpoint directory (relative to ``run_dir``) when it lies inside it.

    One outside is left alone: the user chose it, and it may hold other runs' checkpoints.
    """
    try:
        rel = checkpoint_root.resolve().relative_to(run_dir.resolve())
    except ValueError:
        return OUTPUTS
    if (
        not rel.parts
        or rel.parts[0] in (*OUTPUTS, "model", FAILED)
        or rel.parts[0].startswith(REPLACED)
    ):
        return OUTPUTS  # the run dir itself, already covered, or not ours to move
    return (*OUTPUTS, rel.as_posix())


def _move(rels: Sequence[str], src: Path, dst: Path) -> None:
    """Rename each of ``rels`` that exists under ``src`` to the same place under ``dst``.

    Nothing is overwritten: a path already taken at ``dst`` (which no sequence of put_back and
    set_aside produces) keeps its source where it is, for :func:`_remove_emptied` to report.
    """
    for rel in rels:
        target = dst / rel
        if not os.path.lexists(src / rel) or os.path.lexists(target):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src / rel, target)


def _remove_emptied(folder: Path) -> None:
    """Delete ``folder`` once everything but its manifest has been moved out of it; anything
    still there is kept (renamed folders are never deleted with data in them)."""
    (folder / MANIFEST).unlink(missing_ok=True)
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()  # parents _move made for a nested checkpoint directory
    try:
        folder.rmdir()
    except OSError:
        log.warning("%s still holds files that could not be put back; move them by hand", folder)


class EarlierRun:
    """An earlier run's outputs, set aside while a fresh run in the same directory starts.

    On disk, one of (each a rename away from the next, so a killed process leaves a state the
    next run's :meth:`put_back` finishes or undoes):

    - ``.replaced.tmp/``: being filled; nothing of the new run exists yet.
    - ``.replaced/``: the new run is starting; its files are in the run dir.
    - ``.replaced.back/``: the new run's files are in ``failed-attempt/``; the earlier ones are
      on their way back.
    - ``.replaced.discard/``: the new run completed an iteration; being deleted.

    Each holds ``manifest.json``: the earlier run's paths that were moved, and the new run's
    (its config may place checkpoints elsewhere than the next process's).
    """

    def __init__(self, run_dir: Path, outputs: Sequence[str]) -> None:
        self.run_dir = run_dir
        self.outputs = tuple(outputs)
        self.staging = run_dir / f"{REPLACED}.tmp"
        self.aside = run_dir / REPLACED
        self.returning = run_dir / f"{REPLACED}.back"
        self.discarded = run_dir / f"{REPLACED}.discard"

    def _manifest(self, folder: Path) -> tuple[list[str], list[str]]:
        """(earlier run's paths, new run's paths) as the process that set them aside saw them."""
        try:
            m = json.loads((folder / MANIFEST).read_text())
            return list(m["earlier"]), list(m["attempt"])
        except (OSError, ValueError, KeyError):  # only before the first move; be safe anyway
            found = sorted(p.name for p in folder.iterdir() if p.name != MANIFEST)
            return found, list(self.outputs)

    def set_aside(self) -> bool:
        """Move the earlier run's outputs into ``.replaced/``; False when there are none."""
        earlier = [rel for rel in self.outputs if os.path.lexists(self.run_dir / rel)]
        if not earlier:
            return False
        stuck = [p for p in (self.staging, self.aside, self.returning) if p.exists()]
        if stuck:  # put_back ran first: what it left could not be put back
            raise RunError(
                f"{stuck[0]} holds files of an earlier run that could not be put back into "
                f"{self.run_dir}; move them by hand (or delete them), then start again"
            )
        self.staging.mkdir()
        try:
            manifest = {"earlier": earlier, "attempt": list(self.outputs)}
            (self.staging / MANIFEST).write_text(json.dumps(manifest))
            _move(earlier, self.run_dir, self.staging)
            self.staging.rename(self.aside)
        except BaseException:  # Ctrl-C among the renames: undo them now, not at the next run
            self.put_back()
            raise
        log.warning(
            "%s holds an earlier run: it is kept in %s until this run's first iteration "
            "completes, then deleted (and put back should this run fail before that)",
            self.run_dir, self.aside,
        )  # fmt: skip
        return True

    def discard(self) -> None:
        """The new run has completed an iteration: the earlier one is gone for good."""
        if self.aside.is_dir():
            self.aside.rename(self.discarded)  # one rename: never half kept, half deleted
        shutil.rmtree(self.discarded, ignore_errors=True)

    def put_back(self) -> bool:
        """Undo whatever part of a set-aside is on disk (this process's, or a killed one's):
        the new run's files into ``failed-attempt/``, the earlier run's back. True if any."""
        shutil.rmtree(self.discarded, ignore_errors=True)  # a discard cut short: finish it
        restored = False
        if self.staging.is_dir():  # a set-aside cut short: no new-run files exist yet
            _move(self._manifest(self.staging)[0], self.staging, self.run_dir)
            _remove_emptied(self.staging)
            restored = True
        if self.aside.is_dir():
            failed = self.run_dir / FAILED
            failed_tmp = self.run_dir / f"{FAILED}.tmp"  # kept by a cut-short put_back: add to it
            _move(self._manifest(self.aside)[1], self.run_dir, failed_tmp)
            if failed_tmp.is_dir():  # the new run wrote something: it replaces an older one
                shutil.rmtree(failed, ignore_errors=True)
                failed_tmp.rename(failed)
            self.aside.rename(self.returning)
        if self.returning.is_dir():
            _move(self._manifest(self.returning)[0], self.returning, self.run_dir)
            _remove_emptied(self.returning)
            restored = True
        return restored
