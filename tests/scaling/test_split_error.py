"""Split-half error (predictor.split_half_error) and the margin's draws keyed by the predicted
mean: what the scenarios know of a seen prompt's error before a second epoch has scored it."""

from __future__ import annotations

import random

from rlhfless.scaling import ErrorModel, GroupWork, LengthPredictor
from rlhfless.scaling.margin import MIN_SAMPLES
from rlhfless.scaling.predictor import ErrorSample, split_half_error


def test_one_half_of_a_group_is_scored_against_the_other() -> None:
    lengths = [10, 20, 30, 40, 50, 60, 70, 800]
    e = split_half_error("p", lengths)
    assert e is not None and e.seen
    # The halves are 4 and 4 of the samples, whichever they are.
    assert 4 * (e.predicted_mean + e.actual_mean) == sum(lengths)
    assert max(e.predicted_max, e.actual_max) == 800
    assert split_half_error("p", lengths) == e  # seeded by the prompt: reproducible
    assert split_half_error("p", [5]) is None  # one sample: nothing to split


def test_the_predictor_keeps_split_scores_apart_from_its_own_errors() -> None:
    pred = LengthPredictor()
    rng = random.Random(0)
    for p in range(20):
        pred.observe(p, [rng.randint(1, 500) for _ in range(8)])
    assert len(pred.split_samples()) == 20
    assert pred.error().seen == 0  # a split score is no prediction the predictor made
    back = LengthPredictor.from_dict(pred.to_dict())
    assert back.split_samples() == pred.split_samples()  # checkpointed


def _rows(mean: float, ratio: float, n: int) -> list[ErrorSample]:
    return [ErrorSample(True, mean, mean * ratio, 128.0, 128.0) for _ in range(n)]


def test_the_mean_ratio_is_drawn_from_groups_predicted_as_short_on_average() -> None:
    # Every scored group had a sample at the cap (predicted max 128); those predicted short on
    # average came out twice as long, those predicted long half as long.
    model = ErrorModel(_rows(20.0, 2.0, MIN_SAMPLES) + _rows(100.0, 0.5, MIN_SAMPLES))
    short = GroupWork(group_id=0, prefill_tokens=10, lengths=(2.0, 2.0, 4.0, 72.0))  # mean 20
    long = GroupWork(group_id=1, prefill_tokens=10, lengths=(100.0, 100.0, 128.0, 128.0))
    rng = random.Random(1)
    for _ in range(20):
        assert model.draw(short, True, rng)[:3] == [4.0, 4.0, 8.0]
        assert model.draw(long, True, rng)[:2] == [50.0, 50.0]
