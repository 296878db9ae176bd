"""The training gang's size: the cheapest within a fraction of the fastest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlhfless.scaling import BadScalingInput, BadScalingSetting, GangOption, cheapest_gang


def _options(*rows: tuple[int, float, float]) -> list[GangOption]:
    return [GangOption(devices=d, seconds=s, usd=u) for d, s, u in rows]


def test_the_cheapest_within_the_fraction_of_the_fastest() -> None:
    # traffic-bound: 160, 80 and 40 devices take about as long; 16 is compute-bound
    options = _options((160, 33.0, 8.0), (80, 33.5, 4.1), (40, 33.9, 2.1), (16, 60.0, 1.6))
    assert cheapest_gang(options, 0.03).devices == 40
    assert cheapest_gang(options, 0.0).devices == 160  # only the fastest
    assert cheapest_gang(options, 1.0).devices == 16  # anything within 2x


def test_ties_go_to_the_faster_then_to_fewer_devices() -> None:
    assert cheapest_gang(_options((16, 10.0, 1.0), (8, 10.2, 1.0)), 0.05).devices == 16
    assert cheapest_gang(_options((16, 10.0, 1.0), (8, 10.0, 1.0)), 0.05).devices == 8


def test_bad_inputs_are_refused_with_their_name() -> None:
    with pytest.raises(BadScalingInput, match="no candidate gang"):
        cheapest_gang([], 0.03)
    with pytest.raises(BadScalingSetting, match="within_fraction"):
        cheapest_gang(_options((8, 1.0, 1.0)), -0.1)
    with pytest.raises(BadScalingInput, match="devices must be >= 1"):
        GangOption(devices=0, seconds=1.0, usd=1.0)
    with pytest.raises(BadScalingInput, match="seconds must be a finite number"):
        GangOption(devices=8, seconds=float("nan"), usd=1.0)


_option = st.builds(
    GangOption,
    devices=st.integers(1, 512),
    seconds=st.floats(0.0, 1e4, allow_nan=False),
    usd=st.floats(0.0, 1e4, allow_nan=False),
)


@given(st.lists(_option, min_size=1, max_size=12), st.floats(0.0, 1.0))
def test_the_choice_is_within_the_bound_and_none_within_it_is_cheaper(
    options: list[GangOption], within: float
) -> None:
    best = cheapest_gang(options, within)
    bound = min(o.seconds for o in options) * (1.0 + within)
    assert best in options and best.seconds <= bound
    assert all(o.usd >= best.usd for o in options if o.seconds <= bound)
