"""``rlhfless -h`` / ``--help`` / ``--version`` on the real command, in a process: every
command's help shows plain value names (TEXT, PATH, INTEGER), never the annotation labels typer
derives from the code (``<bool>``, ``<list[str]>``, ``<path>``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version

import pytest

pytestmark = pytest.mark.timeout(60)

COMMANDS = [[], ["train"], ["simulate"], ["cost"], ["config"], ["agent"], ["launch"],
            ["keys"], ["keys", "init"], ["version"]]  # fmt: skip
TYPE_LABEL = re.compile(r"<(bool|str|int|float|path|Path|list\[[^\]]*\])[^>]*>")


def rlhfless(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "rlhfless.cli", *args],
        capture_output=True, text=True, timeout=50, env=env,
    )  # fmt: skip


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_root_help(flag: str) -> None:
    r = rlhfless(flag)
    assert r.returncode == 0, r.stderr
    assert "Usage: rlhfless [OPTIONS] COMMAND" in r.stdout
    for name in ("train", "simulate", "cost", "config"):
        assert f" {name} " in r.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "rlhfless")
def test_help_has_no_type_labels(command: list[str]) -> None:
    r = rlhfless(*command, "-h")
    assert r.returncode == 0, r.stderr
    assert "Usage: rlhfless" in r.stdout
    assert TYPE_LABEL.search(r.stdout) is None, r.stdout


def test_train_help_names_values_plainly() -> None:
    out = rlhfless("train", "-h").stdout
    assert "[CONFIG]" in out and "--allow-changes" in out
    assert re.search(r"--set\s+TEXT", out) and re.search(r"--resume\s+continue", out), out


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str) -> None:
    r = rlhfless(flag)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == version("rlhfless")
