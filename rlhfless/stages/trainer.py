"""The training stage: GRPO / PPO policy updates, and the PPO critic.

A trainer function may be released between iterations and come back cold, so its state (weights,
optimiser, version) is handed over through a node-local state directory, written behind each step
(``stages/handover.py``: a dead function's unwritten steps are replayed, never lost); a warm
function simply keeps it in memory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import msgspec
import torch
from safetensors.torch import save_model

from rlhfless.adapters.hf import (
    HFEngine,
    ValueModel,
    load_tokenizer,
    pack_sequences,
    response_logprobs,
)
from rlhfless.stages import algorithms as alg
from rlhfless.stages.common import DTYPES, pad_rows
from rlhfless.stages.config import TrainConfig
from rlhfless.stages.handover import HandOver, StateDir


def micro_batches(lengths: list[int], parts: int, token_budget: int) -> list[list[int]]:
    """Sample indices in micro-batches of similar length: sorted, then cut so that each has at
    most ``token_budget`` padded tokens (0 = no limit), and at least ``parts`` micro-batches.

    Padding to the longest sample of a batch wastes most of the compute when lengths are
    long-tailed; sorting first keeps the long samples together.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    parts = max(1, min(parts, len(order)))
    per_part = -(-len(order) // parts)
    out: list[list[int]] = []
    current: list[int] = []
    for i in order:
        widest = max(lengths[i], *(lengths[j] for j in current)) if current else lengths[i]
        too_wide = token_budget and current and widest * (len(current) + 1) > token_budget
        if current and (len(current) >= per_part or too_wide):
            out.append(current)
            current = []
        current.append(i)
    if current:
        out.append(current)
    return out


class _HandsOver:
    """What the trainer and the critic share: state handed over through ``self.handover``
    (stages/handover.py), re-run from kept inputs by ``self._update`` when a cold function's
    state lacks steps."""

    role = ""
    handover: HandOver
    model: torch.nn.Module
    opt: torch.optim.Optimizer

    def _update(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        raise NotImplementedError

    @property
    def version(self) -> int:
        return self.handover.version

    def _catch_up(self, expected_version: int | None, replay: list[dict[str, Any]] | None) -> int:
        return self.handover.catch_up(self.role, expected_version, replay, self._update)

    def _step(
        self, expected_version: int | None, replay: list[dict[str, Any]] | None, *args: Any
    ) -> dict[str, Any]:
        """One update at the run's version: land the last write, replay what a cold function's
        state lacks, update, move the version on; the reply says what is durable."""
        self.handover.flush()  # the last step's state, if nothing started its write
        replayed = self._catch_up(expected_version, replay)
        t0 = time.perf_counter()
        stats: dict[str, Any] = self._update(*args)
        self.handover.stepped()
        stats["version"] = self.version
        stats["durable_version"] = self.handover.durable
        stats["replayed"] = replayed
        stats["seconds"] = time.perf_counter() - t0  # the update alone
        return stats

    def persist(
        self, expected_version: int | None = None, replay: list[dict[str, Any]] | None = None
    ) -> int:
        """Make the hand-over state durable at the run's version (before a checkpoint copies
        it): catch up from ``replay`` if this function came back cold, write, wait."""
        self.handover.flush()
        self._catch_up(expected_version, replay)
        return self.handover.flush()

    def save_checkpoint(self, path: str) -> str:
        self.handover.wait()
        StateDir(path, durable=True).save(self.model, self.opt, self.version)
        return path

    def rlhfless_on_release(self) -> None:
        """Released (scaled to zero): land the write behind before the process exits."""
        self.handover.flush()


class TrainerActor(_HandsOver):
    """Policy updates; publishes weights with a version number after every step."""

    role = "trainer"

    def __init__(
        self, model_dir: str, train: dict[str, Any], state_dir: str, dtype: str = "float32"
    ) -> None:
        self.cfg = msgspec.convert(train, TrainConfig)
        self.engine = HFEngine.load(model_dir, dtype=DTYPES[dtype])
        self.model = self.engine.model.train()
        self.pad_id = self.engine.tokenizer.pad_id
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )
        self.handover = HandOver(state_dir, self.model, self.opt)

    def weights(self, file_dir: str | None = None, file_above_bytes: int = 0) -> dict[str, Any]:
        """The current weights with their version: inline as tensors (zero-copy frames), or,
        when larger than ``file_above_bytes`` and ``file_dir`` is given, written once to a
        node-local safetensors file that every rollout function on the node maps from disk.

        Then the hand-over state of this version starts being written behind (reusing that
        file for its weights): it overlaps the next rollout instead of delaying this reply.
        """
        self.handover.wait()  # nothing writes the weights while they are read out
        state = {k: v.detach() for k, v in self.model.state_dict().items()}
        size = sum(t.numel() * t.element_size() for t in state.values())
        if file_dir is None or size <= file_above_bytes:
            self.handover.write_behind()
            return {"version": self.version, "state_dict": state}
        folder = Path(file_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"policy-v{self.version:06d}.safetensors"
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        save_model(self.model, str(tmp))  # handles tied embeddings
        os.replace(tmp, path)  # readers see a whole file or none
        self.handover.write_behind(weights_file=path)
        for old in sorted(folder.glob("policy-v*.safetensors"))[:-2]:  # keep this and the last
            old.unlink(missing_ok=True)
        return {"version": self.version, "path": str(path)}

    def step(
        self,
        prompt_ids: list[list[int]],
        response_ids: list[list[int]],
        old_logprobs: list[torch.Tensor],
        advantages: list[torch.Tensor],
        ref_logprobs: list[torch.Tensor] | None,
        temperature: float,
        expected_version: int | None = None,
        replay: list[dict[str, Any]] | None = None,
    ) -> dict[str, float]:
        """One optimiser step per epoch over the batch (grad accumulation over micro-batches).

        ``replay``: earlier steps' inputs (``{"version", "args"}``) whose state may not be on
        disk yet; a cold function re-runs the ones its loaded state lacks first.
        """
        return self._step(
            expected_version, replay,
            prompt_ids, response_ids, old_logprobs, advantages, ref_logprobs, temperature,
        )  # fmt: skip

    def _update(
        self,
        prompt_ids: list[list[int]],
        response_ids: list[list[int]],
        old_logprobs: list[torch.Tensor],
        advantages: list[torch.Tensor],
        ref_logprobs: list[torch.Tensor] | None,
        temperature: float,
    ) -> dict[str, float]:
        cfg = self.cfg
        lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
        width = max(1, max(len(r) for r in response_ids))
        old = pad_rows(old_logprobs, width)
        adv = pad_rows(advantages, width)
        ref = pad_rows(ref_logprobs, width) if ref_logprobs is not None else None
        total_tokens = sum(len(r) for r in response_ids)
        stats = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "grad_norm": 0.0}
        for _ in range(cfg.epochs):
            self.opt.zero_grad(set_to_none=True)
            for idx in micro_batches(lengths, cfg.grad_accum, cfg.micro_batch_tokens):
                batch = pack_sequences(
                    [prompt_ids[i] for i in idx], [response_ids[i] for i in idx], self.pad_id
                )
                mask = batch.response_mask
                w = mask.shape[1]
                logp = response_logprobs(self.model, batch, temperature)
                loss, clip = alg.policy_loss(
                    logp,
                    old[idx, :w],
                    adv[idx, :w],
                    mask,
                    cfg.clip_eps,
                    cfg.clip_eps_high,
                    cfg.loss_agg,
                )
                kl = torch.zeros(())
                if ref is not None:
                    kl = alg.masked_mean(
                        alg.kl_estimate(logp, ref[idx, :w], cfg.kl_estimator), mask
                    )
                    if cfg.algo == "grpo":  # GRPO puts the KL in the loss; PPO in the reward
                        loss = loss + cfg.kl_coef * kl
                # Weight each micro-batch by its share of tokens: the sum is the batch token-mean.
                share = float(mask.sum()) / max(1, total_tokens)
                (loss * share).backward()
                stats["loss"] += float(loss.detach()) * share / cfg.epochs
                stats["kl"] += float(kl.detach()) * share / cfg.epochs
                stats["clip_frac"] += float(clip) * share / cfg.epochs
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            stats["grad_norm"] += float(norm) / cfg.epochs
            self.opt.step()
        return stats


class CriticActor(_HandsOver):
    """PPO's value function: values for the samples, and a clipped value-loss update."""

    role = "critic"

    def __init__(
        self, model_dir: str, train: dict[str, Any], state_dir: str, dtype: str = "float32"
    ) -> None:
        self.cfg = msgspec.convert(train, TrainConfig)
        torch.manual_seed(0)
        self.model = ValueModel.from_pretrained(model_dir, dtype=DTYPES[dtype])
        self.pad_id = load_tokenizer(model_dir).pad_id
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.critic_lr)
        self.handover = HandOver(state_dir, self.model, self.opt)

    @torch.no_grad()
    def values(
        self,
        prompt_ids: list[list[int]],
        response_ids: list[list[int]],
        expected_version: int | None = None,
        replay: list[dict[str, Any]] | None = None,
    ) -> list[torch.Tensor]:
        """Values under the critic at the run's version (a cold one replays what it lacks)."""
        self._catch_up(expected_version, replay)
        batch = pack_sequences(prompt_ids, response_ids, self.pad_id)
        v = self.model(batch)
        return [v[i, : len(r)] for i, r in enumerate(response_ids)]

    def step(
        self,
        prompt_ids: list[list[int]],
        response_ids: list[list[int]],
        old_values: list[torch.Tensor],
        returns: list[torch.Tensor],
        expected_version: int | None = None,
        replay: list[dict[str, Any]] | None = None,
    ) -> dict[str, float]:
        """One clipped value-loss step; ``replay`` as in :meth:`TrainerActor.step`."""
        stats = self._step(expected_version, replay, prompt_ids, response_ids, old_values, returns)
        self.handover.write_behind()  # overlaps the next iteration; see stages/handover.py
        return stats

    def _update(
        self,
        prompt_ids: list[list[int]],
        response_ids: list[list[int]],
        old_values: list[torch.Tensor],
        returns: list[torch.Tensor],
    ) -> dict[str, float]:
        width = max(1, max(len(r) for r in response_ids))
        batch = pack_sequences(prompt_ids, response_ids, self.pad_id)
        mask = batch.response_mask
        self.opt.zero_grad(set_to_none=True)
        v = self.model(batch)
        loss, clip = alg.value_loss(
            v, pad_rows(old_values, width), pad_rows(returns, width), mask, self.cfg.value_clip
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.opt.step()
        return {"value_loss": float(loss.detach()), "value_clip_frac": float(clip)}
