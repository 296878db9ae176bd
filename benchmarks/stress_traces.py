"""Length traces of shapes the scaler was not built on, to replay with benchmarks/scaling.py.

    python benchmarks/stress_traces.py                 # writes benchmarks/results/stress/*.jsonl
    python benchmarks/scaling.py --traces-only --no-recorded-traces --oracle \\
        $(for f in benchmarks/results/stress/*_trace.jsonl; do echo --trace $f; done)

The recorded traces (tests/scaling/data) are SmolLM2's and the tiny model's replies. A user's
model and data can look nothing like them, so these draw other shapes, each the trace format
``scaling.py`` reads (``prompt_id``, ``lengths``, ``prompt_tokens``, ``max_new_tokens``; a
prompt's lines are its epochs, the last rolled out):

- ``compmath``: a reasoning model on competition math: per-prompt medians spread widely
  around 1,500 tokens, 8 samples within a factor ~1.8, many at the 4,096 cap; 200 prompts.
- ``bimodal``: half the prompts want a short answer (~60 tokens), half a derivation (~1,200).
- ``growing``: every prompt's replies 1.6x longer in the rolled-out epoch than in the one
  the predictor saw (RL lengthening its responses): predictions systematically too short.
- ``heavyg4``: 4 samples per prompt, 8% of samples 8x as long, unpredictably; 64 prompts.
- ``noise``: three epochs with no per-prompt signal at all (every prompt the same law).

Seeded: the same files every run. Not tests (scaling.py's replay is the measurement).
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "stress"
Epochs = list[list[float]]  # a prompt's epochs, each its G sample lengths


def compmath(rng: random.Random) -> Epochs:
    m = rng.gauss(math.log(1500), 0.9)
    return [[rng.lognormvariate(m, 0.6) for _ in range(8)] for _ in range(2)]


def bimodal(rng: random.Random) -> Epochs:
    m = math.log(60) if rng.random() < 0.5 else math.log(1200)
    return [[rng.lognormvariate(m, 0.5) for _ in range(8)] for _ in range(2)]


def growing(rng: random.Random) -> Epochs:
    m = rng.gauss(math.log(300), 0.7)
    return [[rng.lognormvariate(m + math.log(g), 0.4) for _ in range(8)] for g in (1.0, 1.6)]


def heavyg4(rng: random.Random) -> Epochs:
    m = rng.gauss(math.log(400), 0.5)
    return [
        [rng.lognormvariate(m, 0.4) * (8 if rng.random() < 0.08 else 1) for _ in range(4)]
        for _ in range(2)
    ]


def noise(rng: random.Random) -> Epochs:
    return [[rng.lognormvariate(math.log(350), 0.8) for _ in range(8)] for _ in range(3)]


# name -> (prompts, generation limit, a prompt's epochs)
SHAPES: dict[str, tuple[int, int, Callable[[random.Random], Epochs]]] = {
    "compmath": (200, 4096, compmath),
    "bimodal": (128, 2048, bimodal),
    "growing": (128, 2048, growing),
    "heavyg4": (64, 4096, heavyg4),
    "noise": (128, 2048, noise),
}


def write(name: str, out: Path, seed: int) -> Path:
    """One shape's trace file; every length in 1..cap."""
    prompts, cap, draw = SHAPES[name]
    rng = random.Random(f"{name}:{seed}")
    path = out / f"{name}_trace.jsonl"
    with path.open("w") as f:
        for p in range(prompts):
            tokens = rng.randint(60, 900)
            for epoch in draw(rng):
                lengths = [max(1, min(cap, int(x))) for x in epoch]
                row = {"prompt_id": f"{name}-{p}", "lengths": lengths,
                       "prompt_tokens": tokens, "max_new_tokens": cap}  # fmt: skip
                f.write(json.dumps(row) + "\n")
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for shape in SHAPES:
        print(write(shape, a.out, a.seed))
