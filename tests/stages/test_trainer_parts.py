"""Trainer building blocks: length-bucketed micro-batches and crash-safe state directories."""

import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfless.adapters.tiny import build_tiny_model
from rlhfless.stages.common import COMPLETE, atomic_dir_write, recover_dir
from rlhfless.stages.config import TrainConfig
from rlhfless.stages.handover import HandOverError, check_version
from rlhfless.stages.micro_batch import micro_batches
from rlhfless.stages.trainer import TrainerActor


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
    check_version("trainer", 3, 3)
    check_version("trainer", 3, None)
    with pytest.raises(HandOverError, match="version 0 but the run is at version 5"):
        check_version("trainer", 0, 5)


def _batch(n: int = 12, seed: int = 0):
    rng = random.Random(seed)
    prompts = [[1] + [rng.randrange(3, 23) for _ in range(rng.randrange(2, 5))] for _ in range(n)]
    # long-tailed response lengths, as sampled rollouts give
    responses = [
        [rng.randrange(3, 23) for _ in range(rng.choice([1, 2, 3, 5, 30]))] for _ in prompts
    ]
    old = [torch.full((len(r),), -3.0) for r in responses]
    adv = [torch.full((len(r),), rng.gauss(0.0, 1.0)) for r in responses]
    return prompts, responses, old, adv


def test_default_micro_batches_give_the_one_batch_update(tmp_path: Path) -> None:
    """The default token budget splits this batch into several micro-batches; the step equals
    one padded batch (budget 0) up to float rounding: same loss, same new weights."""
    model_dir = build_tiny_model(tmp_path / "model", seed=0)
    batch = _batch()
    lengths = [len(p) + len(r) for p, r in zip(batch[0], batch[1], strict=True)]
    assert len(micro_batches(lengths, 1, TrainConfig().micro_batch_tokens)) > 1
    out = {}
    for budget in (TrainConfig().micro_batch_tokens, 0):
        t = TrainerActor(
            str(model_dir),
            {"epochs": 1, "micro_batch_tokens": budget, "lr": 1e-2},
            str(tmp_path / f"state{budget}"),
        )
        stats = t.step(*batch, None, 1.0)
        out[budget] = (stats["loss"], {k: v.clone() for k, v in t.model.state_dict().items()})
    (loss_a, w_a), (loss_b, w_b) = out.values()
    assert loss_a == pytest.approx(loss_b, rel=1e-4, abs=1e-6)
    for k in w_a:
        # Adam's first step is ~lr * sign(grad): rounding moves a near-zero grad's step a little
        torch.testing.assert_close(w_a[k], w_b[k], rtol=0, atol=1e-2 * 1e-2)


def test_published_weights_file_is_the_step_state_and_survives_the_next_step(
    tmp_path: Path,
) -> None:
    """weights() writes the published file once; the hand-over state written behind it links
    that file (no second write); the next step replaces the state dir, and the published file
    still holds its own version."""
    model_dir = build_tiny_model(tmp_path / "model", seed=0)
    t = TrainerActor(str(model_dir), {"epochs": 1, "lr": 1e-2}, str(tmp_path / "state"))
    wdir = tmp_path / "weights"
    batch = _batch()
    t.step(*batch, None, 1.0)
    v1 = {k: v.clone() for k, v in t.model.state_dict().items()}
    pub1 = t.weights(str(wdir), 0)
    path1 = Path(pub1["path"])
    assert pub1["version"] == 1
    t.handover.wait()
    assert path1.stat().st_ino == (tmp_path / "state" / "weights.safetensors").stat().st_ino
    assert t.handover.durable == 1
    t.step(*batch, None, 1.0)
    pub2 = t.weights(str(wdir), 0)
    assert pub2["version"] == 2 and Path(pub2["path"]) != path1
    for path, want in ((path1, v1), (Path(pub2["path"]), t.model.state_dict())):
        got = load_file(str(path))
        for k, v in got.items():
            torch.testing.assert_close(v, want[k], rtol=0, atol=0)
    # a cold trainer (state loaded, not written by it) writes its own file
    t.rlhfless_on_release()  # what the runtime runs before a released function exits
    cold = TrainerActor(str(model_dir), {"epochs": 1}, str(tmp_path / "state"))
    pub = cold.weights(str(tmp_path / "weights_cold"), 0)
    assert pub["version"] == 2
    for k, v in load_file(pub["path"]).items():
        torch.testing.assert_close(v, t.model.state_dict()[k], rtol=0, atol=0)


def test_a_step_whose_state_never_landed_is_replayed_not_lost(tmp_path: Path) -> None:
    """The hand-over state is written behind the step. If the function dies before the write
    lands, a cold one finds the older state, replays the missing step from the inputs the
    controller kept (``replay``), and ends exactly where the warm one would have."""
    model_dir = build_tiny_model(tmp_path / "model", seed=0)
    cfg = {"epochs": 1, "lr": 1e-2}
    warm = TrainerActor(str(model_dir), cfg, str(tmp_path / "state"))
    b1, b2, b3 = _batch(seed=1), _batch(seed=2), _batch(seed=3)
    warm.step(*b1, None, 1.0, expected_version=0)
    assert warm.persist(1) == 1
    shutil.copytree(tmp_path / "state", tmp_path / "state_v1")  # the disk as a death leaves it
    stats = warm.step(*b2, None, 1.0, expected_version=1)
    assert stats["durable_version"] == 1  # version 2 is in memory only
    names = ("prompt_ids", "response_ids", "old_logprobs", "advantages")
    args2 = dict(zip(names, b2, strict=True)) | {"ref_logprobs": None, "temperature": 1.0}
    replay = [{"version": 2, "args": args2}]
    warm.step(*b3, None, 1.0, expected_version=2, replay=replay)  # warm: nothing to replay

    cold = TrainerActor(str(model_dir), cfg, str(tmp_path / "state_v1"))
    assert cold.version == 1
    with pytest.raises(HandOverError, match="version 1 but the run is at version 2"):
        cold.step(*b3, None, 1.0, expected_version=2)  # nothing to replay: a clear error
    stats = cold.step(*b3, None, 1.0, expected_version=2, replay=replay)
    assert stats["replayed"] == 1 and stats["version"] == 3
    want = warm.model.state_dict()
    for k, v in cold.model.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0)
    # the optimiser moments match too: the next step stays identical
    a, b = warm.step(*b1, None, 1.0, expected_version=3), cold.step(*b1, None, 1.0)
    assert a["loss"] == b["loss"]
    assert cold.persist(4) == 4 and (tmp_path / "state_v1" / "version").read_text() == "4"


def test_a_failed_write_behind_is_reported_by_the_next_call(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "model", seed=0)
    t = TrainerActor(str(model_dir), {"epochs": 1}, str(tmp_path / "state"))
    t.step(*_batch(), None, 1.0)
    (tmp_path / "state.tmp").write_text("a file where the writer needs a directory")
    t.weights()
    with pytest.raises(HandOverError, match="writing the hand-over state"):
        t.step(*_batch(), None, 1.0)
