"""`rlhfless estimate`: ranges, the runtime-shaped bill, history, and the command's errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from rich.console import Console
from typer.testing import CliRunner

from rlhfless.cli import app
from rlhfless.cost_models import Ledger, get_model
from rlhfless.sim.errors import BadSetting
from rlhfless.sim.estimate import RUN_OVERHEAD_SECONDS, JobSpec, _events, estimate, read_run
from rlhfless.sim.estimate_gpu import estimate_gpu
from rlhfless.sim.report import estimate_table
from rlhfless.stages.estimate import load_job

DATA = Path(__file__).parent / "data"


def test_default_config_gives_a_range_and_a_bill_per_cost_model() -> None:
    job = load_job(None, ["train.iterations=10"])
    assert (job.algo, job.model, job.functions, job.iterations) == ("grpo", "tiny", 4, 10)
    est = estimate(job, ["aws", "onprem"])
    it = est.iteration_seconds
    assert 0 < it.low < it.mid < it.high
    outside = RUN_OVERHEAD_SECONDS
    assert est.job_seconds.mid == pytest.approx(est.first_iteration_seconds + outside + 9 * it.mid)
    onprem = next(p for p in est.priced if p.cost_model == "onprem").serverless_usd
    assert onprem is not None and onprem.low < onprem.mid < onprem.high  # billed by the second


def test_the_bill_is_the_ledgers_on_runtime_shaped_events() -> None:
    job = JobSpec(algo="ppo", reference=True, iterations=3)
    # steady iteration 4 s (rollout 1, score 1, train 2); the first 5 s: 1 s of start-up
    events = _events(job, {"rollout": 1.0, "score": 1.0, "train": 2.0}, 5.0, 13.0)
    assert len(events) == job.functions == 6  # 2 rollouts, reward, trainer, reference, critic
    assert all(e.exited_at == 13.0 for e in events)
    by = {e.stage: e for e in events}
    # rollouts start with the job and are ready after the start-up; every other function is
    # requested when its stage first runs, and leased only for its stage of each iteration
    assert (by["rollout"].requested_at, by["rollout"].ready_at) == (0.0, 1.0)
    assert by["reward"].requested_at == by["reference"].requested_at == 2.0
    assert by["train"].requested_at == 3.0
    assert by["train"].busy == [(3.0, 5.0), (7.0, 9.0), (11.0, 13.0)]
    assert by["train"].leases == by["train"].busy
    assert by["critic"].busy == [(2.0, 5.0), (6.0, 9.0), (10.0, 13.0)]  # values, then update
    assert by["rollout"].leases[0] == (0.0, 2.0)  # the first lease holds the start-up
    # idle longer than the keep-alive between iterations: the function exits and restarts
    short = msgspec.structs.replace(job, keep_alive=1.0)
    lives = [e for e in _events(short, {"rollout": 1.0, "train": 10.0}, 1.0, 40.0)
             if e.stage == "rollout"]  # fmt: skip
    assert len(lives) == 2 * 3  # 2 rollout functions x 3 iterations
    assert all(e.exited_at <= 40.0 for e in lives)
    est = estimate(job, ["onprem"])
    assert est.priced[0].serverless_usd is not None
    usd = Ledger(get_model("onprem"), events).result().total.usd
    assert usd > 0


def write_run(tmp: Path, name: str) -> Path:
    prof = json.loads((DATA / f"measured_{name}.json").read_text())
    run = tmp / name
    run.mkdir()
    metrics = [{"seconds": it["seconds"], "stage_seconds": it["stage_seconds"]}
               for it in prof["iterations"]]  # fmt: skip
    lines = [{"prompt_id": str(j), "prompt_tokens": p, "lengths": ls}
             for it in prof["iterations"]
             for j, (p, ls) in enumerate(zip(it["prompt_tokens"], it["lengths"], strict=True))]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run / "lengths.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return run


def test_history_uses_the_measured_iterations(tmp_path: Path) -> None:
    earlier = read_run(write_run(tmp_path, "tiny-ppo"))
    job = load_job(None, ["train.algo=ppo", "train.kl_coef=0.05", "train.iterations=12"])
    est = estimate(job, ["onprem"], earlier)
    steady = sorted(earlier.seconds[1:])
    assert steady[0] <= est.iteration_seconds.low <= est.iteration_seconds.mid
    assert est.iteration_seconds.high <= steady[-1]
    assert est.first_iteration_seconds == earlier.seconds[0]
    assert "measured" in est.basis


def test_command_prints_the_estimate_and_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["estimate", "--set", "train.iterations=5", "--cost", "aws,onprem"])
    assert ok.exit_code == 0, ok.output
    assert "s / iteration" in ok.output and "$ onprem serverless" in ok.output
    bad = runner.invoke(app, ["estimate", "--history", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "metrics.jsonl" in bad.output
    bad = runner.invoke(app, ["estimate", "--set", "model.tiny_size=75m", "--gpu", "h100"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "tiny sizes" in bad.output


def test_any_model_shape_is_estimated_on_the_cpu() -> None:
    """A tiny size is described by its shape (counted from its config), and a larger model
    predicts slower steps than a smaller one on the same job."""
    sets = ["train.batch_prompts=4", "train.group_size=4", "train.epochs=1"]
    big = load_job(None, ["model.tiny_size=75m", *sets])
    assert big.model_profile is not None
    assert (big.model_profile.layers, big.model_profile.hidden) == (12, 768)
    assert big.model_profile.params == pytest.approx(75.5e6, rel=0.01)
    small = load_job(None, sets)
    assert small.model_profile is None
    e_big, e_small = estimate(big, ["onprem"]), estimate(small, ["onprem"])
    assert e_big.iteration_seconds.mid > 3 * e_small.iteration_seconds.mid


def test_gpu_estimate_simulates_serverless_and_serverful(tmp_path: Path) -> None:
    job = msgspec.structs.replace(
        load_job(Path("configs/smollm2-gsm.toml"), ["train.iterations=3"]),
        device="h100", device_kind="h100", gpus_per_node=1,
    )  # fmt: skip
    est = estimate_gpu(job, ["onprem"])
    assert "simulated on 1 x h100" in est.basis
    p = est.priced[0]
    assert p.serverless_usd is not None and p.serverful_usd is not None
    assert p.serverless_usd.low < p.serverless_usd.mid < p.serverless_usd.high
    with pytest.raises(BadSetting, match="--gpu"):
        estimate(msgspec.structs.replace(job, device="cpu-tiny", model="7b"), ["onprem"])


def test_gpu_estimate_shows_the_gang_the_simulator_would_choose() -> None:
    # 70B on 4 nodes of H100 with train.slots = every GPU: its training is bound by FSDP
    # traffic, so the simulator's own choice trains on fewer GPUs at about the same speed
    job = JobSpec(model="70b", device="h100", device_kind="h100", nodes=4, gpus_per_node=8,
                  iterations=3, batch_prompts=64, group_size=4, train_slots=32)  # fmt: skip
    est = estimate_gpu(job, ["onprem"])
    g, config = est.gang, est.priced[0].serverless_usd
    assert g is not None and config is not None and max(g.train_gpus) < 32
    chosen = g.usd["onprem"]
    assert chosen is not None and chosen < 0.95 * config.mid
    assert g.iteration_seconds <= 1.03 * est.iteration_seconds.mid
    console = Console(record=True, width=200)
    console.print(estimate_table(est, job))
    assert "train GPUs chosen (train.slots = 32)" in console.export_text()


def test_cost_of_a_run_directory_shows_the_estimate_beside_the_measured(tmp_path: Path) -> None:
    """`rlhfless cost RUN_DIR`: the run's bill, then what the estimate of the job it ran (its
    checkpoint's config) predicts beside what it measured; a folder that is no run: one line."""
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "rlhfless.cli", "train", "--set", "train.iterations=3",
         "--set", "train.batch_prompts=4", "--run-dir", str(run)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = CliRunner().invoke(app, ["cost", str(run), "-m", "aws,onprem"])
    assert out.exit_code == 0, out.output
    assert "Cost by stage" in out.output  # the bill of billing.jsonl
    assert "3 iterations of 4 x 8" in out.output and "mid / measured" in out.output
    (tmp_path / "empty").mkdir()
    bad = CliRunner().invoke(app, ["cost", str(tmp_path / "empty")])
    assert bad.exit_code == 1 and "billing.jsonl" in bad.output
    (tmp_path / "bills").mkdir()
    (tmp_path / "bills" / "billing.jsonl").write_bytes((run / "billing.jsonl").read_bytes())
    bad = CliRunner().invoke(app, ["cost", str(tmp_path / "bills"), "-m", "aws"])
    assert bad.exit_code == 1 and "checkpoint holding its config" in bad.output
