"""Does training on one core slow decoding on another? This machine's cores, measured.

    python benchmarks/core_contention.py            # 4 rounds, about a minute

A process decodes with the tiny model ("small", batch 8, KV cache, one thread) pinned to the
last core, alone or beside a process that trains the same model (forward and backward of 4 x
140 tokens, one thread) pinned to the first core: the streamed iteration's tail, where a
rollout function decodes while the trainer works on the core a finished function freed. The
cases alternate; medians over rounds. On a machine whose cores share a physical core (cloud
vCPUs are often hyperthreads), the decoder slows although no core is shared. Prints a table and
writes benchmarks/results/core_contention.json with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "core_contention.json"


def _model(model_dir: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir)


def decode(model_dir: str, core: int, seconds: float, out: mp.Queue) -> None:
    import torch

    torch.set_num_threads(1)
    os.sched_setaffinity(0, {core})
    model = _model(model_dir).eval()
    ids = torch.randint(3, 20, (8, 6), generator=torch.Generator().manual_seed(0))
    steps, t0 = 0, time.perf_counter()
    with torch.no_grad():
        while time.perf_counter() - t0 < seconds:
            past = model(ids, use_cache=True).past_key_values
            token = ids[:, -1:]
            for _ in range(40):
                o = model(token, past_key_values=past, use_cache=True)
                past, token = o.past_key_values, o.logits[:, -1:].argmax(-1)
                steps += 1
    out.put(steps / (time.perf_counter() - t0))


def train(model_dir: str, core: int, stop: mp.Event) -> None:
    import torch

    torch.set_num_threads(1)
    os.sched_setaffinity(0, {core})
    model = _model(model_dir).train()
    ids = torch.randint(3, 20, (4, 140), generator=torch.Generator().manual_seed(0))
    while not stop.is_set():
        model(ids, labels=ids).loss.backward()


def one(model_dir: str, beside: bool, seconds: float) -> float:
    cores = sorted(os.sched_getaffinity(0))
    out, stop = mp.Queue(), mp.Event()
    trainer = mp.Process(target=train, args=(model_dir, cores[0], stop)) if beside else None
    if trainer is not None:
        trainer.start()
        time.sleep(2.0)  # loaded and training
    decoder = mp.Process(target=decode, args=(model_dir, cores[-1], seconds, out))
    decoder.start()
    rate = out.get()
    decoder.join()
    stop.set()
    if trainer is not None:
        trainer.join()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=4.0, help="decoding per case and round")
    args = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs two cores")
    from rlhfless.adapters.tiny import build_tiny_model

    mp.set_start_method("spawn")
    model_dir = str(build_tiny_model(Path(tempfile.mkdtemp()) / "model", size="small", seed=0))
    load0 = os.getloadavg()
    rates: dict[str, list[float]] = {"alone": [], "beside a trainer": []}
    for r in range(args.rounds):
        for name in list(rates) if r % 2 == 0 else list(rates)[::-1]:
            rates[name].append(one(model_dir, name != "alone", args.seconds))
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "decode_steps_per_s": rates,
        "median": med,
        "slowdown": med["alone"] / med["beside a trainer"],
        "machine": {"cpus": os.cpu_count(), "load_before": load0, "load_after": os.getloadavg()},
    }
    for name, values in rates.items():
        print(
            f"{name:18} decode steps/s, median {med[name]:7.1f}  ({', '.join(f'{x:.0f}' for x in values)})"
        )
    print(f"decoding beside a trainer on the other core takes {result['slowdown']:.2f}x as long")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
