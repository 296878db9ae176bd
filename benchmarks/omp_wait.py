"""The train stage under other load: 1 thread, 2 threads, 2 threads with OMP_WAIT_POLICY=PASSIVE.

    python benchmarks/omp_wait.py            # 3 rounds
    python benchmarks/omp_wait.py --rounds 5

The work is the default ``rlhfless train`` run's train stage on the tiny model: 4 epochs, each
11 micro-batches of 12 x 21 tokens (<= 256 padded tokens, as ``train.micro_batch_tokens``)
forward and backward, then an AdamW step. Each variant runs in a fresh process (OpenMP reads its
wait policy when torch loads), one warm-up iteration then 5 timed ones; the variants run in
rounds with the order rotated, and the 1-minute load average is recorded before each. The load
is whatever else the machine runs: the effect shows only when other processes hold the cores
(libgomp's threads spin at each barrier for a sibling that is not running).

Prints per-round lines and a summary (median, p90, max over every timed iteration) and writes
benchmarks/results/omp_wait.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "omp_wait.json"

CHILD = r"""
import json, sys, tempfile, time
import torch
torch.set_num_threads(int(sys.argv[1]))
from transformers import AutoModelForCausalLM
from rlhfless.adapters.tiny import build_tiny_model
d = tempfile.mkdtemp()
build_tiny_model(d, seed=0, size="tiny")
m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(0)
def iteration():
    for _ in range(4):
        opt.zero_grad()
        for _ in range(11):
            ids = torch.randint(0, 20, (12, 21), generator=g)
            m(input_ids=ids).logits.log_softmax(-1).mean().backward()
        opt.step()
iteration()
times = []
for _ in range(5):
    t = time.perf_counter(); iteration(); times.append(time.perf_counter() - t)
print(json.dumps(times))
"""

VARIANTS = {
    "1 thread": ("1", {}),
    "2 threads": ("2", {}),  # libgomp's default: spin a while, then sleep
    "2 threads, OMP_WAIT_POLICY=PASSIVE": ("2", {"OMP_WAIT_POLICY": "PASSIVE"}),
}


def run_variant(name: str) -> list[float]:
    threads, env = VARIANTS[name]
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, threads], capture_output=True, text=True,
        env={**base, **env}, check=True,
    )  # fmt: skip
    return [float(t) for t in json.loads(out.stdout.strip().splitlines()[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    names = list(VARIANTS)
    rows: dict[str, list[dict[str, object]]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            load = os.getloadavg()[0]
            times = run_variant(name)
            rows[name].append({"load": load, "seconds": times})
            print(f"round {r} {name:36s} load {load:5.2f}  median {sorted(times)[2]:.3f} s")
    summary = {}
    for name, runs in rows.items():
        ts = sorted(t for run in runs for t in run["seconds"])  # type: ignore[attr-defined]
        summary[name] = {"median": ts[len(ts) // 2], "p90": ts[int(len(ts) * 0.9)], "max": ts[-1]}
        print(
            f"{name:36s} median {ts[len(ts) // 2]:.3f} s  p90 {ts[int(len(ts) * 0.9)]:.3f} s  max {ts[-1]:.3f} s"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"summary": summary, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
