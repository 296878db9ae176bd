"""Starting processes: the zygote, and functions in fresh interpreters (the zygote-less mode)."""

from __future__ import annotations

import asyncio
import collections
import os
import sys

from rlhfless.runtime.function import encode_spec
from rlhfless.runtime.messages import Spawn


async def start_zygote(
    endpoint: str, preload: tuple[str, ...], tail_lines: int, hb_interval: float
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rlhfless.runtime.zygote",
        "--endpoint", endpoint, "--preload", ",".join(preload),
        "--tail-lines", str(tail_lines), "--heartbeat", str(hb_interval),
        "--parent-pid", str(os.getpid()),
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def start_function(spec: Spawn, hb_interval: float) -> asyncio.subprocess.Process:
    env = {**os.environ, **spec.env}  # the binding holds from the interpreter's first import
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rlhfless.runtime.function", encode_spec(spec, hb_interval),
        stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip


async def pump_stderr(proc: asyncio.subprocess.Process, label: str, tail_lines: int) -> list[str]:
    """Forward a process's stderr to ours, line by line, and keep the last lines for errors."""
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    assert proc.stderr is not None
    while raw := await proc.stderr.readline():
        line = raw.decode(errors="replace").rstrip("\n")
        tail.append(line)
        sys.stderr.write(f"[{label}] {line}\n")
    return list(tail)
