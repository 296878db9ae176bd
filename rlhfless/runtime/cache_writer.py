"""The agent's weight-cache writes, on a thread: whole versions and deltas, one at a time.

Writing a version is hundreds of MB (a delta adds a copy of each changed tensor and a crc
pass); done in the agent's loop it silenced the agent's heartbeat answers for seconds, and on
a loaded machine the controller declared the node lost in the middle of it. So the loop hands
each message here and keeps serving. Messages are written in the order they came; the agent
holds back spawns that arrive meanwhile (a function may load the version being written).
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from rlhfless.runtime.delta import apply_to_cache
from rlhfless.runtime.errors import WeightsDeltaError
from rlhfless.runtime.messages import Weights, WeightsDelta
from rlhfless.runtime.weights import prune, save

log = logging.getLogger("rlhfless.agent")
CacheMessage = Weights | WeightsDelta


class CacheWriter:
    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = cache_dir
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="rlhfless-cache")
        self._waiting: deque[CacheMessage] = deque()
        self._running: tuple[CacheMessage, Future[int]] | None = None
        self.forgetting = False  # the cache is cleared once the write in progress lands

    @property
    def busy(self) -> bool:
        return self._running is not None or bool(self._waiting)

    def forget(self) -> None:
        """A new controller: the versions cached here are an earlier run's (the same numbers,
        other weights), so none may be reported as held. Drop what waits and remove every
        cached version: now, or when the write in progress lands (its result is not the new
        controller's either, and is not reported)."""
        self._waiting.clear()
        if self._running is None:
            prune(self.cache_dir, keep=0)
        else:
            self.forgetting = True

    def submit(self, msg: CacheMessage) -> None:
        self._waiting.append(msg)
        self._start_next()

    def finished(self) -> list[tuple[CacheMessage, str | None]]:
        """The messages written since the last call, each with None or why it failed (a line)."""
        out = []
        while self._running is not None and self._running[1].done():
            msg, future = self._running
            self._running = None
            exc = future.exception()
            if self.forgetting:  # written for the earlier controller: gone, unreported
                prune(self.cache_dir, keep=0)
                self.forgetting = False
            else:
                out.append((msg, None if exc is None else _reason(exc)))
            self._start_next()
        return out

    def close(self) -> None:
        self._waiting.clear()
        self._pool.shutdown(wait=True)

    def _start_next(self) -> None:
        if self._running is None and self._waiting:
            msg = self._waiting.popleft()
            self._running = (msg, self._pool.submit(self._write, msg))

    def _write(self, msg: CacheMessage) -> int:
        if isinstance(msg, WeightsDelta):
            return apply_to_cache(self.cache_dir, msg)
        return save(self.cache_dir, msg.version, msg.tensors)


def _reason(exc: BaseException) -> str:
    """One line: a delta's own error says it all; anything else (a full disk) names its type."""
    what = "" if isinstance(exc, WeightsDeltaError) else f"{type(exc).__name__}: "
    return f"{what}{exc}".split("\n", 1)[0]
