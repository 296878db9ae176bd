"""Runtime settings: one small frozen struct, every default explained."""

from __future__ import annotations

import math

import msgspec


class RuntimeConfig(msgspec.Struct, frozen=True, kw_only=True):
    node: str = ""  # this machine's name in billing events; "" = the host name
    slots: int | None = None  # device slots; None = one per visible GPU, else one per CPU core
    device_kind: str | None = None  # None = detected ("h100", ..., or "cpu")
    threads_per_function: int | None = None  # None = cores / slots (at least 1)
    zygote: bool = True  # fork functions from a warm fork server; False = a fresh interpreter each
    # Modules the zygote imports once, so a forked function need not. transformers loads model
    # code lazily; preloading the common architectures takes a cold start from ~0.1 s to ~0.04 s.
    # A leading "?" marks a module as optional (skipped with a note if it does not import).
    preload: tuple[str, ...] = (
        "torch",
        "transformers",
        "?transformers.models.llama.modeling_llama",
        "?transformers.models.qwen2.modeling_qwen2",
    )
    keep_alive_s: float = 30.0  # released functions stay warm this long for reuse; 0 = exit at once
    max_warm_per_slot: int = 2  # warm (idle) functions kept per slot; more exit on release
    max_functions_per_slot: int | None = None  # live functions per slot; spawn waits for room
    ready_timeout_s: float = 120.0  # spawn -> READY deadline (includes the actor's __init__)
    call_timeout_s: float | None = 3600.0  # default deadline of a call; None = wait forever
    shutdown_timeout_s: float = 5.0  # release -> exit before processes are killed
    heartbeat_s: float = 2.0  # functions report liveness and counters this often
    billing_path: str | None = None  # append every finished function's BillingEvent here (JSONL)
    stderr_tail_lines: int = 40  # lines of a dead function's stderr kept for its error
    # Many machines (see docs/many_machines.md). With no agents everything stays on this machine.
    provider: str = "local"  # "local" | "static" (agents listed below) | "ray" (ray_provider.py)
    agents: tuple[str, ...] = ()  # "host:port" (or tcp://host:port) of running `rlhfless agent`s
    ray_address: str = "auto"  # provider "ray": the Ray cluster to place one agent per node on
    keys_dir: str | None = None  # CURVE key directory (`rlhfless keys init`); needed with agents
    local_node: bool = True  # also place functions on this machine's own slots
    listen_host: str = "0.0.0.0"  # where remote functions reach the controller (CURVE tcp)
    # Where a gang whose rank 0 runs on this machine meets (torch.distributed's rendezvous and
    # gloo links: unauthenticated, so never all interfaces). Loopback keeps a gang on this
    # machine; a gang spanning machines with rank 0 here needs this machine's cluster address.
    # On an agent's machine a gang meets at the address the agent is listed under (agents).
    gang_host: str = "127.0.0.1"
    node_heartbeat_s: float = 0.5  # controller <-> agent heartbeat period
    node_timeout_s: float = 3.0  # an agent silent this long is lost: its functions get NodeLost
    join_timeout_s: float = 30.0  # start() waits this long for the listed agents to answer
    # Send a node only what changed since a weights version it holds, where that pays
    # (publish.py; bitwise exact, checked by crc on the node). False: always whole versions.
    weight_deltas: bool = True
    # Fault injection (faults.py): SIGKILL leased functions at this many kills per
    # function-hour, as spot preemption would; 0 = off. kill_seed seeds the draws.
    kill_rate: float = 0.0
    kill_seed: int = 0
    kill_max: int = 0  # stop after this many kills; 0 = no cap (a demo or test bounds the harm)

    def __post_init__(self) -> None:
        # Validation with clear messages: these are user inputs, so no asserts.
        if self.slots is not None and self.slots < 1:
            raise ValueError(f"RuntimeConfig.slots must be >= 1, got {self.slots}")
        if self.keep_alive_s < 0:
            raise ValueError(f"RuntimeConfig.keep_alive_s must be >= 0, got {self.keep_alive_s}")
        if self.max_warm_per_slot < 0:
            raise ValueError("RuntimeConfig.max_warm_per_slot must be >= 0")
        if self.max_functions_per_slot is not None and self.max_functions_per_slot < 1:
            raise ValueError("RuntimeConfig.max_functions_per_slot must be >= 1 or None")
        if self.provider not in ("local", "static", "ray"):
            raise ValueError(
                f"RuntimeConfig.provider must be local, static or ray, not {self.provider!r}"
            )
        if (self.agents or self.provider == "ray") and not self.keys_dir:
            raise ValueError(
                "RuntimeConfig.agents (or provider='ray') needs keys_dir: "
                "every cross-machine link is CURVE"
            )
        if self.provider == "static" and not self.agents:
            raise ValueError("RuntimeConfig.provider='static' needs agents (host:port of each)")
        for name in ("ready_timeout_s", "shutdown_timeout_s", "heartbeat_s", "node_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"RuntimeConfig.{name} must be > 0")
        if not (math.isfinite(self.kill_rate) and self.kill_rate >= 0):
            raise ValueError(f"RuntimeConfig.kill_rate must be >= 0, got {self.kill_rate}")
        if self.call_timeout_s is not None and self.call_timeout_s <= 0:
            raise ValueError("RuntimeConfig.call_timeout_s must be > 0 or None")
