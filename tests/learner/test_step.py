"""Trainer.train_step on the tiny model: it learns in the right direction, micro-batching is exact,
edge cases stay finite, checkpoints resume identically, weights files are what they claim."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from winnow.brokers import free_port
from winnow.learner.algo import AlgoConfig
from winnow.learner.batch import GroupData
from winnow.learner.step import OptimConfig, Trainer
from winnow.learner.tiny import build_tiny_model_and_tokenizer

from .conftest import CORRECT, WRONG, current_logprobs, make_groups

STATUSES = [
    [CORRECT, WRONG, WRONG, CORRECT],
    [WRONG, WRONG, WRONG, WRONG],
    [CORRECT, CORRECT, CORRECT, WRONG],
]


def on_policy(model, groups: list[GroupData]) -> list[GroupData]:
    """The groups with behaviour log-probs replaced by the model's own (as if it had sampled them)."""
    groups = copy.deepcopy(groups)
    for g in groups:
        for s, lp in zip(g.samples, current_logprobs(model, g), strict=True):
            s.behaviour_logprobs = lp
    return groups


def trainer(model, tok, preset="reinforce_rej", lr=1e-3, mbs=4, **algo):
    algo.setdefault("kl_coef", 0.0)
    algo.setdefault("entropy_coef", 0.0)
    return Trainer(
        model,
        AlgoConfig.from_preset(preset, **algo),
        OptimConfig(lr=lr, micro_batch_size=mbs, weight_decay=0.0),
        pad_token_id=tok.pad_token_id,
    )


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def sum_logprob(model, groups, status) -> float:
    return sum(
        sum(lp)
        for g in groups
        for s, lp in zip(g.samples, current_logprobs(model, g), strict=True)
        if s.status == status
    )


def test_raft_step_moves_params_and_raises_correct_logprobs(tiny):
    model, tok = tiny
    groups = make_groups(STATUSES, seed=1)
    before, lp_before = params(model), sum_logprob(model, groups, CORRECT)
    t = trainer(model, tok, "raft", lr=1e-2)
    m = t.train_step(groups)
    # SFT loss -mean log pi > 0 (a random 384-way model: about log 384 = 5.95 per token)
    assert 4.0 < m["loss"] < 8.0 and m["loss"] == pytest.approx(m["pg_loss"])
    assert m["skipped"] == 0 and t.version == 1 and m["grad_norm"] > 0
    assert any(not torch.equal(before[k], v) for k, v in params(model).items())
    assert sum_logprob(model, groups, CORRECT) > lp_before + 1.0
    # RAFT keeps the correct samples: 2 + 0 + 3 = 5 of 12
    assert m["sequences"] == 5 and m["acceptance_rate"] == pytest.approx(5 / 12)


@pytest.mark.parametrize("preset", ["reinforce", "grpo", "reinforce_rej", "raft++"])
def test_policy_gradient_step_sign(tiny, preset):
    """On-policy, ratio = 1: the clipped loss is -mean(A) over tokens; correct answers become likelier."""
    model, tok = tiny
    groups = on_policy(model, make_groups(STATUSES, seed=2))
    lp_correct, lp_wrong = sum_logprob(model, groups, CORRECT), sum_logprob(model, groups, WRONG)
    t = trainer(model, tok, preset, lr=1e-2)
    m = t.train_step(groups)
    if preset == "grpo":
        # mean-zero advantages per group; token-mean weights longer answers more, so only |loss| is small
        assert abs(m["pg_loss"]) < 0.5
        assert sum_logprob(model, groups, WRONG) < lp_wrong
    else:
        assert m["pg_loss"] < 0  # rewards {0, 1}: -A * ratio <= 0 with A >= 0
    assert sum_logprob(model, groups, CORRECT) > lp_correct
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-4) and m["clip_frac"] == 0.0
    assert m["ess"] == pytest.approx(1.0, abs=1e-4) and abs(m["mismatch_kl"]) < 1e-5


def _grads(model, tok, mbs: int, preset: str, **algo) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    t = trainer(model, tok, preset, mbs=mbs, **algo)
    groups = make_groups(STATUSES, seed=4)  # off-policy behaviour log-probs: ratios far from 1, clipping
    m = t.forward_backward(groups)
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}, m


@pytest.mark.parametrize(
    ("preset", "algo"),
    [
        ("grpo", {"kl_coef": 0.05, "entropy_coef": 0.01}),
        ("raft", {"agg": "seq-mean-token-mean"}),
        ("reinforce_rej", {"agg": "seq-mean-token-sum", "decoupled": True}),
    ],
)
def test_micro_batch_size_does_not_change_the_gradient(preset, algo):
    m1, tok = build_tiny_model_and_tokenizer(seed=5)
    m2 = copy.deepcopy(m1)
    g_full, met_full = _grads(m1, tok, 12, preset, **algo)
    g_one, met_one = _grads(m2, tok, 1, preset, **algo)
    assert g_full.keys() == g_one.keys() and g_full
    for k in g_full:
        torch.testing.assert_close(g_one[k], g_full[k], atol=1e-6, rtol=1e-4, msg=k)
    for k in ("loss", "pg_loss", "kl", "entropy", "clip_frac", "ratio_mean", "ratio_max", "tokens"):
        assert met_one[k] == pytest.approx(met_full[k], rel=1e-5, abs=1e-7), k


def test_gradient_checkpointing_gives_the_same_gradient():
    m1, tok = build_tiny_model_and_tokenizer(seed=6)
    m2 = copy.deepcopy(m1)
    groups = make_groups(STATUSES, seed=6)
    t1 = trainer(m1, tok, "grpo")
    t2 = Trainer(
        m2, t1.algo, t1.optim_cfg.model_copy(update={"gradient_checkpointing": True}), pad_token_id=0
    )
    assert m2.is_activation_checkpointing and not m1.is_activation_checkpointing
    t1.forward_backward(groups)
    t2.forward_backward(groups)
    for (k, p1), p2 in zip(m1.named_parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(p2.grad, p1.grad, atol=1e-6, rtol=1e-5, msg=k)


def test_nothing_to_train_on_advances_version_without_touching_weights(tiny):
    model, tok = tiny
    t = trainer(model, tok, "raft")
    before = params(model)
    m = t.train_step(make_groups([[WRONG] * 4, [WRONG] * 4]))
    assert t.version == 1 and m["skipped"] == 1.0 and m["tokens"] == 0 and m["grad_norm"] == 0
    assert all(v == v and abs(v) != float("inf") for v in m.metrics.values()), m  # no NaN/inf anywhere
    assert all(torch.equal(before[k], v) for k, v in params(model).items())
    # and the next step with signal trains normally (optimizer state was not corrupted)
    m = t.train_step(make_groups([[CORRECT, WRONG, WRONG, WRONG]]))
    assert (
        m["skipped"] == 0
        and t.version == 2
        and any(not torch.equal(before[k], v) for k, v in params(model).items())
    )


def test_reference_model_only_with_kl(tiny):
    model, tok = tiny
    assert trainer(model, tok, "grpo", kl_coef=0.0).ref_model is None
    t = trainer(model, tok, "grpo", kl_coef=0.1)
    assert t.ref_model is not None and t.ref_model is not model
    assert all(not p.requires_grad for p in t.ref_model.parameters())
    ref_before = params(t.ref_model)
    groups = make_groups(STATUSES, seed=7)
    m0 = t.train_step(groups)
    assert m0["kl"] == pytest.approx(0.0, abs=1e-7)  # first step: policy == reference
    m1 = t.train_step(groups)
    assert m1["kl"] > 0  # the policy moved away; the reference did not
    assert all(torch.equal(ref_before[k], v) for k, v in params(t.ref_model).items())
    assert m1["time_ref_s"] > 0


def test_state_dict_round_trip_resumes_identically():
    groups_a = make_groups(STATUSES, seed=8)
    groups_b = make_groups([[CORRECT, WRONG, CORRECT, WRONG]] * 2, seed=9)
    m_ref, tok = build_tiny_model_and_tokenizer(seed=1)
    init = copy.deepcopy(m_ref)

    straight = trainer(m_ref, tok, "grpo", kl_coef=0.01)
    straight.train_step(groups_a)
    straight.train_step(groups_b)

    first = trainer(copy.deepcopy(init), tok, "grpo", kl_coef=0.01)
    first.train_step(groups_a)
    sd = copy.deepcopy(first.state_dict())
    resumed = trainer(copy.deepcopy(init), tok, "grpo", kl_coef=0.01)  # built from the initial weights
    resumed.load_state_dict(sd)
    assert resumed.version == 1
    resumed.train_step(groups_b)

    assert resumed.version == straight.version == 2
    for (k, p), q in zip(m_ref.named_parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, atol=0, rtol=0, msg=k)


def test_save_weights_sha256_tied_embeddings_and_reload(tiny, tmp_path):
    model, tok = tiny
    t = trainer(model, tok, "raft")
    t.train_step(make_groups(STATUSES, seed=10))
    digest = t.save_weights(tmp_path / "v1")
    f = tmp_path / "v1" / "model.safetensors"
    assert digest == hashlib.sha256(f.read_bytes()).hexdigest()
    assert [p.name for p in (tmp_path / "v1").iterdir()] == ["model.safetensors"]  # no temp file left
    tensors = load_file(f)
    # tied: lm_head.weight shares the embedding; written once, under the first name
    assert "model.embed_tokens.weight" in tensors and "lm_head.weight" not in tensors
    with safe_open(f, "pt") as h:
        meta = h.metadata()
    assert (
        json.loads(meta["tied"]) == {"lm_head.weight": "model.embed_tokens.weight"} and meta["version"] == "1"
    )
    fresh, _ = build_tiny_model_and_tokenizer(seed=123)
    missing, unexpected = fresh.load_state_dict(tensors, strict=False)
    assert missing == ["lm_head.weight"] and unexpected == []
    for (k, p), q in zip(model.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q), k
    # bf16 copy for the generators; a file path works too
    d2 = t.save_weights(tmp_path / "w.safetensors", dtype=torch.bfloat16)
    assert d2 == hashlib.sha256((tmp_path / "w.safetensors").read_bytes()).hexdigest() != digest
    assert load_file(tmp_path / "w.safetensors")["model.norm.weight"].dtype == torch.bfloat16


def test_on_policy_behaviour_gives_unit_ratio_and_decoupled_matches(tiny):
    model, tok = tiny
    groups = on_policy(model, make_groups(STATUSES, seed=11))
    twin = copy.deepcopy(model)
    t = trainer(model, tok, "grpo")
    m = t.forward_backward(groups)
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and m["ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert m["clip_frac"] == 0.0 and m["ess"] == pytest.approx(1.0, abs=1e-6)
    # decoupled: proximal = current policy = behaviour here, so the gradient is the same
    md = trainer(twin, tok, "grpo", decoupled=True).forward_backward(groups)
    assert md["is_weight_mean"] == pytest.approx(1.0, abs=1e-5)
    for (k, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-4, msg=k)
    assert t.train_step(groups)["grad_norm"] > 0


def test_staleness_and_warmup(tiny):
    model, tok = tiny
    t = Trainer(
        model,
        AlgoConfig.from_preset("raft", kl_coef=0.0),
        OptimConfig(lr=1e-3, warmup_steps=4),
        pad_token_id=tok.pad_token_id,
    )
    t.version = 5
    m = t.train_step(make_groups(STATUSES, seed=12, policy_version=3))
    assert m["staleness_mean"] == 2 and m["staleness_max"] == 2
    assert m["lr"] == pytest.approx(1e-3)  # version 5 >= warm-up
    t.version = 0
    assert t.lr_at(0) == pytest.approx(1e-3 / 4) and t.lr_at(3) == pytest.approx(1e-3)




def test_data_parallel_hooks_with_one_gloo_rank_match_single_process():
    dist = torch.distributed
    m1, tok = build_tiny_model_and_tokenizer(seed=13)
    m2 = copy.deepcopy(m1)
    groups = make_groups(STATUSES, seed=13)
    plain = trainer(m1, tok, "reinforce_rej").train_step(groups)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        t = trainer(m2, tok, "reinforce_rej")
        t.dp_group = dist.group.WORLD
        m = t.train_step(groups)
    finally:
        dist.destroy_process_group()
    assert m["loss"] == pytest.approx(plain["loss"]) and m["tokens"] == plain["tokens"]
    for (k, p), q in zip(m1.named_parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(q, p, msg=k)


def test_logprob_knobs_come_from_the_optim_config():
    """``optim.logprob_mode`` / ``optim.logprob_chunk_size`` (the learner config) set the Trainer's; its kwargs,
    when given, override them."""
    model, _ = build_tiny_model_and_tokenizer(seed=3)
    algo = AlgoConfig.from_preset("grpo", kl_coef=0.0)
    t = Trainer(model, algo, OptimConfig(logprob_mode="logits", logprob_chunk_size=7), pad_token_id=0)
    assert (t.logprob_mode, t.logprob_chunk_size) == ("logits", 7)
    t = Trainer(model, algo, OptimConfig(logprob_mode="logits", logprob_chunk_size=7), pad_token_id=0,
                logprob_mode="hidden", logprob_chunk_size=9)
    assert (t.logprob_mode, t.logprob_chunk_size) == ("hidden", 9)


def test_hidden_and_logits_modes_agree():
    """The chunked LM head over hidden states equals the model's own logits path (tied embeddings too)."""
    m1, tok = build_tiny_model_and_tokenizer(seed=14)
    m2 = copy.deepcopy(m1)
    groups = make_groups(STATUSES, seed=14)
    algo = AlgoConfig.from_preset("grpo", kl_coef=0.05, entropy_coef=0.01)
    opt = OptimConfig(lr=1e-3, micro_batch_size=5)
    th = Trainer(m1, algo, opt, pad_token_id=0, logprob_mode="hidden", logprob_chunk_size=7)
    tl = Trainer(m2, algo, opt, pad_token_id=0, logprob_mode="logits")
    auto = Trainer(copy.deepcopy(m1), algo, opt, pad_token_id=0)
    assert auto.logprob_mode == "hidden" and auto.logprob_chunk_size == 8192  # 1 << 24 // 384, clamped
    mh, ml = th.forward_backward(groups), tl.forward_backward(groups)
    for k in ("loss", "entropy", "kl", "ratio_mean"):
        assert mh[k] == pytest.approx(ml[k], rel=1e-5), k
    for (k, p1), p2 in zip(m1.named_parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(p1.grad, p2.grad, atol=1e-6, rtol=1e-4, msg=k)


def test_token_outside_vocabulary_names_the_request(tiny):
    model, tok = tiny
    groups = make_groups(STATUSES, seed=15)
    groups[1].samples[2].response_token_ids[0] = 10_000
    with pytest.raises(ValueError, match=r"request_id='r1'.*10000 is outside the model's vocabulary \(384\)"):
        trainer(model, tok).train_step(groups)


def test_dropout_is_disabled_so_on_policy_ratio_is_exactly_one():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        attention_dropout=0.5,
    )
    model = Qwen2ForCausalLM(cfg)
    t = trainer(model, type("Tok", (), {"pad_token_id": 0})(), "grpo")
    assert all(getattr(m, "attention_dropout", 0.0) == 0.0 for m in model.modules())
    model.eval()
    groups = on_policy(model, make_groups(STATUSES, seed=16))
    assert t.forward_backward(groups)["ratio_max"] == pytest.approx(1.0, abs=1e-5)


def test_step_result_is_typed_and_names_each_group(tiny):
    """raft on [all wrong, 1 of 4 correct, all correct]: the first is not trained (all_wrong), the others are
    (raft keeps correct samples even in an all-correct group)."""
    model, tok = tiny
    r = trainer(model, tok, "raft").train_step(
        make_groups([[WRONG] * 4, [CORRECT, WRONG, WRONG, WRONG], [CORRECT] * 4])
    )
    assert r.group_outcomes == ("all_wrong", "trained", "trained")
    assert r["acceptance_rate"] == pytest.approx(5 / 12) and r["kept_group_fraction"] == pytest.approx(2 / 3)
    assert r.skipped is False and r["tokens"] > 0
    r = trainer(model, tok, "reinforce_rej").train_step(make_groups([[WRONG] * 4, [CORRECT] * 4]))
    assert r.group_outcomes == ("all_wrong", "all_correct") and r.skipped is True
