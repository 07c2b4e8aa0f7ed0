"""Losses, KL estimators, ratio statistics and aggregation: hand values, loops, gradients."""

import math

import pytest
import torch

from winnow.learner.losses import (
    aggregate,
    clipped_policy_loss,
    kl_penalty,
    loss_denominator,
    ratio_stats,
    sft_loss,
)

LN = math.log


# ---------------------------------------------------------------- aggregation
V = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
M = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def test_aggregate_modes_hand_values():
    # token-mean: (1 + 2 + 3 + 4) / 4 tokens = 2.5
    assert aggregate(V, M, "token-mean").item() == pytest.approx(2.5)
    # seq-mean-token-mean: (mean(1,2,3) = 2, mean(4) = 4) -> (2 + 4) / 2 = 3
    assert aggregate(V, M, "seq-mean-token-mean").item() == pytest.approx(3.0)
    # seq-mean-token-sum: (6 + 4) / 2 = 5
    assert aggregate(V, M, "seq-mean-token-sum").item() == pytest.approx(5.0)
    # explicit denominator: 10 / 8 tokens
    assert aggregate(V, M, "token-mean", denominator=8).item() == pytest.approx(1.25)


def test_aggregate_ignores_nonfinite_values_outside_the_mask():
    v = V.clone()
    v[1, 2] = float("nan")
    v[1, 1] = float("inf")
    assert aggregate(v, M, "token-mean").item() == pytest.approx(2.5)


def test_aggregate_empty_mask_is_zero_with_grad_path():
    v = torch.randn(2, 3, requires_grad=True)
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        out = aggregate(v, torch.zeros(2, 3), mode)
        assert out.item() == 0.0 and out.requires_grad
        (g,) = torch.autograd.grad(out, v)
        assert torch.equal(g, torch.zeros_like(v))


def test_loss_denominator():
    w = torch.tensor([1.0, 0.0])
    assert loss_denominator(M, None, "token-mean") == 4.0
    assert loss_denominator(M, w, "token-mean") == 3.0
    assert loss_denominator(M, w, "seq-mean-token-mean") == 1.0
    assert loss_denominator(M, None, "seq-mean-token-sum") == 2.0
    with pytest.raises(ValueError, match="unknown aggregation"):
        loss_denominator(M, None, "sum")


# ---------------------------------------------------------------- SFT (RAFT)
def test_sft_loss_values_and_gradient():
    lp = torch.tensor([[LN(0.5), LN(0.25)]], requires_grad=True)
    mask = torch.tensor([[1.0, 0.0]])
    loss = sft_loss(lp, mask)
    assert loss[0].tolist() == pytest.approx([LN(2), 0.0])  # -log 0.5 = log 2; masked -> 0
    (g,) = torch.autograd.grad(loss.sum(), lp)
    assert g.tolist() == [[-1.0, 0.0]]


# ---------------------------------------------------------------- PPO clip
def _ppo(ratio, adv, **kw):
    blp = torch.zeros(1, len(ratio))
    lp = torch.tensor([[LN(r) for r in ratio]], requires_grad=True)
    loss, stats = clipped_policy_loss(lp, blp, torch.tensor([adv]), torch.ones_like(blp), **kw)
    (g,) = torch.autograd.grad(loss.sum(), lp)
    return loss[0].tolist(), g[0].tolist(), stats


def test_clip_hand_values_positive_advantage():
    # A = +1, eps 0.2: r=1.5 -> max(-1.5, -1.2) = -1.2 (clipped, no grad); r=0.5 -> max(-0.5, -0.8) = -0.5
    loss, grad, stats = _ppo([1.5, 0.5, 1.0], 1.0)
    assert loss == pytest.approx([-1.2, -0.5, -1.0])
    # d(-A r)/d log r = -A r: -0.5 for r=0.5, -1 for r=1; 0 where clipped
    assert grad == pytest.approx([0.0, -0.5, -1.0])
    assert stats["clipped"][0].tolist() == [True, False, False]
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)


def test_clip_hand_values_negative_advantage_and_dual_clip():
    # A = -1: r=1.5 -> max(1.5, 1.2) = 1.5 (unclipped); r=0.5 -> max(0.5, 0.8) = 0.8 (clipped);
    # r=5 -> max(5, 1.2) = 5, dual clip c=3 -> min(5, 3) = 3 (no grad)
    loss, grad, stats = _ppo([1.5, 0.5, 5.0], -1.0, dual_clip_c=3.0)
    assert loss == pytest.approx([1.5, 0.8, 3.0])
    assert grad == pytest.approx([1.5, 0.0, 0.0])
    assert stats["dual_clipped"][0].tolist() == [False, False, True]
    loss_nodual, grad_nodual, _ = _ppo([5.0], -1.0, dual_clip_c=None)
    assert loss_nodual == pytest.approx([5.0]) and grad_nodual == pytest.approx([5.0])


def test_asymmetric_clip_higher():
    # r = 1.25, A = +1: eps_high 0.2 clips at 1.2 (loss -1.2, no grad); eps_high 0.28 does not (loss -1.25)
    assert _ppo([1.25], 1.0)[0] == pytest.approx([-1.2])
    loss, grad, _ = _ppo([1.25], 1.0, eps_high=0.28)
    assert loss == pytest.approx([-1.25]) and grad == pytest.approx([-1.25])
    # eps_low 0.1 clips r = 0.85 for A < 0 at 0.9: max(0.85, 0.9) = 0.9
    assert _ppo([0.85], -1.0, eps_low=0.1)[0] == pytest.approx([0.9])
    assert _ppo([0.85], -1.0, eps_low=0.2)[0] == pytest.approx([0.85])


def test_ratio_one_reduces_to_on_policy_gradient():
    # at ratio 1 the clipped loss's gradient is -A d log pi, the REINFORCE gradient, for any A and clip
    g = torch.Generator().manual_seed(1)
    lp0 = -torch.rand(3, 4, generator=g)
    adv = torch.randn(3, generator=g)
    lp = lp0.clone().requires_grad_(True)
    loss, stats = clipped_policy_loss(lp, lp0, adv, torch.ones(3, 4), eps_low=0.1, eps_high=0.3)
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    assert torch.allclose(grad, -adv[:, None].expand(3, 4))
    assert torch.allclose(loss, -adv[:, None].expand(3, 4))
    assert stats["clip_frac"].item() == 0.0


def test_token_level_advantages_accepted():
    lp0 = torch.zeros(2, 3)
    adv = torch.tensor([[1.0, -1.0, 2.0], [0.0, 0.5, -0.5]])
    loss, _ = clipped_policy_loss(lp0.clone(), lp0, adv, torch.ones(2, 3))
    assert torch.allclose(loss, -adv)


def _loop_ppo(lp, blp, adv, el, eh, c):
    out = []
    for i in range(len(lp)):
        row = []
        for t in range(len(lp[i])):
            r = math.exp(lp[i][t] - blp[i][t])
            a = adv[i]
            x = max(-a * r, -a * min(max(r, 1 - el), 1 + eh))
            if c is not None and a < 0:
                x = min(x, -a * c)
            row.append(x)
        out.append(row)
    return out


def test_clipped_loss_matches_loop():
    g = torch.Generator().manual_seed(2)
    lp = torch.randn(8, 6, generator=g, dtype=torch.float64) * 0.5
    blp = torch.randn(8, 6, generator=g, dtype=torch.float64) * 0.5
    adv = torch.randn(8, generator=g, dtype=torch.float64)
    for c in (None, 3.0, 1.5):
        loss, _ = clipped_policy_loss(lp, blp, adv, torch.ones_like(lp), eps_low=0.2, eps_high=0.28, dual_clip_c=c)
        want = _loop_ppo(lp.tolist(), blp.tolist(), adv.tolist(), 0.2, 0.28, c)
        for got_row, want_row in zip(loss.tolist(), want, strict=True):
            assert got_row == pytest.approx(want_row, rel=1e-12)


def test_bad_clip_settings():
    z = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="dual_clip_c must be > 1"):
        clipped_policy_loss(z, z, torch.ones(1), z, dual_clip_c=1.0)
    with pytest.raises(ValueError, match="eps_low"):
        clipped_policy_loss(z, z, torch.ones(1), z, eps_low=1.0)


# ---------------------------------------------------------------- decoupled PPO
def test_decoupled_with_proximal_equal_behaviour_is_plain_ppo():
    g = torch.Generator().manual_seed(3)
    blp = -torch.rand(4, 5, generator=g)
    lp = (blp + 0.3 * torch.randn(4, 5, generator=g)).requires_grad_(True)
    adv = torch.randn(4, generator=g)
    mask = torch.ones(4, 5)
    plain, _ = clipped_policy_loss(lp, blp, adv, mask)
    dec, stats = clipped_policy_loss(lp, blp, adv, mask, proximal_logprobs=blp.clone(), is_cap=5.0)
    assert torch.allclose(plain, dec)
    g1 = torch.autograd.grad(plain.sum(), lp)[0]
    g2 = torch.autograd.grad(dec.sum(), lp)[0]
    assert torch.allclose(g1, g2)
    assert stats["is_weight_mean"].item() == pytest.approx(1.0)


def test_decoupled_hand_values_and_truncation():
    # behaviour mu = 0.25, proximal = 0.5 (w = 2), current = proximal (ratio 1), A = +1:
    # loss = w * max(-1, -1) = -2; with is_cap 1.5 the weight is truncated: -1.5
    blp = torch.tensor([[LN(0.25)]])
    prox = torch.tensor([[LN(0.5)]], requires_grad=True)
    lp = torch.tensor([[LN(0.5)]], requires_grad=True)
    loss, stats = clipped_policy_loss(lp, blp, torch.tensor([1.0]), torch.ones(1, 1), proximal_logprobs=prox)
    assert loss.item() == pytest.approx(-2.0)
    loss_c, stats_c = clipped_policy_loss(
        lp, blp, torch.tensor([1.0]), torch.ones(1, 1), proximal_logprobs=prox, is_cap=1.5
    )
    assert loss_c.item() == pytest.approx(-1.5)
    assert stats_c["is_trunc_frac"].item() == 1.0 and stats["is_trunc_frac"].item() == 0.0
    # the importance weight is detached: no gradient reaches the proximal logprobs through it, and the
    # gradient w.r.t. the current logprobs is -A * w * ratio = -1.5
    g_lp, g_prox = torch.autograd.grad(loss_c.sum(), [lp, prox])
    assert g_lp.item() == pytest.approx(-1.5)
    # the ratio pi/pi_prox does depend on prox (the proximal policy is a constant in practice: detach it)
    assert g_prox.item() == pytest.approx(1.5)


# ---------------------------------------------------------------- KL
def test_kl_estimators_hand_values():
    lp = torch.tensor([[LN(0.5)]])
    ref = torch.tensor([[LN(0.25)]])
    # x = log(ref/pi) = log 0.5 = -0.693147
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(LN(2))  # -x
    assert kl_penalty(lp, ref, "k2").item() == pytest.approx(0.5 * LN(2) ** 2)  # 0.240227
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(0.5 + LN(2) - 1)  # e^x - x - 1 = 0.193147
    # k3 is clamped at 10 (verl): x = 15 -> e^15 - 16 ~ 3.3e6 -> 10
    assert kl_penalty(torch.zeros(1, 1), torch.full((1, 1), 15.0), "k3").item() == 10.0
    assert kl_penalty(torch.zeros(1, 1), torch.full((1, 1), 15.0), "k3", clamp=None).item() > 1e6
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(lp, ref, "k4")


def test_k1_and_k3_are_unbiased_for_the_exact_kl():
    # E_{y~pi}[k(y)] over a discrete pi equals KL(pi || ref) for k1 and k3 (k3 = r - 1 - log r, E_pi[r] = 1)
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    ref = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    kl = (pi * (pi / ref).log()).sum()
    for kind in ("k1", "k3"):
        est = (pi * kl_penalty(pi.log()[None], ref.log()[None], kind)[0]).sum()
        assert est.item() == pytest.approx(kl.item(), rel=1e-12)
    # k3 is non-negative per sample; k1 is not
    assert (kl_penalty(pi.log()[None], ref.log()[None], "k3") >= 0).all()
    assert (kl_penalty(pi.log()[None], ref.log()[None], "k1") < 0).any()


# ---------------------------------------------------------------- ratio stats
def test_ratio_stats_hand_values():
    lp = torch.tensor([[0.0, LN(2), LN(0.5), 9.0]])
    blp = torch.zeros(1, 4)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    s = ratio_stats(lp, blp, mask)
    # ratios 1, 2, 0.5: mean 3.5/3, ESS = 3.5^2 / (3 * (1 + 4 + 0.25)) = 12.25 / 15.75 = 0.7778
    assert s["ratio_mean"].item() == pytest.approx(3.5 / 3)
    assert (s["ratio_max"].item(), s["ratio_min"].item()) == pytest.approx((2.0, 0.5))
    assert s["ess"].item() == pytest.approx(12.25 / 15.75)
    # k3 mismatch: mean(w - 1 - log w) = (0 + (1 - ln 2) + (-0.5 + ln 2)) / 3 = 0.5 / 3
    assert s["mismatch_kl"].item() == pytest.approx(0.5 / 3)
    assert s["mismatch_k1"].item() == pytest.approx((0 - LN(2) + LN(2)) / 3, abs=1e-7)
    assert s["tokens"].item() == 3
    empty = ratio_stats(lp, blp, torch.zeros(1, 4))
    assert empty["ess"].item() == 1.0 and empty["tokens"].item() == 0 and empty["mismatch_kl"].item() == 0


def test_a_correction_replaces_the_default_weight():
    from winnow.learner.corrections import Correction

    # two tokens at ratio 1 (lp = mu), A = +1: plain loss -1, -1. A correction (weight 0.5, 0; the second masked)
    # multiplies them: -0.5, 0; with proximal logprobs it replaces min(pi_prox / mu, is_cap) (here 2 -> capped 1.5)
    blp = torch.tensor([[LN(0.25), LN(0.25)]])
    lp = blp.clone()
    corr = Correction(torch.tensor([[0.5, 0.0]]), torch.tensor([[True, False]]), torch.tensor([[False, True]]))
    loss, stats = clipped_policy_loss(lp, blp, torch.tensor([1.0]), torch.ones(1, 2), correction=corr)
    assert loss.tolist() == [[-0.5, 0.0]]
    assert stats["is_weight_mean"].item() == pytest.approx(0.25) and stats["is_trunc_frac"].item() == 0.5
    prox = torch.tensor([[LN(0.5), LN(0.5)]])
    loss, _ = clipped_policy_loss(prox, blp, torch.tensor([1.0]), torch.ones(1, 2), proximal_logprobs=prox,
                                  is_cap=1.5, correction=corr)
    assert loss.tolist() == [[-0.5, 0.0]]
    default, _ = clipped_policy_loss(prox, blp, torch.tensor([1.0]), torch.ones(1, 2), proximal_logprobs=prox,
                                     is_cap=1.5)
    assert default.tolist()[0] == pytest.approx([-1.5, -1.5])
