"""Training-inference mismatch corrections (learner/corrections.py): hand values, a plain loop, how the weight
combines with each loss (compute_loss), the config, and the batch metrics through a training step."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from winnow.config import ConfigError
from winnow.learner.algo import PRESETS, AlgoConfig
from winnow.learner.corrections import (
    behaviour_correction,
    behaviour_log_ratio,
    correction_fractions,
    geo_mean_ratio,
    seq_mis,
    seq_tis,
    token_mis,
    token_tis,
)
from winnow.learner.objective import compute_loss, correction_metrics

LN = math.log


def _lw(*ws: float) -> torch.Tensor:
    return torch.tensor([[LN(w) for w in ws]])


# ---------------------------------------------------------------- the functions, by hand
def test_token_tis_hand_values():
    # w = 0.5, 1, 3 with C = 2: min(w, 2) = 0.5, 1, 2; only the last is truncated
    c, trunc = token_tis(_lw(0.5, 1.0, 3.0), cap=2.0)
    assert c.tolist()[0] == pytest.approx([0.5, 1.0, 2.0])
    assert trunc.tolist() == [[False, False, True]]


def test_token_mis_hand_values_one_and_two_sided():
    # one-sided (lo 0, hi 2): w = 0.5, 1, 3 -> 0.5, 1, 0 (3 > 2 masked)
    c, masked = token_mis(_lw(0.5, 1.0, 3.0), lo=0.0, hi=2.0)
    assert c.tolist()[0] == pytest.approx([0.5, 1.0, 0.0]) and masked.tolist() == [[False, False, True]]
    # two-sided (lo 0.6, hi 2): 0.5 < 0.6 is masked too -> 0, 1, 0
    c, masked = token_mis(_lw(0.5, 1.0, 3.0), lo=0.6, hi=2.0)
    assert c.tolist()[0] == pytest.approx([0.0, 1.0, 0.0]) and masked.tolist() == [[True, False, True]]


def test_icepop_is_the_two_sided_token_mask_with_the_papers_bounds():
    # IcePop M(k) = k on [alpha, beta] = [0.5, 5], 0 outside: k = 0.4, 0.5, 5, 6 -> 0, 0.5, 5, 0 (bounds included)
    cfg = AlgoConfig(mismatch={"kind": "icepop"}, decoupled=True, is_cap=None)
    assert (cfg.mismatch.lo, cfg.mismatch.hi) == (0.5, 5.0)
    log_w = _lw(0.4, 0.5, 5.0, 6.0)
    corr = behaviour_correction(log_w, torch.ones(1, 4), "icepop", lo=0.5, hi=5.0)
    assert corr.weight.tolist()[0] == pytest.approx([0.0, 0.5, 5.0, 0.0])
    assert corr.masked.tolist() == [[True, False, False, True]] and not corr.truncated.any()
    same, _ = token_mis(log_w, lo=0.5, hi=5.0)
    assert torch.equal(corr.weight, same)


def test_geo_mean_ratio_hand_values():
    # row 0: w = 2, 0.5 (third token padding, w = 8 ignored): exp((ln 2 + ln 0.5) / 2) = 1
    # row 1: w = 4, 1: exp((ln 4 + 0) / 2) = 2;  row 2: no token -> 1
    log_w = torch.tensor([[LN(2), LN(0.5), LN(8)], [LN(4), 0.0, 0.0], [LN(3), 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 0]])
    assert geo_mean_ratio(log_w, mask).tolist() == pytest.approx([1.0, 2.0, 1.0])


def test_sequence_tis_and_mis_hand_values():
    log_w = torch.tensor([[LN(2), LN(0.5)], [LN(4), 0.0]])  # rho = 1, 2 (above)
    mask = torch.ones(2, 2)
    # seq TIS, C = 1.5: row 0 min(1, 1.5) = 1 on both tokens, row 1 min(2, 1.5) = 1.5, truncated
    c, trunc = seq_tis(log_w, mask, cap=1.5)
    assert c.flatten().tolist() == pytest.approx([1.0, 1.0, 1.5, 1.5]) and trunc.tolist() == [[False] * 2, [True] * 2]
    # seq MIS on [0.9, 1.5]: row 0 keeps rho = 1 on both tokens, row 1 (rho 2) is masked whole
    c, masked = seq_mis(log_w, mask, lo=0.9, hi=1.5)
    assert c.flatten().tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0]) and masked.tolist() == [[False] * 2, [True] * 2]


def test_sequence_functions_match_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    log_w = 0.05 * torch.randn(6, 7, generator=g)
    mask = (torch.rand(6, 7, generator=g) > 0.3).float()
    mask[2] = 0
    c_tis, _ = seq_tis(log_w, mask, cap=1.01)
    c_mis, _ = seq_mis(log_w, mask, lo=0.99, hi=1.01)
    for b in range(6):
        toks = [log_w[b, t].item() for t in range(7) if mask[b, t] != 0]
        rho = math.exp(sum(toks) / len(toks)) if toks else 1.0
        for t in range(7):
            assert c_tis[b, t].item() == pytest.approx(min(rho, 1.01), rel=1e-5)
            assert c_mis[b, t].item() == pytest.approx(rho if 0.99 <= rho <= 1.01 else 0.0, rel=1e-5)


def test_combination_with_is_cap_and_mask_only():
    log_w, mask = _lw(0.5, 1.0, 3.0), torch.ones(1, 3)
    # decoupled, no correction: min(w, is_cap = 1.5) = 0.5, 1, 1.5 (today's truncated weight)
    c = behaviour_correction(log_w, mask, "none", is_cap=1.5)
    assert c.weight.tolist()[0] == pytest.approx([0.5, 1.0, 1.5]) and c.truncated.tolist() == [[False, False, True]]
    # token TIS C = 2 then is_cap 5: min(min(w, 2), 5) = 0.5, 1, 2
    c = behaviour_correction(log_w, mask, "token_tis", cap=2.0, is_cap=5.0)
    assert c.weight.tolist()[0] == pytest.approx([0.5, 1.0, 2.0])
    # token MIS on [0, 5] then is_cap 2: w 1[w <= 5] = 0.5, 1, 3 -> min(., 2) = 0.5, 1, 2 (truncated by is_cap)
    c = behaviour_correction(log_w, mask, "token_mis", lo=0.0, hi=5.0, is_cap=2.0)
    assert c.weight.tolist()[0] == pytest.approx([0.5, 1.0, 2.0]) and c.truncated.tolist() == [[False, False, True]]
    # ratio against mu (mask_only): the mask alone, 1 where kept: MIS [0.6, 2] -> 0, 1, 0
    c = behaviour_correction(log_w, mask, "token_mis", lo=0.6, hi=2.0, mask_only=True)
    assert c.weight.tolist() == [[0.0, 1.0, 0.0]] and c.masked.tolist() == [[True, False, True]]
    with pytest.raises(ValueError, match="already contains"):
        behaviour_correction(log_w, mask, "token_tis", cap=2.0, mask_only=True)
    with pytest.raises(ValueError, match="needs cap"):
        behaviour_correction(log_w, mask, "seq_tis")


def test_log_ratio_is_detached_clamped_fp32():
    lp = torch.tensor([[0.0, -50.0]], requires_grad=True)
    mu = torch.tensor([[-1.0, 0.0]], dtype=torch.float64)
    lw = behaviour_log_ratio(lp, mu)
    assert lw.tolist() == [[1.0, -20.0]] and lw.dtype == torch.float32 and not lw.requires_grad


def test_correction_fractions_hand_values():
    # 2 sequences: row 0 three tokens (w = 0.5, 1, 3), row 1 two tokens (w = 1, 1) and one padding token
    log_w = torch.tensor([[LN(0.5), 0.0, LN(3)], [0.0, 0.0, LN(9)]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    fr = correction_fractions(behaviour_correction(log_w, mask, "token_mis", lo=0.0, hi=2.0), mask)
    # masked: one token (w = 3) of 5 -> 0.2; sequences with a masked token: 1 of 2; weight mean (0.5+1+0+1+1)/5
    assert fr["is_mask_frac"].item() == pytest.approx(0.2) and fr["is_seq_mask_frac"].item() == pytest.approx(0.5)
    assert fr["is_weight_mean"].item() == pytest.approx(3.5 / 5) and fr["is_trunc_frac"].item() == 0.0
    # seq TIS C = 1.01: rho_0 = exp((ln 0.5 + ln 3) / 3) = 1.5^(1/3) = 1.1447 > 1.01, rho_1 = 1: 3 of 5 tokens
    fr = correction_fractions(behaviour_correction(log_w, mask, "seq_tis", cap=1.01), mask)
    assert fr["is_trunc_frac"].item() == pytest.approx(0.6) and fr["is_seq_trunc_frac"].item() == pytest.approx(0.5)
    assert fr["is_weight_mean"].item() == pytest.approx((3 * 1.01 + 2 * 1.0) / 5)
    empty = correction_fractions(behaviour_correction(log_w, mask, "none"), torch.zeros(2, 3))
    assert {k: v.item() for k, v in empty.items()} == {"is_weight_mean": 1.0, "is_trunc_frac": 0.0,
                                                      "is_mask_frac": 0.0, "is_seq_trunc_frac": 0.0,
                                                      "is_seq_mask_frac": 0.0}


# ---------------------------------------------------------------- how the weight combines with each loss
# one sequence, two tokens: mu = 0.25, 0.25; the learner's recompute pi_old = 0.5, 0.1 (w = 2, 0.4); A = +1
MU = torch.tensor([[LN(0.25), LN(0.25)]])
PI = torch.tensor([[LN(0.5), LN(0.1)]])
ONE = torch.ones(1, 2)


def _run(cfg: AlgoConfig, *, decoupled_prox: bool):
    lp = PI.clone().requires_grad_(True)
    loss, m = compute_loss(
        logprobs=lp, behaviour_logprobs=MU, mask=ONE, advantages=torch.tensor([1.0]), sample_weight=torch.ones(1),
        cfg=cfg, proximal_logprobs=lp.detach() if decoupled_prox else None,
    )
    (g,) = torch.autograd.grad(loss, lp)
    return loss.item(), g[0].tolist(), m


def _cfg(preset, **kw):
    return AlgoConfig.from_preset(preset, kl_coef=0.0, entropy_coef=0.0, **kw)


def test_sft_loss_is_weighted_by_the_correction():
    # RAFT (A = 1): token loss -log pi * c; token TIS C = 1.5: c = min(2, 1.5), min(0.4, 1.5) = 1.5, 0.4
    # loss = (-ln 0.5 * 1.5 - ln 0.1 * 0.4) / 2 tokens; d loss / d log pi_t = -c_t / 2 = -0.75, -0.2
    loss, g, m = _run(_cfg("raft", mismatch={"kind": "token_tis", "cap": 1.5}), decoupled_prox=False)
    assert loss == pytest.approx((-LN(0.5) * 1.5 - LN(0.1) * 0.4) / 2)
    assert g == pytest.approx([-0.75, -0.2])
    assert m["is_trunc_frac"] == pytest.approx(0.5) and m["is_weight_mean"] == pytest.approx(0.95)
    # no correction: plain SFT, c = 1 -> gradient -1/2 on both
    _, g0, _ = _run(_cfg("raft"), decoupled_prox=False)
    assert g0 == pytest.approx([-0.5, -0.5])


def test_decoupled_ratio_times_the_corrected_weight():
    # ratio pi_theta / pi_old = 1 (same forward), so the token loss is -A * c_t and its gradient -c_t / 2
    # token TIS C = 1.5 with is_cap 5: c = 1.5, 0.4
    _, g, m = _run(_cfg("reinforce_rej", decoupled=True, mismatch={"kind": "token_tis", "cap": 1.5}),
                   decoupled_prox=True)
    assert g == pytest.approx([-0.75, -0.2]) and m["is_trunc_frac"] == pytest.approx(0.5)
    # icepop [0.5, 5]: w = 0.4 is masked -> c = 2, 0: gradients -1, 0
    _, g, m = _run(_cfg("reinforce_rej", decoupled=True, mismatch={"kind": "icepop"}), decoupled_prox=True)
    assert g == pytest.approx([-1.0, 0.0]) and m["is_weight_mean"] == pytest.approx(1.0)
    # no correction: today's min(w, is_cap = 1.5) = 1.5, 0.4
    _, g, _ = _run(_cfg("reinforce_rej", decoupled=True, is_cap=1.5), decoupled_prox=True)
    assert g == pytest.approx([-0.75, -0.2])
    # token MIS (hi 5) then is_cap 1.5: min(2, 1.5), min(0.4, 1.5) - the correction, then decoupled's own cap
    _, g, _ = _run(_cfg("reinforce_rej", decoupled=True, is_cap=1.5, mismatch={"kind": "token_mis", "hi": 5.0}),
                   decoupled_prox=True)
    assert g == pytest.approx([-0.75, -0.2])


def test_ratio_against_mu_keeps_only_the_mask_and_the_denominator():
    # not decoupled: ratio s = pi_theta / mu = 2, 0.4, clipped at [0.8, 1.2] for A = +1:
    # token 0 is clipped (s > 1.2: zero gradient), token 1 unclipped (gradient -s / 2 = -0.2).
    _, g, _ = _run(_cfg("reinforce_rej"), decoupled_prox=False)
    assert g == pytest.approx([0.0, -0.2])
    # icepop masks token 1 (0.4 < 0.5): its gradient is 0, but the denominator still counts 2 tokens
    loss, g, m = _run(_cfg("reinforce_rej", mismatch={"kind": "icepop"}), decoupled_prox=False)
    assert g == pytest.approx([0.0, 0.0])
    assert loss == pytest.approx(-1.2 / 2)  # token 0: max(-2, -1.2) = -1.2; token 1: 0; over 2 tokens
    assert m["is_weight_mean"] == pytest.approx(0.5)  # the 0/1 mask: (1 + 0) / 2
    # the same mask with a wider band keeps both: the plain PPO gradient
    _, g, _ = _run(_cfg("reinforce_rej", mismatch={"kind": "token_mis", "lo": 0.3, "hi": 5.0}), decoupled_prox=False)
    assert g == pytest.approx([0.0, -0.2])


def test_correction_metrics_over_a_batch():
    # two sequences: row 0 as above (w = 2, 0.4), row 1 on-policy (w = 1, 1); icepop masks one token of four
    lp = torch.cat([PI, torch.tensor([[LN(0.3), LN(0.3)]])])
    mu = torch.cat([MU, torch.tensor([[LN(0.3), LN(0.3)]])])
    m = correction_metrics(lp, mu, torch.ones(2, 2), _cfg("grpo", mismatch={"kind": "icepop"}))
    assert m == pytest.approx({"is_mask_frac": 0.25, "is_seq_trunc_frac": 0.0, "is_seq_mask_frac": 0.5})
    # seq MIS [0.99, 1.01]: rho_0 = sqrt(2 * 0.4) = 0.894 -> row 0 masked whole: 2 of 4 tokens, 1 of 2 sequences
    m = correction_metrics(lp, mu, torch.ones(2, 2), _cfg("grpo", mismatch={"kind": "seq_mis"}))
    assert m == pytest.approx({"is_mask_frac": 0.5, "is_seq_trunc_frac": 0.0, "is_seq_mask_frac": 0.5})
    assert correction_metrics(lp, mu, torch.ones(2, 2), _cfg("grpo")) == dict.fromkeys(m, 0.0)


# ---------------------------------------------------------------- config
def test_config_defaults_and_validation():
    assert AlgoConfig().mismatch.kind == "none"
    assert AlgoConfig(mismatch={"kind": "token_tis"}, decoupled=True).mismatch.cap == 2.0
    assert (AlgoConfig(mismatch={"kind": "seq_mis"}).mismatch.lo, AlgoConfig(mismatch={"kind": "seq_mis"}).mismatch.hi) \
        == (0.99, 1.01)
    with pytest.raises(ConfigError, match="decoupled=true"):
        AlgoConfig.from_preset("grpo", mismatch={"kind": "token_tis"})
    with pytest.raises(ConfigError, match="decoupled=true"):
        AlgoConfig.from_preset("grpo", mismatch={"kind": "seq_tis"})
    with pytest.raises(ConfigError, match="lo < hi"):
        AlgoConfig.from_preset("grpo", mismatch={"kind": "token_mis", "lo": 1.0, "hi": 1.0})
    with pytest.raises(ConfigError, match="mismatch"):
        AlgoConfig.from_preset("grpo", mismatch={"kind": "token_tis", "cap": 0.5}, decoupled=True)
    with pytest.raises(ConfigError, match="mismatch"):
        AlgoConfig.from_preset("grpo", mismatch={"kind": "bogus"})


@pytest.mark.filterwarnings("ignore:algo.preset=")  # the Fig. 4 ablations warn under {0, 1} rewards
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_takes_every_correction(preset):
    # with a ratio (clipped) the truncations need decoupled; sft presets take every kind as they are
    extra = {"decoupled": True} if AlgoConfig.from_preset(preset).loss == "clipped" else {}
    for kind in ("token_tis", "token_mis", "seq_tis", "seq_mis", "icepop"):
        cfg = AlgoConfig.from_preset(preset, mismatch={"kind": kind}, **(extra if kind.endswith("tis") else {}))
        assert cfg.mismatch.kind == kind


# ---------------------------------------------------------------- a training step reports them
def test_train_step_reports_the_masked_share(tiny):
    from winnow.learner.step import OptimConfig, Trainer

    from .conftest import CORRECT, WRONG, current_logprobs, make_groups

    model, tok = tiny
    groups = make_groups([[CORRECT, WRONG, WRONG, CORRECT]], seed=3)
    groups = copy.deepcopy(groups)
    for g in groups:  # on-policy behaviour log-probs (w = 1) ...
        for s, lp in zip(g.samples, current_logprobs(model, g), strict=True):
            s.behaviour_logprobs = lp
    s0 = groups[0].samples[0]  # ... except the first sample's first token: mu 8x the learner's (w = 1/8)
    s0.behaviour_logprobs = [s0.behaviour_logprobs[0] + LN(8), *s0.behaviour_logprobs[1:]]
    algo = AlgoConfig.from_preset("grpo", kl_coef=0.0, entropy_coef=0.0, mismatch={"kind": "icepop"})
    t = Trainer(model, algo, OptimConfig(lr=1e-3, micro_batch_size=2, weight_decay=0.0), pad_token_id=tok.pad_token_id)
    m = t.train_step(groups)
    n_tok = sum(len(s.response_token_ids) for s in groups[0].samples)
    # one token of the batch is outside [0.5, 5] (1/8): 1 / n_tok tokens, 1 / 4 sequences
    assert m["is_mask_frac"] == pytest.approx(1 / n_tok, rel=1e-4)
    assert m["is_seq_mask_frac"] == pytest.approx(0.25) and m["is_seq_trunc_frac"] == 0.0
    # the loss's own per-micro-batch weight mean agrees: the mask is 0/1, so mean = 1 - masked share
    assert m["is_weight_mean"] == pytest.approx(1 - 1 / n_tok, rel=1e-4)
