"""What every stage actor shares: loading the model, the batch layout, atomic state files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import msgspec
import torch
from transformers.utils import logging as hf_logging

from rlhfless.stages.config import TaskConfig
from rlhfless.stages.tasks import Task, make_task

# Every actor imports this module: keep transformers' per-load progress bars out of the run's
# console (with many functions they drown the pipeline's own progress bar).
hf_logging.disable_progress_bar()

COMPLETE = "COMPLETE"  # marker file: the directory was written to the end
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class RolloutBatch(msgspec.Struct, kw_only=True):
    """One iteration's samples, group-major: sample g of prompt i is row i * G + g."""

    prompt_index: list[int]  # task index of each sample's prompt
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    logprobs: list[Any]  # 1-D float32 tensor per sample: the rollout policy's log-probs
    finish: list[str]  # "eos" | "length"
    version: int  # weights version that produced every sample (never mixed)


def function_device() -> torch.device:
    """Where this function's model lives: its GPU where it has one (the runtime sets
    CUDA_VISIBLE_DEVICES to the function's slot, so it sees exactly that one, as cuda:0),
    else the CPU. Asked inside a function process, never in the zygote: it initialises CUDA."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pad_rows(
    rows: list[torch.Tensor], width: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Per-sample 1-D tensors of different lengths as one zero-padded [B, width] float32 batch."""
    out = torch.zeros(len(rows), width, dtype=torch.float32, device=device)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def atomic_file_write(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` in one rename, fsynced first: a crash at any point leaves
    the old file whole or the new one, never a part."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_dir_write(target: Path, write: Any, durable: bool = True) -> None:
    """Write a directory via ``write(tmp_dir)`` then swap it in for ``target``.

    A crash at any point leaves a complete directory that :func:`recover_dir` finds: the old
    ``target``, or the new one (marked COMPLETE) still under its temporary name. ``durable``
    fsyncs every file first (checkpoints); a hand-over between processes on one machine does
    not need to survive a power cut, and skips it.
    """
    tmp = target.with_name(target.name + ".tmp")
    old = target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if durable:
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
    (tmp / COMPLETE).write_text("")  # last: a tmp dir without it is a torn write
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(target: Path) -> bool:
    """Finish or undo a swap that a crash interrupted; True when a complete ``target`` exists."""
    if (target / COMPLETE).exists():
        return True
    tmp = target.with_name(target.name + ".tmp")
    old = target.with_name(target.name + ".old")
    if (tmp / COMPLETE).exists():
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return True
    if (old / COMPLETE).exists():
        shutil.rmtree(target, ignore_errors=True)
        old.rename(target)
        return True
    return False


def task_from_config(cfg: TaskConfig, max_new_tokens: int | None = None) -> Task:
    if cfg.name == "repeat":
        extra = {} if max_new_tokens is None else {"max_len": max_new_tokens - 1}
        return make_task(
            "repeat", cfg.size, cfg.seed, chars=cfg.chars, median_len=cfg.median_len,
            sigma=cfg.sigma, **extra,
        )  # fmt: skip
    return make_task(
        cfg.name, cfg.size, cfg.seed, dataset=cfg.dataset, dataset_args=cfg.dataset_args,
        reward=cfg.reward,
    )  # fmt: skip
