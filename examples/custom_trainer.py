"""Embed rlhfless in your own training loop.

You own the loop: create the runtime, build (or point at) a model directory, and call
``Pipeline.run_iteration`` yourself, with your own logging, early stopping or schedule. Every
stage still runs in function processes started on demand and released when it is done.

    python examples/custom_trainer.py --iterations 5 --run-dir /tmp/custom-run
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from rlhfless.adapters.tiny import build_tiny_model
from rlhfless.cost_models import Ledger, get_model
from rlhfless.runtime import Runtime
from rlhfless.stages.config import load_config
from rlhfless.stages.pipeline import Pipeline


async def train(iterations: int, run_dir: Path) -> list[float]:
    cfg = load_config(
        None, [f"train.iterations={iterations}", "train.batch_prompts=4", "train.group_size=4"]
    )
    model_dir = build_tiny_model(run_dir / "model", seed=cfg.model.seed)
    rewards = []
    async with Runtime(slots=2, keep_alive_s=10) as rt:
        pipeline = Pipeline(rt, cfg, model_dir, run_dir)
        for step in range(iterations):
            m = await pipeline.run_iteration(step)
            rewards.append(m.reward_mean)
            print(f"step {step}: reward {m.reward_mean:.3f}, policy v{m.version}, {m.seconds:.2f}s")
    # The runtime closed: every function has exited and has a billing event to price.
    bill = Ledger(get_model("aws"), rt.billing_events).result()
    print(
        f"{len(rt.billing_events)} functions, ${bill.total.usd:.6f} on aws (serverful ${bill.serverful.usd:.6f})"
    )
    return rewards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/custom"))
    args = parser.parse_args()
    asyncio.run(train(args.iterations, args.run_dir))


if __name__ == "__main__":
    main()
