"""Embedding from anywhere: a function resolves the user's actor by the controller's import
path and working directory, not by the directory the zygote (or its interpreter) started in."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ACTOR = """
import os


class Greeter:
    def hello(self, name):
        return f"hello {name} from {os.getcwd()}"
"""

CONTROLLER = """
import asyncio
import sys

from rlhfless.runtime import Runtime


async def main(zygote):
    async with Runtime(preload=(), zygote=zygote, slots=1) as rt:
        h = await rt.spawn("user_actors_outside:Greeter")
        print(await h.hello("you"))
        await h.release()


asyncio.run(main(sys.argv[1] == "zygote"))
"""


@pytest.mark.parametrize("start", ["zygote", "interpreter"])
def test_actor_in_users_module_spawns_from_another_directory(tmp_path: Path, start: str) -> None:
    """The user's script and its actor module live together outside the repository; the
    controller runs from an unrelated directory, where the module is not importable by cwd."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "user_actors_outside.py").write_text(textwrap.dedent(ACTOR))
    (project / "train_mine.py").write_text(textwrap.dedent(CONTROLLER))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run(
        [sys.executable, str(project / "train_mine.py"), start],
        cwd=elsewhere, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == f"hello you from {elsewhere}"  # the controller's cwd, too
    assert "Traceback" not in out.stderr


def test_controller_path_added_after_start_is_seen(tmp_path: Path) -> None:
    """A directory the controller puts on sys.path after the runtime (and its zygote) started
    reaches functions spawned later."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "user_actors_late.py").write_text(textwrap.dedent(ACTOR))
    script = f"""
import asyncio, sys
from rlhfless.runtime import Runtime

async def main():
    async with Runtime(preload=(), slots=1) as rt:
        sys.path.append({str(lib)!r})
        h = await rt.spawn("user_actors_late:Greeter")
        print(await h.hello("late"))

asyncio.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=100
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == f"hello late from {tmp_path}"


ENV_PROBE = """
import asyncio, sys
from rlhfless.runtime import Runtime

async def main(zygote):
    async with Runtime(preload=("torch",), zygote=zygote, slots=1) as rt:
        h = await rt.spawn("tests.runtime.actors:Echo")
        print(await h.env("OMP_WAIT_POLICY"))

asyncio.run(main(sys.argv[1] == "zygote"))
"""


@pytest.mark.parametrize(("start", "given"), [("zygote", None), ("interpreter", "ACTIVE")])
def test_functions_wait_passively_unless_told_otherwise(start: str, given: str | None) -> None:
    """OpenMP threads sleep at barriers (OMP_WAIT_POLICY=PASSIVE): spinning, a 2-thread
    function on busy cores ran its train stage 10-20x slower. A user's own value wins."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", ENV_PROBE, start],
        cwd=repo, env=env, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == (given or "PASSIVE")
