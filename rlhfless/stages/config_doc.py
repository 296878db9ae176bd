"""The reference of every ``rlhfless train`` setting, generated from the config structs.

Each key's default comes from the struct, its accepted values from its annotation, and its
meaning from the comments written next to the field in the source (the line's trailing comment
and the comment lines right above it). docs/config.md is this text; a test regenerates it and
fails when the file is stale, so the reference cannot drift from the code.
"""

from __future__ import annotations

import inspect
import io
import re
import textwrap
import tokenize
from typing import Any

import msgspec
from msgspec import inspect as mi

from rlhfless.stages.config import RESUME_FIXED, RESUME_TRAINS, Config

HEADER = """\
# Configuration reference

Every setting of `rlhfless train`, with its default and what it means. Set them in a TOML file
(`[train]` then `lr = 1e-4`) or with `--set train.lr=1e-4`. **Resume** says what `--resume` does
with a changed value: *free* changes freely; *allow* is refused unless named in
`--allow-changes`; *never* is refused (the checkpoint's state depends on it). Every change is
recorded in `<run_dir>/changes.jsonl`.

Generated from the config structs (`rlhfless/stages/config.py`, `rlhfless/scaling/config.py`) by
`rlhfless config`; `tests/stages/test_config_doc.py` fails when this file is stale.
"""


_FIELD = re.compile(r"^    (?P<name>[a-z_][a-z0-9_]*)\s*:")


def _trailing_comment(line: str) -> str:
    """The comment at the end of one line of code (a ``#`` inside a string is not one)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline))
    except (tokenize.TokenError, SyntaxError):  # a line that opens a bracket it closes later
        return line.partition("  # ")[2].strip()
    return next((t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT), "")


def field_comments(cls: type) -> dict[str, str]:
    """``{field: meaning}`` from the class source: the comment lines directly above a field
    and its trailing comment, joined into one line."""
    out: dict[str, str] = {}
    above: list[str] = []
    for line in textwrap.dedent(inspect.getsource(cls)).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        m = _FIELD.match(line)
        if m is not None:
            out[m["name"]] = "; ".join(filter(None, [" ".join(above), _trailing_comment(line)]))
        above = []  # a blank line, a method or a docstring ends a comment block
    return out


def _values(t: mi.Type) -> str:
    """What a setting accepts, in words."""
    if isinstance(t, mi.UnionType):
        return " or ".join(_values(x) for x in t.types)
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(f"`{v}`" for v in t.values)
    if isinstance(t, mi.NoneType):
        return "none"
    if isinstance(t, mi.BoolType):
        return "true/false"
    if isinstance(t, mi.StrType):
        return "text"
    if isinstance(t, mi.IntType | mi.FloatType):
        name = "integer" if isinstance(t, mi.IntType) else "number"
        ops = ((">", t.gt), (">=", t.ge), ("<", t.lt), ("<=", t.le))
        bounds = [f"{op} {v}" for op, v in ops if v is not None]
        return f"{name} {' and '.join(bounds)}".strip()
    if isinstance(t, mi.ListType | mi.TupleType | mi.VarTupleType):
        item = getattr(t, "item_type", None)
        return f"list of {_values(item) if item is not None else 'values'}"
    return type(t).__name__.removesuffix("Type").lower()


def _show(value: Any) -> str:
    if value is None:
        return "none"
    text = msgspec.json.encode(value).decode()
    return f"`{text}`" if text != '""' else '`""`'


def _resume_rule(key: str) -> str:
    if key in RESUME_FIXED:
        return "never"
    return "allow" if key in RESUME_TRAINS else "free"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def section(name: str, struct: type[msgspec.Struct]) -> list[str]:
    info = mi.type_info(struct)
    assert isinstance(info, mi.StructType)
    comments = field_comments(struct)
    doc = inspect.cleandoc(struct.__dict__.get("__doc__") or "")  # its own, not msgspec's
    lines = [f"## [{name}]", ""]
    if doc:
        lines += [doc, ""]
    lines += ["| key | default | values | resume | meaning |", "|---|---|---|---|---|"]
    defaults = struct()
    for field in info.fields:
        key = f"{name}.{field.name}"
        lines.append(
            f"| `{key}` | {_cell(_show(getattr(defaults, field.name)))} | "
            f"{_cell(_values(field.type))} | {_resume_rule(key)} | "
            f"{_cell(comments.get(field.name, ''))} |"
        )
    return [*lines, ""]


def config_reference() -> str:
    """The whole reference as Markdown (docs/config.md)."""
    lines = [HEADER]
    for field in msgspec.structs.fields(Config):
        lines += section(field.name, field.type)
    return "\n".join(lines).rstrip() + "\n"
