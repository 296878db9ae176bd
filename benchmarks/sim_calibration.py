"""The simulator's stage model against measured steps: each stage's residual.

    python benchmarks/sim_calibration.py              # the table (kept in docs/simulate.md)
    python benchmarks/sim_calibration.py --fit        # the per-layer constants verl's step gives
    python benchmarks/sim_calibration.py --machine    # this CPU's rates on one core (calibration.py)
    python benchmarks/sim_calibration.py --record NAME RUN_DIR algo=ppo model=tiny epochs=4 \\
        functions=2 batch_prompts=16                  # a run of `rlhfless train` -> tests/sim/data

Measurements: verl's published quickstart step (GPU, H100 assumed; rlhfless.sim.published)
and runs of `rlhfless train` on this 2-core machine (tests/sim/data/measured_*.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rlhfless.sim.calibration import CALIBRATION_RUNS
from rlhfless.sim.published import VERL_QUICKSTART
from rlhfless.sim.residuals import fit_step, record_run, run_rows, step_rows

DATA = Path(__file__).resolve().parent.parent / "tests" / "sim" / "data"
# The CPU profile's own calibration runs (rlhfless.sim.calibration); the others are held out.
HOW = {name: f"fitted on iterations {','.join(map(str, its))}" for name, its in CALIBRATION_RUNS}


def rows() -> list:
    out = step_rows(VERL_QUICKSTART)
    for path in sorted(DATA.glob("measured_*.json")):
        name = path.stem.removeprefix("measured_")
        out += run_rows(name, json.loads(path.read_text()), HOW.get(name, "predicted"))
    return out


def machine(rounds: int = 5) -> None:
    """One core's matmul FLOP rate and decode-shaped weight streaming (medians of ``rounds``)."""
    import statistics
    import time

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)  # a function holds one slot: one core

    def timed(fn: object, reps: int) -> float:
        out = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()  # type: ignore[operator]
            out.append((time.perf_counter() - t0) / reps)
        return statistics.median(out)

    a, w = torch.randn(512, 768), torch.randn(768, 2048)
    flops = 2 * 512 * 768 * 2048 / timed(lambda: a @ w, 10)
    print(f"matmul [512,768]x[768,2048], 1 thread: {flops / 1e9:.0f} GFLOP/s")
    # (hidden, intermediate, layers, rows): SmolLM2-135M, the 75M model
    for h, i, layers, b in ((576, 1536, 30, 4), (768, 2048, 12, 8)):
        ws = [(torch.randn(3 * h, h), torch.randn(h, h), torch.randn(2 * i, h), torch.randn(h, i))
              for _ in range(layers)]  # fmt: skip
        x = torch.randn(b, h)

        def step(ws: list = ws, x: torch.Tensor = x, h: int = h, i: int = i) -> None:
            for qkv, o, up, down in ws:  # as transformers stores them: [out, in]
                y = F.linear(F.linear(x, qkv)[:, :h], o)
                F.linear(F.linear(y, up)[:, :i], down)

        nbytes = sum(t.numel() for layer in ws for t in layer) * 4
        print(f"decode-shaped linear layers, hidden {h}, {b} rows, 1 thread: "
              f"{nbytes / timed(step, 3) / 1e9:.1f} GB/s of weights")  # fmt: skip


def main(argv: list[str]) -> None:
    if argv[:1] == ["--machine"]:
        machine()
        return
    if argv[:1] == ["--fit"]:
        print(json.dumps(fit_step(VERL_QUICKSTART)))
        return
    if argv[:1] == ["--record"]:
        name, run_dir, *kv = argv[1:]
        settings: dict = {}
        for item in kv:
            k, _, v = item.partition("=")
            settings[k] = int(v) if v.isdigit() else v
        out = DATA / f"measured_{name}.json"
        out.write_text(json.dumps(record_run(run_dir, settings)) + "\n")
        print(f"wrote {out}")
        return
    print(f"{'job':<16} {'stage':<14} {'measured s':>11} {'predicted s':>12} {'residual':>9}  how")
    for r in rows():
        print(
            f"{r.job:<16} {r.stage:<14} {r.measured:>11.4g} {r.predicted:>12.4g} "
            f"{r.residual:>+9.1%}  {r.how}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
