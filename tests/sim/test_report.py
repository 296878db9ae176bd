"""The simulate report: dollars never print as $0.00, bars for one configuration, lines for a sweep."""

from __future__ import annotations

from pathlib import Path

import msgspec
from rich.console import Console

from rlhfless.sim.report import (
    STATE_COLOURS,
    SYSTEM_COLOURS,
    cost_cell,
    plot,
    swept_key,
    table,
    usd,
)
from rlhfless.sim.run import SimConfig
from rlhfless.sim.run import simulate as run_sim
from rlhfless.sim.workload import Workload


def test_amounts_keep_significant_digits() -> None:
    assert usd(0.000216977) == "$0.000217"
    assert usd(0.00672) == "$0.00672"
    assert usd(12.345) == "$12.3"
    assert usd(1234.5) == "$1,234.50"
    assert usd(0) == "$0"


def test_the_table_prices_the_job_and_a_steady_iteration() -> None:
    assert cost_cell(0.5, 2.0) == "$0.5 (+75.0%)"
    assert cost_cell(None, 2.0) == "n/a"
    assert cost_cell(0.5, None) == cost_cell(0.5, 0.0) == "$0.5"
    for iterations in (2, 1):
        w = Workload(batch_prompts=8, group_size=2, iterations=iterations)
        r = run_sim(SimConfig(nodes=1, model="0.5b", workload=w, costs=("onprem",)))
        console = Console(width=400, record=True)
        console.print(table(r))
        text = console.export_text()
        assert "$ onprem job (saved vs colo)" in text and "$ onprem / steady iteration" in text
        base, ours = r.systems["serverful-colocated"], r.systems["rlhfless-staged"]
        rows = [line for line in text.splitlines() if "rlhfless-staged" in line]
        job, steady = (cell.strip() for cell in rows[0].split("│")[-3:-1])
        assert job == cost_cell(ours.usd["onprem"], base.usd["onprem"])
        expected = cost_cell(ours.steady_usd["onprem"], base.steady_usd["onprem"])
        assert steady == expected and (steady == "n/a") == (iterations == 1)


def test_one_configuration_is_bars_a_sweep_is_lines(tmp_path: Path) -> None:
    w = Workload(batch_prompts=8, group_size=2, iterations=2)
    one = run_sim(SimConfig(nodes=1, model="0.5b", workload=w, costs=("onprem",)))
    two = run_sim(msgspec.structs.replace(one.config, nodes=2))
    assert swept_key([one]) == "" and swept_key([one, two]) == "nodes"
    for reports, name in (([one], "one.png"), ([one, two], "sweep.png")):
        plot(reports, tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one meaning per colour: no timeline state shares a system's colour
    assert not set(SYSTEM_COLOURS.values()) & set(STATE_COLOURS.values())
