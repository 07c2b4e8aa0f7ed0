"""docs/theory.md's claims and exercises, checked with the learner's own functions on small discrete policies.

Every test calls winnow's code (a claim that only restates textbook mathematics cannot fail on any change to
winnow, so it is not a test); the partition-function bound, the beta limits, dH/dp and the rich-get-richer
argument are derivations in docs/theory.md, not tests here.

A "policy" here is a softmax over K whole answers (one token each), so pi, pi_ref, pi* and every expectation
are computable exactly; sampled checks use a fixed seed and tolerances of about 4 standard errors.
"""

import math

import pytest
import torch

from winnow.learner.algo import AlgoConfig
from winnow.learner.filters import group_stats, sample_keep_mask
from winnow.learner.losses import aggregate, kl_penalty, ratio_stats, sft_loss
from winnow.learner.objective import compute_loss, prepare_batch_signals

K = 6
CORRECT = torch.tensor([False, True, False, True, True, False])  # answers 1, 3, 4 are correct
R = CORRECT.double()  # binary reward r in {0, 1}


def _pi(theta):
    return torch.softmax(theta, dim=-1)


def _entropy(p):
    return -(p * p.clamp_min(1e-300).log()).sum(-1)


THETA = torch.tensor([0.3, -0.2, 1.0, 0.5, -1.0, 0.0], dtype=torch.float64)


# ---------------------------------------------------------------- section 1.2
def test_kl_regularised_optimum_is_reached_by_exact_gradient_ascent():
    # maximise J(theta) = sum_y pi(y) r(y) - beta KL(pi || pi_ref), the KL computed as E_pi[k3] with the
    # learner's kl_penalty (exact expectation, differentiated through pi); the maximiser is pi_ref e^{r/beta} / Z
    beta = 0.5
    ref = _pi(THETA)
    theta = torch.zeros(K, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.05)
    for _ in range(1500):
        pi = _pi(theta)
        kl = (pi * kl_penalty(pi.log()[None], ref.log()[None], "k3", clamp=None)[0]).sum()
        loss = -((pi * R).sum() - beta * kl)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pi_star = ref * torch.exp(R / beta) / (ref * torch.exp(R / beta)).sum()
    assert torch.allclose(_pi(theta.detach()), pi_star, atol=1e-4)


def test_what_each_kl_loss_estimator_differentiates_to():
    # As a per-sample loss on tokens drawn from pi (no score-function term, as in verl's kl loss):
    #   E_pi[grad k1] = 0,  E_pi[grad k2] = grad KL(pi || ref),  E_pi[grad k3] = grad KL(ref || pi).
    ref = _pi(torch.tensor([0.0, 0.5, -0.5, 1.0, 0.2, -0.3], dtype=torch.float64))
    theta = THETA.clone().requires_grad_(True)
    pi = _pi(theta)
    w = pi.detach()

    def expected_grad(kind):
        est = kl_penalty(torch.log_softmax(theta, -1)[None], ref.log()[None], kind, clamp=None)[0]
        return torch.autograd.grad((w * est).sum(), theta)[0]

    g_rev = torch.autograd.grad((pi * (pi / ref).log()).sum(), theta)[0]  # grad KL(pi || ref)
    g_fwd = torch.autograd.grad((ref * (ref / _pi(theta)).log()).sum(), theta)[0]  # grad KL(ref || pi)
    assert torch.allclose(expected_grad("k1"), torch.zeros(K, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(expected_grad("k2"), g_rev, atol=1e-12)
    assert torch.allclose(expected_grad("k3"), g_fwd, atol=1e-12)


# ---------------------------------------------------------------- Exercise 2: best-of-n
def test_exercise2_best_of_n_acceptance():
    g = torch.Generator().manual_seed(0)
    p, n, trials = 0.1, 8, 40_000
    correct = torch.rand(trials, n, generator=g) < p  # (G, n) groups of n proposals
    # (a) P(at least one accepted) = 1 - (1 - p)^n = 1 - 0.9^8 = 0.5695; the rest are RAFT's empty groups
    at_least_one = (~group_stats(correct)["all_wrong"]).float().mean().item()
    assert at_least_one == pytest.approx(1 - (1 - p) ** n, abs=0.01)
    kept = sample_keep_mask(correct, "remove_all_wrong").any(-1).float().mean().item()
    assert kept == pytest.approx(at_least_one)
    # (b) proposals until the first acceptance are geometric with mean 1/p = 10
    long = torch.rand(trials, 200, generator=g) < p
    first = long.float().argmax(dim=-1) + 1  # index of the first success, 1-based (P(no success) ~ 7e-10)
    assert first.float().mean().item() == pytest.approx(1 / p, rel=0.03)
    # (c) n >= log(1/delta) / p proposals suffice for a 1 - delta chance, for every p
    for p_ in (0.3, 0.05, 0.001):
        n_ = math.ceil(math.log(1 / 0.05) / p_)
        assert 1 - (1 - p_) ** n_ >= 0.95


# ---------------------------------------------------------------- section 2.5: IS vs RS
def test_is_weight_variance_equals_inverse_acceptance_minus_one():
    # target p* = pi restricted to correct answers, proposal q = pi: w = p*/q = 1[correct] / P
    q = _pi(THETA)
    acc = (q * R).sum()
    w = R / acc
    var = (q * w**2).sum() - (q * w).sum() ** 2
    assert var.item() == pytest.approx(1 / acc.item() - 1, rel=1e-12)
    # the learner's ESS metric, (sum w)^2 / (N sum w^2), estimates 1 / (1 + Var) = the acceptance rate
    g = torch.Generator().manual_seed(1)
    y = torch.multinomial(q.float(), 50_000, replacement=True, generator=g)
    log_w = torch.where(CORRECT[y], -acc.log().float(), torch.tensor(-30.0))  # log 0 -> -30
    ess = ratio_stats(log_w[None], torch.zeros(1, y.numel()), torch.ones(1, y.numel()))["ess"].item()
    assert ess == pytest.approx(acc.item(), abs=0.01)


# ---------------------------------------------------------------- Exercise 3: RAFT = MLE of the accepted data
def test_exercise3_raft_accepted_distribution_and_loss():
    pi = _pi(THETA)
    g = torch.Generator().manual_seed(2)
    groups, n = 20_000, 4
    y = torch.multinomial(pi.float(), groups * n, replacement=True, generator=g).view(groups, n)
    keep = sample_keep_mask(CORRECT[y], "raft")
    accepted = y[keep]
    empirical = torch.bincount(accepted, minlength=K).double() / accepted.numel()
    target = pi * R / (pi * R).sum()  # q(y) ∝ pi(y) 1[r(y) = 1]
    assert torch.allclose(empirical, target, atol=0.01)  # ~40k accepted: 4 standard errors ~ 0.01

    # RAFT's loss on the accepted samples (SFT, token-mean, one token per answer) under another policy theta'
    # is the cross-entropy H(pi_hat*, pi_theta') = H(pi_hat*) + KL(pi_hat* || pi_theta')
    theta2 = torch.zeros(K, dtype=torch.float64, requires_grad=True)
    lp = torch.log_softmax(theta2, -1)[accepted][:, None]  # (N, 1)
    mask = torch.ones_like(lp)
    loss = aggregate(sft_loss(lp, mask), mask, "token-mean")
    support = empirical > 0
    cross = -(empirical[support] * torch.log_softmax(theta2, -1)[support]).sum()
    kl = (empirical[support] * (empirical[support] / _pi(theta2)[support]).log()).sum()
    assert loss.item() == pytest.approx(cross.item(), rel=1e-9)
    assert loss.item() == pytest.approx((_entropy(empirical) + kl).item(), rel=1e-9)
    # and minimising it (MLE) fits pi_theta' to the accepted distribution
    opt = torch.optim.Adam([theta2], lr=0.1)
    counts = torch.bincount(accepted, minlength=K).double()
    for _ in range(600):
        loss = -(counts * torch.log_softmax(theta2, -1)).sum() / counts.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(_pi(theta2.detach()), empirical, atol=2e-3)


# ---------------------------------------------------------------- Exercise 4: entropy under positive-only updates
def _raft_binary_run(p0, steps=300, lr=1.0):
    """Binary answers {0, 1}, r(1) = 1, pi(1) = p = sigmoid(theta). Exact expected RAFT step: a proposal is
    accepted with probability p and then trained on with SFT, so the expected loss is p * (-log p_theta)."""
    theta = torch.tensor(math.log(p0 / (1 - p0)), dtype=torch.float64, requires_grad=True)
    ps, hs = [], []
    for _ in range(steps):
        lp = torch.nn.functional.logsigmoid(theta).reshape(1, 1)
        p = lp.exp().detach()
        loss = (p * sft_loss(lp, torch.ones_like(lp))).sum()
        (g,) = torch.autograd.grad(loss, theta)
        with torch.no_grad():
            theta -= lr * g
        pv = p.item()
        ps.append(pv)
        hs.append(-pv * math.log(pv) - (1 - pv) * math.log(1 - pv))
    return ps, hs


def test_exercise4_raft_collapses_entropy_once_p_exceeds_half():
    ps, hs = _raft_binary_run(0.6)
    assert all(b > a for a, b in zip(ps, ps[1:], strict=False))  # p only grows
    assert all(b < a for a, b in zip(hs, hs[1:], strict=False))  # so entropy only falls (p > 0.5)
    assert hs[-1] < 0.1 * hs[0]  # towards a deterministic policy
    # from p < 0.5 the entropy first rises, peaks where p crosses 0.5, then falls
    ps, hs = _raft_binary_run(0.1, steps=400)
    peak = max(range(len(hs)), key=hs.__getitem__)
    assert 0 < peak < len(hs) - 1 and ps[peak - 1] < 0.5 < ps[peak + 1]
    assert hs[-1] < hs[0]


# ---------------------------------------------------------------- section 6.1: negative samples need a baseline
def _one_update(preset, answers, lr=0.5, **kw):
    """One SGD step of the learner's objective on one group of sampled answers -> (pi before, pi after, grad)."""
    theta = THETA.clone().float().requires_grad_(True)
    cfg = AlgoConfig.from_preset(preset, kl_coef=0.0, entropy_coef=0.0, **kw)
    statuses = torch.where(CORRECT[answers], 1, 2)[None]  # (1, n): CORRECT / WRONG
    sig = prepare_batch_signals(statuses, cfg)
    lp = torch.log_softmax(theta, -1)[answers][:, None]  # (n, 1): one token per answer
    loss, _ = compute_loss(logprobs=lp, behaviour_logprobs=lp.detach(), mask=torch.ones_like(lp),
                           advantages=sig["advantages"][0], sample_weight=sig["sample_weight"][0], cfg=cfg)
    (grad,) = torch.autograd.grad(loss, theta, allow_unused=True)
    grad = torch.zeros_like(theta) if grad is None else grad
    with torch.no_grad():
        return _pi(theta), _pi(theta - lr * grad), grad


def test_wrong_samples_push_mass_away_only_with_a_baseline_or_negative_reward():
    mixed = torch.tensor([1, 0, 0, 2])  # one correct answer (1), three wrong (0, 0, 2)
    # raw {0,1} reward: wrong samples have advantage 0 and add nothing; the group's gradient is the correct
    # sample's alone (times 1/4: token-mean over the 4 kept samples)
    _, _, g_all = _one_update("reinforce", mixed)
    _, _, g_pos = _one_update("reinforce", mixed[:1])
    assert torch.allclose(4 * g_all, g_pos, atol=1e-6) and g_pos.abs().sum() > 0
    # an all-wrong group gives no update at all under {0,1}
    b, a, g = _one_update("reinforce", torch.tensor([0, 2, 5, 0]))
    assert torch.equal(a, b) and g.abs().sum() == 0
    # with the paper's -1 reward or a group baseline, the sampled wrong answers lose mass directly
    for preset, kw in [("reinforce", {"reward_wrong": -1.0}), ("reinforce+mean_zero", {}), ("grpo", {}),
                       ("reinforce_rej", {"reward_wrong": -1.0})]:
        b, a, _ = _one_update(preset, mixed, **kw)
        assert a[0] < b[0] and a[2] < b[2] and a[1] > b[1], preset
    # ...even in an all-wrong group under -1 (the mass moves to the unsampled answers, correct ones included)
    wrong = torch.tensor([0, 2, 5])
    b, a, _ = _one_update("reinforce", torch.tensor([0, 2, 5, 0]), reward_wrong=-1.0)
    assert a[wrong].sum() < b[wrong].sum() and a[CORRECT].sum() > b[CORRECT].sum()
