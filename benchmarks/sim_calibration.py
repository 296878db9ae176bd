"""The simulator's stage model against measured steps: each stage's residual.

    python benchmarks/sim_calibration.py              # the table (kept in docs/simulate.md)
    python benchmarks/sim_calibration.py --fit        # the per-layer constants verl's step gives
    python benchmarks/sim_calibration.py --record NAME RUN_DIR algo=ppo model=tiny epochs=4 \\
        functions=2 batch_prompts=16                  # a run of `rlhfless train` -> tests/sim/data

Measurements: verl's published quickstart step (GPU, H100 assumed; rlhfless.sim.published)
and runs of `rlhfless train` on this 2-core machine (tests/sim/data/measured_*.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rlhfless.sim.published import VERL_QUICKSTART
from rlhfless.sim.residuals import fit_step, record_run, run_rows, step_rows

DATA = Path(__file__).resolve().parent.parent / "tests" / "sim" / "data"
# The tiny GRPO run is the CPU profile's own calibration (rlhfless.sim.calibration); the others
# are held out.
HOW = {"tiny-grpo": "fitted on odd iterations"}


def rows() -> list:
    out = step_rows(VERL_QUICKSTART)
    for path in sorted(DATA.glob("measured_*.json")):
        name = path.stem.removeprefix("measured_")
        out += run_rows(name, json.loads(path.read_text()), HOW.get(name, "predicted"))
    return out


def main(argv: list[str]) -> None:
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
