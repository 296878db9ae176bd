"""Trainer building blocks: length-bucketed micro-batches and crash-safe state directories."""

from pathlib import Path

import pytest

from rlhfless.stages.common import COMPLETE, atomic_dir_write, recover_dir
from rlhfless.stages.trainer import _check_version, micro_batches


def test_micro_batches_cover_every_sample_once_and_respect_the_budget() -> None:
    lengths = [5, 40, 6, 7, 45, 5, 8, 9, 50, 6]
    parts = micro_batches(lengths, parts=1, token_budget=64)
    assert sorted(i for p in parts for i in p) == list(range(len(lengths)))
    for p in parts:
        assert max(lengths[i] for i in p) * len(p) <= 64 or len(p) == 1
    # the long samples (each too wide to share the budget) never pad the short ones
    assert parts[-3:] == [[1], [4], [8]]
    assert len(parts) == 4 and sorted(parts[0]) == [0, 2, 3, 5, 6, 7, 9]


def test_micro_batches_without_budget_split_into_parts() -> None:
    assert len(micro_batches([3] * 10, parts=3, token_budget=0)) == 3
    assert micro_batches([7], parts=4, token_budget=1) == [[0]]


def _write(d: Path, text: str) -> None:
    (d / "data").write_text(text)


def test_atomic_dir_write_and_recovery_from_each_crash_point(tmp_path: Path) -> None:
    target = tmp_path / "state"
    atomic_dir_write(target, lambda d: _write(d, "v1"))
    atomic_dir_write(target, lambda d: _write(d, "v2"), durable=False)
    assert (target / "data").read_text() == "v2" and recover_dir(target)
    # crash after the old dir moved aside, before the new one moved in
    target.rename(tmp_path / "state.old")
    tmp = tmp_path / "state.tmp"
    tmp.mkdir()
    _write(tmp, "v3")
    (tmp / COMPLETE).write_text("")
    assert recover_dir(target) and (target / "data").read_text() == "v3"
    # crash mid-write of the temporary dir: the torn copy is ignored, the old one kept
    tmp.mkdir()
    _write(tmp, "torn")
    assert recover_dir(target) and (target / "data").read_text() == "v3"
    assert not recover_dir(tmp_path / "nothing")


def test_stale_state_is_an_error_not_a_silent_restart() -> None:
    _check_version("trainer", 3, 3)
    _check_version("trainer", 3, None)
    with pytest.raises(RuntimeError, match="version 0 but the run is at version 5"):
        _check_version("trainer", 0, 5)
