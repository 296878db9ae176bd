"""What ``--resume`` checks and mends before it continues a run (rlhfless/stages/run.py).

The run's history files (metrics.jsonl, lengths.jsonl) are appended each iteration; the rows of
iterations after the checkpoint are written again by the resumed run, so they are cut back to
the checkpoint first. A checkpoint holds one model's state under one algorithm; resuming with
another is refused before any function starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhfless.stages.common import atomic_file_write
from rlhfless.stages.config import Config, config_to_dict
from rlhfless.stages.errors import RunError

# What the run's history files hold per iteration; a resume cuts them back to its checkpoint.
HISTORY = ("metrics.jsonl", "lengths.jsonl")
# Settings that define the model and the state a checkpoint holds: resuming with another value
# would train the old weights under a new name (model.*) or read state of the wrong shape
# (train.algo: PPO's critic). model.cache_dir is only where a copy lives, so it may change.
IDENTITY = (
    "model.kind",
    "model.path",
    "model.tiny_size",
    "model.seed",
    "model.dtype",
    "train.algo",
)


_ABSENT = object()


def _setting(config: dict[str, Any], key: str) -> Any:
    """``config["model"]["kind"]`` for ``"model.kind"``; _ABSENT where an older meta lacks it."""
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def refuse_changed_identity(saved: dict[str, Any], cfg: Config) -> None:
    """``--resume`` with another model or algorithm than the checkpoint's: refuse up front,
    naming the key (the tiny model dir is reused as is, and a checkpoint's meta would claim the
    new one)."""
    now = config_to_dict(cfg)
    for key in IDENTITY:
        old, new = _setting(saved, key), _setting(now, key)
        if old is not _ABSENT and old != new:
            raise RunError(
                f"--resume: {key} = {new!r}, but the checkpoint was made with {key} = {old!r}; "
                f"resume with {key}={old}, or start a fresh run in another --run-dir"
            )


def _iteration_of(line: bytes) -> int | None:
    """A metrics row's iteration; None for a line a killed run cut short."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    it = row.get("iteration") if isinstance(row, dict) else None
    return it if isinstance(it, int) else None


def cut_history(run_dir: Path, meta: dict[str, Any]) -> None:
    """Drop the history rows of iterations at or after the checkpoint's ``next_iteration``: the
    resumed run writes them again, and a second copy would be counted twice (lengths.jsonl is
    replayed as a trace). billing.jsonl stays whole: those functions ran and were billed."""
    nxt = int(meta["next_iteration"])
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        rows = metrics.read_bytes().splitlines(keepends=True)
        kept = [r for r in rows if (it := _iteration_of(r)) is not None and it < nxt]
        if kept != rows:
            atomic_file_write(metrics, b"".join(kept))
    lengths = run_dir / "lengths.jsonl"
    if lengths.is_file():
        # Its rows carry no iteration: the checkpoint records how many there were; an older one
        # did not, and then each iteration wrote batch_prompts rows of its config.
        count = meta.get("lines", {}).get("lengths.jsonl")
        if count is None:
            count = nxt * int(_setting(meta.get("config", {}), "train.batch_prompts") or 0)
        rows = lengths.read_bytes().splitlines(keepends=True)
        if len(rows) > count or (rows and not rows[-1].endswith(b"\n")):
            atomic_file_write(lengths, b"".join(r for r in rows[:count] if r.endswith(b"\n")))


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0
