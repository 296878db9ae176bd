"""`rlhfless estimate` before a run, then the run, then predicted / measured.

    python benchmarks/sim_estimate.py [--runs /tmp/simest] [--reuse] [--only tiny,ppo,smollm2,tiny75m]

Each job: the estimate from its config alone (no earlier run), then `rlhfless train` (niced)
into RUNS/NAME, then the ratio of the estimate's central value to what the run measured: steady
iteration seconds (median of iterations after the first), the job's wall seconds, and the
serverless dollars of the run's own billing events under each cost model. Target: within 25%.
"with run's lengths" is the same estimate told the response lengths the run produced: the stage
model alone, without the length model's error (a random-init model does not follow the task's
lengths; the estimate cannot know how it will).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rlhfless.sim.estimate import Earlier, estimate, read_run
from rlhfless.stages.estimate import load_job

COSTS = ["aws", "modal", "onprem"]
JOBS = {
    "tiny": (None, ["train.iterations=12"]),
    "ppo": (None, ["train.algo=ppo", "train.kl_coef=0.05", "train.iterations=12"]),
    "smollm2": ("configs/smollm2-gsm.toml", ["train.iterations=3"]),
    # a model between the two the CPU profile was fitted on (rlhfless.sim.calibration)
    "tiny75m": (
        None,
        [
            "model.tiny_size=75m",
            "train.batch_prompts=4",
            "train.group_size=4",
            "train.epochs=1",
            "train.iterations=6",
        ],
    ),
}


def run_job(name: str, config: str | None, sets: list[str], run_dir: Path) -> float:
    cmd = ["nice", "-n", "5", sys.executable, "-m", "rlhfless.cli", "train"]
    cmd += [config] if config else []
    for s in sets:
        cmd += ["--set", s]
    cmd += ["--run-dir", str(run_dir)]
    t0 = time.monotonic()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        tail = "\n".join(done.stderr.splitlines()[-5:])
        raise SystemExit(f"{name}: rlhfless train failed (exit {done.returncode}):\n{tail}")
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="/tmp/simest")
    ap.add_argument("--reuse", action="store_true", help="use RUNS/NAME when it exists")
    ap.add_argument("--only", default=",".join(JOBS))
    args = ap.parse_args()
    print(f"{'job':<8} {'quantity':<22} {'predicted':>12} {'measured':>12} {'ratio':>7}")
    for name in args.only.split(","):
        config, sets = JOBS[name]
        est = estimate(load_job(Path(config) if config else None, sets), COSTS)
        run_dir = Path(args.runs) / name
        if not (args.reuse and (run_dir / "metrics.jsonl").exists()):
            run_job(name, config, sets, run_dir)
        got = read_run(run_dir)
        steady = statistics.median(got.seconds[1:])
        # the stage model alone: the same estimate told the lengths the run then produced
        job = load_job(Path(config) if config else None, sets)
        steady_lengths = got.lengths[job.batch_prompts :]  # the iterations the ratio compares
        lengths_only = Earlier(lengths=steady_lengths, stage_seconds=[], seconds=[])
        told = estimate(job, [], lengths_only)
        rows = [("s / iteration", est.iteration_seconds.mid, steady),
                ("  with run's lengths", told.iteration_seconds.mid, steady),
                ("job seconds", est.job_seconds.mid, got.wall_seconds)]  # fmt: skip
        for p in est.priced:
            if p.serverless_usd is not None:
                rows.append((f"$ {p.cost_model} serverless", p.serverless_usd.mid,
                             got.dollars(p.cost_model)[0]))  # fmt: skip
        for q, pred, meas in rows:
            ratio = f"{pred / meas:.2f}" if meas else "-"
            print(f"{name:<8} {q:<22} {pred:>12.4g} {meas or float('nan'):>12.4g} {ratio:>7}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
