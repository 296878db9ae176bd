"""Many machines on one machine: the runtime across network namespaces, against Ray.

    sudo python benchmarks/multinode.py           # root: it makes (and removes) namespaces
    python benchmarks/multinode.py --no-ray

One agent runs in its own network namespace (a veth pair, its own /24); the controller runs in
the root namespace, so every call crosses a real TCP link with CURVE encryption. Measured:

* round trip: one small call at a time (median, p99 over ``--calls``);
* 16 MiB float32 tensor sent to the remote function and back doubled (GB/s of payload moved
  both ways, from the median call);
* remote cold start: spawn -> first answer on the remote agent (zygote fork, CURVE handshake);
* dead-agent detection: kill -9 of the agent -> the pending call fails with NodeLost.

Ray, when ``import ray`` works, is measured on the same machine in the root namespace (a local
Ray instance: it does not cross the namespace link, so its numbers are a same-host bound).
Prints a table and writes ``benchmarks/results/multinode.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rlhfless.runtime import NodeLost, Runtime  # noqa: E402
from rlhfless.runtime.auth import keys_init  # noqa: E402
from tests.runtime import netns  # noqa: E402

ECHO = "tests.runtime.actors:Echo"
MB16 = 4 << 20  # float32 elements in 16 MiB


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def bench_rlhfless(calls: int, tensors: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="rlhfless-bench-"))
    keys = str(keys_init(tmp / "keys"))
    hosts = netns.make_hosts(1, tmp, base=100)
    out: dict[str, float] = {}
    try:
        hosts[0].start_agent(keys, "bench0", timeout_s=5.0)
        async with Runtime(
            preload=("torch",), agents=(hosts[0].address,), keys_dir=keys, local_node=False,
            node_timeout_s=2.0, node_heartbeat_s=0.25, join_timeout_s=60,
        ) as rt:  # fmt: skip
            colds = []
            for i in range(5):
                t0 = time.perf_counter()
                h = await rt.spawn(ECHO, f"cold{i}")
                await h.echo(1)
                colds.append(time.perf_counter() - t0)
                await h.release()
            out["cold_start_ms_median"] = statistics.median(colds) * 1e3
            h = await rt.spawn(ECHO)
            for _ in range(100):
                await h.echo(1)
            rtts = []
            for _ in range(calls):
                t0 = time.perf_counter()
                await h.echo(1)
                rtts.append(time.perf_counter() - t0)
            out["rtt_us_median"] = statistics.median(rtts) * 1e6
            out["rtt_us_p99"] = _pct(rtts, 0.99) * 1e6
            big = torch.ones(MB16)
            await h.double(big)
            ts = []
            for _ in range(tensors):
                t0 = time.perf_counter()
                await h.double(big)
                ts.append(time.perf_counter() - t0)
            out["tensor16_roundtrip_ms_median"] = statistics.median(ts) * 1e3
            out["tensor16_GBps_both_ways"] = 2 * (16 << 20) / statistics.median(ts) / 1e9
            pending = asyncio.create_task(h.sleep(60))
            await asyncio.sleep(0.3)
            assert hosts[0].agent is not None
            os.kill(hosts[0].agent.pid, signal.SIGKILL)
            t0 = time.perf_counter()
            try:
                await asyncio.wait_for(pending, 30)
            except NodeLost:
                out["dead_agent_detect_s"] = time.perf_counter() - t0
            out["node_timeout_s"] = rt.config.node_timeout_s
    finally:
        netns.remove_hosts(hosts)
    return out


def bench_ray(calls: int, tensors: int) -> dict[str, float] | str:
    try:
        import ray
    except ImportError as exc:
        return f"skipped: {exc}"

    @ray.remote
    class Echo:
        def echo(self, x: object) -> object:
            return x

        def double(self, t: torch.Tensor) -> torch.Tensor:
            return t * 2

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out: dict[str, float] = {}
        t0 = time.perf_counter()
        a = Echo.remote()
        ray.get(a.echo.remote(1))
        out["cold_start_ms"] = (time.perf_counter() - t0) * 1e3
        for _ in range(100):
            ray.get(a.echo.remote(1))
        rtts = []
        for _ in range(calls):
            t0 = time.perf_counter()
            ray.get(a.echo.remote(1))
            rtts.append(time.perf_counter() - t0)
        out["rtt_us_median"] = statistics.median(rtts) * 1e6
        out["rtt_us_p99"] = _pct(rtts, 0.99) * 1e6
        big = torch.ones(MB16)
        ray.get(a.double.remote(big))
        ts = []
        for _ in range(tensors):
            t0 = time.perf_counter()
            ray.get(a.double.remote(big))
            ts.append(time.perf_counter() - t0)
        out["tensor16_roundtrip_ms_median"] = statistics.median(ts) * 1e3
        out["tensor16_GBps_both_ways"] = 2 * (16 << 20) / statistics.median(ts) / 1e9
        return out
    finally:
        ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--tensors", type=int, default=20)
    p.add_argument("--no-ray", action="store_true")
    args = p.parse_args()
    why = netns.why_not()
    if why:
        sys.exit(f"cannot make network namespaces: {why}")
    result: dict[str, object] = {
        "rlhfless_across_netns": asyncio.run(bench_rlhfless(args.calls, args.tensors))
    }
    result["ray_same_host"] = "skipped" if args.no_ray else bench_ray(args.calls, args.tensors)
    for name, vals in result.items():
        print(f"\n{name}")
        if isinstance(vals, dict):
            for k, v in vals.items():
                print(f"  {k:32s} {v:10.2f}")
        else:
            print(f"  {vals}")
    dest = ROOT / "benchmarks" / "results" / "multinode.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {dest}")


if __name__ == "__main__":
    main()
