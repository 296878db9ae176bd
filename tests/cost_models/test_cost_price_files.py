"""The shipped price files, and clear errors for a bad user price file."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from rlhfless.cost_models import (
    KNOWN_DEVICE_KINDS,
    PriceFileError,
    UnknownModel,
    available_models,
    builtin_models,
    builtin_price_files,
    get_model,
    load_price_file,
    normalise_device_kind,
    resolve_models,
)
from rlhfless.cost_models.prices import iter_rows

GOOD_HEADER = """
[model]
name = "mycloud"
billing = "rental"
granularity_seconds = 1.0
minimum_seconds = 0.0
"""

GOOD_ROW = """
[[prices]]
device_kind = "h100"
price = 2.0
unit = "usd_per_hour"
source = "my contract"
date = 2025-03-01
"""


def write(tmp_path: Path, text: str, name: str = "prices.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


SHIPPED = [
    "aws", "gcp", "modal", "runpod", "lambda", "onprem", "aws-gpu-share", "aws-spot", "gcp-spot",
]  # fmt: skip


def test_the_builtin_models_ship_in_order() -> None:
    assert list(builtin_models()) == SHIPPED


def test_every_shipped_row_was_read_in_2026() -> None:
    for model in builtin_models().values():
        for row in model.all_rows():
            assert row.date.startswith("2026-"), (model.name, row.device_kind, row.instance)


@pytest.mark.parametrize("path", builtin_price_files(), ids=lambda p: p.name)
def test_every_shipped_row_has_a_source_and_a_date(path: Path) -> None:
    rows = list(iter_rows(path))
    assert rows
    for row in rows:
        assert isinstance(row.get("source"), str) and row["source"].strip(), row
        assert isinstance(row.get("date"), datetime.date), row
        assert row["date"] <= datetime.date.today(), row
        assert normalise_device_kind(row["device_kind"]) in KNOWN_DEVICE_KINDS
    load_price_file(path)  # and the whole file validates


def test_every_shipped_model_prices_something_and_nothing_is_free() -> None:
    for model in builtin_models().values():
        assert model.device_kinds(), model.name
        assert all(rate > 0 for rate in model.rates().values()), model.name
    # The summary of a CPU run (aws, onprem) and the GPU kinds the simulator plans with.
    assert "cpu" in get_model("aws").device_kinds() and "cpu" in get_model("onprem").device_kinds()
    for name in ("aws", "gcp", "modal", "runpod", "lambda", "onprem"):
        assert "h100" in get_model(name).device_kinds(), name


def test_a_good_user_file_defines_a_model(tmp_path: Path) -> None:
    model = get_model("mycloud", [write(tmp_path, GOOD_HEADER + GOOD_ROW)])
    assert model.hourly("h100") == pytest.approx(2.0)
    assert model.rows["h100"].source == "my contract"


def test_a_user_file_named_like_a_builtin_replaces_it(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_HEADER.replace('"mycloud"', '"aws"') + GOOD_ROW)
    assert get_model("aws", [path]).hourly("h100") == pytest.approx(2.0)
    assert list(available_models([path])) == SHIPPED


def test_two_user_files_may_not_define_the_same_model(tmp_path: Path) -> None:
    a = write(tmp_path, GOOD_HEADER + GOOD_ROW, "a.toml")
    b = write(tmp_path, GOOD_HEADER + GOOD_ROW, "b.toml")
    with pytest.raises(PriceFileError, match=r"b\.toml.*'mycloud'.*a\.toml"):
        available_models([a, b])


def test_an_unknown_model_name_lists_the_available_ones() -> None:
    with pytest.raises(
        UnknownModel,
        match="aws, aws-gpu-share, aws-spot, gcp, gcp-spot, lambda, modal, onprem, runpod",
    ):
        resolve_models(["azure"])


def check_error(tmp_path: Path, text: str, *fragments: str) -> PriceFileError:
    path = write(tmp_path, text)
    with pytest.raises(PriceFileError) as info:
        load_price_file(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_unknown_device_kind(tmp_path: Path) -> None:
    error = check_error(
        tmp_path,
        GOOD_HEADER + GOOD_ROW.replace('"h100"', '"h10"'),
        "row 1",
        "field 'device_kind'",
        "unknown device kind 'h10'",
        "l40s",
    )
    assert (error.row, error.field) == (1, "device_kind")


def test_negative_price_names_row_and_field(tmp_path: Path) -> None:
    text = GOOD_HEADER + GOOD_ROW + GOOD_ROW.replace('"h100"', '"l4"').replace("2.0", "-1.5")
    error = check_error(tmp_path, text, "row 2", "(device_kind 'l4')", "field 'price'", "negative")
    assert (error.row, error.field) == (2, "price")


def test_missing_source(tmp_path: Path) -> None:
    check_error(
        tmp_path,
        GOOD_HEADER + GOOD_ROW.replace('source = "my contract"\n', ""),
        "row 1",
        "field 'source'",
        "missing",
    )


def test_blank_source(tmp_path: Path) -> None:
    check_error(
        tmp_path, GOOD_HEADER + GOOD_ROW.replace('"my contract"', '"  "'), "field 'source'", "blank"
    )


def test_missing_date(tmp_path: Path) -> None:
    check_error(
        tmp_path,
        GOOD_HEADER + GOOD_ROW.replace("date = 2025-03-01\n", ""),
        "field 'date'",
        "missing",
    )


def test_date_that_is_not_a_date(tmp_path: Path) -> None:
    check_error(
        tmp_path,
        GOOD_HEADER + GOOD_ROW.replace("2025-03-01", '"last week"'),
        "field 'date'",
        "2024-12-01",
    )


def test_wrong_unit_lists_the_units(tmp_path: Path) -> None:
    check_error(
        tmp_path,
        GOOD_HEADER + GOOD_ROW.replace("usd_per_hour", "eur_per_hour"),
        "field 'unit'",
        "'eur_per_hour'",
        "usd_per_hour, usd_per_minute, usd_per_second",
    )


def test_price_of_the_wrong_type(tmp_path: Path) -> None:
    check_error(
        tmp_path,
        GOOD_HEADER + GOOD_ROW.replace("2.0", '"cheap"'),
        "field 'price'",
        "Expected `float`",
    )


def test_misspelt_field(tmp_path: Path) -> None:
    check_error(
        tmp_path,
        GOOD_HEADER + GOOD_ROW.replace("price =", "prise ="),
        "field 'prise'",
        "unknown field",
    )


def test_owned_field_in_a_rental_file(tmp_path: Path) -> None:
    check_error(tmp_path, GOOD_HEADER + GOOD_ROW + "capex_usd = 10\n", "field 'capex_usd'")


def test_duplicate_device_kind(tmp_path: Path) -> None:
    check_error(
        tmp_path,
        GOOD_HEADER + GOOD_ROW + GOOD_ROW.replace('"h100"', '"H100 80GB"'),
        "row 2",
        "already priced by row 1",
    )


def test_bad_billing_rule(tmp_path: Path) -> None:
    check_error(
        tmp_path,
        GOOD_HEADER.replace("minimum_seconds = 0.0", "minimum_seconds = -60") + GOOD_ROW,
        "[model]",
        "field 'minimum_seconds'",
        ">= 0",
    )


def test_unknown_billing_kind(tmp_path: Path) -> None:
    check_error(tmp_path, GOOD_HEADER.replace('"rental"', '"leased"') + GOOD_ROW, "field 'billing'")


def test_missing_model_table(tmp_path: Path) -> None:
    check_error(tmp_path, GOOD_ROW, "missing the [model] table")


def test_no_rows(tmp_path: Path) -> None:
    check_error(tmp_path, GOOD_HEADER, "no [[prices]] rows")


def test_not_toml(tmp_path: Path) -> None:
    check_error(tmp_path, "[model\nname = ", "not valid TOML")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PriceFileError, match="cannot read"):
        load_price_file(tmp_path / "nope.toml")


OWNED = """
[model]
name = "lab"
billing = "owned"
granularity_seconds = 0.0

[[prices]]
device_kind = "a100"
devices = 8
capex_usd = 199000.0
lifetime_years = 4.0
watts = 6500.0
usd_per_kwh = 0.13
pue = 1.56
source = "test"
date = 2025-01-01
"""


def test_owned_pue_below_one(tmp_path: Path) -> None:
    check_error(tmp_path, OWNED.replace("1.56", "0.9"), "field 'pue'", ">= 1")


def test_owned_zero_lifetime(tmp_path: Path) -> None:
    check_error(
        tmp_path,
        OWNED.replace("lifetime_years = 4.0", "lifetime_years = 0.0"),
        "field 'lifetime_years'",
        "> 0",
    )


def test_owned_negative_watts(tmp_path: Path) -> None:
    check_error(tmp_path, OWNED.replace("6500.0", "-1.0"), "field 'watts'", "negative")


def test_owned_missing_capex(tmp_path: Path) -> None:
    check_error(
        tmp_path, OWNED.replace("capex_usd = 199000.0\n", ""), "field 'capex_usd'", "missing"
    )
