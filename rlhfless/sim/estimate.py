"""``rlhfless estimate``: a job's time and dollars before it runs, as a range, per cost model.

A :class:`JobSpec` says what a config will run (the CLI layer builds it from the TOML config, so
this module needs nothing of ``stages``). The estimate:

* **Lengths**: from an earlier run's ``lengths.jsonl`` where given (``--history``), else sampled
  from the task's own length model (the repeat task: lognormal(median, sigma) clipped to the
  limit; other tasks: unknown, so every response at the limit — a 135M model on gsm_symbolic
  hit the limit on 73% of its samples here).
* **Stage seconds**: an earlier run's measured medians where given; else the CPU stage model of
  :mod:`.residuals` (fitted on the tiny run, held-out residuals in docs/simulate.md) on those
  lengths. GPU devices go through :func:`rlhfless.sim.simulate` instead.
* **Range**: with history, the 10th-90th percentile of the measured iterations; without, the
  central value x (1 -/+ :data:`MODEL_UNCERTAINTY`), the largest held-out stage-sum residual of
  the calibration runs, rounded up.
* **Dollars**: billing events shaped as the runtime makes them (every function of an iteration
  started once, kept warm between iterations, busy for its stage, exited at the job's end),
  priced by :class:`rlhfless.cost_models.Ledger` — the bill a run itself gets, with its
  serverful baseline (the ledger's ``serverful``).
"""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

import msgspec

from rlhfless.cost_models import Ledger, UnknownDeviceKind, get_model
from rlhfless.runtime.messages import BillingEvent
from rlhfless.sim.errors import BadSetting
from rlhfless.sim.hardware import get_gpu
from rlhfless.sim.perf import startup_for
from rlhfless.sim.profiles import ModelProfile
from rlhfless.sim.residuals import cpu_model, predict_iteration

MODEL_UNCERTAINTY = 0.30  # held out: whole iterations -18..+16%, estimate then run 0.99-1.23
ITERATION_GAP_SECONDS = 0.0  # added per iteration when there is no history (none measured)
# A run's wall time outside its iterations (runtime start, model build, summary): summary.json
# seconds - the sum of metrics.jsonl seconds, measured 0.98 s (tiny GRPO, the calibration run;
# PPO 0.97 s, SmolLM2 6.6 s with its model load). With history the run's own figure is used.
RUN_OVERHEAD_SECONDS = 0.98
# The stages each function is busy in: the scorers (reward, reference) in "score"; PPO's critic
# scores values there and trains beside the policy.
ROLE_STAGES = {"rollout": ("rollout",), "train": ("train",), "critic": ("score", "train")}
STAGE_ORDER = ["rollout", "score", "train"]  # an iteration's stages, one after the other


class JobSpec(msgspec.Struct, frozen=True, kw_only=True):
    algo: str = "grpo"
    model: str = "tiny"  # a sim model name (tiny, smollm2, a preset, a config.json)
    device: str = "cpu-tiny"  # or a GPU of the simulator (h100, a100, l40s, l4)
    device_kind: str = "cpu"
    nodes: int = 1  # GPU jobs: nodes and GPUs per node of the simulated cluster
    gpus_per_node: int = 0
    slots: int = 2
    train_slots: int = 1  # the trainer's gang (train.slots): GPUs it trains on in --gpu
    rollout_functions: int = 2
    iterations: int = 40
    batch_prompts: int = 16
    group_size: int = 8
    epochs: int = 4
    reference: bool = False
    max_new_tokens: int = 48
    length_median: float = 0.0  # 0: unknown (every response at the limit)
    length_sigma: float = 0.0
    prompt_tokens: int = 4
    seed: int = 0
    keep_alive: float = 30.0  # an idle function exits after this long (runtime.keep_alive_s)
    # The model's shape where ``model`` does not name it (the tiny sizes other than "tiny")
    model_profile: ModelProfile | None = None

    @property
    def functions(self) -> int:
        """Functions one iteration starts: rollouts, reward, trainer, reference, critic."""
        return self.rollout_functions + 2 + int(self.reference) + int(self.algo == "ppo")


class Earlier(msgspec.Struct, kw_only=True):
    """What an earlier run measured (its run directory)."""

    lengths: list[dict]
    stage_seconds: list[dict[str, float]]  # per iteration
    seconds: list[float]  # per iteration
    wall_seconds: float | None = None  # the whole run (summary.json)
    run_dir: str = ""  # where it was read from (its lengths.jsonl is a simulator trace)
    events: list[BillingEvent] = []  # billing.jsonl: priced by today's cost models

    def dollars(self, cost_model: str) -> tuple[float | None, float | None]:
        """``(serverless, serverful)`` dollars of the run's own events under ``cost_model``."""
        if not self.events:
            return None, None
        try:
            r = Ledger(get_model(cost_model), self.events).result()
        except UnknownDeviceKind:
            return None, None
        return r.total.usd, r.serverful.usd


class Range(msgspec.Struct, frozen=True, array_like=True):
    low: float
    mid: float
    high: float

    def scale(self, x: float) -> Range:
        return Range(self.low * x, self.mid * x, self.high * x)


class Priced(msgspec.Struct, kw_only=True):
    cost_model: str
    serverless_usd: Range | None  # None: the cost model does not price this device
    serverful_usd: Range | None


class GangAdvice(msgspec.Struct, kw_only=True):
    """``--gpu``: the same job with the training gang the simulator chooses (the cheapest within
    3% of the fastest, per iteration) instead of the config's ``train.slots``."""

    train_gpus: list[int]  # per simulated iteration
    iteration_seconds: float  # steady, central value (the same band applies)
    usd: dict[str, float | None]  # the whole job, per cost model


class Estimate(msgspec.Struct, kw_only=True):
    iteration_seconds: Range
    first_iteration_seconds: float
    job_seconds: Range
    stage_seconds: dict[str, float]
    priced: list[Priced]
    basis: str  # what the numbers rest on
    gang: GangAdvice | None = None  # --gpu only


def read_run(run_dir: str | Path) -> Earlier:
    """An earlier run's measurements; a clear error when the folder is not a run."""
    run = Path(run_dir)
    try:
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
        lengths = [json.loads(x) for x in (run / "lengths.jsonl").read_text().splitlines() if x]
    except OSError as exc:
        raise BadSetting("run", str(run), f"a run directory with metrics.jsonl and "
                         f"lengths.jsonl ({exc.strerror or exc})") from None  # fmt: skip
    if not metrics:
        raise BadSetting("run", str(run), "a run with at least one iteration in metrics.jsonl")
    summary = run / "summary.json"
    s = json.loads(summary.read_text()) if summary.exists() else {}
    billing = run / "billing.jsonl"
    lines = billing.read_bytes().splitlines() if billing.exists() else []
    events = [msgspec.json.decode(x, type=BillingEvent) for x in lines if x.strip()]
    return Earlier(
        lengths=lengths, stage_seconds=[m["stage_seconds"] for m in metrics],
        seconds=[m["seconds"] for m in metrics], wall_seconds=s.get("seconds"), events=events,
        run_dir=str(run),
    )  # fmt: skip


def _sampled_iterations(job: JobSpec, earlier: Earlier | None, n: int) -> list[dict]:
    """``n`` iterations of prompt tokens and lengths: replayed or drawn from the task's model."""
    b = job.batch_prompts
    if earlier and earlier.lengths:
        rows = earlier.lengths
        return [
            {"prompt_tokens": [rows[(i * b + j) % len(rows)]["prompt_tokens"] for j in range(b)],
             "lengths": [rows[(i * b + j) % len(rows)]["lengths"] for j in range(b)]}
            for i in range(n)
        ]  # fmt: skip
    rng = random.Random(job.seed)
    cap = job.max_new_tokens

    def draw() -> int:
        if job.length_median <= 0:
            return cap
        x = rng.lognormvariate(math.log(job.length_median), job.length_sigma)
        return max(1, min(cap - 1, round(x)) + 1)  # the target plus the end token

    return [
        {"prompt_tokens": [job.prompt_tokens] * b,
         "lengths": [[draw() for _ in range(job.group_size)] for _ in range(b)]}
        for _ in range(n)
    ]  # fmt: skip


def _settings(job: JobSpec) -> dict:
    return {"algo": job.algo, "model": job.model, "epochs": job.epochs,
            "functions": job.rollout_functions, "batch_prompts": job.batch_prompts}  # fmt: skip


def stage_medians(job: JobSpec, earlier: Earlier | None) -> tuple[dict[str, float], list[float]]:
    """Median seconds per stage and the per-iteration sums (steady iterations)."""
    if earlier and len(earlier.stage_seconds) > 1:
        rows = earlier.stage_seconds[1:]
        keys = {k for r in rows for k in r}
        med = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in sorted(keys)}
        return med, list(earlier.seconds[1:])
    its = _sampled_iterations(job, earlier, 8)
    model = job.model_profile or cpu_model(job.model)
    predicted = [predict_iteration(_settings(job), it, model) for it in its]
    med = {k: statistics.median(p[k] for p in predicted) for k in predicted[0]}
    return med, [sum(p.values()) + ITERATION_GAP_SECONDS for p in predicted]


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def estimate(job: JobSpec, costs: list[str], earlier: Earlier | None = None) -> Estimate:
    if job.device != "cpu-tiny":
        raise BadSetting(
            "device", job.device, "cpu-tiny here (GPU jobs: estimate_gpu.estimate_gpu)"
        )
    stages, sums = stage_medians(job, earlier)
    mid = statistics.median(sums)
    if earlier and len(earlier.seconds) > 1:
        it = Range(_quantile(sums, 0.1), mid, _quantile(sums, 0.9))
        first = earlier.seconds[0]
        basis = "measured stage times and lengths of the earlier run"
    else:
        it = Range(mid * (1 - MODEL_UNCERTAINTY), mid, mid * (1 + MODEL_UNCERTAINTY))
        st = startup_for(get_gpu(job.device))
        first = mid + st.container_start_seconds + st.engine_init_seconds
        basis = "the CPU stage model (no earlier run)"
        if earlier:
            basis = "the CPU stage model on the earlier run's lengths"
    rest = job.iterations - 1
    outside = RUN_OVERHEAD_SECONDS
    if earlier and earlier.wall_seconds:
        outside = max(0.0, earlier.wall_seconds - sum(earlier.seconds))
    start = first + outside
    job_range = Range(start + rest * it.low, start + rest * it.mid, start + rest * it.high)
    alive = Range(job_range.low - outside, job_range.mid - outside, job_range.high - outside)
    priced = [_price(name, job, stages, first, alive) for name in costs]  # functions: iterations
    return Estimate(
        iteration_seconds=it, first_iteration_seconds=first, job_seconds=job_range,
        stage_seconds=stages, priced=priced, basis=basis,
    )  # fmt: skip


def _events(job: JobSpec, stages: dict[str, float], first: float, seconds: float) -> list:
    """Billing events as the runtime makes them: the rollout functions started at 0 and ready
    after the first iteration's start-up; every other function started when its stage first
    runs (the runtime requests a function when a stage needs one); each leased for its stage
    of every iteration and kept warm between them, exited at the job's end."""
    steady = sum(stages.values()) or 1.0
    roles = ["rollout"] * job.rollout_functions + ["reward", "train"]
    roles += ["reference"] * job.reference + ["critic"] * (job.algo == "ppo")
    ready = max(0.0, first - steady)
    per_it = (seconds - ready) / max(job.iterations, 1)
    scale = per_it / steady
    out = []
    for i, role in enumerate(roles):
        used = ROLE_STAGES.get(role, ("score",))
        offset = scale * sum(stages.get(s, 0.0) for s in STAGE_ORDER[: STAGE_ORDER.index(used[0])])
        busy_s = scale * sum(stages.get(s, 0.0) for s in used)
        at = [ready + k * per_it + offset for k in range(job.iterations)]
        busy = [(t, t + busy_s) for t in at]
        for n, life in enumerate(_lives([b for b in busy if b[1] > b[0]], job.keep_alive)):
            ready_at = life[0][0] if life else ready
            if n == 0 and role == "rollout":  # the job's start-up
                start = 0.0
            elif n == 0:  # requested as its stage first runs (the start-up is behind it)
                start = ready_at
            else:  # a restart pays the start again
                start = ready_at - ready
            last = not life or life[-1] == busy[-1]  # the last life lasts to the job's end
            end = seconds if last else life[-1][1] + job.keep_alive
            leases = [(start if j == 0 else b0, b1) for j, (b0, b1) in enumerate(life)]
            out.append(BillingEvent(
                function_id=f"est-{i}-{n}", actor=role, stage=role, node="n0", slot=i % job.slots,
                device_kind=job.device_kind, requested_at=start, ready_at=ready_at,
                busy=life, leases=leases or [(start, end)],
                released_at=leases[-1][1] if leases else end, exited_at=end, exit_code=0,
            ))  # fmt: skip
    return out


def _lives(busy: list[tuple[float, float]], keep_alive: float) -> list[list[tuple[float, float]]]:
    """A function's busy spans split where it sat idle longer than the keep-alive (it exited
    and a new one started for the next span), as the runtime's warm pool does."""
    lives: list[list[tuple[float, float]]] = []
    for span in busy:
        if lives and span[0] - lives[-1][-1][1] <= keep_alive:
            lives[-1].append(span)
        else:
            lives.append([span])
    return lives or [[]]


def _price(name: str, job: JobSpec, stages: dict, first: float, seconds: Range) -> Priced:
    model = get_model(name)
    try:
        runs = [
            Ledger(model, _events(job, stages, first, s)).result()
            for s in (seconds.low, seconds.mid, seconds.high)
        ]
    except UnknownDeviceKind:
        return Priced(cost_model=name, serverless_usd=None, serverful_usd=None)
    return Priced(
        cost_model=name,
        serverless_usd=Range(*(r.total.usd for r in runs)),
        serverful_usd=Range(*(r.serverful.usd for r in runs)),
    )
