"""PPO's critic: values for the samples, and a clipped value-loss update.

Its state is handed over between functions as the policy trainer's is (``stages/updater.py``).
"""

from __future__ import annotations

from typing import Any

import msgspec
import torch

from rlhfless.adapters.hf import ValueModel, load_tokenizer, pack_sequences
from rlhfless.stages import algorithms as alg
from rlhfless.stages.common import DTYPES, function_device, pad_rows
from rlhfless.stages.config import TrainConfig
from rlhfless.stages.handover import HandOver
from rlhfless.stages.micro_batch import micro_batches, units
from rlhfless.stages.reference import blocks
from rlhfless.stages.updater import Updater


class CriticActor(Updater):
    """PPO's value function: values for the samples, and a clipped value-loss update."""

    role = "critic"

    def __init__(
        self, model_dir: str, train: dict[str, Any], state_dir: str, dtype: str = "float32"
    ) -> None:
        self.cfg = msgspec.convert(train, TrainConfig)
        torch.manual_seed(0)
        self.device = function_device()
        self.model = ValueModel.from_pretrained(model_dir, dtype=DTYPES[dtype]).to(self.device)
        self.pad_id = load_tokenizer(model_dir).pad_id
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.critic_lr)
        self.handover = HandOver(state_dir, self.model, self.opt)

    def values(
        self,
        prompt_ids: list[list[int]],
        response_ids: list[list[int]],
        expected_version: int | None = None,
        replay: list[dict[str, Any]] | None = None,
        group_size: int = 0,
    ) -> list[torch.Tensor]:
        """Values under the critic at the run's version (a cold one replays what it lacks).
        ``group_size``: one forward pass per group, as ``ReferenceActor.logprobs``. The
        replay runs with gradients (it trains), the values without."""
        self._catch_up(expected_version, replay)
        return self._values(prompt_ids, response_ids, group_size)

    @torch.no_grad()
    def _values(
        self, prompt_ids: list[list[int]], response_ids: list[list[int]], group_size: int
    ) -> list[torch.Tensor]:
        out = []
        for lo, hi in blocks(len(prompt_ids), group_size):
            batch = pack_sequences(prompt_ids[lo:hi], response_ids[lo:hi], self.pad_id, self.device)
            v = self.model(batch)
            out += [v[i, : len(r)] for i, r in enumerate(response_ids[lo:hi])]
        return out

    def step(
        self,
        prompt_ids: list[list[int]],
        response_ids: list[list[int]],
        old_values: list[torch.Tensor],
        returns: list[torch.Tensor],
        expected_version: int | None = None,
        replay: list[dict[str, Any]] | None = None,
    ) -> dict[str, float]:
        """One clipped value-loss step; ``replay`` as in the policy trainer's step
        (:meth:`~rlhfless.stages.trainer.TrainerActor.step`)."""
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
        """The token-mean value loss of the batch, accumulated over micro-batches (each's
        token-mean times its share of the batch's tokens: exactly the batch's loss), so a
        gang's ranks can split them (``_share``)."""
        width = max(1, max(len(r) for r in response_ids))
        old = pad_rows(old_values, width, self.device)
        ret = pad_rows(returns, width, self.device)
        lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
        parts = micro_batches(lengths, self.cfg.grad_accum, self.cfg.micro_batch_tokens)
        total = max(units(response_ids, "token-mean"), 1.0)
        self.opt.zero_grad(set_to_none=True)
        sums = [0.0, 0.0]  # value loss, clip fraction (weighted as the gradient is)
        for idx, live in self._share(parts):
            batch = pack_sequences(
                [prompt_ids[i] for i in idx], [response_ids[i] for i in idx], self.pad_id,
                self.device,
            )  # fmt: skip
            w = batch.response_mask.shape[1]
            v = self.model(batch)
            loss, clip = alg.value_loss(
                v, old[idx, :w], ret[idx, :w], batch.response_mask, self.cfg.value_clip
            )
            weight = units([response_ids[i] for i in idx], "token-mean") / total if live else 0.0
            (loss * weight).backward()
            sums[0] += float(loss.detach()) * weight
            sums[1] += float(clip) * weight
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.opt.step()
        loss_sum, clip_sum = self._summed(sums)
        return {"value_loss": loss_sum, "value_clip_frac": clip_sum}

    def weights(self) -> dict[str, Any]:
        """The critic's whole weights with their version (to compare or export them)."""
        self.handover.wait()
        state = {k: v.detach() for k, v in self.model.state_dict().items()}
        return {"version": self.version, "state_dict": state}
