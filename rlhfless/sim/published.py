"""Published GPU step timings the stage model is calibrated against, and the fit.

**verl's quickstart** (docs/start/quickstart.rst, verl v0.1 era): PPO, Qwen2.5-0.5B-Instruct
(critic the same model), GSM8K, 1 GPU, ``train_batch_size=256`` (one sample per prompt),
``max_response_length=256``, ``ppo_mini_batch_size=64`` (4 optimiser steps),
``ppo_micro_batch_size_per_gpu=4`` for actor, critic and reference (64 micro-batches a pass).
Step 0 prints gen 21.47 s, ref 4.36 s, values 5.80 s, update_critic 15.66 s, update_actor
20.31 s, response length mean 239.1 (max 256), prompt length mean 104.9. The GPU is not stated
("a GPU with at least 24 GB"); **we assume an H100 SXM** (the actor update then implies 1.3% MFU,
the "~1%" FACTS.md quotes; on an A100 it would be 4.1%). verl of that era ran vLLM with
``enforce_eager=True``.

At 0.5B on an H100 the FLOPs of every stage take milliseconds: the stages are bound by
per-layer, per-micro-batch fixed costs (kernel launches, FSDP's per-layer gathers, Python). The
model therefore has two fitted constants, each a least-squares fit over two stages:

* ``layer_pass_seconds``: one eager forward pass of one layer over one micro-batch, fitted on
  ref and values (2 points);
* ``layer_train_seconds``: forward + backward + its share of the optimiser of one layer over one
  micro-batch, fitted on the critic and actor updates (2 points).

Generation is *not* fitted: an eager decode step is one eager pass over every layer, so it is
predicted with ``layer_pass_seconds`` per layer per step. Each stage's residual is printed by
``python benchmarks/sim_calibration.py`` and kept in docs/simulate.md.
"""

from __future__ import annotations

import statistics

import msgspec


class PublishedStep(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    model: str  # a preset of rlhfless.sim.hardware.MODELS
    gpu: str
    gpus: int
    prompts: int
    group_size: int
    prompt_mean: float
    response_mean: float
    response_max: int
    micro_batch: int  # sequences per micro-batch per GPU
    optimizer_steps: int
    eager: bool  # rollout engine without CUDA graphs
    stages: dict[str, float]  # measured seconds


VERL_QUICKSTART = PublishedStep(
    source="verl docs/start/quickstart.rst, step 0 (GPU not stated: H100 assumed)",
    model="0.5b",
    gpu="h100",
    gpus=1,
    prompts=256,
    group_size=1,
    prompt_mean=104.883,
    response_mean=239.133,
    response_max=256,
    micro_batch=4,
    optimizer_steps=4,
    eager=True,
    stages={
        "generation": 21.470,
        "reference": 4.360,
        "values": 5.800,
        "critic update": 15.664,
        "actor update": 20.314,
    },
)


def micro_batches(step: PublishedStep) -> int:
    samples = step.prompts * step.group_size
    return -(-samples // (step.gpus * step.micro_batch))


def fit(
    step: PublishedStep, layers: int, forward_seconds: float, train_seconds: float
) -> dict[str, float]:
    """Per-layer, per-micro-batch fixed costs from a published step. ``forward_seconds`` and
    ``train_seconds`` are the FLOP-bound times the roofline gives for one pass (subtracted, so
    the constants hold only what the FLOPs do not explain)."""
    calls = micro_batches(step) * layers
    s = step.stages
    fwd = statistics.fmean([s["reference"], s["values"]]) - forward_seconds
    train = statistics.fmean([s["critic update"], s["actor update"]]) - train_seconds
    return {
        "layer_pass_seconds": round(max(fwd, 0.0) / calls, 6),
        "layer_train_seconds": round(max(train, 0.0) / calls, 6),
    }
