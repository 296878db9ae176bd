"""What ``--resume`` checks and mends before it continues a run (rlhfless/stages/run.py).

A resume keeps the run's settings: the checkpoint's config is the base, and only what the user
gives (a TOML file, ``--set``) is laid over it (:func:`keep_run_settings`). Every setting that
then differs from the checkpoint's is classified by the lists next to the config structs
(``RESUME_FIXED``, ``RESUME_TRAINS``, ``RESUME_FREE`` in stages/config.py): a model or algorithm
change is refused (the checkpoint holds that model's weights, PPO's critic); a change to what is
trained (learning rate, KL, task, sampling, batch...) is refused naming each key and both values
unless allowed by name; anything else (iterations, logging, placement, prices) changes freely.
What changed is appended to ``<run_dir>/changes.jsonl``.

The run's history files (metrics.jsonl, lengths.jsonl, samples.jsonl) are appended each iteration; the rows of
iterations after the checkpoint are written again by the resumed run, so they are cut back to
the checkpoint first.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import msgspec

from rlhfless.stages.common import atomic_file_write
from rlhfless.stages.config import (
    RESUME_FIXED,
    RESUME_FREE,
    RESUME_TRAINS,
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
)
from rlhfless.stages.errors import RunError
from rlhfless.stages.samples import SAMPLES

# What the run's history files hold per iteration; a resume cuts them back to its checkpoint.
HISTORY = ("metrics.jsonl", "lengths.jsonl")
CHANGES = "changes.jsonl"  # one row per resume that changed a setting
# Not changes of the run: that this is a resume, and where its directory is now (moved or
# copied, it is still the same run).
_WHERE = ("run.resume", "run.run_dir")


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One setting a resume changed: its dotted key, the checkpoint's value and the new one."""

    key: str
    old: Any
    new: Any
    kind: Literal["training", "free"]


_ABSENT = object()


def _setting(config: dict[str, Any], key: str) -> Any:
    """``config["model"]["kind"]`` for ``"model.kind"``; _ABSENT where an older meta lacks it."""
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def _leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train.lr": 3e-3, ...}``: every setting by its dotted key."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _known(saved: dict[str, Any], struct: type[msgspec.Struct]) -> dict[str, Any]:
    """The saved settings this version still has (a key since removed is dropped)."""
    fields = {f.name: f.type for f in msgspec.structs.fields(struct)}
    out: dict[str, Any] = {}
    for key, value in saved.items():
        sub = fields.get(key, _ABSENT)
        if sub is _ABSENT:
            continue
        if isinstance(sub, type) and issubclass(sub, msgspec.Struct):
            out[key] = _known(value, sub) if isinstance(value, dict) else value
        else:
            out[key] = value
    return out


def _lay_over(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _lay_over(out[key], value)
        else:
            out[key] = value
    return out


def keep_run_settings(saved: dict[str, Any], given: dict[str, Any], where: Config) -> Config:
    """The resumed run's config: the checkpoint's ``saved`` settings, the user's ``given`` ones
    (file and overrides only, not defaults) over them. The run and checkpoint directories are
    those the checkpoint was found in (``where``), whatever the checkpoint recorded."""
    merged = _lay_over(_known(saved, Config), given)
    merged.setdefault("run", {}).update(run_dir=where.run.run_dir, resume=True)
    merged.setdefault("checkpoint", {})["dir"] = where.checkpoint.dir
    return config_from_dict(merged)


def check_allowance(allow: Iterable[str]) -> tuple[str, ...]:
    """``--allow-changes`` names settings: each must be one a resume may change."""
    keys = tuple(k.strip() for k in allow if k.strip())
    for key in keys:
        if key in RESUME_FIXED:
            raise ConfigError(
                f"--allow-changes {key}: the checkpoint holds state made with it, so it cannot "
                "change on resume; start a fresh run in another --run-dir"
            )
        if key not in RESUME_TRAINS and key not in RESUME_FREE:
            raise ConfigError(f"--allow-changes: unknown key {key!r} (see `rlhfless config`)")
    return keys


def _show(value: Any) -> str:
    return json.dumps(value)


def resume_changes(saved: dict[str, Any], cfg: Config, allow: Iterable[str] = ()) -> list[Change]:
    """Every setting of ``cfg`` that differs from the checkpoint's ``saved`` config. Raises
    RunError for a model or algorithm change, and for training changes not in ``allow``
    (naming each key with both values); returns the changes to record. A key an older
    checkpoint did not record is not compared."""
    old = _leaves(json.loads(json.dumps(saved)))
    new = _leaves(json.loads(json.dumps(config_to_dict(cfg))))
    changed = [k for k, v in new.items() if k in old and old[k] != v and k not in _WHERE]
    for key in changed:
        if key in RESUME_FIXED:
            raise RunError(
                f"--resume: {key} = {_show(new[key])}, but the checkpoint was made with {key} = "
                f"{_show(old[key])}; resume with {key}={_show(old[key])}, or start a fresh run "
                "in another --run-dir"
            )
    allowed = set(allow)
    refused = [k for k in changed if k in RESUME_TRAINS and k not in allowed]
    if refused:
        parts = "; ".join(f"{k} {_show(old[k])} -> {_show(new[k])}" for k in refused)
        raise RunError(
            f"--resume would change what is trained ({parts}); resume with the checkpoint's "
            f"values, or allow it with --allow-changes {','.join(refused)}"
        )
    return [
        Change(key=k, old=old[k], new=new[k], kind="training" if k in RESUME_TRAINS else "free")
        for k in changed
    ]


def record_changes(run_dir: Path, iteration: int, changes: list[Change]) -> None:
    """Append one row to ``changes.jsonl``: when, from which iteration, what changed."""
    if not changes:
        return
    row = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "iteration": iteration,
        "changes": [msgspec.to_builtins(c) for c in changes],
    }
    with open(run_dir / CHANGES, "a") as f:
        f.write(json.dumps(row) + "\n")


def _iteration_of(line: bytes) -> int | None:
    """A metrics or samples row's iteration; None for a line a killed run cut short."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    it = row.get("iteration") if isinstance(row, dict) else None
    return it if isinstance(it, int) else None


def _cut_rows_from(path: Path, nxt: int) -> None:
    """Keep the rows of iterations before ``nxt`` (and drop a line a kill cut short)."""
    if not path.is_file():
        return
    rows = path.read_bytes().splitlines(keepends=True)
    kept = [r for r in rows if (it := _iteration_of(r)) is not None and it < nxt]
    if kept != rows:
        atomic_file_write(path, b"".join(kept))


def cut_history(run_dir: Path, meta: dict[str, Any]) -> None:
    """Drop the history rows of iterations at or after the checkpoint's ``next_iteration``: the
    resumed run writes them again, and a second copy would be counted twice (lengths.jsonl is
    replayed as a trace). billing.jsonl stays whole: those functions ran and were billed."""
    nxt = int(meta["next_iteration"])
    for name in ("metrics.jsonl", SAMPLES):  # rows that name their iteration
        _cut_rows_from(run_dir / name, nxt)
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
