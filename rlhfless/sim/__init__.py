"""Simulated cluster for cost-model comparison runs (``rlhfless simulate``).

    from rlhfless.sim import SimConfig, Workload, simulate
    report = simulate(SimConfig(nodes=20, gpu="h100", model="7b", workload=Workload(algo="grpo")))
    report.systems["rlhfless"].usd["aws"], report.systems["serverful-colocated"].mean_iteration_seconds

Modules: ``profiles`` / ``hardware`` (GPU and model profiles), ``model_config`` (a model from its
config.json), ``vidur_fit`` (efficiencies fitted to Vidur's profiles), ``published`` (verl's
published step and the per-layer fit), ``calibration`` (``cpu-tiny``), ``residuals`` (each stage
against measured steps), ``perf`` (the performance model), ``workload`` (lengths: parametric or a
trace), ``engine`` (discrete events), ``cluster`` (functions and billing events), ``systems`` /
``serverless`` / ``stream`` (the systems; the streamed iteration's pool), ``run`` (simulate and
price), ``estimate`` / ``estimate_gpu`` (``rlhfless estimate``), ``report`` (tables, JSON, PNG),
``cli`` (the commands). Imports only ``rlhfless.scaling``, ``rlhfless.cost_models`` and
``rlhfless.runtime.messages``.
"""

from rlhfless.sim.errors import BadSetting, BadSweep, BadTrace, SimError, UnknownName
from rlhfless.sim.perf import PerfModel, StartupParams, startup_for
from rlhfless.sim.run import SYSTEMS, SimConfig, SimReport, SystemReport, simulate
from rlhfless.sim.workload import DATASETS, Batch, Workload, read_trace

__all__ = [
    "DATASETS",
    "SYSTEMS",
    "BadSetting",
    "BadSweep",
    "BadTrace",
    "Batch",
    "PerfModel",
    "SimConfig",
    "SimError",
    "SimReport",
    "StartupParams",
    "SystemReport",
    "UnknownName",
    "Workload",
    "read_trace",
    "simulate",
    "startup_for",
]
