from __future__ import annotations

import msgspec
import pytest

from rlhfless.scaling import BadScalingSetting, ScalingConfig


def test_defaults_are_the_fixed_baseline() -> None:
    c = ScalingConfig()
    assert c.policy == "fixed" and c.fixed_k(8) == 8
    assert ScalingConfig(k=3).fixed_k(8) == 3
    assert list(ScalingConfig(k_min=2, k_max=5).k_range(8)) == [2, 3, 4, 5]
    assert list(ScalingConfig(k_max=0).k_range(4)) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("lam", -1.0, "lam"),
        ("cut_threshold", 0.0, "cut_threshold"),
        ("cut_threshold", 1.5, "cut_threshold"),
        ("k", -1, "k = -1"),
        ("k_min", 0, "k_min"),
        ("predictor_alpha", 0.0, "predictor_alpha"),
        ("within_fraction", -0.1, "within_fraction"),
        ("pack_headroom", 1.0, "pack_headroom"),
        ("cut_guard", "yes", "cut_guard"),
        ("cut_poll_s", 0.0, "cut_poll_s"),
        ("cut_poll_s", 60.0, "cut_poll_s"),
    ],
)
def test_bad_settings_are_rejected_with_the_field_named(
    field: str, value: object, match: str
) -> None:
    with pytest.raises(BadScalingSetting, match=match):
        ScalingConfig(**{field: value})  # type: ignore[arg-type]


def test_k_max_below_k_min_is_rejected() -> None:
    with pytest.raises(BadScalingSetting, match="k_max"):
        ScalingConfig(k_min=4, k_max=2)


def test_loads_from_a_toml_like_dict_and_rejects_unknown_fields() -> None:
    c = msgspec.convert({"policy": "rlhfless", "lam": 0.01, "cut_threshold": 0.8}, ScalingConfig)
    assert c.policy == "rlhfless" and c.cut_threshold == 0.8
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"lamda": 1}, ScalingConfig)


def test_k_settings_above_the_slots_are_capped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from rlhfless.scaling import Scaler

    with caplog.at_level("WARNING", logger="rlhfless.scaling"):
        s = Scaler(ScalingConfig(policy="rlhfless", k_min=5, k_max=9), slots=2, device_kind="l40s")
        Scaler(ScalingConfig(policy="fixed", k=3), slots=2, device_kind="l40s")
        Scaler(ScalingConfig(policy="rlhfless", k_min=1, k_max=2), slots=2, device_kind="l40s")
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "scaling.k_min = 5 is more than the scaler's 2 slots (rollout.functions): using 2",
        "scaling.k_max = 9 is more than the scaler's 2 slots (rollout.functions): using 2",
        "scaling.k = 3 is more than the scaler's 2 slots (rollout.functions): using 2",
    ]
    assert s.plan(list(range(4)), [[1] * 10] * 4, 4).functions == 2
