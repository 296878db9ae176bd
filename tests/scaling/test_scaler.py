from __future__ import annotations

import pytest

from rlhfless.cost_models import get_model
from rlhfless.scaling import BadScalingSetting, ThroughputParams, choose_k
from tests.scaling.helpers import heavy_tail_groups, lognormal_groups, works_from

PARAMS = ThroughputParams(cold_start_seconds=5.0)


@pytest.mark.parametrize("groups", [lognormal_groups(64, 8, 1), heavy_tail_groups(64, 8, 2)])
@pytest.mark.parametrize("model", ["aws", "onprem", "serverless", "gcp"])
def test_curve_has_every_k_and_picks_the_minimum_score(groups: list, model: str) -> None:
    d = choose_k(works_from(groups), range(1, 9), PARAMS, get_model(model), "h100", lam=0.001)
    assert [p.k for p in d.curve] == list(range(1, 9))
    assert d.chosen.score == min(p.score for p in d.curve)
    for p in d.curve:
        assert p.serverful_usd >= p.usd - 1e-12  # holding to the end never costs less
        assert p.score == pytest.approx(p.usd + 0.001 * p.seconds)


def test_lambda_trades_dollars_for_time() -> None:
    works = works_from(lognormal_groups(64, 8, 4))
    aws = get_model("aws")
    cheap = choose_k(works, range(1, 9), PARAMS, aws, "l40s", lam=0.0)
    fast = choose_k(works, range(1, 9), PARAMS, aws, "l40s", lam=100.0)
    assert cheap.chosen.usd == min(p.usd for p in cheap.curve)
    assert fast.chosen.seconds == min(p.seconds for p in fast.curve)
    assert fast.chosen.seconds <= cheap.chosen.seconds


def test_cheapest_within_a_fraction_of_the_fastest() -> None:
    works = works_from(heavy_tail_groups(64, 8, 5))
    d = choose_k(works, range(1, 9), PARAMS, get_model("aws"), "l40s", within_fraction=0.1)
    fastest = min(p.seconds for p in d.curve)
    assert d.criterion == "within"
    assert d.chosen.seconds <= fastest * 1.1 + 1e-9
    ok = [p.usd for p in d.curve if p.seconds <= fastest * 1.1 + 1e-9]
    assert d.chosen.usd == min(ok)


def test_warm_functions_skip_the_cold_start() -> None:
    works = works_from([[100] * 8])
    cold = choose_k(works, [1], PARAMS, get_model("onprem"), "l40s")
    warm = choose_k(works, [1], PARAMS, get_model("onprem"), "l40s", warm=1)
    assert cold.chosen.seconds - warm.chosen.seconds == pytest.approx(5.0)


def test_render_prints_the_curve() -> None:
    d = choose_k(works_from(lognormal_groups(16, 4)), range(1, 4), PARAMS, get_model("aws"), "a10g")
    text = d.render()
    assert "k=" in text and "T (s)" in text and f"*{d.k}" in text


@pytest.mark.parametrize("lam", [-0.1, float("nan"), float("inf")])
def test_negative_or_nonfinite_lambda_is_rejected(lam: float) -> None:
    with pytest.raises(BadScalingSetting, match=r"lam .* invalid.*>= 0"):
        choose_k(works_from([[1]]), [1], PARAMS, get_model("aws"), "a10g", lam=lam)


def test_empty_k_range_is_rejected() -> None:
    with pytest.raises(BadScalingSetting, match="k range"):
        choose_k(works_from([[1]]), [], PARAMS, get_model("aws"), "a10g")
