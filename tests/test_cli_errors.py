"""The ``rlhfless`` command on ordinary mistakes: one ``error: ...`` line, a non-zero exit, the
message's brackets intact (rich markup once ate ``[train]`` and crashed on ``[/x]``), and no
traceback. Every case runs the real command in a process and fails before any model work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from rlhfless.cost_models import write_billing_events
from rlhfless.stages.cli import print_summary

from .cost_models.helpers import event


def rlhfless(*args: str) -> subprocess.CompletedProcess[str]:
    # COLUMNS: typer's usage-error panel wraps at the terminal width; keep messages on one line.
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "rlhfless.cli", *args],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def assert_user_error(r: subprocess.CompletedProcess[str], *expected: str, code: int = 0) -> None:
    """Non-zero exit (or exactly ``code``), each ``expected`` text on stderr, no traceback."""
    assert r.returncode != 0 if not code else r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "MarkupError" not in r.stderr, r.stderr
    for text in expected:
        assert text in r.stderr, r.stderr


# --------------------------------------------------------------------------- train: the config


def test_train_unknown_key_names_its_table(tmp_path: Path) -> None:
    (tmp_path / "t.toml").write_text("[train]\nlrr = 1\n")
    r = rlhfless("train", str(tmp_path / "t.toml"))
    assert_user_error(r, "error: unknown key 'train.lrr'; valid keys in [train]: ", code=2)


def test_train_override_with_a_closing_tag_is_text() -> None:
    r = rlhfless("train", "--set", "foo[/x]=1")
    assert_user_error(r, "unknown key 'foo[/x]'", code=2)


def test_train_enum_error_lists_the_valid_values() -> None:
    r = rlhfless("train", "--set", "train.algo=dpo")
    assert_user_error(r, "Invalid enum value 'dpo'; valid: grpo, ppo", code=2)


def test_train_config_that_is_a_directory(tmp_path: Path) -> None:
    r = rlhfless("train", str(tmp_path))
    assert_user_error(r, f"error: cannot read config file {tmp_path}: Is a directory", code=2)


def test_train_config_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe[train]\n")
    r = rlhfless("train", str(tmp_path / "bad.toml"))
    assert_user_error(r, "is not UTF-8 text (byte 0xff at offset 0)", code=2)


# --------------------------------------------------------------------------- train: --run-dir


def test_train_run_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    r = rlhfless("train", "--run-dir", str(tmp_path / "f"))
    assert_user_error(r, "is a file, not a directory", code=2)


def test_train_run_dir_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    r = rlhfless("train", "--run-dir", str(tmp_path / "f" / "run"))
    assert_user_error(r, "cannot be used as a directory: Not a directory", code=2)


@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("vllm") is not None, reason="vllm is installed"
)
def test_train_vllm_engine_without_vllm_fails_before_any_function(tmp_path: Path) -> None:
    # Before: each rollout function died on the import in turn and the error came after ~100
    # lines of their tracebacks.
    r = rlhfless("train", "--set", "rollout.engine=vllm", "--set", f"run.run_dir={tmp_path}/r")
    assert_user_error(r, "error: rollout.engine = 'vllm' needs vLLM", code=1)
    assert "died with exit code" not in r.stderr and "[vm-" not in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) <= 3, r.stderr


def _tiny_model_copy(tmp_path: Path) -> Path:
    from rlhfless.adapters.tiny import build_tiny_model

    return build_tiny_model(tmp_path / "model", seed=0)


def test_train_model_dir_without_weights(tmp_path: Path) -> None:
    model = _tiny_model_copy(tmp_path)
    (model / "model.safetensors").unlink()
    r = rlhfless("train", "--set", "model.kind=dir", "--set", f"model.path={model}",
                 "--set", f"run.run_dir={tmp_path}/r")  # fmt: skip
    assert_user_error(r, f"error: model.path = '{model}' has no weights", code=1)


def test_train_model_dir_with_corrupt_weights_is_one_error_not_tracebacks(tmp_path: Path) -> None:
    # Fails inside the rollout function: before, each of 5 attempts printed its traceback
    # (~170 lines) ahead of the error.
    model = _tiny_model_copy(tmp_path)
    (model / "model.safetensors").write_bytes(b"\xff" * 1000)
    r = rlhfless("train", "--set", "model.kind=dir", "--set", f"model.path={model}",
                 "--set", f"run.run_dir={tmp_path}/r")  # fmt: skip
    assert_user_error(r, f"error: cannot load the model in {model}: ", code=1)
    # One function per slot (2) may start before the first failure stops the stage; none re-run.
    assert "[vm-" not in r.stderr and "re-running" not in r.stderr, r.stderr
    assert r.stderr.count("died with exit code") <= 2, r.stderr


def test_train_model_dir_whose_config_names_no_model(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    r = rlhfless("train", "--set", "model.kind=dir", "--set", f"model.path={model}",
                 "--set", f"run.run_dir={tmp_path}/r")  # fmt: skip
    assert_user_error(r, f"error: cannot load the tokenizer of {model}: ", code=1)


# --------------------------------------------------------------------------- simulate


def test_simulate_unknown_cost_model_keeps_brackets() -> None:
    r = rlhfless("simulate", "--cost", "nosuch")
    assert_user_error(r, "no cost model named 'nosuch'", "in its [model] table")


def test_simulate_cost_name_with_a_closing_tag() -> None:
    r = rlhfless("simulate", "--cost", "x[/y]")
    assert_user_error(r, "no cost model named 'x[/y]'")


def test_simulate_missing_trace_keeps_brackets(tmp_path: Path) -> None:
    r = rlhfless("simulate", "--trace", str(tmp_path / "nope.jsonl"))
    assert_user_error(r, "cannot read it", '"lengths": [int, ...]')


def test_simulate_json_to_a_missing_directory(tmp_path: Path) -> None:
    r = rlhfless("simulate", "--iterations", "1", "--json", str(tmp_path / "no" / "x.json"))
    assert_user_error(r, "error: cannot write --json")


# --------------------------------------------------------------------------- cost


def test_cost_plot_to_a_missing_directory(tmp_path: Path) -> None:
    events = tmp_path / "billing.jsonl"
    write_billing_events(events, [event("a", requested=0, ready=10, busy=[(10, 50)], exited=60)])
    r = rlhfless("cost", str(events), "--plot", str(tmp_path / "no" / "x.png"))
    assert_user_error(r, "error: cannot write --plot", "No such file or directory")


# --------------------------------------------------------------------------- keys, agent, launch


def test_keys_init_twice_names_the_flag(tmp_path: Path) -> None:
    assert rlhfless("keys", "init", str(tmp_path / "k")).returncode == 0
    r = rlhfless("keys", "init", str(tmp_path / "k"))
    assert_user_error(r, "already holds keys; pass --force to replace them")
    assert "force=True" not in r.stderr


@pytest.mark.parametrize("slots", ["0", "-1"])
def test_agent_rejects_slots_below_one(tmp_path: Path, slots: str) -> None:
    # --keys that do not exist: should --slots slip through, the agent fails at once (rc 1),
    # instead of serving forever; the usage error must come first (rc 2).
    r = rlhfless(
        "agent", "--listen", "tcp://127.0.0.1:1", "--keys", str(tmp_path), "--slots", slots
    )
    assert_user_error(r, "Invalid value for '--slots'", code=2)


def test_agent_missing_keys_is_one_line(tmp_path: Path) -> None:
    r = rlhfless("agent", "--listen", "tcp://127.0.0.1:1", "--keys", str(tmp_path / "none"))
    assert_user_error(r, "error: cannot load CURVE keys from", code=1)


def test_agent_malformed_listen_address(tmp_path: Path) -> None:
    # Keys exist, so only the address can stop it; it must stop before serving.
    assert rlhfless("keys", "init", str(tmp_path / "k")).returncode == 0
    r = rlhfless("agent", "--listen", "garbage", "--keys", str(tmp_path / "k"))
    assert_user_error(r, "Invalid value for '--listen': 'garbage' is not tcp://HOST:PORT", code=2)


def test_launch_malformed_agent_address(tmp_path: Path) -> None:
    assert rlhfless("keys", "init", str(tmp_path / "k")).returncode == 0
    r = rlhfless("launch", "--agent", "garbage", "--keys", str(tmp_path / "k"), "--", "train")
    assert_user_error(r, "agent address 'garbage' is not host:port", code=2)


# --------------------------------------------------------------------------- train's summary

SUMMARY = {
    "reward_first": None, "iterations": 1, "seconds": 1.0, "stage_seconds": {},
    "functions_started": 1, "cold_start_median_s": None, "warm_starts": 0, "deaths": 0,
    "retries": 0,
}  # fmt: skip


@pytest.mark.parametrize("with_key", [True, False])
def test_summary_cost_parts_add_up_to_the_total(with_key: bool) -> None:
    d = {"total": 0.013440, "busy": 0.000523, "idle": 0.012643, "serverful": 0.00672}
    if with_key:
        d["cold_start"] = 0.000274
    console = Console(width=300, record=True)
    print_summary(console, {**SUMMARY, "dollars": {"aws": d}}, "runs/[/x]")  # a path, not markup
    text = console.export_text()
    assert "$0.013440 (busy $0.000523, idle $0.012643, cold start $0.000274)" in text
    assert "runs/[/x] (metrics.jsonl" in text
