"""Billing events: every function's life as times, as a list, a stream and JSONL."""

import asyncio

import pytest

from rlhfless.runtime import Runtime
from rlhfless.runtime.messages import billing_from_json
from tests.runtime.conftest import ECHO

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_event_records_a_functions_life(tmp_path) -> None:
    path = tmp_path / "run" / "billing.jsonl"
    async with Runtime(preload=("torch",), keep_alive_s=30, billing_path=str(path)) as rt:
        stream = rt.billing_stream()
        first = asyncio.create_task(anext(stream))
        h = await rt.spawn(ECHO, stage="rollout", slot=0)
        await h.sleep(0.2)
        await asyncio.gather(h.sleep(0.2), h.asleep(0.2))  # overlapping calls: one interval
        await h.release()
        h2 = await rt.spawn(ECHO, stage="rollout", slot=0)  # warm reuse: same process, same record
        await h2.echo(1)
        await h2.release()
    ev = rt.billing_events[0]
    assert len(rt.billing_events) == 1
    assert ev.stage == "rollout" and ev.slot == 0 and ev.device_kind == rt.devices.kind
    assert ev.node == rt.node and ev.actor == ECHO and ev.exit_code == 0 and ev.warm_starts == 1
    assert (
        ev.requested_at
        < ev.ready_at
        <= ev.busy[0][0]
        < ev.busy[-1][1]
        <= ev.released_at
        <= ev.exited_at
    )
    assert len(ev.leases) == 2
    for (_, end), (start, _) in zip(ev.busy, ev.busy[1:], strict=False):
        assert end <= start  # never overlapping
    busy = sum(e - s for s, e in ev.busy)
    assert 0.4 <= busy < 1.0  # 0.2 + max(0.2, 0.2) and a little
    assert (await first) == ev
    lines = path.read_bytes().splitlines()
    assert [billing_from_json(line) for line in lines] == [ev]


async def test_never_ready_function_is_billed_too(rt: Runtime) -> None:
    with pytest.raises(Exception, match="BadInit"):
        await rt.spawn("tests.runtime.actors:BadInit", stage="reward")
    for _ in range(50):
        if rt.billing_events:
            break
        await asyncio.sleep(0.05)
    (ev,) = rt.billing_events
    assert ev.ready_at is None and ev.exit_code == 1 and ev.busy == [] and ev.stage == "reward"
    assert ev.exited_at >= ev.requested_at
