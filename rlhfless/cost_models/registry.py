"""Finding cost models by name: the shipped ones, and those defined by the user's price files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rlhfless.cost_models.errors import PriceFileError, UnknownModel
from rlhfless.cost_models.model import TableCostModel
from rlhfless.cost_models.prices import builtin_price_files, load_price_file

# The order models appear in when none are named: rented clouds, serverless, neocloud, owned,
# then the variants (spot, the per-GPU share).
_PREFERRED_ORDER = ("aws", "gcp", "modal", "runpod", "lambda", "onprem")

# Older names that still work: "serverless" was the Modal-priced per-second model.
ALIASES = {"serverless": "modal"}


def builtin_models() -> dict[str, TableCostModel]:
    """Every shipped model by name (each call re-reads the files: they are small)."""
    models = {m.name.lower(): m for m in map(load_price_file, builtin_price_files())}
    order = [n for n in _PREFERRED_ORDER if n in models] + sorted(
        set(models) - set(_PREFERRED_ORDER)
    )
    return {name: models[name] for name in order}


def available_models(price_files: Sequence[Path | str] = ()) -> dict[str, TableCostModel]:
    """Built-ins, then the models the user's files define; a user model replaces a built-in of
    the same name (that is how a user overrides AWS prices with their negotiated ones)."""
    models = builtin_models()
    defined_by: dict[str, Path] = {}
    for path in price_files:
        model = load_price_file(path)
        key = model.name.lower()  # names are matched case-insensitively
        if key in defined_by:
            raise PriceFileError(
                path,
                f"defines model {model.name!r}, which {defined_by[key]} already "
                "defines; give one of them another [model] name",
                field="name",
            )
        defined_by[key] = Path(path)
        models[key] = model
    return models


def get_model(name: str, price_files: Sequence[Path | str] = ()) -> TableCostModel:
    """One model by name (built in, or defined by one of ``price_files``)."""
    return resolve_models([name], price_files)[0]


def resolve_models(
    names: Sequence[str] | None, price_files: Sequence[Path | str] = ()
) -> list[TableCostModel]:
    """The models ``names`` asks for, in that order; no names: every available model."""
    models = available_models(price_files)
    if not names:
        return list(models.values())
    chosen: list[TableCostModel] = []
    for name in names:
        key = name.strip().lower()
        if key not in models and key in ALIASES:
            key = ALIASES[key]
        if key not in models:
            raise UnknownModel(name, models)
        if models[key] not in chosen:
            chosen.append(models[key])
    return chosen
