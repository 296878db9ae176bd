"""Every shipped config preset parses (a typo in a preset would fail only at a user's run)."""

from pathlib import Path

import pytest

from rlhfless.stages.config import load_config

PRESETS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.train.iterations >= 1


def test_presets_exist() -> None:
    assert {p.name for p in PRESETS} >= {"ppo.toml", "smollm2-gsm.toml"}
