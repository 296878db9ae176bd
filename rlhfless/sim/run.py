"""Run a simulated job on each system and price it under each cost model.

    from rlhfless.sim import SimConfig, simulate
    report = simulate(SimConfig(nodes=20, gpu="h100", model="7b", costs=("aws", "onprem")))
    report.systems["rlhfless"].usd["aws"]

Dollars come from :class:`rlhfless.cost_models.Ledger` over the simulated functions' billing
events, so the simulated bill follows the same rules as a real run's.
"""

from __future__ import annotations

import statistics

import msgspec

from rlhfless.cost_models import Accrual, CostModel, Ledger, UnknownDeviceKind, get_model
from rlhfless.runtime.messages import BillingEvent
from rlhfless.sim.cluster import Cluster
from rlhfless.sim.engine import Engine
from rlhfless.sim.errors import BadSetting, UnknownName
from rlhfless.sim.hardware import GpuProfile, ModelProfile, get_gpu, get_model_profile
from rlhfless.sim.interruptions import Interrupter, Interruptions
from rlhfless.sim.model_config import is_config_path, model_from_config, tp_for
from rlhfless.sim.perf import PerfModel, StartupParams, startup_for
from rlhfless.sim.serverless import Rlhfless, RlhflessStaged
from rlhfless.sim.systems import IterationResult, ServerfulColocated, ServerfulFused, System
from rlhfless.sim.workload import Batch, Workload

SYSTEMS = ("serverful-colocated", "serverful-fused", "rlhfless", "rlhfless-staged")


class SimConfig(msgspec.Struct, frozen=True, kw_only=True):
    nodes: int = 20
    gpu: str = "h100"
    model: str = "7b"
    gpus_per_node: int = 0  # 0 = the GPU profile's (8)
    workload: Workload = Workload()
    systems: tuple[str, ...] = SYSTEMS
    costs: tuple[str, ...] = ("aws", "onprem")
    startup: StartupParams | None = None  # None: the device's own (perf.startup_for)
    eager: bool = False  # rollout engines without CUDA graphs (verl's quickstart ran so)
    interruptions: Interruptions | None = None  # spot: nodes reclaimed, their work re-run
    # rlhfless's training gang in GPUs (a real run's train.slots): whole nodes, or part of one;
    # 0: chosen per iteration, the cheapest within 3% of the fastest (Rlhfless.choose_gang).
    train_gpus: int = 0


class Span(msgspec.Struct, frozen=True, array_like=True):
    row: str  # function id
    start: float
    end: float
    kind: str  # "busy", "idle" or "cold"


class SystemReport(msgspec.Struct, kw_only=True):
    system: str
    iterations: int
    iteration_seconds: list[float]
    mean_iteration_seconds: float  # steady state: iterations after the first (all if only one)
    job_seconds: float
    stages: dict[str, float]  # mean steady seconds per stage
    gpu_hours: float
    busy_gpu_hours: float
    idle_gpu_hours: float  # held, not busy, not cold-starting
    cold_gpu_hours: float
    functions: int
    rollout_functions: float  # mean per iteration
    moves: int
    usd: dict[str, float | None]  # per cost model; None where it does not price this GPU
    # Per cost model, the bill of one steady iteration: what the run accrued from the first
    # iteration's end to the last's, over the iterations between (steady_bill; None with one
    # iteration). The job's ``usd`` also holds the start, which weighs heavily in a short job.
    steady_usd: dict[str, float | None] = {}
    samples: int
    samples_trained: int
    timeline: list[Span] = []  # one steady iteration
    interruptions: int = 0  # nodes reclaimed under SimConfig.interruptions
    lost_gpu_hours: float = 0.0  # of gpu_hours, the interrupted attempts' thrown-away work
    train_gpus: list[int] = []  # per iteration: the GPUs it trained on (its gang)


class SimReport(msgspec.Struct, kw_only=True):
    config: SimConfig
    device_kind: str
    gpus: int
    tp: int
    systems: dict[str, SystemReport]


def _make(name: str, perf: PerfModel, cfg: SimConfig, cluster: Cluster, plan: str) -> System:
    # Every system draws from its own generator, seeded alike; a replacement node cold-starts.
    lose = Interrupter(cfg.interruptions, perf.start_seconds(warm=False))
    w = cfg.workload
    if name == "serverful-colocated":
        return ServerfulColocated(perf, w, cluster, lose)
    if name == "serverful-fused":
        return ServerfulFused(perf, w, cluster, lose)
    cls = RlhflessStaged if name == "rlhfless-staged" else Rlhfless
    return cls(perf, w, cluster, get_model(plan), lose, cfg.train_gpus)


def check_train_gpus(train_gpus: int, gpus: int, per_node: int, tp: int) -> None:
    """A gang is whole nodes or part of one, and holds whole rollout engines (tp)."""
    fits = 0 <= train_gpus <= gpus and (train_gpus <= per_node or train_gpus % per_node == 0)
    if not fits or train_gpus % tp:
        raise BadSetting(
            "train_gpus", train_gpus,
            f"0 (chosen per iteration), or a multiple of tp ({tp}) up to one node ({per_node}) or whole "
            f"nodes up to the cluster ({gpus})",
        )  # fmt: skip


def resolve_systems(text: str) -> tuple[str, ...]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names or names == ["all"]:
        return SYSTEMS
    for n in names:
        if n not in SYSTEMS:
            raise UnknownName("system", n, [*SYSTEMS, "all"])
    return tuple(names)


def resolve_model(name: str, gpu: GpuProfile) -> ModelProfile:
    """A preset or a config.json; ``tp`` chosen for the GPU where the preset's does not fit a
    node (or a config.json gives none)."""
    model = model_from_config(name) if is_config_path(name) else get_model_profile(name)
    if model.tp == 0 or model.tp > gpu.gpus_per_node:
        tp = tp_for(model.weight_bytes, gpu.memory_bytes, gpu.gpus_per_node)
        model = msgspec.structs.replace(model, tp=tp)
    return model


def simulate(cfg: SimConfig, batches: list[Batch] | None = None) -> SimReport:
    gpu = get_gpu(cfg.gpu)
    if cfg.nodes < 1:
        raise BadSetting("nodes", cfg.nodes, "an integer >= 1")
    if cfg.gpus_per_node < 0:
        raise BadSetting("gpus_per_node", cfg.gpus_per_node, "an integer >= 1 (0: the GPU's)")
    per_node = cfg.gpus_per_node or gpu.gpus_per_node
    gpu = msgspec.structs.replace(gpu, gpus_per_node=per_node)
    model = resolve_model(cfg.model, gpu)
    for s in cfg.systems:
        if s not in SYSTEMS:
            raise UnknownName("system", s, SYSTEMS)
    models = {name: get_model(name) for name in cfg.costs}  # fails early on a bad name
    batches = list(cfg.workload.batches()) if batches is None else batches
    samples = sum(b.samples for b in batches)
    prompt_mean = (
        sum(p * len(ls) for b in batches for p, ls in zip(b.prompt_tokens, b.lengths, strict=True))
        / samples
    )
    response_mean = sum(b.decode_tokens for b in batches) / samples
    perf = PerfModel(
        gpu, model, prompt_mean, response_mean, cfg.startup or startup_for(gpu),
        eager=cfg.eager, micro_batch=cfg.workload.micro_batch,
    )  # fmt: skip
    if per_node % perf.tp:
        raise BadSetting("gpus_per_node", per_node, f"a multiple of the model's tp ({perf.tp})")
    check_train_gpus(cfg.train_gpus, cfg.nodes * per_node, per_node, perf.tp)
    out: dict[str, SystemReport] = {}
    plans = list(cfg.costs) or ["aws"]
    for name in cfg.systems:
        # rlhfless adapts its policy (functions per rollout, when to release a GPU) to the
        # billing rules, so it runs once per cost model; times come from the first.
        runs = plans if name.startswith("rlhfless") else plans[:1]
        report: SystemReport | None = None
        for plan in runs:
            cluster = Cluster(cfg.nodes, per_node, gpu.device_kind)
            system = _make(name, perf, cfg, cluster, plan)
            system.run(Engine(), batches)
            priced = (
                models
                if not name.startswith("rlhfless")
                else {plan: models[plan]}
                if plan in models
                else {}
            )
            one = _report(name, system, cluster, priced)
            if report is None:
                report = one
            report.usd.update(one.usd)
            report.steady_usd.update(one.steady_usd)
        assert report is not None
        out[name] = report
    return SimReport(
        config=cfg, device_kind=gpu.device_kind, gpus=cfg.nodes * per_node, tp=perf.tp, systems=out
    )


def _report(name: str, system: System, cluster: Cluster, models: dict) -> SystemReport:
    events = cluster.events()
    usd: dict[str, float | None] = {}
    steady: dict[str, float | None] = {}
    result = None
    for cost_name, model in models.items():
        try:
            result = Ledger(model, events).result()
            usd[cost_name] = result.total.usd
            steady[cost_name] = steady_bill(model, events, system.results)
        except UnknownDeviceKind:
            usd[cost_name] = steady[cost_name] = None
    if result is None:  # nothing priced it: GPU-seconds still come from the events
        result = Ledger(get_model("onprem"), []).result()
    total = sum((e.exited_at or 0) - e.requested_at for e in events for _ in range(e.slots))
    busy = sum(sum(b - a for a, b in e.busy) * e.slots for e in events)
    cold = sum(((e.ready_at or e.requested_at) - e.requested_at) * e.slots for e in events)
    res = system.results
    secs = [r.seconds for r in res]
    later = res[1:] or res
    stages: dict[str, float] = {}
    for r in later:
        for k, v in r.stages.items():
            stages[k] = stages.get(k, 0.0) + v / len(later)
    return SystemReport(
        system=name,
        iterations=len(res),
        iteration_seconds=secs,
        mean_iteration_seconds=statistics.fmean(r.seconds for r in later),
        job_seconds=max(max((e.exited_at or 0) for e in events), system.end),
        stages=stages,
        gpu_hours=total / 3600,
        busy_gpu_hours=busy / 3600,
        idle_gpu_hours=max(0.0, total - busy - cold) / 3600,
        cold_gpu_hours=cold / 3600,
        functions=len(events),
        rollout_functions=statistics.fmean(r.rollout_functions for r in res),
        moves=sum(r.moves for r in res),
        usd=usd,
        steady_usd=steady,
        samples=sum(r.samples for r in res),
        samples_trained=sum(r.samples_trained for r in res),
        timeline=_timeline(cluster, later[len(later) // 2]),
        interruptions=system.interrupter.interruptions,
        lost_gpu_hours=system.interrupter.lost_gpu_seconds / 3600,
        train_gpus=system.gangs or [cluster.gpus] * len(res),
    )


def steady_bill(
    model: CostModel, events: list[BillingEvent], its: list[IterationResult]
) -> float | None:
    """The bill of one steady iteration: accrued from the first iteration's end to the last's
    (:class:`~rlhfless.cost_models.Accrual`: each function's bill spread over its life), over
    the iterations between; None with one iteration (there is no steady one). The iterations
    ``mean_iteration_seconds`` is taken over, so a saving and a speedup describe the same part
    of a run, and a long job costs about its start plus this per iteration. (rlhfless runs
    once per cost model, and the table's times are the first model's run: another model's bill
    is of its own run, whose iterations differ by a little.)"""
    if len(its) < 2:
        return None
    accrual = Accrual(model, events)
    last, first = accrual.at(its[-1].end), accrual.at(its[0].end)
    # Two equal bills summed in another order differ by float noise (1e-16), not by a cent.
    spent = last - first if last - first > 1e-12 * last else 0.0
    return spent / (len(its) - 1)


def _timeline(cluster: Cluster, it: object) -> list[Span]:
    """Busy / idle / cold spans of every function alive during one iteration, clipped to it."""
    lo, hi = it.start, it.end  # type: ignore[attr-defined]
    spans: list[Span] = []
    for r in cluster.records:
        a, b = max(r.requested_at, lo), min(r.exited_at, hi)
        if b <= a:
            continue
        if r.ready_at > a:
            spans.append(Span(r.function_id, a, min(r.ready_at, b), "cold"))
        cursor = max(a, r.ready_at)
        for s, e in sorted(r.busy):
            s, e = max(s, cursor), min(e, b)
            if e <= s:
                continue
            if s > cursor:
                spans.append(Span(r.function_id, cursor, s, "idle"))
            spans.append(Span(r.function_id, s, e, "busy"))
            cursor = e
        if cursor < b:
            spans.append(Span(r.function_id, cursor, b, "idle"))
    return spans
