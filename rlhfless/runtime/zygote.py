"""The per-node zygote: a fork server that has already imported the heavy modules.

Started once per node by the controller (``python -m rlhfless.runtime.zygote``). It imports
torch and transformers, then forks one child per :class:`Spawn`; a cold start therefore costs a
fork and the actor's own init, not an interpreter start and a torch import.

The zygote is the parent of every function it forks, so it reaps them and reports each exit
(code and the last lines of stderr) to the controller as :class:`Exited`. It runs no asyncio loop
and no torch work, so forking it is safe. Functions die with it, and it dies with the controller.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import os
import signal
import sys
import time
import traceback

import zmq

from rlhfless.runtime.errors import BadMessage
from rlhfless.runtime.messages import Codec, Exited, Heartbeat, Release, Spawn
from rlhfless.runtime.procutil import die_with_parent, exit_now, ignore_terminal_interrupt

ZYGOTE_IDENTITY = b"zygote"
POLL_MS = 50  # how often exits are reaped and the parent checked when no message arrives


class _Child:
    def __init__(self, function_id: str, pid: int, fd: int, tail_lines: int) -> None:
        self.function_id = function_id
        self.pid = pid
        self.fd = fd  # read end of the child's stderr pipe
        self.partial = b""
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)


class Zygote:
    def __init__(self, endpoint: str, tail_lines: int, hb_interval: float) -> None:
        self.endpoint = endpoint
        self.tail_lines = tail_lines
        self.hb_interval = hb_interval
        self.codec = Codec()
        self.children: dict[int, _Child] = {}  # by pid
        self.by_fd: dict[int, _Child] = {}
        self.bad_messages = 0

    def fork(self, spec: Spawn) -> _Child:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the zygote's loop
            code = 70
            try:
                os.close(r)
                os.dup2(w, 2)
                os.close(w)
                sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
                # The zygote's SIGTERM handler (SystemExit, to run its cleanup) is not the
                # function's: a function the zygote stops dies at once, with no traceback.
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                die_with_parent()
                from rlhfless.runtime.function import function_main

                code = function_main(spec, self.hb_interval)
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        os.close(w)
        os.set_blocking(r, False)
        child = _Child(spec.function_id, pid, r, self.tail_lines)
        self.children[pid] = child
        self.by_fd[r] = child
        return child

    def pump(self, child: _Child) -> bool:
        """Copy what the child wrote to stderr into its tail and our stderr; False at EOF."""
        try:
            data = os.read(child.fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        lines = (child.partial + data).split(b"\n")
        child.partial = lines.pop()
        for raw in lines:
            line = raw.decode(errors="replace")
            child.tail.append(line)
            sys.stderr.write(f"[{child.function_id}] {line}\n")
        sys.stderr.flush()
        return True

    def reap(self, sock: zmq.Socket, poller: zmq.Poller) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            for _ in range(64):  # drain what is left; grandchildren may hold the pipe open
                if not self.pump(child):
                    break
            if child.partial:
                child.tail.append(child.partial.decode(errors="replace"))
            with contextlib.suppress(KeyError):  # already gone if its stderr hit EOF first
                poller.unregister(child.fd)
            del self.by_fd[child.fd]
            os.close(child.fd)
            code = os.waitstatus_to_exitcode(status)
            self.send(sock, Exited(child.function_id, pid, code, list(child.tail)))

    def send(self, sock: zmq.Socket, msg: object) -> None:
        sock.send_multipart(self.codec.encode(msg), copy=False)  # type: ignore[arg-type]

    def stop_children(self, sock: zmq.Socket, poller: zmq.Poller, grace_s: float = 3.0) -> None:
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.children and time.monotonic() < deadline:
            self.reap(sock, poller)
            time.sleep(0.02)
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
        while self.children and time.monotonic() < deadline + grace_s:
            self.reap(sock, poller)
            time.sleep(0.02)

    def serve(self) -> int:
        parent = os.getppid()
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, ZYGOTE_IDENTITY)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(self.endpoint)
        self.send(sock, Heartbeat("zygote", time.time(), os.getpid(), 0))  # hello: imports done
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        next_hb = time.monotonic() + self.hb_interval
        try:
            while True:
                for item, _ in poller.poll(POLL_MS):
                    if item is sock:
                        if self.handle(sock, poller) == "stop":
                            return 0
                    else:
                        child = self.by_fd.get(item)
                        if child is not None and not self.pump(child):
                            poller.unregister(child.fd)
                self.reap(sock, poller)
                if os.getppid() != parent:  # the controller is gone: take the functions down
                    return 0
                if time.monotonic() >= next_hb:
                    next_hb += self.hb_interval
                    self.send(
                        sock, Heartbeat("zygote", time.time(), os.getpid(), self.bad_messages)
                    )
        finally:
            self.stop_children(sock, poller)
            sock.close(linger=1000)
            ctx.term()

    def handle(self, sock: zmq.Socket, poller: zmq.Poller) -> str:
        frames = sock.recv_multipart(copy=False)
        try:
            msg = self.codec.decode(frames)
        except BadMessage as exc:
            self.bad_messages += 1
            print(f"rlhfless zygote: rejected a message: {exc}", file=sys.stderr, flush=True)
            return ""
        if isinstance(msg, Spawn):
            poller.register(self.fork(msg).fd, zmq.POLLIN)
        elif isinstance(msg, Release):
            return "stop"
        elif not isinstance(msg, Heartbeat):
            self.bad_messages += 1
            print(f"rlhfless zygote: unexpected {type(msg).__name__}", file=sys.stderr, flush=True)
        return ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="rlhfless zygote (started by the runtime)")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--preload", default="")
    parser.add_argument("--tail-lines", type=int, default=40)
    parser.add_argument("--heartbeat", type=float, default=2.0)
    parser.add_argument("--parent-pid", type=int, default=None)
    ignore_terminal_interrupt()  # before the slow preloads: Ctrl-C is the controller's to handle
    args = parser.parse_args(argv)
    die_with_parent(signal.SIGTERM, args.parent_pid)
    # While it imports there are no children: a stop (the runtime closed before it was ready)
    # exits at once.
    signal.signal(signal.SIGTERM, lambda *_: exit_now(0))
    for entry in filter(None, args.preload.split(",")):
        name = entry.removeprefix("?")
        try:
            importlib.import_module(name)
        except ImportError as exc:
            if not entry.startswith("?"):
                raise  # a preload the user asked for must exist: fail loudly, at start
            print(f"rlhfless zygote: optional preload {name} skipped: {exc}", file=sys.stderr)
            continue
        if name == "transformers":  # transformers imports lazily: load the heavy parts now
            import transformers

            _ = transformers.PreTrainedModel, transformers.AutoModelForCausalLM
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run serve's finally: children go too
    try:
        code = Zygote(args.endpoint, args.tail_lines, args.heartbeat).serve()
    except SystemExit as exc:  # SIGTERM: serve's finally has stopped the children
        code = exc.code if isinstance(exc.code, int) else 0
    exit_now(code)


if __name__ == "__main__":
    main()
