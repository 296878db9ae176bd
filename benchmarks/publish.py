"""Publishing weights to rollout functions: whole versions vs deltas, on this host and another.

    python benchmarks/publish.py                     # 75M config, 3 rounds, lr 1e-6
    python benchmarks/publish.py --model smollm2 --rounds 2
    python benchmarks/publish.py --ranks 2           # the weights out of a 2-rank sharded trainer

Each round is one real GRPO training step (the tests' synthetic batch, AdamW at ``--lr``; 1e-6
is verl's actor default) whose new version then goes to rollout functions twice over: as the
trainer's float32 weights, and cast to bf16 (what a GPU rollout engine holds). Each way:

* **same host**: a rollout function that holds the previous version in its engine gets the new
  one whole (inline tensor frames, ``RolloutActor.load_weights``) or as a delta (diffed here, then
  written into the engine's parameters in place: ``benchmarks/publish_actors.py``);
* **other host** (a network-namespace host with its own agent, over the CURVE tcp link; needs
  root and iproute2, else skipped): the runtime sends the version into that node's cache, whole
  or as a delta the agent rebuilds and checks (``runtime/publish.py``), and a warm rollout
  function there loads it (``load_cached``).

Seconds are end to end: same host, the diff (with its crcs) plus the call; other host,
``publish_weights`` (this machine's cache write) plus the send, the node's rebuild and its
acknowledgement, plus the function's load. GB/s is the whole version's bytes over that time
(what a receiver ends up holding per second). "changed" is the share of elements whose bits
changed in the step. Medians over the rounds. Prints a table and writes
benchmarks/results/publish.json with the load average before and after.
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

import torch  # noqa: E402

from benchmarks.gangs import model_dir  # noqa: E402
from rlhfless.runtime import Runtime  # noqa: E402
from rlhfless.runtime.auth import keys_init  # noqa: E402
from rlhfless.runtime.delta import WeightTraffic, apply_to_cache, diff, wire_bytes  # noqa: E402
from rlhfless.runtime.weights import crcs, load, save  # noqa: E402
from rlhfless.stages.leases import GangLease  # noqa: E402
from rlhfless.stages.protocol import TRAINER  # noqa: E402
from rlhfless.stages.run_state import SHARDED_TRAINER  # noqa: E402
from tests.runtime import netns  # noqa: E402
from tests.stages.sharded_helpers import batch, train_cfg  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "publish.json"
ROLLOUT = "benchmarks.publish_actors:DeltaRollout"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ENGINE_DTYPE = {"fp32": "float32", "bf16": "bfloat16"}  # RolloutActor's names
REMOTE = "ns0"


async def train_versions(model: Path, tmp: Path, args: Any) -> list[dict[str, Any]]:
    """The weights before training and after each of ``rounds`` steps (the trainer's replies),
    on a runtime of its own: the trainer exits before the publishing is measured."""
    async with Runtime(slots=args.ranks, keep_alive_s=0.0) as rt:
        return await _train(rt, model, tmp, args)


async def _train(rt: Runtime, model: Path, tmp: Path, args: Any) -> list[dict[str, Any]]:
    cfg = train_cfg("grpo", lr=args.lr, micro_batch_tokens=256)
    targs = (str(model), cfg, str(tmp / "state"))
    if args.ranks == 1:
        h: Any = await rt.spawn(TRAINER, *targs, stage="train", node=rt.node, weights=False)
    else:
        gang = await rt.spawn_gang(SHARDED_TRAINER, args.ranks, *targs, stage="train",
                                   timeout=180, weights=False)  # fmt: skip
        h = GangLease(gang)
    versions, replies = [], []
    for step in range(args.rounds + 1):
        if step:
            await h.step(**batch(step, "grpo"), expected_version=step - 1)
        t0 = time.perf_counter()
        out = await h.weights()
        replies.append(time.perf_counter() - t0)
        versions.append({k: t.clone() for k, t in out["state_dict"].items()})  # own memory
        print(f"trained step {step}: trainer reply {replies[-1]:.2f}s", flush=True)
    await h.release()
    print(f"trainer reply (gather + transfer to here): median {statistics.median(replies):.2f}s")
    return versions


def changed_share(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Share of elements whose bits differ (the delta's sparse parts are exactly these)."""
    ints = {2: torch.int16, 4: torch.int32}
    changed = total = 0
    for k, t in b.items():
        kind = ints[t.element_size()]
        changed += int(torch.count_nonzero(a[k].reshape(-1).view(kind) != t.reshape(-1).view(kind)))
        total += t.numel()
    return changed / total


def changed_shares(ws: list[dict[str, Any]]) -> list[float]:
    return [changed_share(ws[r - 1], ws[r]) for r in range(1, len(ws))]


def cast(ws: list[dict[str, Any]], dtype: torch.dtype) -> list[dict[str, Any]]:
    return [{k: t.to(dtype) for k, t in w.items()} for w in ws]


def nbytes(w: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in w.values())


def orders(r: int) -> tuple[str, str]:
    """Which mode goes first alternates by round: the first send of a new version meets cold
    caches (its pages, the receiver's), which would bias whichever mode always went first."""
    return ("delta", "whole") if r % 2 else ("whole", "delta")


async def same_host(rt: Runtime, model: Path, ws: list[dict[str, Any]], dtype: str) -> list[dict]:
    """A local rollout function: each version whole, and as a delta against the previous one."""
    h = await rt.spawn(ROLLOUT, str(model), ENGINE_DTYPE[dtype], node=rt.node)
    vid = await h.load_weights(ws[0], 1)
    holds, rows, full = 0, [], nbytes(ws[0])  # holds: the index of the weights it holds
    for r in range(1, len(ws)):
        for mode in orders(r):
            if mode == "whole":
                t0 = time.perf_counter()
                vid = await h.load_weights(ws[r], vid + 1)
                rows.append(row("same host", mode, dtype, time.perf_counter() - t0, full, full))
                holds = r
                continue
            if holds != r - 1:  # the delta is against the previous version: back to it
                vid = await h.load_weights(ws[r - 1], vid + 1)
            t0 = time.perf_counter()
            delta = await asyncio.to_thread(diff, ws[r - 1], ws[r], vid + 1, vid)
            t1 = time.perf_counter()
            vid = await h.load_delta(delta)
            seconds, holds = time.perf_counter() - t0, r
            rows.append(row("same host", mode, dtype, seconds, wire_bytes(delta), full, t1 - t0))
    await h.release()
    return rows


async def other_host(
    rt: Runtime, model: Path, ws: list[dict[str, Any]], dtype: str, vid: int
) -> tuple[list[dict], int]:
    """The namespace host's cache and a warm rollout function there, whole vs delta; version
    ids go on from ``vid`` (the node's cache is shared by both dtypes' runs)."""
    rows = []
    vid, _ = await to_node(rt, model, dtype, ws[0], vid, "whole")
    holds = 0  # the index of the newest weights in the node's cache
    for r in range(1, len(ws)):
        for mode in orders(r):
            if mode == "delta" and holds != r - 1:  # the delta's base: the previous version
                vid, _ = await to_node(rt, model, dtype, ws[r - 1], vid, "whole")
            vid, (seconds, sent, node_s) = await to_node(rt, model, dtype, ws[r], vid, mode)
            holds = r
            rows.append(row("other host", mode, dtype, seconds, sent, nbytes(ws[r]), node_s=node_s))
    return rows, vid


async def to_node(
    rt: Runtime, model: Path, dtype: str, w: dict[str, Any], vid: int, mode: str
) -> tuple[int, tuple[float, int, float]]:
    """Publish ``w`` as version ``vid + 1``, whole or by delta, and load it into the warm
    rollout function there; returns the version, and the seconds and bytes it took, and the
    seconds of the send alone (the runtime's: diff, wire, the node's write and its answer)."""
    assert rt.cluster is not None
    vid += 1
    rt.cluster.sender.deltas = mode == "delta"  # the runtime's switch, read per send
    before = rt.weight_traffic().get(REMOTE) or WeightTraffic()
    t0 = time.perf_counter()
    rt.publish_weights(vid, w)
    t1 = time.perf_counter()
    # A warm function there: the spawn returns once the node has confirmed the version.
    h = await rt.spawn(ROLLOUT, str(model), ENGINE_DTYPE[dtype], node=REMOTE)
    t2 = time.perf_counter()
    await h.load_cached(vid)
    seconds = time.perf_counter() - t0
    await h.release()
    sent = rt.weight_traffic()[REMOTE].sent_bytes - before.sent_bytes
    return vid, (seconds, sent, t2 - t1)


def cpu_costs(ws: list[dict[str, Any]], folder: Path) -> dict[str, float]:
    """Per version, in this process (no link): the sender's diff from its cache (the crcs from
    the headers, as the runtime does), a node's rebuild from a delta vs its write of a whole
    version. A delta pays in time where the link is slower than the bytes it saves over the
    extra seconds it costs: ``break_even_gbps``."""
    costs: dict[str, list[float]] = {"diff_s": [], "rebuild_s": [], "write_s": [], "saved": []}
    for r in range(1, len(ws)):
        save(folder / "sender", r - 1, ws[r - 1])
        save(folder / "sender", r, ws[r])
        save(folder / "node", r - 1, ws[r - 1])
        t0 = time.perf_counter()
        d = diff(*(load(v, folder / "sender") for v in (r - 1, r)), r, r - 1,
                 *(crcs(v, folder / "sender") for v in (r - 1, r)))  # fmt: skip
        t1 = time.perf_counter()
        apply_to_cache(folder / "node", d)
        t2 = time.perf_counter()
        save(folder / "whole", r, ws[r])
        t3 = time.perf_counter()
        for k, v in zip(
            costs, (t1 - t0, t2 - t1, t3 - t2, nbytes(ws[r]) - wire_bytes(d)), strict=True
        ):
            costs[k].append(v)
    out = {k: statistics.median(v) for k, v in costs.items()}
    extra = out["diff_s"] + out["rebuild_s"] - out["write_s"]
    out["break_even_gbps"] = out["saved"] / 1e9 / extra if extra > 0 else float("inf")
    return out


def row(
    where: str, mode: str, dtype: str, s: float, sent: int, full: int, diff_s: float = 0.0,
    node_s: float = 0.0,
) -> dict:  # fmt: skip
    return {"where": where, "mode": mode, "dtype": dtype, "seconds": s, "sent_bytes": sent,
            "full_bytes": full, "diff_seconds": diff_s, "node_seconds": node_s,
            "gbps": full / 1e9 / s, "node_gbps": full / 1e9 / node_s if node_s else 0.0}  # fmt: skip


def medians(rows: list[dict], changed: dict[str, list[float]]) -> list[dict]:
    keys = sorted(
        {(r["dtype"], r["where"], r["mode"]) for r in rows}, key=lambda k: (k[0] != "fp32", k)
    )
    out = []
    for dtype, where, mode in keys:
        rs = [r for r in rows if (r["dtype"], r["where"], r["mode"]) == (dtype, where, mode)]
        med = {k: statistics.median(r[k] for r in rs) for k in MEDIANS}
        out.append({"dtype": dtype, "where": where, "mode": mode, "rounds": len(rs),
                    "changed": statistics.median(changed[dtype]), **med})  # fmt: skip
    return out


MEDIANS = ("seconds", "sent_bytes", "full_bytes", "diff_seconds", "node_seconds", "gbps",
           "node_gbps")  # fmt: skip


def table(summary: list[dict]) -> str:
    """ "diff s": same host, the sender's diff; "node s": other host, the runtime's send alone
    (its diff, the wire, the node's write or rebuild and its answer); "total s" adds this
    machine's cache write and the function's load; GB/s: the version's bytes over each."""
    head = (f"{'dtype':<5} {'receiver':<10} {'mode':<5} {'changed':>7} {'sent MB':>8} {'of MB':>7} "
            f"{'saved':>6} {'diff s':>6} {'node s':>6} {'GB/s':>5} {'total s':>7} {'GB/s':>5}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for m in summary:
        saved = 1 - m["sent_bytes"] / m["full_bytes"]
        same = m["where"] == "same host"
        diff_s = f"{m['diff_seconds']:.2f}" if same and m["mode"] == "delta" else "-"
        node_s = "-" if same else f"{m['node_seconds']:.2f}"
        node_gbps = "-" if same else f"{m['node_gbps']:.2f}"
        lines.append(
            f"{m['dtype']:<5} {m['where']:<10} {m['mode']:<5} {100 * m['changed']:>6.2f}% "
            f"{m['sent_bytes'] / 1e6:>8.1f} {m['full_bytes'] / 1e6:>7.1f} {100 * saved:>5.1f}% "
            f"{diff_s:>6} {node_s:>6} {node_gbps:>5} {m['seconds']:>7.2f} {m['gbps']:>5.2f}"
        )
    return "\n".join(lines)


def namespace_host(tmp: Path, keys: str) -> list[netns.Host]:
    why = netns.why_not()
    if why is not None:
        print(f"no other host: {why}")
        return []
    hosts = netns.make_hosts(1, tmp, base=110)
    hosts[0].start_agent(keys, REMOTE, slots=1, timeout_s=30.0)
    return hosts


async def measure(model: Path, tmp: Path, hosts: list[netns.Host], args: Any) -> dict[str, Any]:
    keys = str(tmp / "keys")
    trained = await train_versions(model, tmp, args)
    async with Runtime(
        slots=1, keep_alive_s=600.0, join_timeout_s=60,
        agents=tuple(h.address for h in hosts), keys_dir=keys if hosts else None,
    ) as rt:  # fmt: skip
        rows, changed, costs, vid = [], {}, {}, 0
        for name, dtype in DTYPES.items():
            # On threads: the runtime's loop keeps its heartbeats while this casts and counts.
            ws = await asyncio.to_thread(cast, trained, dtype)
            changed[name] = await asyncio.to_thread(changed_shares, ws)
            costs[name] = await asyncio.to_thread(cpu_costs, ws, tmp / f"costs-{name}")
            rows += await same_host(rt, model, ws, name)
            if hosts:
                more, vid = await other_host(rt, model, ws, name, vid)
                rows += more
    return {"rows": rows, "changed": changed, "summary": medians(rows, changed), "cpu": costs}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["tiny", "75m", "smollm2"], default="75m")
    ap.add_argument("--rounds", type=int, default=3, help="training steps, each one publish")
    ap.add_argument("--lr", type=float, default=1e-6, help="AdamW's learning rate")
    ap.add_argument("--ranks", type=int, default=1, help="trainer ranks (2+: sharded, FSDP2)")
    ap.add_argument("--no-other-host", action="store_true", help="same host only")
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rlhfless-publish-") as d:
        tmp = Path(d)
        keys_init(tmp / "keys")
        model = model_dir(args.model, tmp)
        hosts = [] if args.no_other_host else namespace_host(tmp, str(tmp / "keys"))
        try:
            result = await measure(model, tmp, hosts, args)
        finally:
            netns.remove_hosts(hosts)
    load_after = os.getloadavg()
    print(f"\nmodel {args.model}, lr {args.lr}, {args.rounds} rounds, trainer ranks {args.ranks}; "
          f"load average before {load_before}, after {load_after} ({os.cpu_count()} cores)")  # fmt: skip
    print(table(result["summary"]))
    for name, c in result["cpu"].items():
        pays = f"on links slower than {c['break_even_gbps']:.2f} GB/s" if c["saved"] else "never"
        print(f"{name}: diff {c['diff_s']:.2f}s, node rebuild {c['rebuild_s']:.2f}s vs whole write "
              f"{c['write_s']:.2f}s, {c['saved'] / 1e6:.0f} MB saved: a delta pays in time {pays}")  # fmt: skip
    result.update({
        "model": args.model, "lr": args.lr, "rounds": args.rounds, "ranks": args.ranks,
        "load_before": load_before, "load_after": load_after, "cores": os.cpu_count(),
        "machine": platform.platform(), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "other_host": bool(hosts),
    })  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results[args.model if args.ranks == 1 else f"{args.model}-ranks{args.ranks}"] = result
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
