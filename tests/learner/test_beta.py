"""Rejection sampling at temperature beta (``raft_beta``), its SNIS twin (``raft_snis``) and their metrics.

docs/theory.md §1.2 / §2.4 / §2.5: the target is pi* ∝ q exp(r / beta) with the sampling policy q as proposal;
exact rejection sampling accepts y with probability exp((r - r_max) / beta); self-normalised importance
sampling keeps every y with weight exp(r / beta) / sum_j exp(r_j / beta). beta -> 0 is RAFT.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from prometheus_client import CollectorRegistry

from winnow.config import ConfigError
from winnow.learner.advantages import compute_advantages, snis_ess, snis_weights
from winnow.learner.algo import AlgoConfig
from winnow.learner.filters import (
    acceptance_probability,
    beta_keep_mask,
    sampler_diagnostics,
    uniform_draws,
)
from winnow.learner.metrics import LearnerMetrics
from winnow.learner.objective import compute_loss, prepare_batch_signals
from winnow.learner.step import OptimConfig, Trainer
from winnow.learner.tiny import build_tiny_model_and_tokenizer

from .conftest import CORRECT, WRONG, make_groups

C, W, E = 1, 2, 7  # Status.CORRECT, WRONG, ERROR
STATUSES = torch.tensor([[C, W, C, W], [C, C, C, C], [W, W, W, W], [W, E, C, W]])
IDS = ["a", "b", "c", "d"]


# ---------------------------------------------------------------- hand-computed values
def test_acceptance_probability_hand_values():
    r = torch.tensor([[1.0, 0.0, 0.5]])
    # beta 0.5, r_max 1: exp(0) = 1, exp(-1 / 0.5) = e^-2 = 0.135335, exp(-0.5 / 0.5) = e^-1 = 0.367879
    assert acceptance_probability(r, beta=0.5, r_max=1.0).tolist()[0] == pytest.approx([1.0, 0.135335, 0.367879],
                                                                                        abs=1e-6)
    # beta 2: exp(-1/2) = 0.606531; under the {-1, +1} map a wrong sample is 2 below: exp(-2/2) = 0.367879
    assert acceptance_probability(torch.tensor([[0.0, -1.0]]), beta=2.0, r_max=1.0).tolist()[0] == pytest.approx(
        [0.606531, 0.367879], abs=1e-6)
    # beta -> 0: exactly 1 on the best reward, below 2^-53 (the smallest draw) under it: e^-500 = 7e-218
    alpha = acceptance_probability(r, beta=1e-3, r_max=1.0).tolist()[0]
    assert alpha[0] == 1.0 and alpha[1] == 0.0 and 0 < alpha[2] < 1e-200
    with pytest.raises(ValueError, match="beta must be"):
        acceptance_probability(r, beta=0.0, r_max=1.0)


def test_beta_keep_mask_compares_draws_to_alpha():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    u = torch.tensor([[1.0, 0.1, 0.2, 0.13]], dtype=torch.float64)
    # alpha = 1, e^-2, e^-2, e^-2 = 1, 0.1353, 0.1353, 0.1353: keep iff u <= alpha
    keep = beta_keep_mask(r, u, beta=0.5, r_max=1.0)
    assert keep.tolist() == [[True, True, False, True]]
    valid = torch.tensor([[True, False, True, True]])
    assert beta_keep_mask(r, u, beta=0.5, r_max=1.0, valid=valid).tolist() == [[True, False, False, True]]
    with pytest.raises(ValueError, match="must match"):
        beta_keep_mask(r, u[:, :2], beta=0.5, r_max=1.0)


def test_uniform_draws_are_a_pure_function_of_seed_request_and_index():
    u = uniform_draws(0, ["a", "b", "c"], 5)
    assert u.shape == (3, 5) and u.dtype == torch.float64
    assert bool(((u > 0) & (u <= 1)).all())
    # the same group in another batch, at another position: the same draws (a replay keeps its samples)
    assert torch.equal(uniform_draws(0, ["c", "a"], 5), u[[2, 0]])
    # another seed or another request: other draws
    assert not torch.equal(uniform_draws(1, ["a"], 5), u[:1])
    assert len(set(u.flatten().tolist())) == 15
    # roughly uniform: 20,000 draws, mean 1/2 +- 4 standard errors (1 / sqrt(12 * 20000) = 0.002)
    big = uniform_draws(7, [f"r{k}" for k in range(2000)], 10)
    assert abs(big.mean().item() - 0.5) < 0.008
    assert abs((big < 0.1).double().mean().item() - 0.1) < 0.01


def test_snis_weights_and_advantages_hand_values():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    w = snis_weights(r, torch.ones_like(r, dtype=torch.bool), beta=0.5)
    # group 0: exp(1/0.5) = e^2 = 7.389056; sum = 7.389056 + 3 = 10.389056
    #   w = 7.389056 / 10.389056 = 0.711235 and 1 / 10.389056 = 0.096255 (x3)
    assert w[0].tolist() == pytest.approx([0.711235, 0.096255, 0.096255, 0.096255], abs=1e-6)
    # group 1: 2 e^2 + 2 = 16.778112 -> 0.440399 (x2), 0.059601 (x2); group 2: equal rewards -> 1/4 each
    assert w[1].tolist() == pytest.approx([0.440399, 0.440399, 0.059601, 0.059601], abs=1e-6)
    assert w[2].tolist() == [0.25] * 4
    # advantage snis = N * w: 4 * 0.711235 = 2.844940, 4 * 0.096255 = 0.385020
    a = compute_advantages(r, "snis", beta=0.5)
    assert a[0].tolist() == pytest.approx([2.844940, 0.385020, 0.385020, 0.385020], abs=1e-5)
    # ESS = 1 / sum w^2 = 1 / (0.711235^2 + 3 * 0.096255^2) = 1 / (0.505855 + 0.027795) = 1.873887
    assert snis_ess(w)[0].item() == pytest.approx(1.873887, abs=1e-5)
    assert snis_ess(w)[2].item() == pytest.approx(4.0)
    # an invalid sample takes no weight and does not count in N: group 0 without sample 1
    keep = torch.tensor([[True, False, True, True]])
    # sum = e^2 + 2 = 9.389056 -> w = 0.786986, 0, 0.106507, 0.106507; A = 3 w
    a = compute_advantages(r[:1], "snis", beta=0.5, keep=keep)
    assert a[0].tolist() == pytest.approx([2.360958, 0.0, 0.319521, 0.319521], abs=1e-5)
    with pytest.raises(ValueError, match="needs beta"):
        compute_advantages(r, "snis")


def test_sampler_diagnostics_hand_values():
    # one group, rewards (1, 0, 0, 0), beta 0.5: alpha = 1, e^-2 (x3) = 1, 0.135335 (x3)
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    accepted = torch.tensor([[True, True, False, False]])
    d = sampler_diagnostics(r, accepted, beta=0.5, r_max=1.0)
    A = (1 + 3 * math.exp(-2)) / 4  # = 0.351501
    assert d["beta_acceptance_expected"] == pytest.approx(A)
    assert d["beta_acceptance_rate"] == 0.5  # 2 of 4 accepted
    assert d["beta_inverse_acceptance_minus_one"] == pytest.approx(1.0)  # 1/0.5 - 1
    # w = alpha / A = 2.844940, 0.385020 (x3); mean w^2 - 1 = (8.093684 + 3 * 0.148240) / 4 - 1 = 1.134600
    assert d["beta_is_weight_var"] == pytest.approx(1.134600, abs=1e-5)
    # gap = mean w (1/A - w) = 1/A - 1 - var = 2.844940 - 1 - 1.134600 = 0.710340
    assert d["beta_is_weight_gap"] == pytest.approx(1 / A - 1 - d["beta_is_weight_var"], abs=1e-12)
    assert d["beta_is_weight_gap"] == pytest.approx(0.710340, abs=1e-5)
    # ESS / N = 1.873887 / 4 (the SNIS weights of the test above: one group, so mean = min)
    assert d["snis_ess_fraction"] == pytest.approx(1.873887 / 4, abs=1e-6) == d["snis_ess_min_fraction"]
    # best-of-n: the group has an accepted sample; independent prediction 1 - (1 - 0.5)^4 = 0.9375
    assert d["beta_groups_accepted"] == 1.0
    assert d["beta_groups_accepted_independent"] == pytest.approx(0.9375)


def test_identity_is_exact_for_binary_weights_and_an_upper_bound_otherwise():
    g = torch.Generator().manual_seed(0)
    r = (torch.rand(50, 8, generator=g) < 0.3).float()
    for beta in (1e-3, 0.3, 1.0, 10.0):
        d = sampler_diagnostics(r, torch.zeros_like(r, dtype=torch.bool), beta=beta, r_max=1.0)
        A = d["beta_acceptance_expected"]
        # in-sample: Var + gap = 1/A - 1 for every beta, both terms >= 0
        assert d["beta_is_weight_var"] + d["beta_is_weight_gap"] == pytest.approx(1 / A - 1, rel=1e-9)
        assert d["beta_is_weight_var"] >= 0 and d["beta_is_weight_gap"] >= -1e-12
    d = sampler_diagnostics(r, r.bool(), beta=1e-3, r_max=1.0)  # beta -> 0: weights are 0 or 1/A
    assert d["beta_is_weight_gap"] == pytest.approx(0.0, abs=1e-12)
    # ... and accepted = correct, so the measured side equals the IS side exactly
    assert d["beta_is_weight_var"] == pytest.approx(d["beta_inverse_acceptance_minus_one"], rel=1e-9)
    # cross-check the per-group ESS against snis_weights + snis_ess (another path, no log space)
    d = sampler_diagnostics(r, r.bool(), beta=0.3, r_max=1.0)
    ess = snis_ess(snis_weights(r.double(), torch.ones_like(r, dtype=torch.bool), beta=0.3)) / 8
    assert d["snis_ess_fraction"] == pytest.approx(ess.mean().item(), rel=1e-9)
    assert d["snis_ess_min_fraction"] == pytest.approx(ess.min().item(), rel=1e-9)


def test_all_wrong_batch_at_tiny_beta_stays_finite():
    r = torch.zeros(3, 4)
    d = sampler_diagnostics(r, torch.zeros_like(r, dtype=torch.bool), beta=1e-4, r_max=1.0)
    assert all(math.isfinite(v) for v in d.values())
    # equal weights: Var 0, ESS N; nothing accepted: 1/a - 1 with a floored at 1/N = 1/12 -> 11
    assert d["beta_is_weight_var"] == pytest.approx(0.0, abs=1e-12) and d["snis_ess_fraction"] == pytest.approx(1.0)
    assert d["beta_inverse_acceptance_minus_one"] == pytest.approx(11.0)
    assert d["beta_groups_accepted"] == 0.0 and d["beta_groups_accepted_independent"] == 0.0


# ---------------------------------------------------------------- presets end to end
def test_raft_beta_signals_and_replay():
    cfg = AlgoConfig.from_preset("raft_beta", beta=0.5)
    s = prepare_batch_signals(STATUSES, cfg, request_ids=IDS)
    u = uniform_draws(cfg.sampler_seed, IDS, 4)
    alpha = torch.where(STATUSES == C, 1.0, math.exp(-2)).double()
    valid = STATUSES != E
    assert torch.equal(s["keep"], (u <= alpha) & valid)
    assert bool(s["keep"][STATUSES == C].all())  # alpha = 1: a correct sample is always kept
    assert torch.equal(s["advantages"], s["keep"].float())  # unit advantage: SFT on what was kept
    # a replay of group "d" alone (after a crash) keeps the same samples
    again = prepare_batch_signals(STATUSES[3:], cfg, request_ids=["d"])
    assert torch.equal(again["keep"][0], s["keep"][3])
    with pytest.raises(ValueError, match="needs request_ids"):
        prepare_batch_signals(STATUSES, cfg)
    with pytest.raises(ValueError, match="3 groups"):
        prepare_batch_signals(STATUSES[:3], cfg, request_ids=IDS)
    assert s["metrics"]["beta_acceptance_rate"] == pytest.approx(s["keep"].sum().item() / 15)


def test_raft_snis_signals():
    s = prepare_batch_signals(STATUSES, AlgoConfig.from_preset("raft_snis", beta=0.5), request_ids=IDS)
    assert torch.equal(s["keep"], STATUSES != E)
    # group 0 = rewards (1, 0, 1, 0): 2 e^2 + 2 = 16.778112 -> A = 4 * (0.440399, 0.059601) = 1.761594, 0.238406
    assert s["advantages"][0].tolist() == pytest.approx([1.761594, 0.238406, 1.761594, 0.238406], abs=1e-5)
    assert s["advantages"][1].tolist() == [1.0] * 4 and s["advantages"][2].tolist() == [1.0] * 4
    # group 3: 3 valid samples (0, E, 1, 0): e^2 + 2 = 9.389056 -> 3 * (0.106507, 0, 0.786986, 0.106507)
    assert s["advantages"][3].tolist() == pytest.approx([0.319521, 0.0, 2.360958, 0.319521], abs=1e-5)
    assert "snis_ess_fraction" in s["metrics"]
    # without request ids it still trains (no draws needed), only the sampler metrics are missing
    s2 = prepare_batch_signals(STATUSES, AlgoConfig.from_preset("raft_snis", beta=0.5))
    assert torch.equal(s2["advantages"], s["advantages"]) and "snis_ess_fraction" not in s2["metrics"]


def test_beta_is_validated_and_named():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match=r"beta"):
            AlgoConfig.from_preset("raft_beta", beta=bad)
    assert AlgoConfig.from_preset("raft_snis", beta=3.0).beta == 3.0
    # through the learner's config (file / env): the error names algo and beta
    from winnow.config import load_config
    from winnow.learner.config import LearnerConfig

    with pytest.raises(ConfigError, match=r"algo.*beta: Input should be greater than 0"):
        load_config(LearnerConfig, data={"algo": {"preset": "raft_beta", "beta": -1}})


def _random_batch(G=6, n=4, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    statuses = torch.where(torch.rand(G, n, generator=g) < 0.4, C, W)
    statuses[0] = W  # an all-wrong group
    blp = -torch.rand(G * n, T, generator=g) * 2
    logits = torch.randn(G * n, T, generator=g)
    mask = (torch.rand(G * n, T, generator=g) < 0.8).float()
    mask[:, 0] = 1
    return statuses, blp, logits, mask


def _loss_and_grad(preset, statuses, blp, logits, mask, **kw):
    cfg = AlgoConfig.from_preset(preset, kl_coef=0.0, entropy_coef=0.0, **kw)
    s = prepare_batch_signals(statuses, cfg, request_ids=[f"q{i}" for i in range(statuses.shape[0])])
    x = logits.clone().requires_grad_(True)
    logprobs = torch.nn.functional.logsigmoid(x)  # any differentiable log-prob stand-in
    loss, _ = compute_loss(logprobs=logprobs, behaviour_logprobs=blp, mask=mask,
                           advantages=s["advantages"].reshape(-1), sample_weight=s["sample_weight"].reshape(-1),
                           cfg=cfg)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize(("preset", "limit"), [("raft_beta", "raft"), ("raft++_beta", "raft++")])
def test_beta_to_zero_is_raft_exactly(preset, limit):
    batch = _random_batch()
    loss0, grad0 = _loss_and_grad(limit, *batch)
    for beta in (1e-3, 1e-6):  # exp(-1/beta) underflows to exactly 0
        loss, grad = _loss_and_grad(preset, *batch, beta=beta)
        assert torch.equal(loss, loss0) and torch.equal(grad, grad0)
    # a finite beta differs: it keeps some wrong samples (here: beta 2, wrong kept w.p. e^-0.5 = 0.61)
    loss2, _ = _loss_and_grad(preset, *batch, beta=2.0)
    assert not torch.equal(loss2, loss0)


def test_large_beta_is_plain_sft_on_all_samples():
    batch = _random_batch()
    sft_all, g_all = _loss_and_grad("raft", *batch, filter="none", advantage="unit")
    for preset in ("raft_beta", "raft_snis"):
        loss, grad = _loss_and_grad(preset, *batch, beta=1e7)
        # raft_beta: alpha = exp(-1e-7) >= u for all but a ~1e-7 chance; raft_snis: A = N e^(r/beta)/sum = 1 +- 1e-7
        torch.testing.assert_close(loss, sft_all, rtol=1e-5, atol=0)
        torch.testing.assert_close(grad, g_all, rtol=1e-5, atol=1e-9)


def test_beta_to_zero_is_raft_on_the_tiny_model():
    """The same groups through the Trainer: equal loss metric and equal gradients (raft vs raft_beta, beta 1e-4)."""
    model, tok = build_tiny_model_and_tokenizer(seed=3)
    groups = make_groups([[CORRECT, WRONG, WRONG, CORRECT], [WRONG] * 4, [CORRECT, CORRECT, WRONG, WRONG]],
                         vocab=tok.vocab_size)
    grads, losses = [], []
    for preset, kw in (("raft", {}), ("raft_beta", {"beta": 1e-4})):
        t = Trainer(copy.deepcopy(model), AlgoConfig.from_preset(preset, **kw),
                    OptimConfig(lr=1e-3, micro_batch_size=4, weight_decay=0.0), pad_token_id=tok.pad_token_id)
        m = t.forward_backward(groups)
        losses.append(m["loss"])
        if preset == "raft_beta":  # the sampler's metrics reach the step's: accepted = correct = 4 of 12
            assert m["beta_acceptance_rate"] == pytest.approx(4 / 12)
            assert m["acceptance_rate"] == pytest.approx(4 / 12)
            assert m["beta_is_weight_var"] == pytest.approx(12 / 4 - 1)  # binary weights: 1/a - 1 = 2
        grads.append({k: p.grad.clone() for k, p in t.model.named_parameters() if p.grad is not None})
    assert losses[0] == losses[1] and losses[0] != 0
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for k in grads[0]:
        assert torch.equal(grads[0][k], grads[1][k]), k


def test_group_outcomes_use_the_same_draws():
    from winnow.learner.step import group_outcomes

    cfg = AlgoConfig.from_preset("raft_beta", beta=1.0)
    groups = make_groups([[WRONG] * 4 for _ in range(12)])
    s = prepare_batch_signals(torch.full((12, 4), WRONG), cfg, request_ids=[g.request_id for g in groups])
    replay = prepare_batch_signals(torch.full((12, 4), WRONG), cfg, request_ids=[g.request_id for g in groups])
    outcomes = list(group_outcomes(replay["keep"], replay["correct"], replay["valid"]))
    # all-wrong groups: "trained" exactly where a draw kept a wrong sample (prob. 1 - (1 - e^-1)^4 = 0.84 each)
    assert outcomes == ["trained" if k else "all_wrong" for k in s["keep"].any(-1).tolist()]
    assert "trained" in outcomes and "all_wrong" in outcomes


def test_prometheus_gauges_show_both_sides():
    reg = CollectorRegistry()
    m = LearnerMetrics(reg)
    m.observe_metrics({"loss": 1.0})  # another preset: no beta-sampler gauge set
    assert reg.get_sample_value("winnow_learner_beta_identity", {"side": "is_weight_var"}) is None
    cfg = AlgoConfig.from_preset("raft_beta", beta=0.5)
    d = prepare_batch_signals(STATUSES, cfg, request_ids=IDS)["metrics"]
    m.observe_metrics(d)
    get = reg.get_sample_value
    assert get("winnow_learner_beta_identity", {"side": "is_weight_var"}) == d["beta_is_weight_var"]
    assert get("winnow_learner_beta_identity", {"side": "inverse_acceptance_minus_one"}) == pytest.approx(
        d["beta_inverse_acceptance_minus_one"])
    assert get("winnow_learner_beta_acceptance_ratio", {"source": "measured"}) == d["beta_acceptance_rate"]
    assert get("winnow_learner_beta_groups_accepted", {"source": "independent"}) == pytest.approx(
        d["beta_groups_accepted_independent"])
    assert get("winnow_learner_snis_ess_ratio", {"stat": "min"}) == d["snis_ess_min_fraction"]


# ---------------------------------------------------------------- Monte Carlo: the accepted samples follow pi*
PI_REF = torch.tensor([0.40, 0.25, 0.15, 0.12, 0.08], dtype=torch.float64)  # a categorical "policy"
REWARD = torch.tensor([0.0, 1.0, 0.5, 0.2, 1.0], dtype=torch.float64)  # r_max = 1
BETA = 0.4


def _target():
    p = PI_REF * torch.exp(REWARD / BETA)
    return p / p.sum()


def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


def test_monte_carlo_accepted_samples_follow_the_tilted_policy():
    G, n = 6000, 8  # 48,000 proposals from pi_ref
    g = torch.Generator().manual_seed(0)
    y = torch.multinomial(PI_REF, G * n, replacement=True, generator=g).reshape(G, n)
    rewards = REWARD[y]
    keep = beta_keep_mask(rewards, uniform_draws(0, [f"mc{i}" for i in range(G)], n), beta=BETA, r_max=1.0)
    counts = torch.bincount(y[keep], minlength=5).double()
    # 4 degrees of freedom: P(chi2 > 18.47) = 0.001
    assert _chi2(counts, _target()) < 18.47
    # the test has power: the same counts against pi_ref (no tilt) are far off
    assert _chi2(counts, PI_REF) > 1000
    # the acceptance rate is Z / M = sum pi_ref exp((r - 1) / beta) = 0.4 e^-2.5 + 0.25 + 0.15 e^-1.25
    #   + 0.12 e^-2 + 0.08 = 0.032834 + 0.25 + 0.042976 + 0.016240 + 0.08 = 0.42205
    A = float((PI_REF * torch.exp((REWARD - 1) / BETA)).sum())
    assert A == pytest.approx(0.42205, abs=1e-5)
    d = sampler_diagnostics(rewards, keep, beta=BETA, r_max=1.0)
    se = math.sqrt(A * (1 - A) / (G * n))
    assert abs(d["beta_acceptance_rate"] - A) < 4 * se
    # the identity, population values: Var_q[w] = E[alpha^2] / A^2 - 1, gap = 1/A - 1 - Var
    var = float((PI_REF * torch.exp(2 * (REWARD - 1) / BETA)).sum()) / A**2 - 1
    assert d["beta_is_weight_var"] == pytest.approx(var, rel=0.02)
    assert d["beta_is_weight_var"] + d["beta_is_weight_gap"] == pytest.approx(
        d["beta_inverse_acceptance_minus_one"], rel=0.02)
    # best-of-n: here every group has the same q, so the independent prediction holds
    assert d["beta_groups_accepted"] == pytest.approx(d["beta_groups_accepted_independent"], abs=0.01)


def test_monte_carlo_snis_weights_reproduce_the_same_expectation():
    G, n = 60, 800  # SNIS is biased by O(1/n) within a group: large groups
    g = torch.Generator().manual_seed(1)
    y = torch.multinomial(PI_REF, G * n, replacement=True, generator=g).reshape(G, n)
    w = snis_weights(REWARD[y], torch.ones_like(y, dtype=torch.bool), beta=BETA)  # (G, n), rows sum to 1
    onehot = torch.nn.functional.one_hot(y, 5).double()  # (G, n, 5)
    est = (w[..., None] * onehot).sum(1).mean(0)  # (5,) SNIS estimate of pi*, averaged over the groups
    target = _target()
    # per category, within 4 standard errors of the average of G independent group estimates
    per_group = (w[..., None] * onehot).sum(1)  # (G, 5)
    se = per_group.std(0) / math.sqrt(G)
    assert bool(((est - target).abs() < 4 * se + 1e-3).all()), (est, target)
    # ... and E_pi*[r] both ways: exact vs SNIS vs the rejection sampler's accepted mean
    exact = float((target * REWARD).sum())
    assert float((est * REWARD).sum()) == pytest.approx(exact, abs=0.01)
    keep = beta_keep_mask(REWARD[y], uniform_draws(0, [f"sn{i}" for i in range(G)], n), beta=BETA, r_max=1.0)
    assert float(REWARD[y][keep].mean()) == pytest.approx(exact, abs=0.01)


# ---------------------------------------------------------------- what raft_beta's gradient is, on-policy
def test_on_policy_raft_beta_gradient_is_raft_gradient_scaled_for_binary_rewards():
    """alpha = e^{-1/beta} + (1 - e^{-1/beta}) 1[correct] and E_q[grad log q] = 0, so with q = pi_theta the
    expected sum-gradient of SFT on the accepted samples, E_q[alpha grad log pi], is exactly
    (1 - e^{-1/beta}) E_q[1[correct] grad log pi]: RAFT's direction, a smaller step; the wrong samples kept
    add zero-mean noise. With graded rewards alpha is not affine in one indicator and the direction differs."""
    logits = torch.tensor([0.3, -0.2, 1.1, 0.0, -0.7], dtype=torch.float64)
    q = torch.softmax(logits, 0)  # the policy, also the proposal (on-policy)
    eye = torch.eye(5, dtype=torch.float64)

    def expected_grad(weight):  # d/dlogits of sum_y q(y) weight(y) log softmax(logits)(y), at logits
        return (q[:, None] * weight[:, None] * (eye - q[None, :])).sum(0)

    correct = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    for beta in (0.25, 0.5, 1.0, 3.0):
        alpha = acceptance_probability(correct[None], beta=beta, r_max=1.0)[0]
        g_beta, g_raft = expected_grad(alpha), expected_grad(correct)
        torch.testing.assert_close(g_beta, (1 - math.exp(-1 / beta)) * g_raft, rtol=1e-12, atol=1e-15)
    graded = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.0], dtype=torch.float64)
    g_beta = expected_grad(acceptance_probability(graded[None], beta=0.5, r_max=1.0)[0])
    g_best = expected_grad((graded == 1.0).double())
    cos = float(g_beta @ g_best / (g_beta.norm() * g_best.norm()))
    assert cos < 0.99  # a different direction, not a rescaled RAFT
