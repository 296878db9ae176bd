"""Cut-and-migrate: resume N cut sequences by re-prefill vs from their shipped KV caches.

    python benchmarks/kv_migrate.py                        # 75m tiny config, N ~ 8 and ~ 32
    python benchmarks/kv_migrate.py --size small --n 8 --rounds 5

Two rollout functions (real processes, ipc sockets, one CPU thread each on 2 cores): A generates
(sampling, seeded) and cuts once half of its sequences have finished; B continues the cut ones.
Each prompt is ``--prompt-len`` random characters, so the state to move is mostly prompt.

* generate on A with and without ``ship_kv`` (same seed: the same tokens); the difference is
  exporting the cut rows' KV and its first hop (A -> controller).
* resume on B with the shipped caches vs without (same seed: the same tokens, as
  tests/adapters/test_kv_transfer.py checks): the second hop (controller -> B), then the import
  vs the re-prefill, then the same decode. ``setup`` is B's own time before its first decode
  step (``prefill_seconds`` of the resume: the import + the last token's forward, or the
  re-prefill).

Medians over ``--rounds``. Prints a table; writes ``benchmarks/results/kv_migrate.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rlhfless.adapters.hf import load_tokenizer  # noqa: E402
from rlhfless.adapters.tiny import build_tiny_model  # noqa: E402
from rlhfless.runtime import Runtime  # noqa: E402
from rlhfless.stages.rollout_stage import model_kv_bytes_per_token  # noqa: E402

ROLLOUT = "rlhfless.stages.rollout:RolloutActor"
RESULTS = ROOT / "benchmarks" / "results" / "kv_migrate.json"
ALWAYS_SHIP = {  # TransferParams that always choose ship_kv: this benchmark measures both ways
    "kv_bytes_per_token": 0.0,
    "bandwidth_bytes_per_s": 1e12,
    "latency_seconds": 0.0,
    "prefill_tokens_per_s": 1.0,
}


async def _timed(coro: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = await coro
    return time.perf_counter() - t0, out


async def measure(model_dir: Path, n: int, args: argparse.Namespace) -> dict[str, Any]:
    tok = load_tokenizer(model_dir)
    rng = random.Random(n)
    group, tau = 8, 0.5
    prompts = [
        tok.encode_prompt("".join(rng.choice("abcdefgh") for _ in range(args.prompt_len)))
        for _ in range(max(1, round(n / (group * (1 - tau)))))
    ]
    gen_args = (prompts, group, args.max_new_tokens, 1.0, 7, True, False, tau)
    rows: dict[str, list[float]] = {k: [] for k in ("gen", "gen_ship", "redo", "ship")}
    setup: dict[str, list[float]] = {"redo": [], "ship": []}
    async with Runtime(slots=2, keep_alive_s=60) as rt:
        a = await rt.spawn(ROLLOUT, str(model_dir), "float32", "hf", slot=0, threads=1)
        b = await rt.spawn(ROLLOUT, str(model_dir), "float32", "hf", slot=1, threads=1)
        await a.version(), await b.version()
        for r in range(args.rounds + 1):  # round 0 warms up both functions
            t_gen, plain = await _timed(a.generate(*gen_args))
            t_ship, shipped = await _timed(a.generate(*gen_args, ship_kv=ALWAYS_SHIP))
            assert plain["response_ids"] == shipped["response_ids"]
            move = shipped["migration"]
            cut = [j for j, why in enumerate(shipped["finish"]) if why == "cut"]
            partial = [
                {
                    "prompt_index": j // group,
                    "token_ids": shipped["response_ids"][j],
                    "logprobs": [float(x) for x in shipped["logprobs"][j]],
                    "finish_reason": "cut",
                }
                for j in cut
            ]
            kv = [move["kv"][j] for j in cut]
            rest = (prompts, partial, args.max_new_tokens, 1.0, 11)
            t_redo, redo = await _timed(b.resume(*rest))
            t_kv, via_kv = await _timed(b.resume(*rest, kv=kv))
            assert redo["response_ids"] == via_kv["response_ids"]
            if r == 0:
                continue
            rows["gen"].append(t_gen)
            rows["gen_ship"].append(t_ship)
            rows["redo"].append(t_redo)
            rows["ship"].append(t_kv)
            setup["redo"].append(redo["prefill_seconds"])
            setup["ship"].append(via_kv["prefill_seconds"])
    med = {k: statistics.median(v) for k, v in rows.items()}
    export = max(0.0, med["gen_ship"] - med["gen"])
    kv_bytes = model_kv_bytes_per_token(model_dir, "float32") * move["tokens"]
    return {
        "n_cut": len(cut),
        "state_tokens": move["tokens"],
        "kv_mb": kv_bytes / 1e6,
        "reprefill_s": med["redo"],
        "ship_s": med["ship"] + export,
        "ship_resume_call_s": med["ship"],
        "ship_export_and_first_hop_s": export,
        "setup_reprefill_s": statistics.median(setup["redo"]),
        "setup_ship_s": statistics.median(setup["ship"]),
        "rounds": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="75m", choices=["tiny", "small", "75m"])
    ap.add_argument("--model-dir", type=Path, help="an existing model dir (else built)")
    ap.add_argument("--n", type=int, nargs="+", default=[8, 32], help="cut sequences (about)")
    ap.add_argument("--prompt-len", type=int, default=192)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    model_dir = args.model_dir or build_tiny_model(
        Path(tempfile.mkdtemp()) / "model", seed=0, size=args.size
    )
    results = [asyncio.run(measure(model_dir, n, args)) for n in args.n]
    print(
        f"{'cut':>4} {'state tok':>9} {'KV MB':>7} | {'re-prefill s':>12} {'ship s':>7} | "
        f"{'setup: re-prefill':>17} {'ship':>6} | {'export+hop1 s':>13}"
    )
    for r in results:
        print(
            f"{r['n_cut']:>4} {r['state_tokens']:>9} {r['kv_mb']:>7.1f} | "
            f"{r['reprefill_s']:>12.2f} {r['ship_s']:>7.2f} | "
            f"{r['setup_reprefill_s']:>17.2f} {r['setup_ship_s']:>6.2f} | "
            f"{r['ship_export_and_first_hop_s']:>13.2f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "command": " ".join(["python", "benchmarks/kv_migrate.py", *sys.argv[1:]]),
                "size": args.size,
                "prompt_len": args.prompt_len,
                "max_new_tokens": args.max_new_tokens,
                "machine": platform.processor() or platform.machine(),
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
