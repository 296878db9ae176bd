"""Sequences as a training batch: packing, per-token log-probs with grad, and the critic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rlhfless.adapters.errors import EngineError


@dataclass(frozen=True)
class PackedBatch:
    """Prompts left-padded, responses right-padded after them (see the module docstring)."""

    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T], 1 on real tokens
    position_ids: torch.Tensor  # [B, P + T], counts real tokens only
    response_mask: torch.Tensor  # [B, T] float, 1 on real response tokens
    response_ids: torch.Tensor  # [B, T], pad where masked


def pack_sequences(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_id: int,
    device: str | torch.device = "cpu",
) -> PackedBatch:
    if len(prompt_ids) != len(response_ids) or not prompt_ids:
        raise EngineError(
            f"need one response per prompt and at least one pair "
            f"(got {len(prompt_ids)} prompts, {len(response_ids)} responses)"
        )
    if any(len(p) == 0 for p in prompt_ids):
        raise EngineError(
            "an empty prompt has no position to predict its first response token from"
        )
    width_p = max(len(p) for p in prompt_ids)
    width_r = max(1, max(len(r) for r in response_ids))
    b = len(prompt_ids)
    ids = torch.full((b, width_p + width_r), pad_id, dtype=torch.long)
    mask = torch.zeros((b, width_p + width_r), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        ids[i, width_p - len(p) : width_p] = torch.tensor(p, dtype=torch.long)
        mask[i, width_p - len(p) : width_p] = 1
        if r:
            ids[i, width_p : width_p + len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, width_p : width_p + len(r)] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return PackedBatch(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=pos.to(device),
        response_mask=mask[:, width_p:].to(device=device, dtype=torch.float32),
        response_ids=ids[:, width_p:].to(device),
    )


def _response_width(batch: PackedBatch) -> int:
    return batch.response_ids.shape[1]


def response_logprobs(
    model: nn.Module, batch: PackedBatch, temperature: float = 1.0
) -> torch.Tensor:
    """Per-token log-probs [B, T] (float32) of the response tokens, with grad; 0 where masked.

    This is the function a trainer differentiates; ``HFEngine.logprobs`` is it under no_grad.
    """
    t = _response_width(batch)
    # Keep only the T+1 last logit rows: the row before each response token predicts it.
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        logits_to_keep=t + 1,
    )
    logits = out.logits[:, :-1, :].float() / temperature
    logp = (
        torch.log_softmax(logits, dim=-1).gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    )
    return logp * batch.response_mask


class ValueModel(nn.Module):
    """Critic: a transformer backbone and a linear value head on its last hidden states."""

    def __init__(self, backbone: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        # Zero init: the critic starts predicting 0 instead of noise scaled by the hidden size.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, dtype: torch.dtype = torch.float32
    ) -> ValueModel:
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(model_dir)
        backbone = AutoModel.from_pretrained(model_dir, dtype=dtype)
        return cls(backbone, config.hidden_size).to(dtype)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """Values [B, T] float32: V at the state before each response token; 0 where masked."""
        t = _response_width(batch)
        h = self.backbone(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        ).last_hidden_state
        v = self.head(h[:, -t - 1 : -1, :]).squeeze(-1).float()
        return v * batch.response_mask


@torch.no_grad()
def values(
    critic: ValueModel,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_id: int,
    micro_batch: int = 64,
) -> list[torch.Tensor]:
    """Critic values per response token (1-D float32 tensor per sample), no grad."""
    device = next(critic.parameters()).device
    out: list[torch.Tensor] = []
    for s in range(0, len(prompt_ids), micro_batch):
        rs = response_ids[s : s + micro_batch]
        v = critic(pack_sequences(prompt_ids[s : s + micro_batch], rs, pad_id, device)).cpu()
        out.extend(v[i, : len(r)] for i, r in enumerate(rs))
    return out
