"""The actor runtime: function processes over ZeroMQ. Knows nothing about RLHF.

Exports load lazily, so ``import rlhfless.runtime.messages`` (the shared vocabulary that cost
models and the simulator use) does not pull in sockets and processes.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RuntimeConfig": "rlhfless.runtime.config",
    "ActorInitError": "rlhfless.runtime.errors",
    "BadMessage": "rlhfless.runtime.errors",
    "CallTimeout": "rlhfless.runtime.errors",
    "FunctionDied": "rlhfless.runtime.errors",
    "GangMemberDied": "rlhfless.runtime.errors",
    "GangStartError": "rlhfless.runtime.errors",
    "NodeLost": "rlhfless.runtime.errors",
    "RemoteError": "rlhfless.runtime.errors",
    "RuntimeClosed": "rlhfless.runtime.errors",
    "SpawnError": "rlhfless.runtime.errors",
    "WeightsDeltaError": "rlhfless.runtime.errors",
    "Gang": "rlhfless.runtime.gang",
    "Handle": "rlhfless.runtime.handle",
    "BillingEvent": "rlhfless.runtime.messages",
    "Runtime": "rlhfless.runtime.runtime",
    "RuntimeStats": "rlhfless.runtime.runtime",
    "SyncHandle": "rlhfless.runtime.sync",
    "SyncRuntime": "rlhfless.runtime.sync",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rlhfless.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
