"""Each stage's predicted seconds beside the measured ones: the calibration's residuals.

Two kinds of measurement:

* a published GPU step (:mod:`.published`, verl's quickstart) — predicted with the GPU profile;
* a run of ``rlhfless train`` on this machine, recorded with :func:`record_run` into a small
  JSON file (``tests/sim/data/measured_*.json``: its settings, and per iteration the measured
  stage seconds, prompt tokens and response lengths) — predicted with the CPU profile of
  :mod:`.calibration` (fitted on the recordings of :data:`~.calibration.CALIBRATION_RUNS`;
  the others are held out).

A stage of a run is predicted from that iteration's own lengths (the stage model, not the length
model, is what is checked), medians over iterations after the first (which starts processes).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import msgspec

from rlhfless.scaling import GroupWork, assign_round_robin, simulate_rollout
from rlhfless.sim.calibration import CALIBRATION_RUNS, Recorded
from rlhfless.sim.errors import BadSetting
from rlhfless.sim.hardware import GpuProfile, ModelProfile, get_gpu, get_model_profile
from rlhfless.sim.model_config import is_config_path, model_from_config
from rlhfless.sim.perf import PerfModel
from rlhfless.sim.published import PublishedStep, fit
from rlhfless.sim.systems import REWARD_SECONDS_PER_SAMPLE


class Row(msgspec.Struct, frozen=True, array_like=True):
    job: str
    stage: str
    measured: float
    predicted: float
    how: str  # "fitted" (a constant was fitted on it) or "predicted" (held out)

    @property
    def residual(self) -> float:
        return (self.predicted - self.measured) / self.measured


# ------------------------------------------------------------------ the published GPU step


def _step_perf(step: PublishedStep, gpu: GpuProfile) -> PerfModel:
    model = get_model_profile(step.model)
    return PerfModel(
        gpu, model, step.prompt_mean, step.response_mean, eager=step.eager,
        micro_batch=step.micro_batch,
    )  # fmt: skip


def _step_stages(step: PublishedStep, perf: PerfModel) -> dict[str, float]:
    samples = step.prompts * step.group_size
    seq = step.prompt_mean + step.response_mean
    tokens = samples * seq
    t0, t1 = perf.decode_step()
    # one engine decodes the whole batch until its longest response (verl: one engine per GPU)
    gen = perf.prefill_seconds(samples * step.prompt_mean) + step.response_max * t0
    gen += t1 * samples * step.response_mean
    fwd = perf.forward_seconds(tokens, seq, step.gpus, samples)
    train = perf.train_seconds(tokens, seq, step.gpus, step.optimizer_steps, samples)
    return {
        "generation": gen,
        "reference": fwd,
        "values": fwd,
        "critic update": train,
        "actor update": train,
    }


def fit_step(step: PublishedStep) -> dict[str, float]:
    """The per-layer constants the step gives, over the roofline of a profile without them."""
    gpu = msgspec.structs.replace(
        get_gpu(step.gpu), layer_pass_seconds=0.0, layer_train_seconds=0.0
    )
    bare = _step_stages(step, _step_perf(step, gpu))
    layers = get_model_profile(step.model).layers
    return fit(step, layers, bare["reference"], bare["actor update"])


def step_rows(step: PublishedStep, name: str = "verl quickstart") -> list[Row]:
    got = _step_stages(step, _step_perf(step, get_gpu(step.gpu)))
    fitted = {"reference", "values", "critic update", "actor update"}
    return [
        Row(name, k, v, got[k], "fitted" if k in fitted else "predicted")
        for k, v in step.stages.items()
    ]


# ------------------------------------------------------------------ runs on this machine


def record_run(run_dir: str | Path, settings: dict) -> dict:
    """A run directory's measured stages and lengths, with the settings it ran with
    (``algo``, ``model``: a name or a model directory, ``epochs``, ``functions``,
    ``batch_prompts``) and, where the run holds its model's ``config.json`` (the tiny sizes) or
    ``model`` is a model directory, the model's shape."""
    run = Path(run_dir)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    lines = [json.loads(x) for x in (run / "lengths.jsonl").read_text().splitlines() if x.strip()]
    b = settings["batch_prompts"]
    iterations = []
    for i, r in enumerate(rows):
        chunk = lines[i * b : (i + 1) * b]
        iterations.append({
            "seconds": r["seconds"], "stage_seconds": r["stage_seconds"],
            "prompt_tokens": [x["prompt_tokens"] for x in chunk],
            "lengths": [x["lengths"] for x in chunk],
        })  # fmt: skip
    config = {  # the names rlhfless.sim.calibration.calibrate reads
        "batch_prompts": b, "rollout_functions": settings["functions"],
        "train_epochs": settings["epochs"], "slots": 2,
    }  # fmt: skip
    out = {"settings": settings, "config": config, "iterations": iterations}
    src = str(run / "model") if (run / "model" / "config.json").exists() else settings["model"]
    if is_config_path(src):  # a tiny size (its run holds the model) or a model directory
        out["model"] = msgspec.to_builtins(cpu_model(src, label=Path(src).name))
    return out


def cpu_model(name: str, *, label: str = "") -> ModelProfile:
    """A model as this machine's CPU runs it (float32, one process): a calibrated one by name,
    or any model by its config.json (or the folder holding it)."""
    if name.strip().lower() in ("tiny", "smollm2"):
        return get_model_profile(name)
    if not is_config_path(name):
        raise BadSetting("model", name, "tiny, smollm2 or a model's config.json on the CPU "
                         "(the GPU presets: --gpu)")  # fmt: skip
    m = model_from_config(name, name=label)
    return msgspec.structs.replace(m, tp=1, dtype_bytes=4)


def recorded_model(profile: dict) -> ModelProfile:
    """The model of a recording: its stored shape, else its calibrated name."""
    if "model" in profile:
        return msgspec.convert(profile["model"], ModelProfile)
    return get_model_profile(profile["settings"]["model"])


def _run_perf(model: ModelProfile, it: dict) -> PerfModel:
    samples = sum(len(ls) for ls in it["lengths"])
    prompt = sum(p * len(ls) for p, ls in zip(it["prompt_tokens"], it["lengths"], strict=True))
    response = sum(sum(ls) for ls in it["lengths"])
    gpu = get_gpu("cpu-tiny")
    # the HF engine decodes eagerly: every layer's dispatch in each step (layer_pass_seconds)
    return PerfModel(gpu, model, prompt / samples, response / samples, eager=True,
                     micro_batch=samples)  # fmt: skip


def predict_iteration(settings: dict, it: dict, model: ModelProfile) -> dict[str, float]:
    """Seconds of each measured stage of one iteration of a run on this machine's CPU."""
    perf = _run_perf(model, it)
    g = perf.gpu
    lengths, prompts = it["lengths"], it["prompt_tokens"]
    samples = sum(len(ls) for ls in lengths)
    seq_tokens = sum(p * len(ls) + sum(ls) for p, ls in zip(prompts, lengths, strict=True))
    seq = seq_tokens / samples
    params = perf.throughput_params()
    params = msgspec.structs.replace(params, cold_start_seconds=0.0, weight_load_seconds=0.0)
    # a group's prompt is prefilled once and shared by its samples (the engines' shared prefix)
    works = [
        GroupWork(group_id=i, prefill_tokens=float(p), lengths=tuple(map(float, ls)))
        for i, (p, ls) in enumerate(zip(prompts, lengths, strict=True))
    ]
    k = settings["functions"]
    a = assign_round_robin(works, k, params)
    r = simulate_rollout(lengths, [float(p) for p in prompts], a.groups, params, warm=k)
    fwd = perf.forward_seconds(seq_tokens, seq, 1, samples) + g.stage_overhead_seconds
    epochs = settings["epochs"]
    reward = samples * REWARD_SECONDS_PER_SAMPLE + g.stage_overhead_seconds
    # The stages as the pipeline times them: reward, reference and critic values score side by
    # side ("score"); PPO's critic update runs beside the policy's ("train"), each in its own
    # process on half the slots; GRPO's trainer has them all.
    ppo = settings["algo"] == "ppo"
    slots = g.gpus_per_node // 2 if ppo else g.gpus_per_node
    train = perf.train_seconds(seq_tokens * epochs, seq, slots, epochs)
    return {
        "rollout": r.makespan + g.stage_overhead_seconds,
        "score": max(reward, fwd) if ppo else reward,
        "train": train + g.train_overhead_seconds,
    }


def calibration_recordings(data_dir: str | Path) -> list[Recorded]:
    """The recordings :data:`~.calibration.CALIBRATION_RUNS` names, read from ``data_dir``."""
    out = []
    for name, iterations in CALIBRATION_RUNS:
        data = json.loads((Path(data_dir) / f"measured_{name}.json").read_text())
        out.append(Recorded(data, recorded_model(data), iterations))
    return out


def run_rows(name: str, profile: dict, how: str) -> list[Row]:
    settings, its = profile["settings"], profile["iterations"][1:]
    if not its:
        raise BadSetting("run", name, "at least 2 iterations (the first starts processes)")
    model = recorded_model(profile)
    predicted = [predict_iteration(settings, it, model) for it in its]
    rows = []
    for stage in predicted[0]:
        measured = statistics.median(it["stage_seconds"][stage] for it in its)
        rows.append(Row(name, stage, measured, statistics.median(p[stage] for p in predicted), how))
    return rows
