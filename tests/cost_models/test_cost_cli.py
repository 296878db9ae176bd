"""``rlhfless cost``: the command function on real JSONL files, and the module as a process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhfless.cost_models import get_model, price_events, write_billing_events
from rlhfless.cost_models.cli import cost_command

from .helpers import T0, event

RUN = [
    event("a", requested=0, ready=10, busy=[(10, 50)], exited=60),
    event("b", requested=0, ready=10, busy=[(10, 20)], exited=30, slot=1),
    event("c", requested=60, ready=70, busy=[(70, 100)], exited=100, slots=2, stage="train"),
]


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.billing.jsonl"
    write_billing_events(path, RUN)
    return path


def test_json_output_matches_the_ledger(events_file: Path, capsys) -> None:
    assert cost_command(events_file, ["aws-gpu-share", "modal"], None, True, None) == 0
    payload = json.loads(capsys.readouterr().out)
    assert list(payload["models"]) == ["aws-gpu-share", "modal"]
    aws = payload["models"]["aws-gpu-share"]
    share = get_model("aws-gpu-share")
    assert aws["total"]["usd"] == pytest.approx(price_events(share, RUN).total.usd)
    # Hand check: h100 on AWS is $6.88/h; a (60 s) + b (30 s -> 60 s minimum) + c (40 s -> 60 s
    # minimum, 2 slots) = 240 billed slot-seconds.
    assert aws["total"]["usd"] == pytest.approx(240 * 6.88 / 3600)
    assert aws["total"]["billed_slot_seconds"] == pytest.approx(240)


def test_table_output_shows_models_side_by_side(events_file: Path, capsys) -> None:
    assert cost_command(events_file, [], None, False, None) == 0
    out = capsys.readouterr().out
    for fragment in ("aws", "modal", "onprem", "serverful baseline", "train", "h100"):
        assert fragment in out
    # gcp's only h100 shape holds one GPU: the 2-slot function does not fit, so it is left
    # out (named on stderr) instead of failing the whole table.
    assert "gcp left out" in capsys.readouterr().err or "gcp" not in out.splitlines()[2]


def test_models_may_be_comma_separated(events_file: Path, capsys) -> None:
    assert cost_command(events_file, ["modal,onprem"], None, True, None) == 0
    assert list(json.loads(capsys.readouterr().out)["models"]) == ["modal", "onprem"]


def test_a_user_price_file(events_file: Path, tmp_path: Path, capsys) -> None:
    prices = tmp_path / "mine.toml"
    prices.write_text(
        '[model]\nname = "mine"\nbilling = "rental"\ngranularity_seconds = 1.0\n'
        '[[prices]]\ndevice_kind = "H100"\nprice = 3.6\nunit = "usd_per_hour"\n'
        'source = "quote 42"\ndate = 2025-02-01\n'
    )
    assert cost_command(events_file, ["mine"], [prices], True, None) == 0
    mine = json.loads(capsys.readouterr().out)["models"]["mine"]
    assert mine["total"]["usd"] == pytest.approx(0.001 * (60 + 30 + 2 * 40))


def test_a_bad_line_is_reported_with_its_number(events_file: Path, capsys) -> None:
    lines = events_file.read_bytes().splitlines()
    events_file.write_bytes(b"\n".join([lines[0], b'{"function_id": "broken"', lines[1]]) + b"\n")
    assert cost_command(events_file, ["aws"], None, False, None) == 1
    err = capsys.readouterr().err
    assert f"{events_file}:2" in err and "not a billing event" in err


def test_a_bad_price_file_is_reported(events_file: Path, tmp_path: Path, capsys) -> None:
    prices = tmp_path / "bad.toml"
    prices.write_text(
        '[model]\nname = "bad"\nbilling = "rental"\ngranularity_seconds = 1.0\n'
        '[[prices]]\ndevice_kind = "h100"\nprice = 3.6\nunit = "usd/h"\nsource = "x"\n'
        "date = 2025-02-01\n"
    )
    assert cost_command(events_file, [], [prices], False, None) == 1
    err = capsys.readouterr().err
    assert "bad.toml" in err and "row 1" in err and "'unit'" in err


def test_an_unpriced_device_kind_is_reported(tmp_path: Path, capsys) -> None:
    path = tmp_path / "l40s.jsonl"
    write_billing_events(path, [event("a", requested=0, exited=5, kind="L40S")])
    assert cost_command(path, ["gcp"], None, False, None) == 1
    assert "no price for device kind 'L40S'" in capsys.readouterr().err


def test_live_functions_need_now(tmp_path: Path, capsys) -> None:
    path = tmp_path / "live.jsonl"
    write_billing_events(path, [event("a", requested=0, ready=5, busy=[(5, 20)], exited=None)])
    assert cost_command(path, ["modal"], None, True, None) == 1
    assert "--now" in capsys.readouterr().err
    assert cost_command(path, ["modal"], None, True, None, now="end") == 0
    result = json.loads(capsys.readouterr().out)["models"]["modal"]
    assert result["end"] == T0 + 20
    assert cost_command(path, ["modal"], None, True, None, now=T0 + 30) == 0


def test_plot_writes_a_png(events_file: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "cost.png"
    assert cost_command(events_file, ["aws", "onprem"], None, False, png) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in capsys.readouterr().err.replace("\n", "")


def test_plot_without_matplotlib_says_how_to_fix(
    events_file: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    # A None entry in sys.modules makes `import matplotlib...` raise ImportError, as if absent.
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cost_command(events_file, ["aws"], None, False, tmp_path / "x.png") == 1
    assert "pip install matplotlib" in capsys.readouterr().err


def test_module_runs_as_a_command(events_file: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rlhfless.cost_models.cli", str(events_file), "-m", "aws", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["models"]["aws"]["functions"] == 3


def test_module_exits_nonzero_on_an_unknown_model(events_file: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rlhfless.cost_models.cli", str(events_file), "-m", "azure"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "no cost model named 'azure'" in done.stderr


OLD_PRICES = (
    '[model]\nname = "oldcloud"\nbilling = "rental"\ngranularity_seconds = 1.0\n'
    '[[prices]]\ndevice_kind = "h100"\ninstance = "box"\nprice = 3.6\nunit = "usd_per_hour"\n'
    'source = "a 2024 quote"\ndate = 2024-03-01\n'
)


def test_pricing_with_a_row_over_12_months_old_warns_naming_it(
    events_file: Path, tmp_path: Path, capsys
) -> None:
    prices = tmp_path / "old.toml"
    prices.write_text(OLD_PRICES)
    assert cost_command(events_file, ["oldcloud"], [prices], True, None) == 0
    err = capsys.readouterr().err
    assert "warning: price row oldcloud/h100 (box) was read 2024-03-01" in err
    # The shipped rows are all from 2026: pricing under them warns of nothing.
    assert cost_command(events_file, ["aws"], None, True, None) == 0
    assert "warning" not in capsys.readouterr().err


def test_prices_lists_every_table_and_row_with_its_age(tmp_path: Path) -> None:
    from rlhfless.cost_models import builtin_models

    prices = tmp_path / "old.toml"
    prices.write_text(OLD_PRICES)
    done = subprocess.run(
        [sys.executable, "-m", "rlhfless.cli", "prices", "--prices", str(prices)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for model in builtin_models().values():
        assert f"{model.name}: " in done.stdout
        for row in model.all_rows():
            assert row.date in done.stdout and (row.instance or "-") in done.stdout
    assert "oldcloud" in done.stdout and "2024-03-01" in done.stdout
    assert "price row oldcloud/h100 (box) was read 2024-03-01" in done.stderr
    assert done.stderr.count("warning:") == 1  # only the old row
