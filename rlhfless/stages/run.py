"""The standalone job: ``rlhfless train``. Model prep, the loop, metrics, checkpoints, summary.

Run directory layout::

    <run_dir>/model/              the embedded tiny model (built from a seed; no download)
    <run_dir>/metrics.jsonl       one IterationMetrics per line
    <run_dir>/billing.jsonl       one BillingEvent per function (the cost models price these)
    <run_dir>/lengths.jsonl       per prompt and iteration: response lengths (a scaling trace)
    <run_dir>/state/              trainer/critic hand-over state (written after every step)
    <run_dir>/checkpoints/iter-NNNNNN/, latest   checkpoints, written atomically
    <run_dir>/summary.json        the end-of-run summary
    <run_dir>/changes.jsonl       settings each --resume changed (stages/resume.py)
    <run_dir>/.replaced/          an earlier run's outputs while a fresh run starts (run_dir.py)
    <run_dir>/failed-attempt/     the outputs of the last fresh run that failed before iteration 1

A fresh run in a directory holding an earlier run's outputs sets them aside first, and puts
them back should it fail before its first iteration (:mod:`rlhfless.stages.run_dir`).
``--resume`` moves nothing; it cuts metrics.jsonl and lengths.jsonl back to the checkpoint (the
iterations after it run again), refuses another model or algorithm, and a change to what is
trained unless allowed, before any function starts; what it changed goes to changes.jsonl
(:mod:`rlhfless.stages.resume`). ``model/`` stays: it is rebuilt only when missing, not a record
of the run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from rlhfless.adapters.errors import require_vllm
from rlhfless.runtime import Runtime
from rlhfless.stages.common import atomic_dir_write
from rlhfless.stages.config import Config, config_to_dict, warm_functions_per_slot
from rlhfless.stages.errors import RunError
from rlhfless.stages.pipeline import IterationMetrics, Pipeline
from rlhfless.stages.resume import (
    HISTORY,
    count_lines,
    cut_history,
    record_changes,
    resume_changes,
)
from rlhfless.stages.rollout_stage import SCALER_STATE
from rlhfless.stages.run_dir import FAILED, EarlierRun, run_outputs
from rlhfless.stages.samples import SampleLog

SUMMARY_COST_MODELS = ("aws", "gcp", "onprem")

log = logging.getLogger("rlhfless.run")


# What transformers' from_pretrained loads a model from (checked before any function starts).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class NothingToDo(RunError):
    """``--resume`` of a run already at (or past) ``train.iterations``: no function started."""


def prepare_model(cfg: Config, run_dir: Path) -> Path:
    if cfg.model.kind == "tiny":
        from rlhfless.adapters.tiny import build_tiny_model

        model_dir = run_dir / "model"
        if not (model_dir / "config.json").is_file():
            build_tiny_model(model_dir, seed=cfg.model.seed, size=cfg.model.tiny_size)
        return model_dir
    if cfg.model.kind == "dir":
        path = Path(cfg.model.path)
        if not (path / "config.json").is_file():
            raise RunError(
                f"model.path = {cfg.model.path!r} is not a model directory (no config.json)"
            )
        if not any((path / name).is_file() for name in WEIGHT_FILES):
            raise RunError(
                f"model.path = {cfg.model.path!r} has no weights "
                f"(none of {', '.join(WEIGHT_FILES)})"
            )
        return path
    from rlhfless.adapters.hf import smollm2_dir

    return smollm2_dir(cfg.model.cache_dir or run_dir / "cache")


class Checkpoints:
    """Every K iterations: policy + optimiser (+ critic), data position, version; atomically."""

    def __init__(self, root: Path, keep: int) -> None:
        self.root = root
        self.keep = keep

    def save(
        self,
        state_dir: Path,
        next_iteration: int,
        version: int,
        cfg: Config,
        lines: dict[str, int] | None = None,
    ) -> Path:
        """``lines``: how many lines each HISTORY file held, for a resume to cut them back."""
        target = self.root / f"iter-{next_iteration:06d}"

        def write(tmp: Path) -> None:
            if (state_dir / SCALER_STATE).is_file():
                shutil.copy2(state_dir / SCALER_STATE, tmp / SCALER_STATE)
            for part in ("policy", "critic"):
                if (state_dir / part).is_dir():
                    shutil.copytree(state_dir / part, tmp / part)
                    have = int((tmp / part / "version").read_text())
                    if have != version:  # a checkpoint that cannot resume is worse than none
                        raise RunError(
                            f"checkpoint: {state_dir / part} is at version {have}, the run at "
                            f"{version}; its hand-over state was not made durable first"
                        )
            meta = {
                "next_iteration": next_iteration,
                "version": version,
                "config": config_to_dict(cfg),
                "lines": dict(lines or {}),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))

        atomic_dir_write(target, write)
        latest = self.root / "latest"
        tmp = self.root / "latest.tmp"
        tmp.write_text(target.name)
        os.replace(tmp, latest)  # the pointer moves only after the checkpoint is complete
        for old in sorted(
            p
            for p in self.root.glob("iter-*")
            if p.is_dir() and not p.name.endswith((".tmp", ".old"))
        )[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        if not (path / "meta.json").is_file():
            raise RunError(f"checkpoint {path} named by {pointer} is incomplete or missing")
        return path

    def meta(self) -> dict[str, Any]:
        """The latest checkpoint's meta.json (read before anything is restored or started)."""
        path = self.latest()
        if path is None:
            raise RunError(f"--resume: no checkpoint in {self.root}")
        meta: dict[str, Any] = json.loads((path / "meta.json").read_text())
        return meta

    def restore(self, state_dir: Path) -> dict[str, Any]:
        path = self.latest()
        if path is None:
            raise RunError(f"--resume: no checkpoint in {self.root}")
        shutil.rmtree(state_dir, ignore_errors=True)
        state_dir.mkdir(parents=True)
        for part in ("policy", "critic"):
            if (path / part).is_dir():
                shutil.copytree(path / part, state_dir / part)
        if (path / SCALER_STATE).is_file():  # older checkpoints have none: priors, as before
            shutil.copy2(path / SCALER_STATE, state_dir / SCALER_STATE)
        return json.loads((path / "meta.json").read_text())


class Job:
    """A whole run; ``on_iteration`` gets each iteration's metrics (the CLI draws progress).
    ``allow_changes``: settings that change what is trained which a resume may change anyway
    (stages/resume.py)."""

    def __init__(
        self,
        cfg: Config,
        on_iteration: Callable[[IterationMetrics], None] | None = None,
        allow_changes: Sequence[str] = (),
    ) -> None:
        self.cfg = cfg
        self.allow_changes = tuple(allow_changes)
        self.run_dir = Path(cfg.run.run_dir)
        self.on_iteration = on_iteration
        self.metrics: list[IterationMetrics] = []
        self.first_iteration = 0  # where this session started (the checkpoint's, on --resume)
        self.next_iteration = 0  # the next iteration to run: where an interrupted run stopped
        self.iteration_seconds = 0.0  # wall time inside run_iteration, this session
        self.checkpoints = Checkpoints(
            Path(cfg.checkpoint.dir or self.run_dir / "checkpoints"), cfg.checkpoint.keep
        )

    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.rollout.engine == "vllm" and cfg.cluster.provider == "local":
            require_vllm()  # before any function starts (agents elsewhere may have their own)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        earlier = EarlierRun(self.run_dir, run_outputs(self.run_dir, self.checkpoints.root))
        if earlier.put_back():  # before anything reads the dir, --resume included
            log.warning(
                "%s: a run killed before its first iteration had set an earlier run aside; it "
                "is back in place (the killed run's files, if any, are in %s)",
                self.run_dir, self.run_dir / FAILED,
            )  # fmt: skip
        state_dir = self.run_dir / "state"
        start, version = 0, 0
        if cfg.run.resume:
            # Every check before any function starts (and before state/ is replaced).
            meta = self.checkpoints.meta()
            changes = resume_changes(meta.get("config", {}), cfg, self.allow_changes)
            start = meta["next_iteration"]
            self.next_iteration = start
            if start >= cfg.train.iterations:
                raise NothingToDo(
                    f"nothing to do: the run is at iteration {start} of train.iterations = "
                    f"{cfg.train.iterations}; raise train.iterations to train further"
                )
            record_changes(self.run_dir, start, changes)
            for c in changes:
                if c.kind == "training":
                    log.warning("resume: %s changed from %r to %r (allowed)", c.key, c.old, c.new)
            model_dir = prepare_model(cfg, self.run_dir)
            meta = self.checkpoints.restore(state_dir)
            start, version = meta["next_iteration"], meta["version"]
            cut_history(self.run_dir, meta)
            return await self._train(model_dir, state_dir, start, version, None)
        model_dir = prepare_model(cfg, self.run_dir)
        self._refuse_foreign_checkpoints()
        earlier.set_aside()  # a new run never inherits old state, nor destroys it at start-up
        try:
            return await self._train(model_dir, state_dir, start, version, earlier)
        except BaseException:  # Ctrl-C (KeyboardInterrupt, CancelledError) too
            if earlier.put_back():
                log.warning(
                    "this run stopped before its first iteration completed: its files are in "
                    "%s, the earlier run's are back in %s", self.run_dir / FAILED, self.run_dir,
                )  # fmt: skip
            raise

    def _refuse_foreign_checkpoints(self) -> None:
        """A fresh run must not write into a ``checkpoint.dir`` outside the run dir that holds
        another run's checkpoints: pruning keeps the highest-numbered ``keep``, so the earlier
        run's later iterations would survive and the new run's own be deleted, and ``latest``
        would point into a mix of the two."""
        root = self.checkpoints.root
        try:
            root.resolve().relative_to(self.run_dir.resolve())
            return  # inside the run dir: set aside with the rest of the earlier run
        except ValueError:
            pass
        found = sorted(root.glob("iter-*")) if root.is_dir() else []
        if found:
            raise RunError(
                f"checkpoint.dir {root} holds an earlier run's checkpoints ({found[-1].name} the "
                "newest); pass --resume to continue that run, or set checkpoint.dir to an empty "
                "directory for a fresh one"
            )

    async def _train(
        self,
        model_dir: Path,
        state_dir: Path,
        start: int,
        version: int,
        earlier: EarlierRun | None,
    ) -> dict[str, Any]:
        """The loop; ``earlier`` (a fresh run's set-aside) is discarded after iteration one."""
        cfg = self.cfg
        t0 = time.time()
        self.first_iteration = self.next_iteration = start
        lines = {name: count_lines(self.run_dir / name) for name in HISTORY}
        rc, cc = cfg.runtime, cfg.cluster
        preload: dict[str, Any] = {}
        if cfg.rollout.engine == "vllm":  # the zygote imports vLLM once: ~3 s off each cold start
            from rlhfless.adapters.vllm import zygote_preload

            preload["preload"] = zygote_preload()
        async with Runtime(
            slots=rc.slots, keep_alive_s=rc.keep_alive_s,
            max_warm_per_slot=warm_functions_per_slot(cfg),
            billing_path=str(self.run_dir / "billing.jsonl"),
            provider=cc.provider, agents=tuple(cc.agents), keys_dir=cc.keys_dir or None,
            ray_address=cc.ray_address,
            local_node=cc.local_node, node_timeout_s=cc.node_timeout_s,
            kill_rate=rc.kill_rate, kill_seed=rc.kill_seed, kill_max=rc.kill_max, **preload,
        ) as rt:  # fmt: skip
            pipeline = Pipeline(rt, cfg, model_dir, self.run_dir)
            samples = SampleLog(self.run_dir, cfg.run.show_samples_every, pipeline.tokenizer.decode)
            if version:
                await pipeline.restore_weights()
            with (
                open(self.run_dir / "metrics.jsonl", "ab") as metrics_file,
                open(self.run_dir / "lengths.jsonl", "ab") as lengths_file,
            ):
                for step in range(start, cfg.train.iterations):
                    t_it = time.perf_counter()
                    m = await pipeline.run_iteration(step)
                    self.iteration_seconds += time.perf_counter() - t_it
                    self.metrics.append(m)
                    metrics_file.write(msgspec.json.encode(m) + b"\n")
                    metrics_file.flush()
                    lengths_file.writelines(
                        msgspec.json.encode(x) + b"\n" for x in pipeline.last_lengths
                    )
                    lengths_file.flush()
                    lines["metrics.jsonl"] += 1
                    lines["lengths.jsonl"] += len(pipeline.last_lengths)
                    if pipeline.last_scored is not None:
                        samples.record(step, pipeline.last_scored)
                    self.next_iteration = step + 1
                    if earlier is not None:  # this run has a history now: the old one goes
                        earlier.discard()
                        earlier = None
                    if self.on_iteration is not None:
                        self.on_iteration(m)
                    every = cfg.checkpoint.every
                    last = step + 1 == cfg.train.iterations
                    if (every and (step + 1) % every == 0) or last:
                        await pipeline.persist_state()  # written behind: land it first
                        self.checkpoints.save(state_dir, step + 1, pipeline.version, cfg, lines)
            stats = rt.stats
        summary = self.summary(rt, time.time() - t0, stats)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    def summary(self, rt: Runtime, seconds: float, stats: Any) -> dict[str, Any]:
        ms = self.metrics
        k = max(1, min(5, len(ms) // 4)) if ms else 1
        stage_totals: dict[str, float] = {}
        for m in ms:
            for name, s in m.stage_seconds.items():
                stage_totals[name] = stage_totals.get(name, 0.0) + s
        out: dict[str, Any] = {
            "iterations": len(ms),
            "seconds": seconds,
            "reward_first": sum(m.reward_mean for m in ms[:k]) / k if ms else None,
            "reward_last": sum(m.reward_mean for m in ms[-k:]) / k if ms else None,
            "window": k,
            # The stages' wall times add up to the iterations' (stages that ran side by side
            # are counted in one of them, see IterationMetrics.stage_seconds); the rest of
            # `seconds` is start-up, checkpoints and the shutdown.
            "stage_seconds": stage_totals,
            "iteration_seconds": self.iteration_seconds,
            "functions_started": stats.functions_started,
            "warm_starts": stats.warm_starts,
            "cold_start_median_s": sorted(stats.cold_start_s)[len(stats.cold_start_s) // 2]
            if stats.cold_start_s
            else None,
            "deaths": stats.deaths,
            "retries": sum(m.retries for m in ms),
            "dollars": {},
            # The counts and costs above are this session's; after --resume the run is longer.
            "session": {
                "resumed": self.cfg.run.resume,
                "first_iteration": self.first_iteration,
                "run_iterations": self.next_iteration,
            },
        }
        if rt.cluster is not None:  # many machines: what happened to the nodes
            out["nodes_lost"] = rt.cluster.lost_events
            out["nodes_readmitted"] = rt.cluster.readmitted
            out["weight_bytes_sent"] = rt.weight_bytes_sent()
        try:
            out["dollars"] = price(rt.billing_events)
        except Exception as exc:  # the run's numbers stand even when pricing fails
            out["dollars_error"] = f"{type(exc).__name__}: {exc}"
        if self.cfg.run.resume:  # the whole run's cost too, as `rlhfless cost billing.jsonl` says
            try:
                from rlhfless.cost_models import read_billing_events

                out["dollars_run"] = price(read_billing_events(self.run_dir / "billing.jsonl"))
            except Exception as exc:  # e.g. a line a killed session cut short
                out["dollars_run_error"] = f"{type(exc).__name__}: {exc}"
        return out


def price(events: Sequence[Any]) -> dict[str, dict[str, float]]:
    """Each summary cost model's total of ``events`` and the parts that add up to it."""
    from rlhfless.cost_models import CostModelError, Ledger, get_model

    out: dict[str, dict[str, float]] = {}
    for name in SUMMARY_COST_MODELS:
        try:
            result = Ledger(get_model(name), list(events)).result()
        except CostModelError:  # a kind it has no price for (gcp has no CPU-only machine)
            continue
        out[name] = {
            "total": result.total.usd,
            "busy": result.total.busy_usd,
            "idle": result.total.idle_usd,
            "cold_start": result.total.cold_start_usd,  # busy + idle + cold = total
            "serverful": result.serverful.usd,
            "lost": result.lost.usd,  # functions killed in a lease (inside the total)
        }
    return out
