"""Every exception the runtime raises, in one place. Each message says what to do next."""

from __future__ import annotations


class RuntimeErrorBase(Exception):
    """Base class of the runtime's errors."""


class BadMessage(RuntimeErrorBase):
    """A frame sequence that is not a valid message (garbage, truncated, wrong types)."""


class SpawnError(RuntimeErrorBase):
    """A function could not be started: bad actor path, bad arguments, or no READY in time."""


class FunctionDied(RuntimeErrorBase):
    """A function process ended while calls were pending, or a call was made on a dead one."""

    def __init__(
        self,
        function_id: str,
        actor: str,
        exit_code: int | None,
        stderr_tail: list[str],
        why: str = "",
    ) -> None:
        self.function_id = function_id
        self.actor = actor
        self.exit_code = exit_code
        self.stderr_tail = list(stderr_tail)
        code = "unknown" if exit_code is None else str(exit_code)
        if exit_code is not None and exit_code < 0:
            code += f" (killed by signal {-exit_code})"
        tail = "\n".join(f"    {line}" for line in self.stderr_tail[-20:]) or "    (no stderr)"
        super().__init__(
            f"function {function_id} hosting {actor} died with exit code {code}"
            f"{': ' + why if why else ''}\n  last lines of its stderr:\n{tail}"
        )


class ActorInitError(SpawnError, FunctionDied):
    """The actor's module failed to import or its ``__init__`` raised; the function exited."""

    def __init__(
        self,
        function_id: str,
        actor: str,
        exit_code: int | None,
        stderr_tail: list[str],
        remote_type: str,
        remote_message: str,
        remote_traceback: str,
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        FunctionDied.__init__(
            self,
            function_id,
            actor,
            exit_code,
            stderr_tail,
            why=f"starting the actor raised {remote_type}: {remote_message}\n{remote_traceback}",
        )


class RemoteError(RuntimeErrorBase):
    """A method raised inside the function; the function is still alive."""

    def __init__(
        self, function_id: str, method: str, remote_type: str, message: str, tb: str
    ) -> None:
        self.function_id = function_id
        self.method = method
        self.remote_type = remote_type
        self.remote_message = message
        self.remote_traceback = tb
        super().__init__(
            f"{method}() in function {function_id} raised {remote_type}: {message}\n"
            f"remote traceback:\n{tb}"
        )


class CallTimeout(RuntimeErrorBase, TimeoutError):
    """A call or a spawn did not finish within its deadline."""


class RuntimeClosed(RuntimeErrorBase):
    """The runtime was closed (or its receiver failed); no further spawns or calls."""


class NodeLost(FunctionDied):
    """The function's node (its agent, or the link to it) was lost; the work it held is gone.

    A :class:`FunctionDied`, so code that re-runs the work of dead functions handles it already.
    """

    def __init__(self, function_id: str, actor: str, node: str, why: str) -> None:
        self.node = node
        super().__init__(function_id, actor, None, [], why=f"node {node} was lost: {why}")


class GangMemberDied(FunctionDied):
    """A member of a gang died: the gang's calls fail with this and the other members are torn
    down (they may be blocked in a collective that will never complete). Start a new gang."""

    def __init__(self, gang_id: str, rank: int, world_size: int, cause: FunctionDied) -> None:
        self.gang_id = gang_id
        self.rank = rank
        self.world_size = world_size
        self.cause = cause
        # NodeLost's reason is only in its message; its first line says what happened.
        first = str(cause).split("\n", 1)[0]
        super().__init__(
            cause.function_id,
            cause.actor,
            cause.exit_code,
            cause.stderr_tail,
            why=f"rank {rank} of gang {gang_id} (size {world_size}) [{first}]; "
            "the other members were torn down",
        )


class GangStartError(SpawnError):
    """A gang could not be started as a whole (a member failed or sent no READY in time);
    no member is left running."""


class WeightsDeltaError(RuntimeErrorBase, ValueError):
    """A weights delta cannot be applied exactly: its base is not the version (or the bytes)
    the receiver holds, or the delta itself is malformed or corrupt. Nothing was applied where
    it could be checked first; the message names the problem. Send the full version instead."""
