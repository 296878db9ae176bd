"""docs/config.md is generated from the config structs (stages/config_doc.py) and must be
current; every setting has a meaning, and every setting is classified for ``--resume``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec

from rlhfless.stages.config import RESUME_FIXED, RESUME_FREE, RESUME_TRAINS, Config
from rlhfless.stages.config_doc import config_reference, field_comments

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def all_keys(struct: type[msgspec.Struct] = Config, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for f in msgspec.structs.fields(struct):
        if isinstance(f.type, type) and issubclass(f.type, msgspec.Struct):
            keys += all_keys(f.type, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_docs_config_md_is_current() -> None:
    assert DOC.read_text() == config_reference(), (
        "docs/config.md is stale: run `rlhfless config > docs/config.md`"
    )


def test_rlhfless_config_prints_the_reference() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "rlhfless.cli", "config"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == config_reference()


def test_every_key_is_in_the_reference_with_a_meaning() -> None:
    text = config_reference()
    for key in all_keys():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row is not None, f"{key} is missing from the reference"
        meaning = row.rstrip(" |").rsplit(" | ", 1)[-1]
        assert meaning and not meaning.endswith(("free", "allow", "never")), (
            f"{key} has no meaning: write a comment next to the field"
        )


def test_every_key_is_classified_for_resume_once() -> None:
    keys = set(all_keys())
    lists = {
        "RESUME_FIXED": RESUME_FIXED,
        "RESUME_TRAINS": RESUME_TRAINS,
        "RESUME_FREE": RESUME_FREE,
    }
    unclassified = keys - RESUME_FIXED - RESUME_TRAINS - RESUME_FREE
    assert not unclassified, (
        f"classify {sorted(unclassified)} in stages/config.py (RESUME_TRAINS if a change alters "
        "what is trained, else RESUME_FREE)"
    )
    for name, listed in lists.items():
        assert listed <= keys, f"{name} names keys that do not exist: {sorted(listed - keys)}"
    assert not (
        RESUME_FIXED & RESUME_TRAINS or RESUME_FIXED & RESUME_FREE or RESUME_TRAINS & RESUME_FREE
    )


def test_comments_come_from_the_source() -> None:
    class Example(msgspec.Struct):
        # two lines
        # above
        a: int = 1  # and its own
        b: str = "x # not a comment"  # the real one

        c: int = 0

    assert field_comments(Example) == {
        "a": "two lines above; and its own",
        "b": "the real one",
        "c": "",
    }
