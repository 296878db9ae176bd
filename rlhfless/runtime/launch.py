"""Starting processes: the zygote, and functions in fresh interpreters (the zygote-less mode)."""

from __future__ import annotations

import asyncio
import collections
import os
import sys

from rlhfless.runtime.function import encode_spec
from rlhfless.runtime.messages import Spawn

# libgomp (torch's OpenMP on Linux) spins a waiting thread before it sleeps. With other work
# on the cores, a function's threads then spin at every barrier for a thread that is not
# running: on this 2-core machine at load 11-12, the default run's train-stage work took 14-27 s
# per iteration with 2 threads against 0.8-1.3 s with PASSIVE (1 thread: 0.7-1.0 s), the
# "train stage jumps to 6-15 s" seen in shared runs. Read when torch is imported, so it is set
# for the zygote (its forks inherit it) and for fresh interpreters. A user's own value wins.
OMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def process_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a zygote or a function process: ours, OMP_DEFAULTS where unset."""
    return {**OMP_DEFAULTS, **os.environ, **(extra or {})}


def import_context() -> tuple[list[str], str]:
    """This process's import path and working directory, for a function on this machine to
    resolve the user's actor as the controller would. ``""`` in ``sys.path`` (an interactive
    controller) means the working directory: made absolute, as the function may start
    elsewhere."""
    cwd = os.getcwd()
    return [os.path.join(cwd, p) if not os.path.isabs(p) else p for p in sys.path], cwd


async def start_zygote(
    endpoint: str, preload: tuple[str, ...], tail_lines: int, hb_interval: float
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rlhfless.runtime.zygote",
        "--endpoint", endpoint, "--preload", ",".join(preload),
        "--tail-lines", str(tail_lines), "--heartbeat", str(hb_interval),
        "--parent-pid", str(os.getpid()),
        stdin=asyncio.subprocess.DEVNULL, env=process_env(),
    )  # fmt: skip


async def start_function(spec: Spawn, hb_interval: float) -> asyncio.subprocess.Process:
    env = process_env(spec.env)  # the binding holds from the interpreter's first import
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
