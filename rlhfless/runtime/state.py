"""Controller-side state of each function, and the small pure helpers around it."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import re
from collections.abc import Callable
from typing import Any

import msgspec

from rlhfless.runtime.billing import BillingRecord
from rlhfless.runtime.errors import CallTimeout, FunctionDied, SpawnError
from rlhfless.runtime.messages import Error, Ready, Spawn

_ACTOR_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class RuntimeStats(msgspec.Struct, kw_only=True):
    functions_started: int = 0  # cold starts: new processes
    warm_starts: int = 0  # spawns served from the warm pool
    deaths: int = 0  # functions that ended other than by release or shutdown
    calls: int = 0
    bad_messages: int = 0  # garbage the controller rejected (functions count their own)
    cold_start_s: list[float] = []  # requested -> ready, per new process


class FunctionState:
    """Controller-side state of one function process."""

    def __init__(
        self, spec: Spawn, actor: str, key: str, record: BillingRecord, init: list[Any]
    ) -> None:
        self.spec = spec
        self.function_id = spec.function_id
        self.actor = actor
        self.key = key  # warm reuse only for the same actor, arguments, threads and env
        self.slot = spec.slot
        self.record = record
        self.init_frames = init
        self.state = "starting"  # starting | leased | warm | exiting | dead
        self.lease = 1
        self.pid = 0
        self.methods: frozenset[str] = frozenset()
        self.ready: asyncio.Future[Ready] = asyncio.get_running_loop().create_future()
        # A failed start is reported to the spawner; never also warn "exception never retrieved".
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.pending: dict[int, tuple[asyncio.Future[Any], str]] = {}  # call id -> (future, method)
        self.init_error: Error | None = None
        self.death: FunctionDied | None = None
        self.expected_exit = False
        self.exited = asyncio.Event()
        self.expiry: asyncio.TimerHandle | None = None
        self.process: asyncio.subprocess.Process | None = None  # fresh-interpreter mode only
        self.uses_weights = True  # across machines: its node needs the published weights
        # Called once it has exited (its death recorded): a gang's member tears down the rest.
        self.on_exit: list[Callable[[FunctionState], None]] = []


def actor_path(actor: str | type) -> str:
    """Validate an actor given by class or "pkg.mod:Class"; fail at spawn time, clearly."""
    if isinstance(actor, type):
        if actor.__module__ == "__main__":
            raise SpawnError(
                f"actor class {actor.__qualname__} is defined in __main__; functions import actors "
                "by path, so move it into an importable module"
            )
        path = f"{actor.__module__}:{actor.__qualname__}"
    else:
        path = actor
    if not _ACTOR_PATH.match(path):
        raise SpawnError(f"actor path {path!r} is not of the form 'package.module:ClassName'")
    module = path.partition(":")[0]
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise SpawnError(f"actor {path}: cannot import module {module!r}: {exc}") from None
    if found is None:
        raise SpawnError(
            f"actor {path}: no module named {module!r} (is it installed / on PYTHONPATH?)"
        )
    return path


def expire(fut: asyncio.Future[Any], limit: float) -> None:
    if not fut.done():
        fut.set_exception(CallTimeout(f"no answer within {limit}s"))


def reuse_key(path: str, threads: int, env: dict[str, str], init_frames: list[Any]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{path}\0{threads}\0{sorted(env.items())}".encode())
    for frame in init_frames:
        h.update(memoryview(frame).cast("B") if not isinstance(frame, bytes) else frame)
    return h.hexdigest()
