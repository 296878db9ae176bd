"""The training stage: GRPO / PPO policy updates (the PPO critic: ``stages/critic.py``).

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
    pack_sequences,
    response_logprobs,
)
from rlhfless.stages import algorithms as alg
from rlhfless.stages.common import DTYPES, function_device
from rlhfless.stages.config import TrainConfig
from rlhfless.stages.handover import HandOver
from rlhfless.stages.micro_batch import group_micro_batches, micro_batches, units
from rlhfless.stages.open_groups import OpenGroup, add_into, by_reward, grads_apart
from rlhfless.stages.policy_batch import LossSums, OpenStep, PolicyBatch
from rlhfless.stages.updater import Updater


class TrainerActor(Updater):
    """Policy updates; publishes weights with a version number after every step."""

    role = "trainer"

    def __init__(
        self, model_dir: str, train: dict[str, Any], state_dir: str, dtype: str = "float32"
    ) -> None:
        self.cfg = msgspec.convert(train, TrainConfig)
        self.device = function_device()
        self.engine = HFEngine.load(model_dir, dtype=DTYPES[dtype], device=self.device)
        self.model = self.engine.model.train()
        if self.cfg.activation_checkpointing:  # recompute each block's activations in backward
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.pad_id = self.engine.tokenizer.pad_id
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )
        self.handover = HandOver(state_dir, self.model, self.opt)
        self._stream: OpenStep | None = None  # an open streamed step (begin_step)

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
        batch = PolicyBatch(
            prompt_ids, response_ids, old_logprobs, advantages, ref_logprobs, temperature,
            self.device,
        )  # fmt: skip
        sums = LossSums()
        for epoch in range(self.cfg.epochs):
            self._epoch(batch, sums, first=epoch == 0)
        return self._reduced(sums).stats(self.cfg.epochs)

    def _epoch(self, batch: PolicyBatch, sums: LossSums, first: bool = False) -> None:
        """One optimiser step over the whole batch: grad accumulation over micro-batches. The
        first epoch's micro-batches keep groups apart, as the streamed step's must."""
        cfg = self.cfg
        self.opt.zero_grad(set_to_none=True)
        total = batch.units(cfg.loss_agg)
        if first:
            parts = group_micro_batches(batch.lengths, cfg.group_size, cfg.micro_batch_tokens)
        else:
            parts = micro_batches(batch.lengths, cfg.grad_accum, cfg.micro_batch_tokens)
        for idx, live in self._share(parts):
            self._backward(batch, idx, sums, 1.0 / total, live)
        self._clip_and_step(sums)

    def _backward(
        self, batch: PolicyBatch, idx: list[int], sums: LossSums, scale: float, live: bool = True
    ) -> None:
        """Forward and backward of micro-batch ``idx``: its loss times its units (tokens, or
        sequences for seq-mean-token-mean) times ``scale``. With scale 1/units of the batch the
        micro-batches add up to the batch's loss, however the batch was split. ``live=False``:
        a pass that adds nothing (weight 0), for a rank of a sharded trainer whose share ran
        out while the others still need it in their collectives."""
        cfg = self.cfg
        logp, mask = self._forward(batch, idx)
        w = mask.shape[1]
        loss, clip = alg.policy_loss(
            logp, batch.old[idx, :w], batch.adv[idx, :w], mask, cfg.clip_eps, cfg.clip_eps_high,
            cfg.loss_agg,
        )  # fmt: skip
        kl = torch.zeros(())
        if batch.ref is not None:
            # aggregated as the loss: with seq-mean-token-mean a token mean over the micro-batch
            # would weigh its sequences by length, and so depend on how the batch was split
            kl = alg.aggregate(
                alg.kl_estimate(logp, batch.ref[idx, :w], cfg.kl_estimator), mask, cfg.loss_agg
            )
            if cfg.algo == "grpo":  # GRPO puts the KL in the loss; PPO in the reward
                loss = loss + cfg.kl_coef * kl
        weight = units([batch.response_ids[i] for i in idx], cfg.loss_agg) * scale if live else 0.0
        (loss * weight).backward()
        if live:
            sums.add(float(loss.detach()), float(kl.detach()), float(clip), weight)

    def _forward(self, batch: PolicyBatch, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-batch ``idx``'s response log-probs and response mask ([B, T] each)."""
        packed = pack_sequences(
            [batch.prompt_ids[i] for i in idx], [batch.response_ids[i] for i in idx], self.pad_id,
            self.device,
        )  # fmt: skip
        return response_logprobs(self.model, packed, batch.temperature), packed.response_mask

    def _clip_and_step(self, sums: LossSums) -> None:
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        # sharded: a replicated DTensor, the norm of the whole gradient
        sums.grad_norm += float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        self.opt.step()

    def _reduced(self, sums: LossSums) -> LossSums:
        """The statistics of the whole batch (a gang adds up its ranks': ``_summed``)."""
        out = LossSums()
        out.loss, out.kl, out.clip_frac = self._summed([sums.loss, sums.kl, sums.clip_frac])
        out.grad_norm = sums.grad_norm  # clip_grad_norm_ took the whole gradient's already
        return out

    # ------------------------------------------------------------- the streamed step
    # The same update as :meth:`step`, its first epoch's forward and backward run on chunks of
    # the batch as they become ready (complete groups with their advantages) while the rollout
    # tail still decodes. Gradients are summed unnormalised and scaled once by the batch's
    # units at :meth:`finish_step` (the token-mean needs the whole batch's token count), so the
    # result equals the staged step up to float summation order. Later epochs need the first
    # epoch's update, so they run at the end over the whole batch, as in the staged step.

    def begin_step(
        self, expected_version: int | None = None, replay: list[dict[str, Any]] | None = None
    ) -> int:
        """Open a streamed step at the run's version; returns the steps replayed to get there."""
        self.handover.flush()
        replayed = self._catch_up(expected_version, replay)
        self.opt.zero_grad(set_to_none=True)
        self._stream = OpenStep(replayed=replayed, t0=time.perf_counter())
        return replayed

    def accumulate(
        self,
        prompt_ids: list[list[int]],
        response_ids: list[list[int]],
        old_logprobs: list[torch.Tensor],
        advantages: list[torch.Tensor],
        ref_logprobs: list[torch.Tensor] | None,
        temperature: float,
    ) -> int:
        """Forward and backward of one chunk of the open step; returns the chunks taken."""
        stream = self._open_stream()
        chunk = PolicyBatch(
            prompt_ids, response_ids, old_logprobs, advantages, ref_logprobs, temperature,
            self.device,
        )  # fmt: skip
        cfg = self.cfg
        parts = group_micro_batches(chunk.lengths, cfg.group_size, cfg.micro_batch_tokens)
        for idx, live in self._share(parts):
            self._backward(chunk, idx, stream.sums, 1.0, live)
        stream.units += chunk.units(self.cfg.loss_agg)
        stream.chunks.append(chunk)
        return len(stream.chunks)

    def accumulate_open(
        self,
        group: int,
        prompt_ids: list[list[int]],
        response_ids: list[list[int]],
        old_logprobs: list[torch.Tensor],
        rewards: list[float],
        temperature: float,
    ) -> int:
        """Forward and backward of samples of ``group`` while its others still decode: their
        gradients go to the group's two sums (stages/open_groups.py); a sample with a token
        outside the clip range waits for :meth:`close_group`. Returns the samples waiting."""
        stream = self._open_stream()
        self._check_open_groups()
        og = stream.open.setdefault(group, OpenGroup(centre=float(rewards[0])))
        zeros = [torch.zeros(len(r)) for r in response_ids]
        batch = PolicyBatch(
            prompt_ids, response_ids, old_logprobs, zeros, None, temperature, self.device
        )
        stream.units += batch.units(self.cfg.loss_agg)
        losses: list[float | None] = [None] * len(rewards)
        for idx in by_reward(rewards, batch.lengths, self.cfg.micro_batch_tokens):
            self._backward_open(batch, idx, og, rewards[idx[0]], losses)
        og.rows += _sample_rows(prompt_ids, response_ids, old_logprobs)
        og.loss_at_1 += losses
        return len(og.waiting())

    def _backward_open(
        self, batch: PolicyBatch, idx: list[int], og: OpenGroup, reward: float,
        losses: list[float | None],
    ) -> None:  # fmt: skip
        """One micro-batch of one reward: the gradient of its loss at advantage 1 (its rows
        whose tokens all lie inside the clip range) into the group's sums."""
        cfg = self.cfg
        logp, mask = self._forward(batch, idx)
        ratio = torch.exp(logp - batch.old[idx, : mask.shape[1]])
        linear = alg.clip_range_rows(ratio.detach(), mask, cfg.clip_eps, cfg.clip_eps_high)
        per_row = alg.row_losses(-ratio, mask, cfg.loss_agg) * linear
        if not bool(linear.any()):
            return
        params = list(self.model.parameters())
        with grads_apart(params) as grads:
            per_row.sum().backward()
        og.add(grads, reward)
        for j, i in enumerate(idx):
            if linear[j]:
                losses[i] = float(per_row[j].detach())

    def close_group(
        self,
        group: int,
        scale: float,
        advantages: list[float],
        prompt_ids: list[list[int]],
        response_ids: list[list[int]],
        old_logprobs: list[torch.Tensor],
        temperature: float,
    ) -> int:
        """``group``'s last samples ended. ``advantages``: every sample's, as the whole group's
        step computes them (the samples taken open, in the order taken, then these); ``scale``:
        the group's. Adds the group's sums to the step's gradient and trains these samples and
        the ones that waited."""
        stream = self._open_stream()
        if group not in stream.open:
            raise RuntimeError(f"group {group} is not open here: accumulate_open it first")
        og = stream.open[group]
        if len(advantages) != len(og.rows) + len(response_ids):
            raise ValueError(
                f"group {group}: {len(advantages)} advantages for "
                f"{len(og.rows) + len(response_ids)} samples"
            )
        del stream.open[group]
        add_into(list(self.model.parameters()), og.gradient(scale, advantages[0]))
        stream.sums.loss += og.trained_loss(advantages)
        new = _sample_rows(prompt_ids, response_ids, old_logprobs)
        stream.units += units(response_ids, self.cfg.loss_agg)
        rows, late = (
            og.rows + new,
            og.waiting() + list(range(len(og.rows), len(og.rows) + len(new))),
        )
        waited = self._rows_batch(
            [rows[j] for j in late], [advantages[j] for j in late], temperature
        )
        for idx in micro_batches(waited.lengths, 1, self.cfg.micro_batch_tokens):
            self._backward(waited, idx, stream.sums, 1.0)
        stream.chunks.append(self._rows_batch(rows, advantages, temperature))
        return len(stream.chunks)

    def _rows_batch(
        self, rows: list[dict[str, Any]], advantages: list[float], temperature: float
    ) -> PolicyBatch:
        return PolicyBatch(
            [r["prompt_ids"] for r in rows], [r["response_ids"] for r in rows],
            [r["old_logprobs"] for r in rows],
            [torch.full((len(r["response_ids"]),), a) for r, a in zip(rows, advantages, strict=True)],
            None, temperature, self.device,
        )  # fmt: skip

    def _check_open_groups(self) -> None:
        if self.cfg.algo != "grpo" or self.cfg.kl_coef > 0:
            raise ValueError(
                "open groups need GRPO without a KL term (train.algo 'grpo', train.kl_coef 0): "
                "a KL term's gradient would need a third sum"
            )

    def finish_step(self) -> dict[str, Any]:
        """Scale the summed gradients by the batch's units, step, run the later epochs."""
        stream = self._open_stream()
        if stream.open:
            raise RuntimeError(f"groups {sorted(stream.open)} are still open: close_group each")
        self._stream = None
        scale = 1.0 / max(stream.units, 1.0)
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
        stream.sums.scale(scale)
        self._clip_and_step(stream.sums)
        whole = PolicyBatch.join(stream.chunks)
        for _ in range(self.cfg.epochs - 1):
            self._epoch(whole, stream.sums)
        self.handover.stepped()
        return {
            **self._reduced(stream.sums).stats(self.cfg.epochs),
            "version": self.version,
            "durable_version": self.handover.durable,
            "replayed": stream.replayed,
            "seconds": time.perf_counter() - stream.t0,
        }

    def _open_stream(self) -> OpenStep:
        if self._stream is None:
            raise RuntimeError("no streamed step is open here: call begin_step first")
        return self._stream


def _sample_rows(
    prompt_ids: list[list[int]], response_ids: list[list[int]], old_logprobs: list[torch.Tensor]
) -> list[dict[str, Any]]:
    """An open group's samples as it keeps them, to train at its close (those that waited)
    and in the later epochs."""
    return [
        {"prompt_ids": p, "response_ids": r, "old_logprobs": o}
        for p, r, o in zip(prompt_ids, response_ids, old_logprobs, strict=True)
    ]
