from __future__ import annotations

import pytest

from rlhfless.scaling import BadScalingInput, BadScalingSetting, LengthPredictor, spearman
from rlhfless.scaling.predictor import PROFILE_POINTS, resample_sorted


def test_unseen_prompt_before_any_observation_gets_the_default() -> None:
    p = LengthPredictor(default=128)
    assert p.predict("x") == 128
    assert p.predict_max("x") == 128
    assert p.predict_group("x", 4) == [128.0] * 4


def test_ewma_matches_hand_computation() -> None:
    p = LengthPredictor(alpha=0.25)
    p.observe("a", [100])
    p.observe("a", [200])
    p.observe("a", [40])
    # 100 -> 0.25*200 + 0.75*100 = 125 -> 0.25*40 + 0.75*125 = 103.75
    assert p.predict("a") == pytest.approx(103.75)
    assert p.predict_max("a") == pytest.approx(103.75)


def test_ewma_of_group_profiles_point_by_point() -> None:
    p = LengthPredictor(alpha=0.5)
    p.observe(7, [10, 30])  # profile: 10 .. 30 evenly
    p.observe(7, [50, 90])  # profile: 50 .. 90
    assert p.predict_max(7) == pytest.approx(0.5 * 90 + 0.5 * 30)
    assert p.predict_group(7, 2) == pytest.approx([30.0, 60.0])
    assert p.predict(7) == pytest.approx((30 + 60) / 2)  # mean of a linear profile


def test_window_is_a_plain_mean_of_the_last_epochs() -> None:
    p = LengthPredictor(window=2)
    for x in (100, 200, 400):
        p.observe("a", [x])
    assert p.predict("a") == pytest.approx(300)
    last = LengthPredictor(window=1)
    for x in (100, 5):
        last.observe("a", [x])
    assert last.predict("a") == 5  # the re-implementation's "reuse last epoch"


def test_unseen_prompt_falls_back_to_the_dataset_median() -> None:
    p = LengthPredictor()
    for i, x in enumerate((10, 20, 1000)):
        p.observe(i, [x])
    assert p.predict("new") == pytest.approx(20)


def test_zero_length_responses_are_valid() -> None:
    p = LengthPredictor()
    p.observe("z", [0, 0, 0])
    assert p.predict("z") == 0
    assert p.predict_group("z", 3) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("alpha", [0, -0.1, 1.5, float("nan")])
def test_bad_alpha_is_rejected(alpha: float) -> None:
    with pytest.raises(BadScalingSetting, match="alpha"):
        LengthPredictor(alpha=alpha)


def test_bad_observations_are_rejected() -> None:
    p = LengthPredictor()
    with pytest.raises(BadScalingInput, match="no lengths"):
        p.observe("a", [])
    with pytest.raises(BadScalingInput, match=">= 0"):
        p.observe("a", [-1])


def test_error_report_compares_predictions_made_before_each_observation() -> None:
    p = LengthPredictor(alpha=1.0, default=100)
    p.observe_many({"a": [50], "b": [150]})  # a: default 100; b: dataset median (a's 50)
    err = p.error()
    assert err.n == 2 and err.seen == 0
    assert err.mae_mean == pytest.approx((50 + 100) / 2)
    p.observe_many({"a": [60], "b": [140]})  # predicted 50 and 150: ranking right
    last = p.error(last=2)
    assert last.seen == 2
    assert last.mae_mean == pytest.approx(10)
    assert last.spearman_mean == pytest.approx(1.0)


def test_spearman_handles_ties_and_constants() -> None:
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert spearman([1, 1, 2], [1, 1, 2]) == pytest.approx(1)
    assert spearman([1, 1], [2, 3]) is None
    assert spearman([1], [1]) is None


def test_state_round_trips_exactly() -> None:
    p = LengthPredictor(alpha=0.3, window=0, default=64, shrink=1.0)
    p.observe_many({"a": [1, 2, 3], "b": [100, 300], 5: [7]})
    q = LengthPredictor.from_dict(p.to_dict())
    for pid in ("a", "b", 5, "unseen"):
        assert q.predict_group(pid, 4) == p.predict_group(pid, 4)
    assert q.error() == p.error()


def test_shrink_pulls_towards_the_dataset() -> None:
    p = LengthPredictor(alpha=1.0, shrink=1.0)
    p.observe("a", [100])
    p.observe("b", [300])
    # dataset median profile = 200; one own observation vs one pseudo-observation
    assert p.predict("a") == pytest.approx(150)


def test_resample_sorted_keeps_min_and_max() -> None:
    prof = resample_sorted([5, 1, 9, 3], PROFILE_POINTS)
    assert prof[0] == 1 and prof[-1] == 9 and prof == sorted(prof)
