"""Actors used by the runtime tests (functions import them by path)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import time

import torch


class Echo:
    def __init__(self, prefix: str = "", **opts: object) -> None:
        self.prefix = prefix
        self.opts = opts
        self.calls = 0

    def echo(self, x: object) -> object:
        self.calls += 1
        return x

    def hello(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def count(self) -> int:
        return self.calls

    def env(self, name: str) -> str | None:
        return os.environ.get(name)

    def threads(self) -> int:
        return torch.get_num_threads()

    def getpid(self) -> int:
        return os.getpid()

    def cores(self) -> list[int]:
        return sorted(os.sched_getaffinity(0))

    def double(self, t: torch.Tensor) -> torch.Tensor:
        return t * 2

    def sleep(self, s: float) -> float:
        time.sleep(s)
        return s

    async def asleep(self, s: float) -> float:
        await asyncio.sleep(s)
        return s

    def fail(self, msg: str) -> None:
        raise ValueError(msg)

    def unsendable(self) -> object:
        return object()

    def die(self, code: int) -> None:
        print("about to die", file=sys.stderr, flush=True)
        os._exit(code)

    def segfault(self) -> None:
        print("about to segfault", file=sys.stderr, flush=True)
        ctypes.string_at(0)

    def kill_self(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def oom(self) -> None:
        # Grow until the kernel's OOM killer (or our own address-space limit) stops us.
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        hog = []
        while True:
            hog.append(bytearray(256 << 20))


class BadInit:
    def __init__(self) -> None:
        print("constructing BadInit", file=sys.stderr, flush=True)
        raise RuntimeError("BadInit refuses to start")


class TinyModel:
    """A transformers model built from a config: the cold-start benchmark's actor."""

    def __init__(self) -> None:
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(
            vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        )  # fmt: skip
        torch.manual_seed(0)
        self.model = LlamaForCausalLM(cfg)

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


class WeightUser:
    """Loads policy weights from its node's cache (never over the network)."""

    def total(self, version: int) -> float:
        from rlhfless.runtime.weights import load

        return float(sum(t.double().sum() for t in load(version).values()))


class ReleaseHook:
    """Writes ``path`` slowly from its release hook: the process must not exit before it lands;
    ``fail`` makes the hook raise instead."""

    def __init__(self, path: str, fail: bool = False) -> None:
        self.path, self.fail = path, fail

    def ping(self) -> int:
        return os.getpid()

    def rlhfless_on_release(self) -> None:
        if self.fail:
            raise OSError("disk full")
        time.sleep(0.3)
        with open(self.path, "w") as fh:
            fh.write(str(os.getpid()))
