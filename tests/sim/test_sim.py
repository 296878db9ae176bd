"""Tests of rlhfless.sim: engine, performance model, workloads, systems, validation, CLI."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import msgspec
import pytest
import typer
from typer.testing import CliRunner

from rlhfless.cost_models import get_model
from rlhfless.sim import run as sim_run
from rlhfless.sim.calibration import CALIBRATION_RUNS, CPU_TINY, calibrate, load_profile
from rlhfless.sim.cli import parse_sweep, simulate
from rlhfless.sim.engine import Engine
from rlhfless.sim.errors import BadSetting, BadSweep, BadTrace, UnknownName
from rlhfless.sim.hardware import GPUS, LAYER_FIT, MODELS, get_gpu, get_model_profile
from rlhfless.sim.model_config import model_from_config, tp_for
from rlhfless.sim.perf import (
    VLLM_CPU_ENGINE_START_SECONDS,
    VLLM_CPU_FORK_SECONDS,
    PerfModel,
    StartupParams,
    startup_for,
)
from rlhfless.sim.published import VERL_QUICKSTART
from rlhfless.sim.residuals import calibration_recordings, fit_step, run_rows, step_rows
from rlhfless.sim.run import SimConfig
from rlhfless.sim.run import simulate as run_sim
from rlhfless.sim.workload import Batch, Workload, read_trace

DATA = Path(__file__).parent / "data"
VIDUR = Path("/work/shared/data/vidur-profiling")


def test_engine_orders_by_time_priority_then_insertion() -> None:
    e = Engine()
    seen: list[str] = []
    e.at(2.0, lambda t: seen.append("c"))
    e.at(1.0, lambda t: seen.append("b2"), priority=1)
    e.at(1.0, lambda t: seen.append("a"))
    e.at(1.0, lambda t: seen.append("b1"), priority=1)
    e.at(0.5, lambda t: e.after(0.5, lambda t2: seen.append("d")))
    e.run()
    # same time: priority 0 before 1, then scheduling order ("d" was scheduled at 0.5)
    assert seen == ["a", "d", "b2", "b1", "c"]
    assert e.now == 2.0


def test_engine_rejects_the_past() -> None:
    e = Engine()
    e.at(1.0, lambda t: e.at(0.5, lambda _: None))
    with pytest.raises(Exception, match="before now"):
        e.run()


def test_perf_hand_computed_7b_h100() -> None:
    gpu, m = GPUS["h100"], MODELS["7b"]
    p = PerfModel(gpu, m, prompt_mean=100, response_mean=200)
    t0, t1 = p.decode_step()
    assert t0 == pytest.approx(7.62e9 * 2 / (3.35e12 * 0.77) + 0.004)
    ctx = 100 + 100
    assert t1 == pytest.approx(57344 * ctx / (3.35e12 * 0.77) + 2 * 7.62e9 / (989.4e12 * 0.705))
    # prefill 1000 tokens of a 100-token prompt: 2 P N + attention 4 L H (S/2) N
    flops = 1000 * (2 * 7.62e9 + 4 * 28 * 3584 * 50)
    assert p.prefill_seconds(1000) == pytest.approx(flops / (989.4e12 * 0.705))
    train = p.train_seconds(1e6, 300, 8, steps=0)
    assert train == pytest.approx(
        3 * 1e6 * (2 * 7.62e9 + 4 * 28 * 3584 * 150) / (8 * 989.4e12 * 0.40)
    )
    assert p.start_seconds(False) == pytest.approx(5 + 10 + 15.24e9 / 2e9)


def test_70b_needs_8_gpus_and_a_too_small_gpu_is_refused() -> None:
    import msgspec

    assert MODELS["70b"].tp == 8
    small_gpu = msgspec.structs.replace(GPUS["l4"], memory_bytes=16e9)
    with pytest.raises(Exception, match="fit"):
        PerfModel(small_gpu, MODELS["70b"], 100, 100)


@pytest.mark.skipif(not VIDUR.exists(), reason="vidur profiling data absent")
def test_committed_efficiencies_match_a_fresh_vidur_fit() -> None:
    from rlhfless.sim.hardware import VIDUR_FIT
    from rlhfless.sim.vidur_fit import fit

    fresh = fit(VIDUR)
    for gpu, values in VIDUR_FIT.items():
        for k, v in values.items():
            assert fresh[gpu][k] == pytest.approx(v, abs=1e-3)


def test_unknown_names_are_clear() -> None:
    with pytest.raises(UnknownName, match="known: .*h100"):
        get_gpu("h1000")
    with pytest.raises(UnknownName, match="model"):
        get_model_profile("9b")
    with pytest.raises(UnknownName, match="system"):
        run_sim(SimConfig(nodes=1, systems=("verl",)))


def test_sweep_syntax() -> None:
    assert parse_sweep("nodes=4,8") == ("nodes", [4, 8])
    for bad in ("nodes", "nodes=", "nodes=4,x", "cores=4", "nodes=4,,8", "nodes=0"):
        with pytest.raises(BadSweep):
            parse_sweep(bad)


def test_trace_errors_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text('{"prompt_id": 1, "lengths": [3, 4], "prompt_tokens": 5}\n{"prompt_id": 2}\n')
    with pytest.raises(BadTrace, match=":2:"):
        read_trace(f)


def small(
    systems: tuple[str, ...] = ("serverful-colocated", "serverful-fused", "rlhfless"),
) -> SimConfig:
    w = Workload(batch_prompts=32, group_size=4, iterations=3, seed=1)
    return SimConfig(
        nodes=2, gpu="h100", model="1.5b", workload=w, systems=systems, costs=("aws", "onprem")
    )


def test_no_lost_work_and_systems_sanity() -> None:
    r = run_sim(small())
    for s in r.systems.values():
        assert s.samples == 3 * 32 * 4 == s.samples_trained
        assert s.iterations == 3
    colo, rl = r.systems["serverful-colocated"], r.systems["rlhfless"]
    # Serverful holds every GPU for the whole job; rlhfless never holds more GPU-time busy.
    assert colo.gpu_hours == pytest.approx(r.gpus * colo.job_seconds / 3600)
    assert rl.busy_gpu_hours <= colo.busy_gpu_hours * 1.05
    assert rl.usd["onprem"] <= colo.usd["onprem"]
    assert r.systems["serverful-fused"].mean_iteration_seconds <= colo.mean_iteration_seconds + 1e-9


def test_a_steady_iteration_is_billed_without_the_start() -> None:
    r = run_sim(msgspec.structs.replace(small(), workload=Workload(batch_prompts=32,
                group_size=4, iterations=5, seed=1)))  # fmt: skip
    colo, rl = r.systems["serverful-colocated"], r.systems["rlhfless"]
    for m in ("aws", "onprem"):
        # Serverful holds every GPU all along: a steady iteration bills them for its seconds,
        # under aws too, whose 60 s minimum per instance start falls in the first minute. Its
        # instances end with the last iteration, so their last second, rounded up, falls in.
        per_second = r.gpus * get_model(m).rate("h100")
        steady = per_second * statistics.fmean(colo.iteration_seconds[1:])
        rounding = get_model(m).rules.granularity_seconds * per_second / (colo.iterations - 1)
        assert steady - 1e-9 <= colo.steady_usd[m] <= steady + rounding + 1e-9
        for s in (colo, rl):
            # The job also holds the start (serverful: the cluster's; rlhfless: cold starts).
            assert 0 < s.steady_usd[m] < s.usd[m] / s.iterations
    one = run_sim(msgspec.structs.replace(small(), workload=Workload(batch_prompts=32,
                  group_size=4, iterations=1, seed=1)))  # fmt: skip
    assert all(s.steady_usd == {"aws": None, "onprem": None} for s in one.systems.values())


def test_rlhfless_steady_onprem_bill_is_its_gpu_seconds_in_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # onprem bills every held second (cold start included) at one rate: the steady bill is
    # the slot-seconds its functions held between the first iteration's end and the last's.
    seen: dict = {}
    report = sim_run._report

    def keep(name: str, system: Any, cluster: Any, models: dict) -> Any:
        seen["events"], seen["its"] = cluster.events(), system.results
        return report(name, system, cluster, models)

    monkeypatch.setattr(sim_run, "_report", keep)
    w = Workload(batch_prompts=32, group_size=4, iterations=5, seed=1)
    r = run_sim(msgspec.structs.replace(small(("rlhfless",)), workload=w, costs=("onprem",)))
    t0, t1 = seen["its"][0].end, seen["its"][-1].end
    held = sum(
        e.slots * max(0.0, min(e.exited_at, t1) - max(e.requested_at, t0)) for e in seen["events"]
    )
    assert held > 0 and len({e.function_id for e in seen["events"]}) > r.gpus  # restarts too
    expected = held * get_model("onprem").rate("h100") / (len(seen["its"]) - 1)
    assert r.systems["rlhfless"].steady_usd["onprem"] == pytest.approx(expected, rel=1e-9)


def test_deterministic() -> None:
    a, b = run_sim(small(("rlhfless",))), run_sim(small(("rlhfless",)))
    assert a.systems["rlhfless"].iteration_seconds == b.systems["rlhfless"].iteration_seconds


def test_cpu_tiny_constants_are_the_recorded_fit() -> None:
    fit = calibrate(calibration_recordings(DATA))
    assert fit.keys() == CPU_TINY.keys()
    for k, v in CPU_TINY.items():
        assert fit[k] == pytest.approx(v, rel=0.01)


@pytest.mark.parametrize("name", ["tiny-ppo", "tinymid-grpo"])
def test_held_out_runs_whole_iteration_within_25_percent(name: str) -> None:
    """Runs the CPU profile was not fitted on: PPO (reference, critic, two trainers) and a
    6-layer, hidden-384 model (9.5M parameters) of a shape none of the fitted runs has."""
    assert name not in {n for n, _ in CALIBRATION_RUNS}
    rows = run_rows(name, load_profile(DATA / f"measured_{name}.json"), "predicted")
    measured, predicted = sum(r.measured for r in rows), sum(r.predicted for r in rows)
    assert abs(predicted - measured) / measured < 0.25, rows


def test_validation_simulated_tiny_run_within_25_percent() -> None:
    """Held-out even iterations 2-10 of the recorded run (calibration used the odd ones)."""
    prof = load_profile(DATA / "measured_tiny-grpo.json")
    held = [prof["iterations"][i] for i in range(2, 11, 2)]
    batches = [
        Batch(prompt_ids=[str(i) for i in range(16)], prompt_tokens=r["prompt_tokens"],
              lengths=r["lengths"])
        for r in held
    ]  # fmt: skip
    w = Workload(
        batch_prompts=16, group_size=8, iterations=5, train_epochs=4, minibatches=1, reference=False
    )
    cfg = SimConfig(nodes=1, gpu="cpu-tiny", model="tiny", gpus_per_node=2, workload=w,
                    systems=("serverful-colocated",), costs=("aws",))  # fmt: skip
    sim = statistics.fmean(run_sim(cfg, batches).systems["serverful-colocated"].iteration_seconds)
    measured = statistics.fmean(r["seconds"] for r in held)
    assert abs(sim - measured) / measured < 0.25, (sim, measured)


def test_verl_quickstart_each_stage_within_25_percent_and_constants_are_the_fit() -> None:
    rows = step_rows(VERL_QUICKSTART)
    assert {r.stage for r in rows} == set(VERL_QUICKSTART.stages)
    for r in rows:
        assert abs(r.residual) < 0.25, r
    assert fit_step(VERL_QUICKSTART) == pytest.approx(LAYER_FIT, rel=1e-3)
    # the implied MFU of the actor update is the ~1% FACTS.md quotes, not the 40% assumed
    tokens = 256 * (104.883 + 239.133)
    mfu = 6 * MODELS["0.5b"].params * tokens / (20.314 * GPUS["h100"].peak_flops)
    assert 0.005 < mfu < 0.02


QWEN_05B = {"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
            "intermediate_size": 4864, "tie_word_embeddings": True, "hidden_act": "silu"}  # fmt: skip


def test_config_json_model_counts_parameters_and_picks_tp(tmp_path: Path) -> None:
    import json

    f = tmp_path / "config.json"
    f.write_text(json.dumps(QWEN_05B))
    m = model_from_config(f)
    assert m.params == pytest.approx(MODELS["0.5b"].params, rel=0.01)
    assert (m.layers, m.kv_heads, m.head_dim, m.vocab) == (24, 2, 64, 151936)
    seventy = dict(QWEN_05B, hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                   num_key_value_heads=8, vocab_size=32000, intermediate_size=28672,
                   tie_word_embeddings=False)  # fmt: skip
    f.write_text(json.dumps(seventy))
    big = model_from_config(tmp_path)  # a folder holding config.json
    assert big.params == pytest.approx(MODELS["70b"].params, rel=0.01)
    assert tp_for(big.weight_bytes, 80e9, 8) == 8
    with pytest.raises(BadSetting, match="fit on 1 x 80 GB"):
        tp_for(big.weight_bytes, 80e9, 1)
    f.write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(BadSetting, match="num_hidden_layers"):
        model_from_config(f)


def test_one_and_two_gpu_jobs_and_a_config_json_model(tmp_path: Path) -> None:
    import json

    (tmp_path / "config.json").write_text(json.dumps(QWEN_05B))
    for per_node in (1, 2):
        w = Workload(algo="ppo", batch_prompts=16, group_size=1, iterations=2)
        r = run_sim(SimConfig(nodes=1, gpus_per_node=per_node, model=str(tmp_path), workload=w,
                              costs=("onprem",)))  # fmt: skip
        assert r.gpus == per_node and r.tp == 1
        assert r.systems["serverful-colocated"].samples_trained == 32


def test_cli_table_json_and_errors(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("simulate")(simulate)
    app.command("other")(lambda: None)
    runner = CliRunner()
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["simulate", "--nodes", "1", "--model", "0.5b", "--batch", "8",
                              "--iterations", "2", "--json", str(out), "--sweep", "nodes=1,2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "gsm8k-like" in res.output and b'"rlhfless"' in out.read_bytes()
    # not a terminal: the sweep's progress is a plain line per point
    assert "simulated nodes=1 (1/2) in" in res.output and "simulated nodes=2 (2/2) in" in res.output
    bad = runner.invoke(app, ["simulate", "--gpu", "h1000"])
    assert bad.exit_code == 2 and "unknown gpu" in bad.output
    bad = runner.invoke(app, ["simulate", "--sweep", "nodes=4,x"])
    assert bad.exit_code == 2 and "bad --sweep" in bad.output


def test_cpu_cold_start_is_the_measured_vllm_engine_start_gpus_keep_assumptions() -> None:
    cpu = get_gpu("cpu-tiny")
    st = startup_for(cpu)
    assert st.engine_init_seconds == VLLM_CPU_ENGINE_START_SECONDS
    assert st.container_start_seconds == VLLM_CPU_FORK_SECONDS
    perf = PerfModel(cpu, get_model_profile("tiny"), 100, 100)  # no startup: the device's own
    weights = get_model_profile("tiny").weight_bytes / st.storage_bytes_per_s
    expected = VLLM_CPU_FORK_SECONDS + VLLM_CPU_ENGINE_START_SECONDS + weights
    assert perf.start_seconds(warm=False) == pytest.approx(expected)
    assert perf.throughput_params(warm=False).cold_start_seconds == pytest.approx(expected)
    assert startup_for(get_gpu("h100")) == StartupParams()  # no GPU measured: assumptions
