"""Agents and runtimes leave no scratch directory behind: not on an error, not when killed.

Each exit path removes what it made; a process killed with SIGKILL cannot, so the next agent or
runtime removes the marked directories of dead owners (and only those).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from rlhfless.runtime import Runtime, scratch
from rlhfless.runtime.agent import Agent
from rlhfless.runtime.auth import keys_init

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private temp dir (and weight-cache dir) for this process, so that counting what is
    left is exact on a machine where other runs make their own directories."""
    root = tmp_path / "tmp"
    shm = tmp_path / "shm"
    root.mkdir()
    shm.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    monkeypatch.setattr(scratch, "SHM", str(shm))
    yield tmp_path


def _left(tmp: Path) -> list[str]:
    return sorted(p.name for d in ("tmp", "shm") for p in (tmp / d).iterdir())


@pytest.fixture
def keys(tmp_path: Path) -> str:
    return str(keys_init(tmp_path / "keys"))


def test_an_agent_that_cannot_bind_leaves_nothing(tmp: Path, keys: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        agent = Agent(f"tcp://127.0.0.1:{taken.getsockname()[1]}", keys, slots=1, preload=())
        assert os.path.isdir(agent.dir) and os.path.isdir(agent.cache_dir)
        with pytest.raises(zmq.ZMQError):
            agent.serve()
    assert _left(tmp) == []


def test_an_agent_whose_cache_cannot_be_made_leaves_nothing(
    tmp: Path, keys: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scratch, "SHM", "/proc")  # a directory nobody, root included, writes in
    with pytest.raises(OSError):
        Agent("tcp://127.0.0.1:1", keys, slots=1, preload=())
    assert _left(tmp) == []


def _python(code: str, env: dict[str, str], **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env}, text=True, **kw,  # type: ignore[call-overload]
    )  # fmt: skip


def test_an_agent_never_served_leaves_nothing_at_exit(tmp: Path, keys: str) -> None:
    proc = _python(
        f"""
        from rlhfless.runtime import scratch
        from rlhfless.runtime.agent import Agent
        scratch.SHM = {str(tmp / "shm")!r}
        a = Agent("tcp://127.0.0.1:1", {keys!r}, slots=1, preload=())
        print(a.dir, a.cache_dir, flush=True)
        """,
        {"TMPDIR": str(tmp / "tmp")},
        stdout=subprocess.PIPE,
    )
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    made = out.split()
    assert len(made) == 2 and all(str(tmp) in p for p in made), out  # it did make them
    assert _left(tmp) == []


async def test_a_runtime_leaves_nothing_closed_or_failed(tmp: Path) -> None:
    async with Runtime(zygote=False) as rt:
        assert os.path.isdir(rt._dir)
    assert _left(tmp) == []
    with pytest.raises(ValueError, match="boom"):
        async with Runtime(zygote=False):
            raise ValueError("boom")
    assert _left(tmp) == []


def _kill_when(proc: subprocess.Popen[str], word: str) -> str:
    assert proc.stderr is not None
    for line in proc.stderr:
        if word in line:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            return line
    raise AssertionError(f"the process ended without printing {word!r} (code {proc.wait()})")


async def test_killed_agents_and_runtimes_are_swept_by_the_next_start(
    tmp: Path, keys: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The child agent's cache goes to the real /dev/shm (the child's is not redirected), so
    # this test's sweep looks there; the cache is followed by the name the agent logs.
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm here")
    monkeypatch.setattr(scratch, "SHM", "/dev/shm")
    env = {"TMPDIR": str(tmp / "tmp")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = _python(
        f"""
        import sys
        from rlhfless.runtime.agent import main
        main(["--listen", "tcp://127.0.0.1:{port}", "--keys", {keys!r}, "--slots", "1",
              "--preload", ""])
        """,
        env,
        stderr=subprocess.PIPE,
    )
    runtime = _python(
        """
        import asyncio, sys
        from rlhfless.runtime import Runtime
        async def main():
            async with Runtime(zygote=False) as rt:
                print("runtime up", rt.endpoint, file=sys.stderr, flush=True)
                await asyncio.sleep(60)
        asyncio.run(main())
        """,
        env,
        stderr=subprocess.PIPE,
    )
    try:
        cache = _kill_when(agent, "weight cache").rsplit("weight cache ", 1)[1].strip()
        _kill_when(runtime, "runtime up")
    finally:
        for p in (agent, runtime):
            p.kill()
            p.wait()
    # Both died without a word: their directories are still there.
    left = os.listdir(tmp / "tmp")
    assert sorted(n.startswith("rlhfless-agent-") for n in left) == [False, True], left
    assert os.path.isdir(cache) and cache.startswith(scratch.SHM), cache
    mine = scratch.make("rlhfless-", str(tmp / "tmp"))  # a live owner's: the test's own

    async with Runtime(zygote=False) as rt:  # its start sweeps
        pass
    assert not os.path.exists(cache)
    assert sorted(os.listdir(tmp / "tmp")) == [os.path.basename(mine)]
    assert not os.path.exists(rt._dir)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _marked(parent: Path, name: str, marker: str) -> Path:
    d = parent / name
    d.mkdir()
    (d / scratch.OWNER_FILE).write_text(marker)
    return d


def test_sweep_removes_only_marked_directories_of_dead_owners(tmp_path: Path) -> None:
    live = Path(scratch.make("rlhfless-", str(tmp_path)))
    _, start, boot, pidns = (live / scratch.OWNER_FILE).read_text().split()
    me = os.getpid()
    dead = _marked(tmp_path, "rlhfless-dead", f"{_dead_pid()} {start} {boot} {pidns}")
    reused = _marked(tmp_path, "rlhfless-reused", f"{me} {int(start) - 1} {boot} {pidns}")
    rebooted = _marked(tmp_path, "rlhfless-rebooted", f"{me} {start} other-boot {pidns}")
    kept = [
        live,
        _marked(tmp_path, "rlhfless-other-ns", f"{_dead_pid()} {start} {boot} pid:[1]"),
        _marked(tmp_path, "rlhfless-torn", f"{_dead_pid()} {start}"),
        _marked(tmp_path, "other-prefix", f"{_dead_pid()} {start} {boot} {pidns}"),
    ]
    (tmp_path / "rlhfless-unmarked").mkdir()
    kept.append(tmp_path / "rlhfless-unmarked")
    # A symlink with our prefix to a dead owner's directory elsewhere: neither is touched.
    target = _marked(tmp_path / "rlhfless-unmarked", "x", f"{_dead_pid()} {start} {boot} {pidns}")
    (tmp_path / "rlhfless-link").symlink_to(target)
    kept.append(target)
    if os.geteuid() == 0:  # another user's directory, dead owner or not, is not ours to remove
        kept.append(_marked(tmp_path, "rlhfless-theirs", f"{_dead_pid()} {start} {boot} {pidns}"))
        os.chown(kept[-1], 12345, -1)

    removed = scratch.sweep(str(tmp_path), "rlhfless-")

    assert sorted(removed) == sorted(str(p) for p in (dead, reused, rebooted))
    assert all(p.is_dir() for p in kept)
    assert (tmp_path / "rlhfless-link").is_symlink()
