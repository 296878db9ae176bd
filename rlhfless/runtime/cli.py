"""``rlhfless agent``, ``rlhfless keys init`` and ``rlhfless launch``: typer command functions.

Registered in :mod:`rlhfless.cli`; kept here so the command line of many machines lives with
the runtime that implements it.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

# zmq's errors from binding --listen, which the user fixes (address taken, not this host's,
# malformed, a privileged port); any other ZMQError while serving is a bug and keeps its traceback.
_BIND_ERRNOS = frozenset(
    {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EINVAL, errno.EACCES, errno.ENODEV,
     errno.ENOENT, errno.EPROTONOSUPPORT}
)  # fmt: skip


def fail(message: str, code: int = 1) -> NoReturn:
    """One plain line on stderr for a mistake the user fixes (no traceback, no markup)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def keys_init(
    directory: Annotated[Path, typer.Argument(help="where to write the cluster's key pairs")],
    force: Annotated[bool, typer.Option("--force", help="replace existing keys")] = False,
) -> None:
    """Create the cluster's CURVE server and client key pairs (copy DIR to every machine)."""
    from rlhfless.runtime.auth import keys_init as make

    if (directory / "server.key_secret").exists() and not force:
        # Checked here, not left to keys_init: its message names its argument (force=True).
        fail(f"{directory} already holds keys; pass --force to replace them")
    try:
        root = make(directory, force=force)
    except OSError as exc:  # a parent that is a file, no permission
        fail(f"cannot write keys to {directory}: {exc.strerror or exc}")
    typer.echo(f"keys written to {root} (keep it private: it holds secret keys)")


def agent(
    listen: Annotated[str, typer.Option("--listen", help="tcp://HOST:PORT to serve on")],
    keys: Annotated[Path, typer.Option("--keys", help="key directory (rlhfless keys init)")],
    slots: Annotated[
        int | None, typer.Option("--slots", min=1, help="device slots to offer (>= 1)")
    ] = None,
    gpus: Annotated[
        str | None, typer.Option("--gpus", help="'auto': one slot per visible GPU")
    ] = None,
    node: Annotated[str, typer.Option("--node", help="node name (default: host name)")] = "",
    preload: Annotated[
        str,
        typer.Option(
            "--preload",
            help="modules the zygote imports ('?mod' = optional); default: torch, transformers "
            "and the Llama/Qwen2 model code. vLLM nodes: add ?vllm.entrypoints.llm,"
            "?vllm.v1.worker.cpu_worker (CPU)",
        ),
    ] = "",
    controller_timeout: Annotated[
        float, typer.Option("--controller-timeout", help="drop functions after this silence (s)")
    ] = 10.0,
) -> None:
    """Run a node agent: this machine's slots, zygote and warm pool, for one controller."""
    import logging

    import zmq

    from rlhfless.runtime.agent import Agent
    from rlhfless.runtime.auth import KeyError_

    if gpus not in (None, "auto"):
        raise typer.BadParameter("--gpus takes only 'auto' (use --slots N for a number)")
    if slots is not None and gpus is not None:
        raise typer.BadParameter("give --slots or --gpus auto, not both")
    check_listen(listen)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from rlhfless.runtime.agent import DEFAULT_PRELOAD

    mods = tuple(filter(None, preload.split(","))) or DEFAULT_PRELOAD
    try:
        a = Agent(listen, str(keys), slots, node, mods, controller_timeout)
    except KeyError_ as exc:
        fail(str(exc))
    import signal

    def _stop(*_: object) -> None:
        a.stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        code = a.serve()
    except zmq.ZMQError as exc:
        if exc.errno not in _BIND_ERRNOS:
            raise
        # serve() removed its scratch directories on the way out (runtime/scratch.py).
        why = exc.strerror if listen in exc.strerror else f"{exc.strerror} ({listen})"
        fail(f"cannot listen: {why}")  # pyzmq >= 26 names the address itself
    raise typer.Exit(code)


def check_listen(listen: str) -> None:
    """``tcp://HOST:PORT`` (PORT a number or ``*``), checked before torch is imported and the
    zygote starts, so a typo fails in a moment with the expected form. Other zmq transports
    (``ipc://``) pass through to zmq."""
    scheme, sep, rest = listen.partition("://")
    if not sep or scheme not in ("tcp", "ipc"):
        raise typer.BadParameter(f"{listen!r} is not tcp://HOST:PORT", param_hint="'--listen'")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host or not (port == "*" or (port.isdigit() and int(port) < 65536)):
            raise typer.BadParameter(
                f"{listen!r} is not tcp://HOST:PORT (PORT 0-65535 or *)", param_hint="'--listen'"
            )


def launch(
    command: Annotated[list[str], typer.Argument(help="`train [CONFIG] [options]`, after --")],
    provider: Annotated[str, typer.Option("--provider", help="static | ray")] = "static",
    agent_addr: Annotated[
        list[str] | None, typer.Option("--agent", help="host:port of a running agent (static)")
    ] = None,
    keys: Annotated[Path | None, typer.Option("--keys", help="key directory")] = None,
    ray_address: Annotated[
        str, typer.Option("--ray-address", help="Ray cluster (ray): 'auto' or HOST:PORT")
    ] = "auto",
) -> None:
    """Run `rlhfless train ...` with its functions on remote agents, not on this machine.

    Agents you started: `rlhfless launch --provider static --agent 10.0.0.2:7700 --keys ~/.rlhfless/keys -- train my.toml`

    A Ray cluster: `rlhfless launch --provider ray --keys DIR -- train my.toml` first places one agent on every node.
    """  # one line per paragraph: the help keeps a docstring's line breaks
    if not command or command[0] != "train":
        raise typer.BadParameter(
            f"launch runs `train [CONFIG] [options]` on the agents, not {' '.join(command)!r}"
        )
    if keys is None or not (keys / "server.key_secret").exists():
        raise typer.BadParameter("--keys DIR must hold the cluster's keys (rlhfless keys init)")
    ray_agents = None
    if provider == "static":
        if not agent_addr:
            raise typer.BadParameter("--provider static needs at least one --agent HOST:PORT")
        from rlhfless.runtime.nodes import parse_address

        for addr in agent_addr:
            try:
                host, port = parse_address(addr)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="'--agent'") from None
            typer.echo(f"agent: {host}:{port}")
        addresses = list(agent_addr)
    elif provider == "ray":
        if agent_addr:
            raise typer.BadParameter("--agent is for --provider static; ray places its own")
        from rlhfless.runtime.ray_provider import RayAgents, RayProviderError

        try:
            ray_agents = RayAgents.start(ray_address, str(keys.resolve()))
        except RayProviderError as exc:
            fail(str(exc))
        for line in ray_agents.describe():
            typer.echo(f"agent: {line}")
        addresses = list(ray_agents.addresses)
    else:
        raise typer.BadParameter(f"unknown provider {provider!r}: static or ray")
    # The agents reach train as ordinary config overrides: explicit, and visible in its config.
    agents_toml = "[" + ", ".join(f'"{a}"' for a in addresses) + "]"
    overrides = [
        "--set", "cluster.provider=static", "--set", f"cluster.agents={agents_toml}",
        "--set", f"cluster.keys_dir={keys.resolve()}", "--set", "cluster.local_node=false",
    ]  # fmt: skip
    try:
        code = subprocess.call([sys.executable, "-m", "rlhfless.cli", *command, *overrides])
    finally:
        if ray_agents is not None:
            ray_agents.close()
    raise typer.Exit(code)
