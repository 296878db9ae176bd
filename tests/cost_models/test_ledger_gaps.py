"""The serverful baseline rents slots while the job ran, not across the downtime between a run
and its resume (docs/cost_models.md, "Serverful baseline")."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfless.cost_models import (
    Ledger,
    get_model,
    read_billing_events,
    write_billing_events,
)
from rlhfless.cost_models.ledger import SEGMENT_GAP_SECONDS
from rlhfless.runtime.messages import BillingEvent

from .helpers import T0, event, table_model

NIGHT = 8 * 3600.0  # the run stopped in the evening and was resumed in the morning

# h100 at $0.001/s, cpu at $0.0001/s in table_model(). The first run (t = 0 .. 100) is the
# ledger tests' run: 2 h100 slots and 1 cpu slot for 100 s -> serverful $0.21.
FIRST = [
    event("a", requested=0, ready=10, busy=[(10, 50)], exited=60),
    event("b", requested=0, ready=10, busy=[(10, 20)], exited=30, slot=1),
    event("c", requested=60, ready=70, busy=[(70, 100)], exited=100, slots=2, stage="train"),
    event("d", requested=30, ready=31, busy=[(31, 35)], exited=40, kind="cpu", stage="reward"),
]
# The resume, a night later, uses one h100 slot for 50 s -> serverful $0.05.
RESUMED = [
    event("e", requested=NIGHT, ready=NIGHT + 5, busy=[(NIGHT + 5, NIGHT + 45)], exited=NIGHT + 50),
]


def billing_file(path: Path, events: list[BillingEvent]) -> list[BillingEvent]:
    """Write ``events`` as the runtime does (JSONL) and read them back, as `rlhfless cost` does."""
    write_billing_events(path, events)
    return read_billing_events(path)


def test_two_runs_a_night_apart_are_rented_separately(tmp_path: Path) -> None:
    both = billing_file(tmp_path / "billing.jsonl", FIRST + RESUMED)
    r = Ledger(table_model(), both).result()
    s = r.serverful
    assert s.usd == pytest.approx(0.21 + 0.05)
    assert s.segments == [(T0, T0 + 100), (T0 + NIGHT, T0 + NIGHT + 50)]
    assert [(x.start, x.end, x.slots, x.segments) for x in s.rentals] == [
        (T0, T0 + 100, 3, 1),
        (T0 + NIGHT, T0 + NIGHT + 50, 1, 1),  # the resume touched one slot: it rents one
    ]
    assert [x.usd for x in s.rentals] == pytest.approx([0.21, 0.05])
    assert s.rented_seconds == pytest.approx(150)
    assert s.span_seconds == pytest.approx(NIGHT + 50)  # first request .. last exit, as before
    assert s.slots == 3 and s.slots_by_device == {"cpu": 1, "h100": 2}
    assert s.slot_seconds == pytest.approx(2 * 100 + 100 + 50)
    # busy: slot 0 = 40 (a) + 30 (c) + 40 (e); slot 1 = 10 (b) + 30 (c); cpu = 4 (d)
    assert s.busy_usd == pytest.approx((110 + 40) * 0.001 + 4 * 0.0001)
    assert s.busy_usd + s.idle_usd == pytest.approx(s.usd)
    assert r.saving_fraction == pytest.approx(1 - r.total.usd / 0.26)
    # Renting across the night, as the baseline did before, would cost ~$60.
    overnight = Ledger(table_model(), both, gap_seconds=math.inf).result().serverful
    assert overnight.usd == pytest.approx((2 * 0.001 + 0.0001) * (NIGHT + 50))


@pytest.mark.parametrize("name", ["aws", "aws-gpu-share", "modal", "onprem"])
def test_the_baseline_is_the_sum_of_the_segments_baselines(tmp_path: Path, name: str) -> None:
    model = get_model(name)
    first = billing_file(tmp_path / "first.jsonl", FIRST)
    resumed = billing_file(tmp_path / "resumed.jsonl", RESUMED)
    both = billing_file(tmp_path / "both.jsonl", FIRST + RESUMED)
    whole = Ledger(model, both).result()
    parts = [Ledger(model, half).result() for half in (first, resumed)]
    assert whole.serverful.usd == pytest.approx(sum(p.serverful.usd for p in parts))
    assert whole.serverful.busy_usd == pytest.approx(sum(p.serverful.busy_usd for p in parts))
    assert whole.total.usd == pytest.approx(sum(p.total.usd for p in parts))
    assert whole.serverful.usd_by_device["h100"] == pytest.approx(
        sum(p.serverful.usd_by_device["h100"] for p in parts)
    )


def test_a_single_segment_is_one_rental_for_the_whole_run(tmp_path: Path) -> None:
    run = billing_file(tmp_path / "billing.jsonl", FIRST)
    s = Ledger(table_model(), run).result().serverful
    assert s.usd == pytest.approx(2 * 100 * 0.001 + 100 * 0.0001)  # $0.21, as before the fix
    assert s.segments == [(T0, T0 + 100)]
    assert [(x.start, x.end, x.slots) for x in s.rentals] == [(T0, T0 + 100, 3)]
    assert s.rented_seconds == s.span_seconds == pytest.approx(100)
    for name in ("aws", "modal"):
        segmented = Ledger(get_model(name), run).result().serverful
        whole_run = Ledger(get_model(name), run, gap_seconds=math.inf).result().serverful
        assert segmented.gap_seconds == SEGMENT_GAP_SECONDS and whole_run.gap_seconds == math.inf
        assert segmented == msgspec.structs.replace(whole_run, gap_seconds=SEGMENT_GAP_SECONDS)


def test_a_short_lull_with_nothing_alive_stays_inside_the_segment() -> None:
    # Nothing alive from t = 10 to 70: a 60 s lull is the job's driver between stages, not
    # downtime (the limit is inclusive). One more second and the job counts as stopped.
    assert SEGMENT_GAP_SECONDS == 60
    lull = [event("x", requested=0, exited=10), event("y", requested=70, exited=80)]
    s = Ledger(table_model(), lull).result().serverful
    assert len(s.segments) == 1 and s.usd == pytest.approx(80 * 0.001)
    stopped = [event("x", requested=0, exited=10), event("y", requested=71, exited=81)]
    s = Ledger(table_model(), stopped).result().serverful
    assert len(s.segments) == 2 and s.usd == pytest.approx(20 * 0.001)
    # The limit is the caller's to choose.
    s = Ledger(table_model(), lull, gap_seconds=0).result().serverful
    assert len(s.segments) == 2 and s.usd == pytest.approx(20 * 0.001)


def test_rents_through_a_gap_when_restarting_would_cost_more() -> None:
    # AWS: per second, 60 s minimum; cpu slot (m7i.xlarge) $0.2016/h. Two 5 s runs 90 s apart:
    # starting again costs 2 x 60 s, renting straight through 100 s.
    aws = get_model("aws")
    rate = 0.2016 / 3600
    near = [
        event("x", requested=0, exited=5, kind="cpu"),
        event("y", requested=95, exited=100, kind="cpu"),
    ]
    s = Ledger(aws, near).result().serverful
    assert len(s.segments) == 2
    assert [(x.start, x.end, x.segments) for x in s.rentals] == [(T0, T0 + 100, 2)]
    assert s.usd == pytest.approx(100 * rate)
    # 200 s apart: through = 210 s, starting again = 120 s.
    far = [
        event("x", requested=0, exited=5, kind="cpu"),
        event("y", requested=205, exited=210, kind="cpu"),
    ]
    s = Ledger(aws, far).result().serverful
    assert [x.segments for x in s.rentals] == [1, 1]
    assert s.usd == pytest.approx(120 * rate)
    # Without a minimum, starting again is always cheaper.
    s = Ledger(get_model("modal"), near).result().serverful
    assert [x.segments for x in s.rentals] == [1, 1]


def test_a_live_resume_is_rented_up_to_now(tmp_path: Path) -> None:
    live = event("e", requested=NIGHT, ready=NIGHT + 5, exited=None)
    run = billing_file(tmp_path / "live.jsonl", [*FIRST, live])
    s = Ledger(table_model(), run).result(now=T0 + NIGHT + 30).serverful
    assert s.rentals[-1].end == T0 + NIGHT + 30
    assert s.usd == pytest.approx(0.21 + 30 * 0.001)


def test_a_negative_gap_is_refused() -> None:
    with pytest.raises(ValueError, match="gap_seconds"):
        Ledger(table_model(), FIRST, gap_seconds=-1)


MODELS = [
    get_model("aws"),
    get_model("onprem"),
    table_model(name="plain"),
    table_model(granularity=3600, name="hourly"),
    table_model(granularity=0.001, minimum=90, cold=False, name="ms-min90"),
]


@st.composite
def sessions(draw: st.DrawFn) -> list[list[BillingEvent]]:
    """1 to 4 runs of a job, one after another with gaps from 0 to 3 hours between them; each
    run places functions on (node, slot) without overlap, as the runtime does."""
    out: list[list[BillingEvent]] = []
    clock = 0.0
    number = st.integers(0, 200)
    for n in range(draw(st.integers(1, 4))):
        clock += draw(st.sampled_from([0, 1, 30, 61, 90, 500, 3 * 3600]))
        free: dict[tuple[str, int], float] = {}
        run = []
        for i in range(draw(st.integers(1, 5))):
            node = draw(st.sampled_from(["n1", "n2"]))
            slots = draw(st.sampled_from([1, 1, 2]))
            first = draw(st.integers(0, 4 - slots))
            held = [(node, first + k) for k in range(slots)]
            start = max(free.get(h, clock) for h in held) + draw(number)
            end = start + draw(number)
            for h in held:
                free[h] = end
            fid = f"s{n}f{i}"
            run.append(
                event(
                    fid,
                    requested=start,
                    ready=start,
                    exited=end,
                    node=node,
                    slot=first,
                    slots=slots,
                )
            )
        clock = max(e.exited_at or 0.0 for e in run) - T0
        out.append(run)
    return out


@settings(max_examples=150, deadline=None)
@given(sessions(), st.sampled_from(MODELS))
def test_never_dearer_than_one_rental_and_split_at_long_gaps(runs, model) -> None:
    events = [e for run in runs for e in run]
    s = Ledger(model, events).result().serverful
    whole_run = Ledger(model, events, gap_seconds=math.inf).result().serverful
    # Renting everything from the first request to the last exit is a schedule the ledger
    # considers (or one it can prove dearer), so the baseline never exceeds it.
    assert s.usd <= whole_run.usd * (1 + 1e-9) + 1e-12
    assert s.rented_seconds <= s.span_seconds + 1e-6
    # Where every pause between runs is long (over the lull limit, and longer than the extra a
    # restart can cost under the rules), the baseline is the sum of each run's own baseline.
    rules = model.rules
    long_pause = max(SEGMENT_GAP_SECONDS, 2 * (rules.minimum_seconds + rules.granularity_seconds))
    pauses = [
        min(e.requested_at for e in b) - max(e.exited_at or 0.0 for e in a)
        for a, b in itertools.pairwise(runs)
    ]
    if all(p > long_pause for p in pauses):
        parts = [Ledger(model, run).result().serverful for run in runs]
        assert s.usd == pytest.approx(sum(p.usd for p in parts), rel=1e-9, abs=1e-12)
        assert len(s.rentals) == sum(len(p.rentals) for p in parts)
