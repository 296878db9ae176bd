"""Resume at another gang size: a sharded (DCP) state read by 1 or 2 ranks, a single process's
state read by 2 ranks, each giving the next step's metrics (and weights) of the run that wrote it.

A checkpoint is a copy of the trainer's hand-over directory made durable (``persist``, as
``Pipeline.persist_state`` makes it before ``Checkpoints.save`` copies it); each resume starts
a new trainer (function or gang, real gloo groups) on a copy.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rlhfless.adapters.tiny import build_tiny_model
from rlhfless.runtime import Runtime
from rlhfless.stages.handover import is_sharded
from tests.stages.sharded_helpers import assert_same_weights, batch, train_cfg, trainer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]
CFG = train_cfg("grpo")
METRICS = ("loss", "kl", "clip_frac", "grad_norm")


@pytest.fixture
async def rt() -> AsyncIterator[Runtime]:
    async with Runtime(slots=2, keep_alive_s=30.0, threads_per_function=1) as runtime:
        yield runtime


async def _write(rt: Runtime, slots: int, model: Path, tmp: Path) -> tuple[Path, Any, Any]:
    """Two steps on ``slots`` ranks, a checkpoint, then the next step: (checkpoint, its
    metrics, its weights)."""
    h = await trainer(rt, slots, model, CFG, tmp / f"run{slots}")
    for step in range(2):
        await h.step(**batch(step, "grpo"), expected_version=step)
    assert await h.persist(2) == 2
    ckpt = tmp / f"ckpt{slots}"
    shutil.copytree(tmp / f"run{slots}", ckpt)
    assert is_sharded(ckpt) == (slots > 1)
    nxt = await h.step(**batch(2, "grpo"), expected_version=2)
    weights = (await h.weights())["state_dict"]
    await h.release()
    return ckpt, nxt, weights


async def _resume(rt: Runtime, slots: int, model: Path, ckpt: Path, into: Path) -> tuple[Any, Any]:
    shutil.copytree(ckpt, into)
    h = await trainer(rt, slots, model, CFG, into)
    nxt = await h.step(**batch(2, "grpo"), expected_version=2)
    weights = (await h.weights())["state_dict"]
    await h.release()
    return nxt, weights


def _same(want: dict[str, Any], got: dict[str, Any], what: str) -> None:
    assert got["version"] == want["version"] == 3 and got["replayed"] == 0, what
    for key in METRICS:  # another gang size: float summation order only
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (what, key)
    print(what, {k: round(got[k], 6) for k in METRICS})


async def test_resume_at_another_gang_size(rt: Runtime, tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "model", seed=0)
    ckpt2, want2, w2 = await _write(rt, 2, model, tmp_path)
    for slots in (1, 2):
        got, w = await _resume(rt, slots, model, ckpt2, tmp_path / f"from2-on{slots}")
        _same(want2, got, f"written by 2, resumed on {slots}:")
        assert_same_weights(w2, w, atol=5e-5)
    ckpt1, want1, w1 = await _write(rt, 1, model, tmp_path)
    got, w = await _resume(rt, 2, model, ckpt1, tmp_path / "from1-on2")
    _same(want1, got, "written by 1, resumed on 2:")
    assert_same_weights(w1, w, atol=5e-5)
