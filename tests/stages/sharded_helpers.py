"""What the sharded-trainer tests share: batches, the two ways to train, weight comparison.

Training runs on real function processes (the runtime, a gang with real gloo groups for the
sharded trainer) with the tiny model; batches are synthetic (long-tailed lengths, GRPO group
advantages or PPO per-token advantages, a KL term against fixed reference log-probs), so a test
spends its time training, not decoding.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from rlhfless.runtime import Runtime
from rlhfless.stages.leases import GangLease
from rlhfless.stages.protocol import TRAINER
from rlhfless.stages.run_state import SHARDED_TRAINER

G = 4  # group size


def train_cfg(algo: str, **extra: Any) -> dict[str, Any]:
    cfg = {"algo": algo, "epochs": 2, "lr": 1e-3, "group_size": G, "micro_batch_tokens": 48}
    if algo == "grpo":
        cfg["kl_coef"] = 0.05
    return {**cfg, **extra}


def batch(step: int, algo: str, prompts: int = 4) -> dict[str, Any]:
    """One step's inputs: ``prompts`` groups of G samples with long-tailed response lengths."""
    rng = random.Random(1000 * step + (algo == "ppo"))
    prompt_ids, responses = [], []
    for _ in range(prompts):
        p = [1] + [rng.randrange(3, 23) for _ in range(rng.randrange(2, 6))]
        for _ in range(G):
            prompt_ids.append(p)
            responses.append([rng.randrange(3, 23) for _ in range(rng.choice([1, 3, 5, 9, 20]))])
    old = [torch.tensor([rng.uniform(-4, -2) for _ in r]) for r in responses]
    if algo == "grpo":
        adv = [torch.full((len(r),), rng.gauss(0, 1)) for r in responses]
        ref: list[torch.Tensor] | None = [o + 0.1 for o in old]
    else:
        adv = [torch.tensor([rng.gauss(0, 1) for _ in r]) for r in responses]
        ref = None
    return {
        "prompt_ids": prompt_ids, "response_ids": responses, "old_logprobs": old,
        "advantages": adv, "ref_logprobs": ref, "temperature": 1.0,
    }  # fmt: skip


async def trainer(
    rt: Runtime, slots: int, model_dir: Path, cfg: dict[str, Any], state_dir: Path,
    actor: str | None = None,
) -> Any:  # fmt: skip
    """A trainer lease: one function (slots 1) or a gang of ``slots`` ranks."""
    args = (str(model_dir), cfg, str(state_dir))
    if slots == 1:
        return await rt.spawn(actor or TRAINER, *args, stage="train")
    gang = await rt.spawn_gang(actor or SHARDED_TRAINER, slots, *args, stage="train", timeout=90)
    return GangLease(gang)


def assert_same_weights(a: dict[str, Any], b: dict[str, Any], atol: float) -> float:
    """The largest difference; fails beyond ``atol``."""
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= atol, f"weights differ by {worst} > {atol}"
    return worst
