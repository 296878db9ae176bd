"""The worked example in docs/cost_models.md runs, and prints the numbers the doc shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhfless.cost_models.cli import cost_command

DOC = Path(__file__).resolve().parents[2] / "docs" / "cost_models.md"


def blocks(kind: str) -> list[str]:
    """The bodies of the fenced code blocks whose info string is ``kind`` ("" = none)."""
    found: list[str] = []
    info: str | None = None  # None: outside a block
    body: list[str] = []
    for line in DOC.read_text().splitlines():
        if not line.startswith("```"):
            body.append(line)
        elif info is None:
            info, body = line[3:].strip(), []
        else:
            if info == kind:
                found.append("\n".join(body) + "\n")
            info = None
    return found


@pytest.fixture
def example(tmp_path: Path) -> tuple[Path, Path]:
    (toml,) = [b for b in blocks("toml") if 'name = "mycloud"' in b]
    (jsonl,) = blocks("json")
    prices, events = tmp_path / "mycloud.toml", tmp_path / "run.billing.jsonl"
    prices.write_text(toml)
    events.write_text(jsonl)
    return prices, events


def test_worked_example_numbers(example: tuple[Path, Path], capsys) -> None:
    prices, events = example
    assert cost_command(events, ["mycloud", "aws-gpu-share"], [prices], True, None) == 0
    models = json.loads(capsys.readouterr().out)["models"]
    mine, aws = models["mycloud"], models["aws-gpu-share"]
    assert mine["total"]["usd"] == pytest.approx(0.390)
    assert (
        mine["total"]["busy_usd"],
        mine["total"]["cold_start_usd"],
        mine["total"]["idle_usd"],
    ) == (pytest.approx((0.265, 0.060, 0.065)))
    assert mine["by_stage"]["rollout"]["usd"] == pytest.approx(0.190)
    assert mine["by_stage"]["train"]["usd"] == pytest.approx(0.200)
    assert mine["gpu_seconds"] == pytest.approx(380.5)
    assert mine["serverful"]["usd"] == pytest.approx(0.800)
    assert mine["saving_fraction"] == pytest.approx(0.5125)
    assert aws["total"]["usd"] == pytest.approx(390 * 6.88 / 3600)
    assert aws["serverful"]["usd"] == pytest.approx(800 * 6.88 / 3600)


def test_worked_example_table_matches_the_doc(example: tuple[Path, Path], capsys) -> None:
    prices, events = example
    assert cost_command(events, ["mycloud", "aws-gpu-share"], [prices], False, None) == 0
    out = capsys.readouterr().out
    (shown,) = [b for b in blocks("") if b.startswith("$ rlhfless cost")]
    rows = [line for line in shown.splitlines() if line.startswith("│")]
    assert len(rows) == 11
    for line in rows:
        assert line in out, line
