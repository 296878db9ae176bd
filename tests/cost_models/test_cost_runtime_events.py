"""The cost models price what the runtime really writes: billing JSONL from real functions."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhfless.cost_models import UNUSED_STAGE, Ledger, get_model, read_billing_events
from rlhfless.runtime import Runtime

pytestmark = pytest.mark.timeout(120)


@pytest.mark.anyio
async def test_runtime_billing_file_prices_under_every_model(tmp_path: Path) -> None:
    path = tmp_path / "billing.jsonl"
    async with Runtime(preload=("torch",), keep_alive_s=0.2, billing_path=str(path)) as rt:
        for stage in ("rollout", "train"):
            h = await rt.spawn("tests.runtime.actors:Echo", stage, stage=stage)
            await h.sleep(0.3)
            await h.release()
    events = read_billing_events(path)
    assert events == rt.billing_events and len(events) == 2
    for name in ("aws", "aws-gpu-share", "modal", "onprem"):
        result = Ledger(get_model(name), events).result()
        # aws rents whole instances: the minimum's unused part is a line of its own
        assert set(result.by_stage) - {UNUSED_STAGE} == {"rollout", "train"}
        assert result.total.usd > 0 and result.total.busy_usd > 0
        # the busy part is what the functions measured: at least the 0.3 s sleeps
        assert result.total.busy_slot_seconds >= 0.6
        if name == "aws-gpu-share":  # a 60 s minimum per function start, for both functions
            assert result.total.billed_slot_seconds >= 120
        if name == "aws":  # whole instances: at least one instance start's 60 s minimum
            assert result.total.usd >= 60 * get_model("aws").rate("cpu") - 1e-12
    out = subprocess.run(
        [sys.executable, "-m", "rlhfless.cli", "cost", str(path), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    priced = json.loads(out.stdout)
    text = json.dumps(priced)
    for name in ("aws", "onprem"):  # gcp prices no CPU machine: left out, named on stderr
        assert name in text
    assert "gcp left out" in out.stderr
