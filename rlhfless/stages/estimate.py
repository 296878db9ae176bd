"""The glue ``rlhfless estimate`` needs from ``stages``: a TOML config read into the simulator's
:class:`~rlhfless.sim.estimate.JobSpec` (``sim`` may not import ``stages``; see tests/test_house.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rlhfless.sim.errors import BadSetting, SimError
from rlhfless.sim.estimate import JobSpec
from rlhfless.sim.model_config import count_params
from rlhfless.sim.profiles import ModelProfile
from rlhfless.stages.config import Config, ConfigError, config_from_dict, load_config

REPEAT_PROMPT_TOKENS = 4  # the repeat task's prompts: measured 4-5 tokens (lengths.jsonl)
OTHER_PROMPT_TOKENS = 120  # gsm_symbolic with SmolLM2's chat template: measured 110-144


def tiny_size_profile(size: str) -> ModelProfile:
    """The shape of an embedded tiny model size, float32 as ``rlhfless train`` builds it."""
    from rlhfless.adapters.tiny import TinyTokenizer, tiny_config

    params, shape = count_params(tiny_config(TinyTokenizer(), size).to_dict(), f"tiny {size}")
    return ModelProfile(name=f"tiny-{size}", params=params, tp=1, dtype_bytes=4,
                        source=f"rlhfless/adapters/tiny.py SIZES[{size!r}]", **shape)  # fmt: skip


def job_from_config(cfg: Config) -> JobSpec:
    sized = cfg.model.kind == "tiny" and cfg.model.tiny_size != "tiny"
    repeat = cfg.task.name == "repeat"
    # a model directory is described by its config.json (GPU estimates: --gpu)
    model = cfg.model.path if cfg.model.kind == "dir" else cfg.model.kind
    return JobSpec(
        algo=cfg.train.algo, model=model, slots=cfg.runtime.slots, train_slots=cfg.train.slots,
        rollout_functions=cfg.rollout.functions, iterations=cfg.train.iterations,
        batch_prompts=cfg.train.batch_prompts, group_size=cfg.train.group_size,
        epochs=cfg.train.epochs, reference=cfg.train.uses_reference,
        max_new_tokens=cfg.rollout.max_new_tokens,
        length_median=cfg.task.median_len if repeat else 0.0,
        length_sigma=cfg.task.sigma if repeat else 0.0,
        prompt_tokens=REPEAT_PROMPT_TOKENS if repeat else OTHER_PROMPT_TOKENS, seed=cfg.run.seed,
        keep_alive=cfg.runtime.keep_alive_s,
        model_profile=tiny_size_profile(cfg.model.tiny_size) if sized else None,
    )  # fmt: skip


def load_job(path: Path | None, overrides: list[str]) -> JobSpec:
    """A config file (or the embedded default) with ``--set`` overrides, as a JobSpec."""
    try:
        return job_from_config(load_config(path, overrides))
    except ConfigError as exc:
        raise BadSetting("config", str(path or "default"), str(exc)) from None


def run_job(run_dir: Path) -> JobSpec:
    """The job a run directory ran: the config its latest checkpoint holds."""
    ckpt = run_dir / "checkpoints"
    try:
        latest = ckpt / (ckpt / "latest").read_text().strip()
        meta = json.loads((latest / "meta.json").read_text())
        return job_from_config(config_from_dict(meta["config"]))
    except (OSError, ValueError, KeyError, ConfigError) as exc:
        raise BadSetting("run", str(run_dir), f"a run directory with a checkpoint holding its "
                         f"config ({exc})") from None  # fmt: skip


def estimate_beside(run_dir: Path) -> int:
    """Print what ``rlhfless estimate`` predicts for the job a run ran beside what it measured
    (``rlhfless cost RUN_DIR``). Returns an exit status; a run it cannot read is named."""
    from rich.console import Console

    from rlhfless.sim.estimate import estimate, read_run
    from rlhfless.sim.report import estimate_table

    try:
        job = run_job(run_dir)
        measured = read_run(run_dir)
        est = estimate(job, ["aws", "modal", "onprem"])
    except SimError as exc:
        Console(stderr=True).print(f"error: {exc}", markup=False, soft_wrap=True)
        return 1
    Console(width=None if sys.stdout.isatty() else 160).print(estimate_table(est, job, measured))
    return 0
