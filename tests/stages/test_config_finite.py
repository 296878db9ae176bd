"""Ranged float settings reject inf as they reject nan, and the scaler's cost model is checked at
config load (stages/config.py: _check_finite, _check_cost_model)."""

import math
from pathlib import Path

import msgspec
import pytest

from rlhfless.cost_models import builtin_models
from rlhfless.stages.config import Config, ConfigError, load_config


def _ranged_float_keys(struct: type[msgspec.Struct], prefix: str = "") -> list[str]:
    """Every float field with a msgspec range, found from the structs themselves, so a field
    added later is covered too."""
    keys = []
    for field in msgspec.inspect.type_info(struct).fields:
        t = field.type
        if isinstance(t, msgspec.inspect.StructType):
            keys += _ranged_float_keys(t.cls, f"{prefix}{field.name}.")
            continue
        options = t.types if isinstance(t, msgspec.inspect.UnionType) else (t,)
        if any(
            isinstance(o, msgspec.inspect.FloatType)
            and any(b is not None for b in (o.gt, o.ge, o.lt, o.le))
            for o in options
        ):
            keys.append(prefix + field.name)
    return keys


RANGED = _ranged_float_keys(Config)
# The scaling section checks its floats in ScalingConfig.__post_init__ (no msgspec range).
SCALING = [
    "lam",
    "within_fraction",
    "pack_slack",
    "cut_threshold",
    "cut_poll_s",
    "predictor_alpha",
    "predictor_default",
    "predictor_shrink",
    "pack_headroom",
]


def test_the_ranged_keys_found_include_the_reported_ones() -> None:
    assert {"train.lr", "rollout.temperature", "runtime.keep_alive_s"} <= set(RANGED)
    assert {"train.clip_eps_high", "train.value_clip", "cluster.node_timeout_s"} <= set(RANGED)
    assert len(RANGED) >= 17


@pytest.mark.parametrize("key", RANGED)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
def test_non_finite_is_rejected_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"invalid value for key '{key}': Expected .*`float`"):
        load_config(None, [f"{key}={value}"])


@pytest.mark.parametrize("key", RANGED)
def test_a_finite_value_in_range_is_still_accepted(key: str) -> None:
    cfg = load_config(None, [f"{key}=0.5"])
    section, name = key.split(".")
    assert getattr(getattr(cfg, section), name) == 0.5


@pytest.mark.parametrize("key", ["train.lr", "rollout.temperature", "runtime.keep_alive_s"])
def test_inf_message_says_finite_and_the_bound(key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}=inf"])
    assert "Expected finite `float` >" in str(e.value) and "got inf" in str(e.value)


def test_inf_in_a_toml_file_is_rejected_too(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[train]\nlr = inf\n")
    with pytest.raises(ConfigError, match=r"key 'train\.lr': Expected finite `float` > 0\.0"):
        load_config(path)


@pytest.mark.parametrize("name", SCALING)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_scaling_floats_reject_non_finite_naming_the_key(name: str, value: str) -> None:
    assert isinstance(getattr(Config().scaling, name), float | None)
    with pytest.raises(ConfigError, match=rf"invalid value for key 'scaling\.{name}'"):
        load_config(None, [f"scaling.{name}={value}"])
    with pytest.raises(ConfigError, match=r"key 'scaling\.auto_cut_thresholds'"):
        load_config(None, [f"scaling.auto_cut_thresholds=[{value}]"])


def test_unknown_cost_model_is_rejected_at_load_naming_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, ["scaling.cost_model=nosuch"])
    message = str(e.value)
    assert "key 'scaling.cost_model'" in message and "'nosuch'" in message
    for name in builtin_models():
        assert name in message
    assert "--prices" not in message  # train takes no price files


@pytest.mark.parametrize("name", [*builtin_models(), "AWS", " gcp "])
def test_every_model_the_scaler_resolves_is_accepted(name: str) -> None:
    assert load_config(None, [f'scaling.cost_model="{name}"']).scaling.cost_model == name


def test_defaults_stay_finite() -> None:
    cfg = Config()
    for key in RANGED:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        assert value is None or math.isfinite(value), key


def test_an_unpriced_scaling_device_kind_is_rejected_at_load_naming_the_key() -> None:
    # Before: the scaler refused it inside the run, after the runtime had started, without
    # naming the key.
    with pytest.raises(ConfigError) as e:
        load_config(None, ["scaling.device_kind=tpu9"])
    assert str(e.value) == (
        "invalid value for key 'scaling.device_kind': cost model 'aws' has no price for 'tpu9'; "
        "valid: a100, a100-80gb, a10g, cpu, h100, h200, l40s"
    )
    assert load_config(None, ["scaling.device_kind=L40S"]).scaling.device_kind == "L40S"


def test_the_scaler_names_an_unpriced_device_kind_setting() -> None:
    from rlhfless.scaling import BadScalingSetting, Scaler, ScalingConfig

    with pytest.raises(BadScalingSetting, match="device_kind = 'tpu9' is invalid: it must be a"):
        Scaler(ScalingConfig(device_kind="tpu9"), slots=2, device_kind="cpu")
