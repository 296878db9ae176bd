"""The standalone job: ``rlhfless train``. Model prep, the loop, metrics, checkpoints, summary.

Run directory layout::

    <run_dir>/model/              the embedded tiny model (built from a seed; no download)
    <run_dir>/metrics.jsonl       one IterationMetrics per line
    <run_dir>/billing.jsonl       one BillingEvent per function (the cost models price these)
    <run_dir>/lengths.jsonl       per prompt and iteration: response lengths (a scaling trace)
    <run_dir>/state/              trainer/critic hand-over state (written after every step)
    <run_dir>/checkpoints/iter-NNNNNN/, latest   checkpoints, written atomically
    <run_dir>/summary.json        the end-of-run summary
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from rlhfless.runtime import Runtime
from rlhfless.stages.common import atomic_dir_write
from rlhfless.stages.config import Config, config_to_dict
from rlhfless.stages.pipeline import IterationMetrics, Pipeline

SUMMARY_COST_MODELS = ("aws", "gcp", "onprem")


class RunError(RuntimeError):
    """A run that cannot start or resume (missing checkpoint, bad model directory)."""


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
        return path
    from rlhfless.adapters.hf import smollm2_dir

    return smollm2_dir(cfg.model.cache_dir or run_dir / "cache")


class Checkpoints:
    """Every K iterations: policy + optimiser (+ critic), data position, version; atomically."""

    def __init__(self, root: Path, keep: int) -> None:
        self.root = root
        self.keep = keep

    def save(self, state_dir: Path, next_iteration: int, version: int, cfg: Config) -> Path:
        target = self.root / f"iter-{next_iteration:06d}"

        def write(tmp: Path) -> None:
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

    def restore(self, state_dir: Path) -> dict[str, Any]:
        path = self.latest()
        if path is None:
            raise RunError(f"--resume: no checkpoint in {self.root}")
        shutil.rmtree(state_dir, ignore_errors=True)
        state_dir.mkdir(parents=True)
        for part in ("policy", "critic"):
            if (path / part).is_dir():
                shutil.copytree(path / part, state_dir / part)
        return json.loads((path / "meta.json").read_text())


class Job:
    """A whole run; ``on_iteration`` gets each iteration's metrics (the CLI draws progress)."""

    def __init__(
        self, cfg: Config, on_iteration: Callable[[IterationMetrics], None] | None = None
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.run.run_dir)
        self.on_iteration = on_iteration
        self.metrics: list[IterationMetrics] = []
        self.checkpoints = Checkpoints(
            Path(cfg.checkpoint.dir or self.run_dir / "checkpoints"), cfg.checkpoint.keep
        )

    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        model_dir = prepare_model(cfg, self.run_dir)
        state_dir = self.run_dir / "state"
        start, version = 0, 0
        if cfg.run.resume:
            meta = self.checkpoints.restore(state_dir)
            start, version = meta["next_iteration"], meta["version"]
        else:
            shutil.rmtree(state_dir, ignore_errors=True)  # a new run never inherits old state
            for name in ("metrics.jsonl", "billing.jsonl", "lengths.jsonl"):
                (self.run_dir / name).unlink(missing_ok=True)
        t0 = time.time()
        rc, cc = cfg.runtime, cfg.cluster
        preload: dict[str, Any] = {}
        if cfg.rollout.engine == "vllm":  # the zygote imports vLLM once: ~3 s off each cold start
            from rlhfless.adapters.vllm import zygote_preload

            preload["preload"] = zygote_preload()
        async with Runtime(
            slots=rc.slots, keep_alive_s=rc.keep_alive_s,
            billing_path=str(self.run_dir / "billing.jsonl"),
            provider=cc.provider, agents=tuple(cc.agents), keys_dir=cc.keys_dir or None,
            ray_address=cc.ray_address,
            local_node=cc.local_node, node_timeout_s=cc.node_timeout_s, **preload,
        ) as rt:  # fmt: skip
            pipeline = Pipeline(rt, cfg, model_dir, self.run_dir)
            if version:
                await pipeline.restore_weights()
            with (
                open(self.run_dir / "metrics.jsonl", "ab") as metrics_file,
                open(self.run_dir / "lengths.jsonl", "ab") as lengths_file,
            ):
                for step in range(start, cfg.train.iterations):
                    m = await pipeline.run_iteration(step)
                    self.metrics.append(m)
                    metrics_file.write(msgspec.json.encode(m) + b"\n")
                    metrics_file.flush()
                    lengths_file.writelines(
                        msgspec.json.encode(x) + b"\n" for x in pipeline.last_lengths
                    )
                    lengths_file.flush()
                    if self.on_iteration is not None:
                        self.on_iteration(m)
                    every = cfg.checkpoint.every
                    last = step + 1 == cfg.train.iterations
                    if (every and (step + 1) % every == 0) or last:
                        await pipeline.persist_state()  # written behind: land it first
                        self.checkpoints.save(state_dir, step + 1, pipeline.version, cfg)
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
            "stage_seconds": stage_totals,
            "functions_started": stats.functions_started,
            "warm_starts": stats.warm_starts,
            "cold_start_median_s": sorted(stats.cold_start_s)[len(stats.cold_start_s) // 2]
            if stats.cold_start_s
            else None,
            "deaths": stats.deaths,
            "retries": sum(m.retries for m in ms),
            "dollars": {},
        }
        if rt.cluster is not None:  # many machines: what happened to the nodes
            out["nodes_lost"] = rt.cluster.lost_events
            out["nodes_readmitted"] = rt.cluster.readmitted
            out["weight_bytes_sent"] = rt.weight_bytes_sent()
        try:
            from rlhfless.cost_models import Ledger, get_model

            for name in SUMMARY_COST_MODELS:
                result = Ledger(get_model(name), rt.billing_events).result()
                out["dollars"][name] = {
                    "total": result.total.usd,
                    "busy": result.total.busy_usd,
                    "idle": result.total.idle_usd,
                    "serverful": result.serverful.usd,
                }
        except Exception as exc:  # the run's numbers stand even when pricing fails
            out["dollars_error"] = f"{type(exc).__name__}: {exc}"
        return out
