from pathlib import Path

import pytest

from rlhfless.stages.config import Config, ConfigError, config_to_dict, load_config


def test_defaults_load_with_no_file() -> None:
    cfg = load_config()
    assert cfg == Config()
    assert cfg.model.kind == "tiny" and cfg.task.name == "repeat" and cfg.train.algo == "grpo"


def test_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[train]\nalgo = "ppo"\nlr = 0.01\n[run]\nseed = 3\n')
    cfg = load_config(path, ["train.lr=1e-4", "run.run_dir=runs/x", "rollout.shared_prefix=false"])
    assert cfg.train.algo == "ppo" and cfg.train.lr == 1e-4
    assert cfg.run.seed == 3 and cfg.run.run_dir == "runs/x"
    assert cfg.rollout.shared_prefix is False
    assert cfg.train.group_size == Config().train.group_size  # untouched keys keep defaults


def test_override_values_are_toml_literals_else_strings() -> None:
    cfg = load_config(None, ["train.algo=ppo", 'task.chars="ab"', "train.clip_eps_high=0.28"])
    assert cfg.train.algo == "ppo" and cfg.task.chars == "ab" and cfg.train.clip_eps_high == 0.28
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0  # an int is a fine float


def test_typo_is_rejected_with_the_key_named(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[train]\nlrr = 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lrr'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown key 'trian'"):
        load_config(None, ["trian.lr=1"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr=fast", "train.lr"),
        ("train.group_size=2.5", "train.group_size"),
        ("train.lr=-1", "train.lr"),
        ("train.algo=dpo", "train.algo"),
        ("rollout.shared_prefix=1", "rollout.shared_prefix"),
    ],
)
def test_wrong_type_or_value_names_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"key '{key}'"):
        load_config(None, [override])


def test_malformed_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="must be a table"):
        load_config(None, ["train=3"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_config_is_frozen_and_dumps_to_plain_data() -> None:
    cfg = load_config()
    with pytest.raises(AttributeError):
        cfg.train.lr = 1.0  # type: ignore[misc]
    data = config_to_dict(cfg)
    assert data["train"]["lr"] == cfg.train.lr
    from rlhfless.stages.config import config_from_dict

    assert config_from_dict(data) == cfg


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["cluster.provider=static"], r"cluster\.agents"),
        (['cluster.agents=["10.0.0.2:7700"]'], r"cluster\.keys_dir"),
        (["cluster.provider=ray"], r"cluster\.keys_dir"),
        (["cluster.provider=slurm"], r"cluster\.provider"),
        (["runtime.provider=static"], r"unknown key 'runtime\.provider'"),  # moved to [cluster]
    ],
)
def test_cluster_settings_are_checked(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_cluster_defaults_to_this_machine() -> None:
    cfg = load_config(None, ["cluster.provider=ray", "cluster.keys_dir=/k"])
    assert cfg.cluster.ray_address == "auto" and cfg.cluster.local_node
    assert load_config(None, []).cluster.provider == "local"
