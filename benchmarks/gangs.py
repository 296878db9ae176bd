"""The sharded trainer (train.slots = N, FSDP2 over a gloo gang) against one process.

    python benchmarks/gangs.py                          # the 75M tiny config, 1 and 2 ranks
    python benchmarks/gangs.py --model smollm2 --steps 2
    python benchmarks/gangs.py --model tiny             # the 190K-parameter test model

Per gang size (1 = the plain TrainerActor, N = ShardedTrainerActor on N functions): the
median training step time over ``--steps`` steps after one warm-up step (GRPO, 2 epochs,
16 samples with long-tailed lengths: the tests' synthetic batch, micro-batches of at most 256
tokens), per rank the bytes of
parameters, gradients and AdamW state it holds and its peak resident memory; then publishing
the new weights to a rollout function on this machine: the trainer's reply with the whole
weights (the gather, on a gang, and the transfer to the controller), then the controller's
call that loads them into a rollout function, each as seconds and GB/s of the weights' bytes,
inline (zero-copy frames) and through the node-local file (``rollout.weights_file_mb``).
Publishing to another host, whole versions vs deltas, in fp32 and bf16: benchmarks/publish.py.

Prints a table and writes benchmarks/results/gangs.json with the machine's load average
before and after (``uptime``): on a shared 2-core machine 2 ranks share the 2 cores that one
process uses alone, so the step time shows the cost of sharding, not a speedup.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rlhfless.runtime import Runtime  # noqa: E402
from rlhfless.stages.protocol import ROLLOUT  # noqa: E402
from tests.stages.sharded_helpers import batch, train_cfg, trainer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "gangs.json"
GB = 1e9
TOKENS = 256  # train.micro_batch_tokens' default: each micro-batch is a round of collectives


def model_dir(kind: str, tmp: Path) -> Path:
    if kind == "smollm2":
        from rlhfless.adapters.hf import smollm2_dir

        return smollm2_dir(ROOT / "runs" / "cache")
    from rlhfless.adapters.tiny import build_tiny_model

    return build_tiny_model(tmp / "model", seed=0, size="75m" if kind == "75m" else "tiny")


async def train(rt: Runtime, slots: int, model: Path, tmp: Path, steps: int) -> dict[str, Any]:
    """Step times and per-rank memory of a trainer of ``slots`` ranks."""
    cfg = train_cfg("grpo", micro_batch_tokens=TOKENS)
    h = await trainer(rt, slots, model, cfg, tmp / f"state{slots}")
    times = []
    for step in range(steps + 1):  # the first is a warm-up (allocations, first collectives)
        t0 = time.perf_counter()
        await h.step(**batch(step, "grpo"), expected_version=step)
        times.append(time.perf_counter() - t0)
    memory = await h.gang.call("memory") if slots > 1 else [await h.memory()]
    publish = await publish_to_rollout(rt, h, model, tmp / f"weights{slots}")
    await h.release()
    return {
        "slots": slots,
        "step_seconds": statistics.median(times[1:]),
        "step_seconds_all": times,
        "per_rank": memory,
        "publish": publish,
    }


async def publish_to_rollout(rt: Runtime, h: Any, model: Path, folder: Path) -> dict[str, Any]:
    """Trainer -> controller -> rollout function, inline and through a node-local file."""
    rollout = await rt.spawn(ROLLOUT, str(model), stage="rollout", weights=False)
    t0 = time.perf_counter()
    out = await h.weights()
    t1 = time.perf_counter()
    state = out["state_dict"]
    seen = {id(t): t.numel() * t.element_size() for t in state.values()}
    size = sum(seen.values())
    await rollout.load_weights(state, out["version"])
    t2 = time.perf_counter()
    f = await h.weights(str(folder), 0)
    t3 = time.perf_counter()
    await rollout.load_weights(f["path"], f["version"])
    t4 = time.perf_counter()
    await rollout.release()
    return {
        "bytes": size,
        "gather_seconds": out.get("gather_seconds"),
        "inline": {"trainer_s": t1 - t0, "rollout_s": t2 - t1, "total_s": t2 - t0,
                   "gbps": size / GB / (t2 - t0)},
        "file": {"trainer_s": t3 - t2, "rollout_s": t4 - t3, "total_s": t4 - t2,
                 "gbps": size / GB / (t4 - t2)},
    }  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'ranks':>5} {'step s':>7} {'params+grads+adam MB/rank':>26} {'peak RSS MB/rank':>17} "
        f"{'gather s':>8} {'inline s':>8} {'GB/s':>5} {'file s':>7} {'GB/s':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        held = [
            (m["param_bytes"] + m["grad_bytes"] + m["optim_bytes"]) / 1e6 for m in r["per_rank"]
        ]
        rss = [m["max_rss_bytes"] / 1e6 for m in r["per_rank"]]
        p = r["publish"]
        lines.append(
            f"{r['slots']:>5} {r['step_seconds']:>7.2f} {'/'.join(f'{x:.0f}' for x in held):>26} "
            f"{'/'.join(f'{x:.0f}' for x in rss):>17} {p['gather_seconds'] or 0.0:>8.3f} "
            f"{p['inline']['total_s']:>8.3f} {p['inline']['gbps']:>5.2f} "
            f"{p['file']['total_s']:>7.3f} {p['file']['gbps']:>5.2f}"
        )
    return "\n".join(lines)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["tiny", "75m", "smollm2"], default="75m")
    ap.add_argument("--steps", type=int, default=3, help="measured steps after a warm-up")
    ap.add_argument("--ranks", default="1,2", help="gang sizes to run, e.g. 1,2")
    args = ap.parse_args()
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = model_dir(args.model, tmp)
        async with Runtime(slots=2, keep_alive_s=5.0) as rt:
            for slots in (int(x) for x in args.ranks.split(",")):
                rows.append(await train(rt, slots, model, tmp, args.steps))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    load_after = os.getloadavg()
    print(f"\nmodel {args.model}; load average before {load_before}, after {load_after}")
    print(table(rows))
    result = {
        "model": args.model, "steps": args.steps, "rows": rows,
        "load_before": load_before, "load_after": load_after, "cores": os.cpu_count(),
        "machine": platform.platform(), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results[args.model] = result
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
