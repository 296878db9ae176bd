"""The examples run as users run them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(180)
def test_custom_trainer_example(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "custom_trainer.py"), "--iterations", "2", "--run-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=170, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 1: reward" in out.stdout and "policy v2" in out.stdout
    assert "functions, $" in out.stdout


@pytest.mark.timeout(60)
def test_cli_help_lists_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rlhfless.cli", "--help"], capture_output=True, text=True, timeout=50
    )
    assert out.returncode == 0 and "train" in out.stdout and "cost" in out.stdout


@pytest.mark.timeout(60)
def test_train_rejects_a_config_typo(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlrr = 0.1\n")
    out = subprocess.run(
        [sys.executable, "-m", "rlhfless.cli", "train", str(bad)],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert out.returncode == 2 and "train.lrr" in out.stderr
