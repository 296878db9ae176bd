"""Algorithms against straightforward float64 loop references on random inputs."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfless.stages import algorithms as alg


def _random_mask(gen: torch.Generator, b: int, t: int) -> torch.Tensor:
    """Right-padded mask with random lengths, including an empty row."""
    lengths = torch.randint(0, t + 1, (b,), generator=gen)
    lengths[0] = 0
    lengths[-1] = t
    return (torch.arange(t)[None, :] < lengths[:, None]).double()


def _case(seed: int, b: int = 6, t: int = 9):
    g = torch.Generator().manual_seed(seed)
    mask = _random_mask(g, b, t)
    rand = lambda: torch.randn(b, t, generator=g, dtype=torch.float64)  # noqa: E731
    return g, mask, rand


# -- GRPO advantages ---------------------------------------------------------------------


def _ref_grpo(rewards: list[float], g: int, eps: float, scale: bool) -> list[float]:
    out = []
    for start in range(0, len(rewards), g):
        grp = rewards[start : start + g]
        mean = sum(grp) / g
        std = math.sqrt(sum((r - mean) ** 2 for r in grp) / (g - 1)) if g > 1 else 0.0
        for r in grp:
            if not scale:
                out.append(r - mean)
            else:
                out.append((r - mean) / (std + eps) if g > 1 else 0.0)
    return out


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 5),
    g=st.integers(1, 8),
    scale=st.booleans(),
    data=st.data(),
)
def test_grpo_advantages_match_reference(n: int, g: int, scale: bool, data) -> None:
    rewards = data.draw(st.lists(st.floats(-10, 10), min_size=n * g, max_size=n * g))
    got = alg.grpo_advantages(torch.tensor(rewards, dtype=torch.float64), g, 1e-6, scale)
    ref = _ref_grpo(rewards, g, 1e-6, scale)
    assert torch.allclose(got, torch.tensor(ref, dtype=torch.float64), atol=1e-6, rtol=1e-6)


def test_grpo_all_equal_group_gives_zero_not_nan() -> None:
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    adv = alg.grpo_advantages(rewards, 4)
    assert torch.equal(adv[:4], torch.zeros(4))
    assert torch.isfinite(adv).all() and adv[4:].abs().sum() > 0


def test_grpo_accepts_2d_and_rejects_ragged() -> None:
    r = torch.randn(3, 4, dtype=torch.float64)
    assert torch.allclose(alg.grpo_advantages(r, 4), alg.grpo_advantages(r.flatten(), 4).view(3, 4))
    with pytest.raises(ValueError, match="groups of 3"):
        alg.grpo_advantages(torch.zeros(7), 3)


# -- GAE -----------------------------------------------------------------------------------


def _ref_gae(r, v, mask, gamma, lam):
    b, t = len(r), len(r[0])
    adv = [[0.0] * t for _ in range(b)]
    ret = [[0.0] * t for _ in range(b)]
    for i in range(b):
        n = int(sum(mask[i]))
        last = 0.0
        for j in reversed(range(n)):
            nv = v[i][j + 1] if j + 1 < n else 0.0
            delta = r[i][j] + gamma * nv - v[i][j]
            last = delta + gamma * lam * last
            adv[i][j] = last
            ret[i][j] = last + v[i][j]
    return torch.tensor(adv, dtype=torch.float64), torch.tensor(ret, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 1.0), (0.99, 0.0)])
def test_gae_matches_reference(seed: int, gamma: float, lam: float) -> None:
    _, mask, rand = _case(seed)
    r, v = rand(), rand()
    adv, ret = alg.gae(r, v, mask, gamma, lam)
    ref_adv, ref_ret = _ref_gae(r.tolist(), v.tolist(), mask.tolist(), gamma, lam)
    assert torch.allclose(adv, ref_adv, atol=1e-10)
    assert torch.allclose(ret, ref_ret, atol=1e-10)
    assert torch.all(adv[mask == 0] == 0) and torch.all(ret[mask == 0] == 0)


# -- KL ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_estimators_match_formulas(kind: str) -> None:
    _, _, rand = _case(0)
    lp, ref = rand() - 2.0, rand() - 2.0
    got = alg.kl_estimate(lp, ref, kind)
    for a, b, k in zip(
        lp.flatten().tolist(), ref.flatten().tolist(), got.flatten().tolist(), strict=True
    ):
        log_r = b - a
        want = {"k1": -log_r, "k2": 0.5 * log_r**2, "k3": math.exp(log_r) - 1 - log_r}[kind]
        assert k == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_kl_estimators_are_unbiased_where_claimed() -> None:
    # Sample from p, estimate KL(p || q) for two categorical distributions; compare to exact.
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    exact = float((p * (p / q).log()).sum())
    x = torch.multinomial(p, 400_000, replacement=True, generator=g)
    lp, lq = p.log()[x], q.log()[x]
    assert float(alg.kl_estimate(lp, lq, "k1").mean()) == pytest.approx(exact, rel=0.03)
    assert float(alg.kl_estimate(lp, lq, "k3").mean()) == pytest.approx(exact, rel=0.03)
    assert float(alg.kl_estimate(lp, lq, "k3").min()) >= 0


def test_kl_rejects_unknown_estimator() -> None:
    with pytest.raises(ValueError, match="k4"):
        alg.kl_estimate(torch.zeros(1), torch.zeros(1), "k4")  # type: ignore[arg-type]


# -- policy loss ------------------------------------------------------------------------------


def _ref_policy(lp, old, adv, mask, lo, hi, agg):
    b, t = len(lp), len(lp[0])
    per_seq, seq_clip, tot, cnt, clipped = [], [], 0.0, 0, 0
    for i in range(b):
        s, c, k = 0.0, 0, 0
        for j in range(t):
            if not mask[i][j]:
                continue
            ratio = math.exp(lp[i][j] - old[i][j])
            a = adv[i][j]
            un, cl = ratio * a, min(max(ratio, 1 - lo), 1 + hi) * a
            loss = -min(un, cl)
            k += cl < un
            s, c = s + loss, c + 1
        tot, cnt, clipped = tot + s, cnt + c, clipped + k
        if c:
            per_seq.append(s / c)
            seq_clip.append(k / c)
    if agg == "token-mean":  # the clipped tokens' share, aggregated as the loss is
        return tot / max(cnt, 1), clipped / max(cnt, 1)
    n = max(len(per_seq), 1)
    return sum(per_seq) / n, sum(seq_clip) / n


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("per_seq_adv", [False, True])
def test_policy_loss_matches_reference(seed: int, agg: str, per_seq_adv: bool) -> None:
    g, mask, rand = _case(seed)
    old = rand() * 0.5 - 1.0
    lp = old + 0.4 * rand()  # ratios on both sides of the clip range
    adv = torch.randn(mask.shape[0], generator=g, dtype=torch.float64) if per_seq_adv else rand()
    adv_full = adv[:, None].expand_as(lp) if per_seq_adv else adv
    lp.requires_grad_(True)
    loss, frac = alg.policy_loss(lp, old, adv, mask, clip_eps=0.2, clip_eps_high=0.28, agg=agg)
    ref_loss, ref_frac = _ref_policy(
        lp.tolist(), old.tolist(), adv_full.tolist(), mask.tolist(), 0.2, 0.28, agg
    )
    assert loss.item() == pytest.approx(ref_loss, abs=1e-10)
    assert frac.item() == pytest.approx(ref_frac, abs=1e-12)
    assert 0 < ref_frac < 1
    loss.backward()
    assert torch.all(lp.grad[mask == 0] == 0)


def test_policy_loss_on_policy_gradient_is_advantage_weighted() -> None:
    # At ratio 1 the clipped loss is -mean(A * ratio): d/dlp = -A / n_tokens.
    lp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    loss, frac = alg.policy_loss(lp, lp.detach(), adv, mask)
    loss.backward()
    assert float(frac) == 0
    assert torch.allclose(
        lp.grad, torch.tensor([[-1 / 3, -1 / 3, 0], [2 / 3, 0, 0]], dtype=torch.float64)
    )


# -- value loss --------------------------------------------------------------------------------


def _ref_value(v, old, ret, mask, eps):
    tot, cnt, clipped = 0.0, 0, 0
    for i in range(len(v)):
        for j in range(len(v[0])):
            if not mask[i][j]:
                continue
            e = (v[i][j] - ret[i][j]) ** 2
            if eps is None:
                tot += e
            else:
                vc = old[i][j] + min(max(v[i][j] - old[i][j], -eps), eps)
                ec = (vc - ret[i][j]) ** 2
                tot += max(e, ec)
                clipped += ec > e
            cnt += 1
    return 0.5 * tot / max(cnt, 1), clipped / max(cnt, 1)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("eps", [0.2, None])
def test_value_loss_matches_reference(seed: int, eps: float | None) -> None:
    _, mask, rand = _case(seed)
    old, ret = rand(), rand()
    v = old + 0.5 * rand()
    loss, frac = alg.value_loss(v, old, ret, mask, eps)
    ref_loss, ref_frac = _ref_value(v.tolist(), old.tolist(), ret.tolist(), mask.tolist(), eps)
    assert float(loss) == pytest.approx(ref_loss, abs=1e-10)
    assert float(frac) == pytest.approx(ref_frac, abs=1e-12)


# -- helpers -----------------------------------------------------------------------------------


def test_token_rewards_put_score_on_last_token_and_kl_on_all() -> None:
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.float64)
    kl = torch.full((3, 3), 0.5, dtype=torch.float64)
    out = alg.token_rewards(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), mask, kl, 0.1)
    want = torch.tensor([[-0.05, -0.05, 0.95], [1.95, 0, 0], [0, 0, 0]], dtype=torch.float64)
    assert torch.allclose(out, want)


def test_masked_helpers_handle_empty_masks() -> None:
    x, m = torch.randn(2, 3), torch.zeros(2, 3)
    assert float(alg.masked_mean(x, m)) == 0
    assert torch.equal(alg.masked_mean(x, m, dim=-1), torch.zeros(2))
    w = alg.masked_whiten(
        torch.randn(4, 5, dtype=torch.float64), torch.ones(4, 5, dtype=torch.float64)
    )
    assert float(w.mean()) == pytest.approx(0, abs=1e-12)
    assert float(w.var(unbiased=False)) == pytest.approx(1, rel=1e-6)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_row_losses_add_up_to_the_loss_times_its_units(agg: str) -> None:
    _, mask, rand = _case(1)
    per_token = rand()
    mask[0] = 0  # a row without tokens adds nothing and is no unit
    rows = alg.row_losses(per_token, mask, agg)
    units = mask.sum() if agg == "token-mean" else (mask.sum(-1) > 0).sum()
    assert float(rows.sum()) == pytest.approx(float(alg.aggregate(per_token, mask, agg) * units))
    assert float(rows[0]) == 0.0


def test_clip_range_rows_flags_rows_with_a_token_outside() -> None:
    ratio = torch.tensor([[1.0, 1.1, 9.0], [0.9, 1.2, 0.5], [0.7, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    assert alg.clip_range_rows(ratio, mask, 0.2).tolist() == [True, False, False]
    assert alg.clip_range_rows(ratio, mask, 0.3, 0.5).tolist() == [True, False, True]


def test_grpo_baseline_is_the_advantages_affine_form() -> None:
    r = torch.tensor([[1.0, 0.0, 0.5, 0.5]])
    mean, scale = alg.grpo_baseline(r)
    assert float(mean) == 0.5 and float(scale) == pytest.approx(1 / (float(r.std()) + 1e-6))
    assert float(alg.grpo_baseline(r, scale_by_std=False)[1]) == 1.0
    assert float(alg.grpo_baseline(torch.tensor([[3.0]]))[1]) == 0.0  # a group of 1: no spread
