"""RLHF algorithms as pure tensor functions (no models, no processes).

Conventions: per-token tensors are [B, T] with a float ``mask`` [B, T] (1 on response tokens,
0 on padding); responses are right-padded, so a row's tokens are columns 0..len-1. Every function
is differentiable where a loss needs it and tested against float64 loop references.
"""

from __future__ import annotations

from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3"]
LossAgg = Literal["token-mean", "seq-mean-token-mean"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over masked entries; 0 (not NaN) where the mask is empty."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over masked entries (population std); masked entries become 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def grpo_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = 1e-6, scale_by_std: bool = True
) -> torch.Tensor:
    """Group-normalised advantages: (r - mean(group)) / (std(group) + eps), one per sample.

    ``rewards`` is [N * G] ordered group-major (samples of one prompt adjacent) or [N, G]; the
    result has the same shape. std is the unbiased sample std (as in the GRPO paper and TRL); a
    group of 1 has no spread and gets advantage 0. All-equal groups give exactly 0, never NaN.
    ``scale_by_std=False`` keeps only the mean baseline (Dr. GRPO), which avoids up-weighting
    groups that are nearly solved or nearly hopeless.
    """
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into groups of {group_size}; "
            "pass group_size samples for every prompt"
        )
    g = rewards.reshape(-1, group_size)
    mean, scale = grpo_baseline(g, eps, scale_by_std)
    return ((g - mean) * scale).reshape(rewards.shape)


def grpo_baseline(
    groups: torch.Tensor, eps: float = 1e-6, scale_by_std: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each group's (mean, scale) of :func:`grpo_advantages`, whose advantages are
    ``(r - mean) * scale``; ``groups`` is [N, G], the results [N, 1]. scale is 1 / (std + eps),
    1 without std scaling, 0 for a group of 1 (no spread). The advantage is affine in the
    reward, which is what lets a streamed step train a group's samples before its last one
    ends (stages/open_groups.py)."""
    mean = groups.mean(dim=1, keepdim=True)
    if not scale_by_std:
        return mean, torch.ones_like(mean)
    if groups.shape[1] < 2:
        return mean, torch.zeros_like(mean)
    return mean, 1.0 / (groups.std(dim=1, keepdim=True) + eps)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation per token; returns (advantages, returns), both [B, T].

    ``rewards`` [B, T] is the per-token reward (usually the score on the last token minus a KL
    penalty on every token); ``values`` [B, T] are V(s_t) before token t. The value after the
    last real token is 0 (the episode ends). Masked positions get 0 advantage and 0 return.
    """
    rewards, values, mask = rewards.detach(), values.detach(), mask.to(rewards.dtype)
    b, t = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(b, dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros_like(last)
    next_mask = torch.zeros_like(last)
    for i in reversed(range(t)):
        m = mask[:, i]
        delta = rewards[:, i] + gamma * next_value * next_mask - values[:, i]
        last = (delta + gamma * lam * next_mask * last) * m
        adv[:, i] = last
        next_value, next_mask = values[:, i], m
    returns = (adv + values) * mask
    return adv, returns


def kl_estimate(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: KLEstimator = "k3"
) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probs.

    Schulman's estimators with log r = ref - policy: k1 = -log r (unbiased, high variance, can be
    negative), k2 = (log r)^2 / 2 (biased, low variance), k3 = r - 1 - log r (unbiased, >= 0).
    """
    log_ratio = ref_logprobs - logprobs
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        # Clamp the exponent: a wildly off token would give inf and poison the whole batch.
        return torch.exp(log_ratio.clamp(max=20.0)) - 1.0 - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; choose 'k1', 'k2' or 'k3'")


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, agg: LossAgg = "token-mean"
) -> torch.Tensor:
    """Loss over the batch: mean over all tokens, or per-sequence mean then mean over sequences."""
    if agg == "token-mean":
        return masked_mean(per_token, mask)
    if agg == "seq-mean-token-mean":
        has = (mask.sum(-1) > 0).to(per_token.dtype)
        seq = masked_mean(per_token, mask, dim=-1)
        return (seq * has).sum() / has.sum().clamp(min=1.0)
    raise ValueError(
        f"unknown loss aggregation {agg!r}; choose 'token-mean' or 'seq-mean-token-mean'"
    )


def row_losses(
    per_token: torch.Tensor, mask: torch.Tensor, agg: LossAgg = "token-mean"
) -> torch.Tensor:
    """Each row's share of ``aggregate(per_token, mask, agg) * units`` ([B]): its tokens' sum
    (token-mean; units = tokens), or its token mean (seq-mean-token-mean; units = sequences
    with tokens). They add up to the batch's loss times its units however the rows are split,
    as a streamed step's gradients must (scaled by the whole batch's units at its end)."""
    if agg == "token-mean":
        return (per_token * mask).sum(-1)
    if agg == "seq-mean-token-mean":
        return masked_mean(per_token, mask, dim=-1)
    raise ValueError(
        f"unknown loss aggregation {agg!r}; choose 'token-mean' or 'seq-mean-token-mean'"
    )


def clip_range_rows(
    ratio: torch.Tensor, mask: torch.Tensor, clip_eps: float, clip_eps_high: float | None = None
) -> torch.Tensor:
    """[B] bool: every masked token's ratio lies inside the clip range. There the PPO-clip loss
    is ``-ratio * A`` whatever the advantage's sign, so a row's loss is linear in its
    advantage; outside it the clip cuts the gradient by the advantage's sign."""
    high = clip_eps if clip_eps_high is None else clip_eps_high
    inside = (ratio >= 1.0 - clip_eps) & (ratio <= 1.0 + high)
    return (inside | (mask == 0)).all(-1)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    agg: LossAgg = "token-mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-clip loss and the fraction of tokens where the clip was active.

    loss_t = -min(ratio_t * A_t, clip(ratio_t, 1 - eps, 1 + eps_high) * A_t), ratio from new/old
    log-probs. ``advantages`` is [B, T] or [B] (one per sequence, as GRPO gives, broadcast over
    tokens). ``clip_eps_high`` (DAPO's clip-higher) defaults to ``clip_eps``.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(logprobs)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(logprobs - old_logprobs.detach())
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    # aggregated as the loss is, so that over micro-batches it adds up as the loss does
    clip_frac = aggregate((clipped < unclipped).to(logprobs.dtype), mask, agg).detach()
    return aggregate(per_token, mask, agg), clip_frac


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float | None = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5 * max((v - R)^2, (clip(v, old +- eps) - R)^2), token mean.

    Returns (loss, fraction of tokens where the clipped term was the larger). ``clip_eps=None``
    gives the plain squared error.
    """
    err = (values - returns) ** 2
    if clip_eps is None:
        return 0.5 * masked_mean(err, mask), torch.zeros((), dtype=values.dtype)
    old = old_values.detach()
    v_clip = old + (values - old).clamp(-clip_eps, clip_eps)
    err_clip = (v_clip - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clip), mask)
    return loss, masked_mean((err_clip > err).to(values.dtype), mask).detach()


def token_rewards(
    scores: torch.Tensor,
    mask: torch.Tensor,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """PPO per-token rewards [B, T]: ``-kl_coef * kl`` on every token, the score on the last one."""
    out = torch.zeros_like(mask, dtype=scores.dtype)
    if kl is not None and kl_coef:
        out = out - kl_coef * kl.detach() * mask
    lengths = mask.sum(-1).long()
    rows = (lengths > 0).nonzero().squeeze(-1)
    out[rows, lengths[rows] - 1] += scores[rows]
    return out
