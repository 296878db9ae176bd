"""Does forking vLLM rollout functions from a zygote that imported ``vllm`` work, and what does it save?

    .venv-vllm/bin/python benchmarks/vllm_zygote.py              # 3 rounds, "small" model
    .venv-vllm/bin/python benchmarks/vllm_zygote.py --size 75m --rounds 5

Run from the vLLM venv (docs/vllm.md). Three ways to start a vLLM rollout function, alternating
within each round, each with a fresh ``Runtime`` (so every start is a cold start):

* ``zygote``: forked from the zygote with the default preload (torch, transformers): the function
  imports vllm itself, then starts the engine;
* ``zygote+vllm``: the same plus ``rlhfless.adapters.vllm.zygote_preload`` (vLLM's ``LLM`` and CPU
  worker modules; ``import vllm`` alone loads almost nothing): the zygote imports them once, before
  any function is asked for;
* ``fresh``: ``RuntimeConfig(zygote=False)``, a fresh interpreter per function (the reference
  for correctness: nothing inherited from a fork).

Per start it records the runtime's request-to-READY time (the cold start the billing sees), the
engine's own import + start seconds, and, from inside the function, what a fork could have
broken: whether ``vllm`` was already imported, the vLLM settings as vLLM reads them (they are set
by ``VLLMSettings.apply_env`` after the zygote imported vllm: are they still honoured?), the
engine core's process (in this process, no child), OS threads. Two functions are started at once
(as the pipeline does with two slots) and each decodes the same prompts greedily, and once more
with sampling at a fixed seed: the token ids must equal the fresh interpreter's.

Prints a table and writes ``benchmarks/results/vllm_zygote.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
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
if str(ROOT) not in sys.path:  # run as a script: make `rlhfless` and `benchmarks` importable
    sys.path.insert(0, str(ROOT))

from rlhfless.adapters.vllm import zygote_preload  # noqa: E402
from rlhfless.runtime.config import RuntimeConfig  # noqa: E402
from rlhfless.stages.rollout import RolloutActor  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "vllm_zygote.json"
DEFAULT_PRELOAD = RuntimeConfig().preload  # torch, transformers and two model modules
MODES = {
    "zygote": {"preload": DEFAULT_PRELOAD},
    "zygote+vllm": {"preload": zygote_preload(DEFAULT_PRELOAD)},
    "fresh": {"zygote": False},
}
_VLLM_PRELOADED = "vllm" in sys.modules  # read at import: before the actor's engine imports it


class Noop:
    """Spawned first: its READY means the zygote has finished its imports."""

    def ping(self) -> int:
        return os.getpid()


class ProbeRollout(RolloutActor):
    """The real rollout actor, plus a report of what the function inherited."""

    def __init__(self, model_dir: str, dtype: str, engine: str) -> None:
        from rlhfless.adapters.vllm import VLLMSettings

        VLLMSettings().apply_env()  # as VLLMEngine.load does, before its first `import vllm`
        t0 = time.perf_counter()
        from vllm import LLM  # noqa: F401  (timed apart from the engine start)

        self.import_s = time.perf_counter() - t0  # ~0 where the zygote preloaded vllm
        super().__init__(model_dir, dtype, engine)

    def info(self) -> dict[str, Any]:
        import multiprocessing

        import torch
        import vllm.envs as envs

        return {
            "pid": os.getpid(),
            "vllm_preloaded": _VLLM_PRELOADED,
            "import_s": self.import_s,  # `from vllm import LLM` in this function
            "engine_start_s": self.engine.start_seconds,  # LLM(...) (vllm already imported)
            "os_threads": len(os.listdir("/proc/self/task")),
            "children": len(multiprocessing.active_children()),
            "torch_threads": torch.get_num_threads(),
            "VLLM_ENABLE_V1_MULTIPROCESSING": envs.VLLM_ENABLE_V1_MULTIPROCESSING,
            "VLLM_CPU_KVCACHE_SPACE": envs.VLLM_CPU_KVCACHE_SPACE,
            "VLLM_CPU_NUM_OF_RESERVED_CPU": envs.VLLM_CPU_NUM_OF_RESERVED_CPU,
            "VLLM_HOST_IP": envs.VLLM_HOST_IP,
        }


async def one_start(mode: str, model_dir: Path, prompts: list[list[int]], n: int) -> dict:
    from rlhfless.runtime import Runtime

    t0 = time.perf_counter()
    mod = __name__ if __name__ != "__main__" else "benchmarks.vllm_zygote"
    async with Runtime(slots=2, keep_alive_s=0, **MODES[mode]) as rt:
        # The zygote's own start (its imports) happens once per node, when the runtime starts;
        # wait it out with a no-op function so the rollout cold starts below exclude it.
        noop = await rt.spawn(f"{mod}:Noop", stage="probe")
        await noop.call("ping")
        await noop.release()
        t_rt = time.perf_counter() - t0
        before = len(rt.stats.cold_start_s)
        actor = f"{mod}:ProbeRollout"
        t1 = time.perf_counter()
        handles = await asyncio.gather(
            *(
                rt.spawn(actor, str(model_dir), "float32", "vllm", stage="rollout", slot=i)
                for i in range(n)
            )
        )
        t_spawn = time.perf_counter() - t1
        infos, greedy, sampled = [], [], []
        for h in handles:
            infos.append(await h.call("info"))
            g = await h.call("generate", prompts, 1, 24, 1.0, 0, greedy=True)
            s = await h.call("generate", prompts, 4, 24, 1.0, 1234)
            greedy.append(g["response_ids"])
            sampled.append(s["response_ids"])
        cold = list(rt.stats.cold_start_s)[before:]
        for h in handles:
            await h.release()
    return {
        "mode": mode,
        "node_ready_s": t_rt,  # runtime start to a first function READY: the zygote's imports
        "spawn_all_s": t_spawn,
        "cold_start_s": cold,  # request -> READY per function, as billed
        "info": infos,
        "greedy": greedy,
        "sampled": sampled,
    }


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", default="small", help="tiny-model size (small or 75m)")
    ap.add_argument("--functions", type=int, default=2, help="functions started at once")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from rlhfless.adapters.tiny import TinyTokenizer, build_tiny_model

    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rlhfless-vllm-zygote-") as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", seed=0, size=args.size)
        tok = TinyTokenizer.load(model_dir)
        prompts = [tok.encode_prompt(t) for t in ("abcabc=", "0123456789x=", "hgfedcba=")]
        modes = list(MODES)
        for rnd in range(args.rounds):
            for mode in modes[rnd % 3 :] + modes[: rnd % 3]:
                la = os.getloadavg()[0]
                r = asyncio.run(one_start(mode, model_dir, prompts, args.functions))
                r["round"], r["load1"] = rnd, la
                runs.append(r)
                print(
                    f"round {rnd} {mode:12s} cold {[round(x, 2) for x in r['cold_start_s']]} s, "
                    f"import {[round(i['import_s'], 2) for i in r['info']]} s, "
                    f"engine {[round(i['engine_start_s'], 2) for i in r['info']]} s, "
                    f"node ready {r['node_ready_s']:.2f} s, "
                    f"preloaded {[i['vllm_preloaded'] for i in r['info']]}, load {la:.2f}",
                    flush=True,
                )
    ref = next(r for r in runs if r["mode"] == "fresh")
    equal = {
        m: all(
            r["greedy"] == ref["greedy"] and r["sampled"] == ref["sampled"]
            for r in runs
            if r["mode"] == m
        )
        for m in MODES
    }
    summary = {}
    for m in MODES:
        rs = [r for r in runs if r["mode"] == m]
        summary[m] = {
            "cold_start_median_s": med([x for r in rs for x in r["cold_start_s"]]),
            "cold_start_range_s": [
                min(x for r in rs for x in r["cold_start_s"]),
                max(x for r in rs for x in r["cold_start_s"]),
            ],
            "engine_start_median_s": med([i["engine_start_s"] for r in rs for i in r["info"]]),
            "node_ready_median_s": med([r["node_ready_s"] for r in rs]),
            "import_median_s": med([i["import_s"] for r in rs for i in r["info"]]),
            "vllm_preloaded": sorted({i["vllm_preloaded"] for r in rs for i in r["info"]}),
            "settings_seen": rs[0]["info"][0],
            "same_tokens_as_fresh": equal[m],
        }
    result = {
        "benchmark": "vllm_zygote",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "config": {"rounds": args.rounds, "size": args.size, "functions": args.functions},
        "summary": summary,
        "runs": [{k: v for k, v in r.items() if k not in ("greedy", "sampled")} for r in runs],
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"\n{'mode':12s} {'cold start s':>22s} {'import s':>9s} {'engine s':>9s} "
        f"{'node ready s':>12s}  tokens"
    )
    for m, s in summary.items():
        lo, hi = s["cold_start_range_s"]
        print(
            f"{m:12s} {s['cold_start_median_s']:8.2f} [{lo:5.2f}-{hi:5.2f}] "
            f"{s['import_median_s']:9.2f} {s['engine_start_median_s']:9.2f} "
            f"{s['node_ready_median_s']:12.2f}  "
            f"{'same as fresh' if s['same_tokens_as_fresh'] else 'DIFFERENT'}"
        )
    print(f"load average before {result['loadavg_before']} after {result['loadavg_after']}")
    print(f"wrote {args.out}")
    return 0 if all(equal.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
