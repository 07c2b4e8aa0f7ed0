"""prepare_batch_signals + compute_loss: filters end to end, gradients by construction, micro-batching."""

import pytest
import torch

from winnow.learner.algo import AlgoConfig
from winnow.learner.losses import loss_denominator
from winnow.learner.objective import compute_loss, prepare_batch_signals

C, W, E = 1, 2, 7  # Status.CORRECT, WRONG, ERROR
# 4 groups of n=4: mixed, all correct, all wrong, mixed with one verifier error
STATUSES = torch.tensor([[C, W, C, W], [C, C, C, C], [W, W, W, W], [W, E, C, W]])


def _signals(preset, **kw):
    return prepare_batch_signals(STATUSES, AlgoConfig.from_preset(preset, **kw))


def test_reinforce_rej_signals_hand_values():
    s = _signals("reinforce_rej")
    assert s["keep"].tolist() == [[True] * 4, [False] * 4, [False] * 4, [True, False, True, True]]
    # raw {0,1} reward: wrong answers in mixed groups get advantage 0 (the released code's behaviour)
    assert s["advantages"].tolist() == [[1, 0, 1, 0], [0] * 4, [0] * 4, [0, 0, 1, 0]]
    assert s["sample_weight"].tolist() == s["keep"].float().tolist()
    m = s["metrics"]
    # correct 2 + 4 + 0 + 1 = 7 of 15 valid samples
    assert m["acceptance_rate"] == pytest.approx(7 / 15)
    assert (m["groups_all_correct"], m["groups_all_wrong"], m["groups_mixed"], m["groups_empty"]) == (1, 1, 2, 0)
    assert m["kept_group_fraction"] == 0.5 and m["kept_sample_fraction"] == pytest.approx(7 / 16)
    assert m["invalid_samples"] == 1 and m["reward_mean"] == pytest.approx(7 / 15)
    # the paper's +-1 map: wrong answers in mixed groups get -1
    pm = _signals("reinforce_rej", reward_wrong=-1.0)
    assert pm["advantages"].tolist()[0] == [1, -1, 1, -1] and pm["advantages"].tolist()[3] == [-1, 0, 1, -1]


def test_grpo_signals_use_valid_samples_only():
    s = _signals("grpo")
    assert s["keep"].sum() == 15 and s["sample_weight"].sum() == 15
    # group 3 over its 3 valid samples (0, 1, 0): mean 1/3, unbiased std = sqrt((1/9 + 4/9 + 1/9)/2) = sqrt(1/3)
    # -> A(correct) = (2/3) / 0.57735 = 1.1547, A(wrong) = -(1/3) / 0.57735 = -0.57735
    assert s["advantages"][3].tolist() == pytest.approx([-0.57735, 0.0, 1.1547, -0.57735], abs=1e-4)
    assert s["advantages"][1].abs().sum() == 0 and s["advantages"][2].abs().sum() == 0


def test_raft_and_soft_filter_signals():
    s = _signals("raft")
    assert torch.equal(s["keep"], STATUSES == C)
    assert torch.equal(s["sample_weight"], (STATUSES == C).float())
    soft = _signals("raft", soft_filter=True)
    # soft (released code): every valid sample stays in the batch, wrong ones with advantage 0
    assert soft["sample_weight"].tolist()[3] == [1, 0, 1, 1] and soft["sample_weight"].sum() == 15
    assert torch.equal(soft["advantages"], (STATUSES == C).float())


# ---------------------------------------------------------------- gradients by construction
B, T = 16, 5


def _batch(seed=0, off_policy=0.0):
    g = torch.Generator().manual_seed(seed)
    blp = -torch.rand(B, T, generator=g) * 2
    lp = (blp + off_policy * torch.randn(B, T, generator=g)).requires_grad_(True)
    mask = torch.ones(B, T)
    mask[3, 3:] = 0  # ragged lengths
    mask[10, 1:] = 0
    ref = blp - 0.1 * torch.rand(B, T, generator=g)
    ent = torch.rand(B, T, generator=g).requires_grad_(True)
    return lp, blp, mask, ref, ent


def _loss(preset, lp, blp, mask, ref=None, ent=None, **kw):
    cfg = AlgoConfig.from_preset(preset, **kw)
    s = prepare_batch_signals(STATUSES, cfg)
    return compute_loss(
        logprobs=lp, behaviour_logprobs=blp, mask=mask, advantages=s["advantages"].flatten(),
        sample_weight=s["sample_weight"].flatten(), cfg=cfg, ref_logprobs=ref, entropy=ent,
    )


def test_raft_gradient_is_sft_on_accepted_samples_only():
    lp, blp, mask, _, _ = _batch(off_policy=0.5)
    loss, _ = _loss("raft", lp, blp, mask, kl_coef=0.0, entropy_coef=0.0)
    (g,) = torch.autograd.grad(loss, lp)
    acc = (STATUSES == C).flatten().float()[:, None] * mask  # tokens of correct samples
    sft = -(lp * acc).sum() / acc.sum()  # SFT (token-mean NLL) on the accepted samples
    (g_sft,) = torch.autograd.grad(sft, lp)
    assert torch.allclose(g, g_sft)
    assert loss.item() == pytest.approx(sft.item())


def test_raftpp_at_ratio_one_equals_raft():
    lp, blp, mask, _, _ = _batch()  # lp == blp: ratio 1
    g = [torch.autograd.grad(_loss(p, lp, blp, mask, kl_coef=0.0, entropy_coef=0.0)[0], lp)[0]
         for p in ("raft", "raft++")]
    assert torch.allclose(g[0], g[1])


@pytest.mark.parametrize("preset", ["raft", "raft++", "reinforce_rej", "reinforce", "reinforce+remove_all_wrong"])
def test_positive_only_methods_give_no_gradient_through_wrong_samples(preset):
    # under the {0,1} map these presets never put a nonzero advantage on a wrong sample
    lp, blp, mask, _, _ = _batch(off_policy=0.3)
    loss, _ = _loss(preset, lp, blp, mask, kl_coef=0.0, entropy_coef=0.0)
    (g,) = torch.autograd.grad(loss, lp)
    wrong = (STATUSES != C).flatten()
    assert g[wrong].abs().sum() == 0
    assert g[~wrong].abs().sum() > 0


def test_negative_samples_get_gradient_with_a_baseline_or_pm1():
    lp, blp, mask, _, _ = _batch()
    wrong = (STATUSES == W).flatten()
    for preset, kw in [("grpo", {}), ("reinforce+mean_zero", {}), ("reinforce_rej", {"reward_wrong": -1.0})]:
        loss, _ = _loss(preset, lp, blp, mask, kl_coef=0.0, entropy_coef=0.0, **kw)
        (g,) = torch.autograd.grad(loss, lp)
        # minimising the loss moves logprobs along -g: a positive gradient pushes a wrong sample's logprob down
        rows = wrong & (torch.arange(B) < 4)  # the wrong samples of group 0 (mixed)
        assert (g[rows][mask[rows] > 0] > 0).all(), preset


def test_reinforce_rej_ignores_all_correct_and_all_wrong_groups_entirely():
    lp, blp, mask, ref, ent = _batch(off_policy=0.3)
    loss, _ = _loss("reinforce_rej", lp, blp, mask, ref=ref, ent=ent)  # KL and entropy on too
    g_lp, g_ent = torch.autograd.grad(loss, [lp, ent])
    uniform = torch.zeros(B, dtype=torch.bool)
    uniform[4:12] = True  # groups 1 (all correct) and 2 (all wrong)
    assert g_lp[uniform].abs().sum() == 0 and g_ent[uniform].abs().sum() == 0
    assert g_lp[~uniform].abs().sum() > 0
    # the verifier-error sample (row 13) is out too
    assert g_lp[13].abs().sum() == 0


def test_soft_filter_keeps_kl_and_entropy_on_filtered_samples():
    lp, blp, mask, ref, ent = _batch(off_policy=0.3)
    loss, m = _loss("reinforce_rej", lp, blp, mask, ref=ref, ent=ent, soft_filter=True)
    g_lp, g_ent = torch.autograd.grad(loss, [lp, ent])
    assert g_lp[4:12].abs().sum() > 0 and g_ent[4:12].abs().sum() > 0  # KL/entropy reach them
    # ...but the policy term does not: with kl and entropy off, no gradient
    loss2, m2 = _loss("reinforce_rej", lp, blp, mask, soft_filter=True, kl_coef=0.0, entropy_coef=0.0)
    assert torch.autograd.grad(loss2, lp)[0][4:12].abs().sum() == 0
    # and they count in the token-mean denominator: 15 valid rows, 3 + 1 tokens short
    assert m2["tokens"] == 15 * T - 2 - 4


def test_loss_terms_and_metrics():
    lp, blp, mask, ref, ent = _batch(off_policy=0.2)
    loss, m = _loss("grpo", lp, blp, mask, ref=ref, ent=ent, kl_coef=0.1, entropy_coef=0.01)
    assert loss.item() == pytest.approx(m["pg_loss"] + 0.1 * m["kl"] - 0.01 * m["entropy"], rel=1e-5)
    assert m["kl"] > 0 and m["entropy"] > 0
    assert all(isinstance(v, float) for v in m.values())
    assert set(m) == {"loss", "pg_loss", "kl", "entropy", "clip_frac", "dual_clip_frac", "is_weight_mean",
                      "is_trunc_frac", "tokens"}  # ratio statistics: once per batch, in the step


def test_missing_inputs_are_errors():
    lp, blp, mask, ref, ent = _batch()
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        _loss("grpo", lp, blp, mask, ent=ent)
    with pytest.raises(ValueError, match="needs entropy"):
        _loss("grpo", lp, blp, mask, ref=ref)
    cfg = AlgoConfig.from_preset("grpo", decoupled=True, kl_coef=0.0, entropy_coef=0.0)
    with pytest.raises(ValueError, match="decoupled=True but proximal_logprobs is None"):
        compute_loss(logprobs=lp, behaviour_logprobs=blp, mask=mask, advantages=torch.zeros(B),
                     sample_weight=torch.ones(B), cfg=cfg)


# ---------------------------------------------------------------- micro-batch accumulation
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("preset", ["grpo", "reinforce_rej", "raft"])
def test_micro_batches_sum_to_the_full_batch(agg, preset):
    lp, blp, mask, ref, ent = _batch(off_policy=0.4)
    cfg = AlgoConfig.from_preset(preset, agg=agg, kl_coef=0.05, entropy_coef=0.01)
    s = prepare_batch_signals(STATUSES, cfg)
    adv, sw = s["advantages"].flatten(), s["sample_weight"].flatten()

    def run(rows, denom):
        return compute_loss(logprobs=lp[rows], behaviour_logprobs=blp[rows], mask=mask[rows], advantages=adv[rows],
                            sample_weight=sw[rows], cfg=cfg, ref_logprobs=ref[rows], entropy=ent[rows],
                            loss_scale_tokens=denom)

    full, m_full = run(slice(None), None)
    g_full = torch.autograd.grad(full, [lp, ent])
    denom = loss_denominator(mask, sw, agg)
    total = 0.0
    parts = [slice(0, 3), slice(3, 4), slice(4, 11), slice(11, 16)]  # uneven micro-batches
    pg_sum = 0.0
    for rows in parts:
        loss, m = run(rows, denom)
        total = total + loss
        pg_sum += m["pg_loss"]
    g_micro = torch.autograd.grad(total, [lp, ent])
    assert total.item() == pytest.approx(full.item(), rel=1e-5, abs=1e-7)
    assert pg_sum == pytest.approx(m_full["pg_loss"], rel=1e-5, abs=1e-7)
    for a, b in zip(g_micro, g_full, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # without the global denominator the micro-batch losses do NOT add up (the trap this API avoids)
    naive = sum(run(rows, None)[0].item() for rows in parts)
    assert naive != pytest.approx(full.item(), rel=1e-3)


def test_empty_micro_batch_is_zero_with_grad():
    lp, blp, mask, _, _ = _batch()
    cfg = AlgoConfig.from_preset("reinforce_rej", kl_coef=0.0, entropy_coef=0.0)
    loss, m = compute_loss(logprobs=lp[4:8], behaviour_logprobs=blp[4:8], mask=mask[4:8],
                           advantages=torch.zeros(4), sample_weight=torch.zeros(4), cfg=cfg, loss_scale_tokens=30.0)
    assert loss.item() == 0.0 and m["tokens"] == 0
    loss.backward()
    assert lp.grad is not None and lp.grad.abs().sum() == 0


def test_empty_batch_signals():
    s = prepare_batch_signals(torch.zeros(0, 4, dtype=torch.long), AlgoConfig())
    assert s["advantages"].shape == (0, 4) and all(v == 0.0 for v in s["metrics"].values())
    with pytest.raises(ValueError, match=r"statuses must be \(G, n\)"):
        prepare_batch_signals(torch.ones(4, dtype=torch.long), AlgoConfig())


@pytest.mark.parametrize(("preset", "algo"), [
    ("grpo", {"mismatch": {"kind": "seq_mis", "lo": 0.9, "hi": 1.1}}),  # ratio against mu: the mask alone
    ("raft", {"mismatch": {"kind": "token_tis", "cap": 1.2}}),  # sft weighted by min(w, 1.2)
    ("grpo", {"decoupled": True, "is_cap": 1.5, "mismatch": {"kind": "seq_tis", "cap": 1.05}}),
    ("reinforce_rej", {"decoupled": True, "mismatch": {"kind": "icepop", "lo": 0.8, "hi": 1.25}}),
])
def test_micro_batches_sum_to_the_full_batch_with_a_mismatch_correction(preset, algo):
    # the weights are per token or per whole row, and micro-batches hold whole rows: the sums stay exact
    lp, blp, mask, _, _ = _batch(off_policy=0.2)
    cfg = AlgoConfig.from_preset(preset, kl_coef=0.0, entropy_coef=0.0, **algo)
    s = prepare_batch_signals(STATUSES, cfg)
    adv, sw = s["advantages"].flatten(), s["sample_weight"].flatten()

    def run(rows, denom):
        return compute_loss(logprobs=lp[rows], behaviour_logprobs=blp[rows], mask=mask[rows], advantages=adv[rows],
                            sample_weight=sw[rows], cfg=cfg, loss_scale_tokens=denom,
                            proximal_logprobs=lp[rows].detach() if cfg.decoupled else None)

    full, m_full = run(slice(None), None)
    (g_full,) = torch.autograd.grad(full, lp)
    denom = loss_denominator(mask, sw, cfg.agg)
    total = sum(run(rows, denom)[0] for rows in [slice(0, 3), slice(3, 4), slice(4, 11), slice(11, 16)])
    (g_micro,) = torch.autograd.grad(total, lp)
    assert total.item() == pytest.approx(full.item(), rel=1e-5, abs=1e-7)
    assert torch.allclose(g_micro, g_full, atol=1e-6)
    # the correction did something on this batch, and not everything: some weights differ from the plain ones
    assert 0.0 < m_full["is_weight_mean"] and (m_full["is_trunc_frac"] > 0 or m_full["is_weight_mean"] < 1)
