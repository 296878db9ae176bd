"""How `rlhfless cost` shows small amounts, counts, CPU-only runs and an empty billing file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table

from rlhfless.cost_models import (
    CostModelError,
    Ledger,
    LedgerResult,
    comparison_table,
    get_model,
    read_billing_events,
    results_json,
    write_billing_events,
)
from rlhfless.cost_models.cli import cost_command
from rlhfless.cost_models.events import NoBillingEvents
from rlhfless.cost_models.report import empty_message, plural, table_title, usd
from rlhfless.runtime.messages import billing_to_json

from .helpers import event, table_model


def render(table: Table) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def priced(path: Path, names: list[str]) -> list[LedgerResult]:
    events = read_billing_events(path)
    return [Ledger(get_model(n), events).result() for n in names]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.0, "$0.0000"),
        (1234.5, "$1,234.50"),
        (100.0, "$100.00"),
        (1.33141, "$1.3314"),
        (0.0269, "$0.0269"),
        (0.01, "$0.0100"),
        (0.0095, "$0.009500"),  # was $0.0095: 2 significant figures
        (0.000478, "$0.0004780"),  # was $0.0005
        (0.0000067, "$0.000006700"),  # was $0.0000
        (1e-13, "$0.0000000000"),  # float noise is not shown as money
        (-0.000478, "$-0.0004780"),
    ],
)
def test_dollars(value: float, shown: str) -> None:
    assert usd(value) == shown


@pytest.mark.parametrize("value", [0.00999, 0.001, 0.00123456, 3.21e-5, 7e-7])
def test_under_a_cent_four_significant_figures(value: float) -> None:
    digits = usd(value).removeprefix("$0.").lstrip("0")
    assert len(digits) == 4
    assert float(usd(value)[1:]) == pytest.approx(value, rel=5e-4)


def test_counts_are_pluralised() -> None:
    assert [plural(n, "slot") for n in (0, 1, 2, 1000)] == [
        "0 slots",
        "1 slot",
        "2 slots",
        "1,000 slots",
    ]
    assert table_title("run.jsonl", 1) == "Cost of run.jsonl (1 event)"
    assert table_title("run.jsonl", 8) == "Cost of run.jsonl (8 events)"
    assert table_title("run.jsonl", 0) == "Cost of run.jsonl (no billing events)"


@pytest.fixture
def cpu_run(tmp_path: Path) -> Path:
    """A CPU-only run as `rlhfless train` on a laptop writes it: one slot, small amounts."""
    path = tmp_path / "cpu.jsonl"
    write_billing_events(
        path,
        [
            event("r", requested=0, ready=3, busy=[(3, 4)], exited=12, kind="cpu"),
            event("t", requested=4, ready=5, busy=[(5, 11)], exited=12, kind="cpu", stage="train"),
        ],
    )
    return path


def test_a_cpu_only_run_shows_slot_seconds_not_gpu_seconds(cpu_run: Path) -> None:
    results = priced(cpu_run, ["aws", "modal"])
    text = render(comparison_table(results))
    assert "GPU-seconds" not in text
    # r: 12 s (1 busy), t: 8 s (6 busy); one physical cpu slot.
    (line,) = [x for x in text.splitlines() if "CPU slot-seconds (busy)" in x]
    assert line.count("20.0 (7.0)") == 2
    # serverless: 12 s of one cpu slot, priced per second: a fraction of a cent, 4 figures.
    serverless = results[1]
    assert 0 < serverless.serverful.usd < 0.01
    (line,) = [x for x in text.splitlines() if "serverful baseline" in x]
    assert f"{usd(serverless.serverful.usd)} (1 slot, 12.0 s)" in line
    # No amount of the run is rounded away: each shows within 0.05% (the old $0.0000 / $0.0001).
    for r in results:
        for amount in (r.total.usd, r.total.busy_usd, r.total.idle_usd, r.total.cold_start_usd):
            assert amount > 0 and usd(amount) in text
            assert float(usd(amount)[1:]) == pytest.approx(amount, rel=5e-4)


def test_a_gpu_run_keeps_the_gpu_seconds_row() -> None:
    run = [
        event("g", requested=0, ready=1, busy=[(1, 9)], exited=10),
        event("c", requested=0, exited=10, kind="cpu"),
    ]
    text = render(comparison_table([Ledger(table_model(), run).result()]))
    assert "GPU-seconds (busy)" in text and "10.0 (8.0)" in text
    assert "CPU slot-seconds" not in text


def test_a_resumed_run_shows_its_rentals(tmp_path: Path) -> None:
    path = tmp_path / "resumed.jsonl"
    write_billing_events(
        path,
        [event("a", requested=0, exited=30), event("b", requested=3600, exited=3610, slot=1)],
    )
    results = priced(path, ["modal", "aws-gpu-share"])
    lines = render(comparison_table(results)).splitlines()
    (line,) = [x for x in lines if "serverful baseline" in x]
    # 30 s + 10 s rented, an hour apart; on aws each rental pays its 60 s minimum (h100 $6.88/h).
    assert line.count("(2 slots, 40.0 s)") == 2
    assert usd(2 * 60 * 6.88 / 3600) == "$0.2293" and "$0.2293 (2 slots" in line
    (line,) = [x for x in lines if x.startswith("│   rented ")]
    assert line.count("2 rentals for 2 segments") == 2


def test_a_single_segment_has_no_rented_row(cpu_run: Path) -> None:
    text = render(comparison_table(priced(cpu_run, ["aws"])))
    assert "serverful baseline" in text and "rented" not in text


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_an_empty_billing_file_says_so(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty[run 1].jsonl"  # brackets: the path must not be read as markup
    path.write_bytes(content)
    results = priced(path, ["aws", "onprem"])
    assert all(r.empty and r.total.usd == 0 for r in results)
    assert Ledger(get_model("aws"), read_billing_events(path)).empty
    text = render(comparison_table(results, source=path))
    assert f"no billing events in {path}" in " ".join(text.split())
    assert "GPU-seconds" not in text and "slot-seconds" not in text
    payload = json.loads(results_json(results, path))
    assert payload["warnings"] == [empty_message(path)]


def test_an_empty_billing_file_can_be_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"\n")
    with pytest.raises(NoBillingEvents) as caught:
        read_billing_events(path, allow_empty=False)
    # A CostModelError, so `rlhfless cost` reports it like any bad input; it names the file.
    assert isinstance(caught.value, CostModelError) and caught.value.path == path
    assert str(caught.value).startswith(f"{path}: no billing events in it")
    path.write_bytes(path.read_bytes() + billing_to_json(event("a", requested=0, exited=1)))
    assert len(read_billing_events(path, allow_empty=False)) == 1


def test_a_priced_file_has_no_warning(cpu_run: Path) -> None:
    results = priced(cpu_run, ["aws"])
    assert not results[0].empty
    assert "no billing events" not in render(comparison_table(results, source=cpu_run))
    assert json.loads(results_json(results, cpu_run))["warnings"] == []


def test_the_command_shows_an_empty_file(tmp_path: Path, capsys) -> None:
    # Whatever exit status the command gives an empty file, it must not look like a free run.
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    cost_command(path, ["aws"], None, False, None)
    captured = capsys.readouterr()
    assert "no billing events" in " ".join((captured.out + captured.err).split())
