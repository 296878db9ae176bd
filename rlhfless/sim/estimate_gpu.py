"""``rlhfless estimate --gpu``: the same job on a simulated GPU cluster, serverless and serverful.

The job's settings become a :class:`~rlhfless.sim.Workload` (an earlier run's ``lengths.jsonl`` as
the trace where given; else gsm8k-like lengths with the config's generation limit, and the repeat
task's median where it has one), simulated on ``nodes`` x ``gpus_per_node`` GPUs. Serverless is
the streamed ``rlhfless`` system training on a gang of ``train.slots`` GPUs, as the run would;
serverful ``serverful-colocated`` (verl-like) trains on every GPU. Beside it, the same job with
the gang the simulator would choose (:class:`~rlhfless.sim.estimate.GangAdvice`), so a user sees
what another ``train.slots`` would save before the run. Each is priced by
the cost model's own rules. The range is the central value x (1 -/+ :data:`GPU_UNCERTAINTY`):
the largest stage residual of the calibration against verl's published GPU step (+17%),
rounded up, on a GPU the step's own GPU is only assumed to be.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from rlhfless.sim.errors import BadSetting
from rlhfless.sim.estimate import Earlier, Estimate, GangAdvice, JobSpec, Priced, Range
from rlhfless.sim.run import SimConfig, SystemReport, simulate
from rlhfless.sim.workload import Workload

GPU_UNCERTAINTY = 0.25


def _band(x: float) -> Range:
    return Range(x * (1 - GPU_UNCERTAINTY), x, x * (1 + GPU_UNCERTAINTY))


def estimate_gpu(job: JobSpec, costs: list[str], earlier: Earlier | None = None) -> Estimate:
    if job.model_profile is not None:
        raise BadSetting("model", job.model_profile.name, "a named model or a model directory "
                         "for --gpu (the tiny sizes exist only on the CPU)")  # fmt: skip
    trace = str(Path(earlier.run_dir) / "lengths.jsonl") if earlier and earlier.run_dir else ""
    w = Workload(
        algo=job.algo, batch_prompts=job.batch_prompts,  # type: ignore[arg-type]
        group_size=job.group_size, iterations=max(job.iterations, 2), train_epochs=job.epochs,
        reference=job.reference, seed=job.seed, trace=trace, prompt_len=job.prompt_tokens,
        response_len=int(job.length_median) if job.length_median else job.max_new_tokens,
        max_response=job.max_new_tokens,
    )  # fmt: skip
    cfg = SimConfig(
        nodes=job.nodes, gpu=job.device, model=job.model, gpus_per_node=job.gpus_per_node,
        workload=w, systems=("rlhfless", "serverful-colocated"), costs=tuple(costs),
        train_gpus=job.train_slots,  # the gang a real run trains on
    )  # fmt: skip
    try:
        r = simulate(cfg)
    except BadSetting as exc:
        if exc.name != "train_gpus":
            raise
        raise BadSetting("train.slots", job.train_slots, exc.expected) from None
    chosen = simulate(msgspec.structs.replace(cfg, systems=("rlhfless",), train_gpus=0))
    less, full = r.systems["rlhfless"], r.systems["serverful-colocated"]
    first = less.iteration_seconds[0]
    it = less.mean_iteration_seconds
    job_s = first + (job.iterations - 1) * it
    priced = []
    for name in costs:
        a, b = less.usd.get(name), full.usd.get(name)
        scale = job.iterations / len(less.iteration_seconds)  # the simulated job -> the config's
        priced.append(Priced(
            cost_model=name,
            serverless_usd=None if a is None else _band(a * scale),
            serverful_usd=None if b is None else _band(b * scale),
        ))  # fmt: skip
    return Estimate(
        iteration_seconds=_band(it), first_iteration_seconds=first,
        job_seconds=Range(first + (job_s - first) * (1 - GPU_UNCERTAINTY), job_s,
                          first + (job_s - first) * (1 + GPU_UNCERTAINTY)),
        stage_seconds=less.stages, priced=priced,
        basis=f"simulated on {r.gpus} x {job.device} (tp {r.tp}), streamed rlhfless vs verl-like",
        gang=_advice(chosen.systems["rlhfless"], job.iterations),
    )  # fmt: skip


def _advice(s: SystemReport, iterations: int) -> GangAdvice:
    scale = iterations / len(s.iteration_seconds)  # the simulated job -> the config's
    return GangAdvice(
        train_gpus=s.train_gpus, iteration_seconds=s.mean_iteration_seconds,
        usd={m: None if d is None else d * scale for m, d in s.usd.items()},
    )  # fmt: skip
