"""The HF sampling engine: behaviour log-probs equal a plain recompute, EOS handling, n samples,
seeds, top-k/top-p processing, strict weight loading."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from winnow.generator.engine import Engine
from winnow.hf_engine import HFEngine
from winnow.sampling import (
    GenerationCancelled,
    SamplingConfig,
    WeightLoadError,
    process_logprobs,
    sample_tokens,
)


def eos_biased_model(eos_bias: float, seed: int = 0):
    """A tiny model whose LM head adds ``eos_bias`` to the EOS logit (untied head with a bias), so
    completions end early with a useful probability. Returns (model, tokenizer)."""
    from winnow.learner.tiny import build_tiny_model_and_tokenizer

    model, tok = build_tiny_model_and_tokenizer(seed=seed, tie_word_embeddings=False)
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[tok.eos_token_id] = eos_bias
    model.lm_head = head
    return model, tok


def recompute_logprobs(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """log pi(response_t | prompt, response_<t) by one plain forward (temperature 1, no truncation)."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)[len(prompt) - 1 : -1]
    return lp.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


PROMPTS = [[5, 17, 33, 80, 12], [7, 7, 200, 31], [100, 101, 102, 103, 104, 105, 106, 9]]


def test_process_logprobs_hand_computed():
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]])
    # temperature 1, no truncation: the model's own distribution
    assert torch.allclose(process_logprobs(logits, 1.0).exp(), torch.tensor([[0.5, 0.3, 0.2]]), atol=1e-6)
    # top_k=2 keeps 0.5, 0.3 -> renormalised 0.625, 0.375
    assert torch.allclose(
        process_logprobs(logits, 1.0, top_k=2).exp(), torch.tensor([[0.625, 0.375, 0.0]]), atol=1e-6
    )
    # top_p=0.6: mass before each token (sorted) is 0, 0.5, 0.8 -> keep tokens 0 and 1 (0.5 < 0.6)
    assert torch.allclose(
        process_logprobs(logits, 1.0, top_p=0.6).exp(), torch.tensor([[0.625, 0.375, 0.0]]), atol=1e-6
    )
    # top_p=0.5: mass before token 1 is 0.5 >= 0.5 -> only the argmax
    assert torch.allclose(process_logprobs(logits, 1.0, top_p=0.5).exp(), torch.tensor([[1.0, 0.0, 0.0]]))
    # temperature 2: p ∝ p^(1/2) = sqrt(.5), sqrt(.3), sqrt(.2), normalised
    s = torch.tensor([0.5, 0.3, 0.2]).sqrt()
    assert torch.allclose(process_logprobs(logits, 2.0).exp()[0], s / s.sum(), atol=1e-6)
    # greedy: point mass on the argmax
    assert process_logprobs(logits, 0.0)[0].tolist() == [0.0, float("-inf"), float("-inf")]


def test_sample_tokens_draws_the_recorded_distribution():
    """200,000 draws per row of two hand-set distributions (one with a token of probability 0, one that is a row of
    a large vocabulary): each token's frequency within 5 standard errors of its probability, the zero-probability
    token never; a seeded generator repeats the draw."""
    probs = torch.tensor([[0.1, 0.0, 0.25, 0.65, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]])
    rows = 200_000
    lp = probs.log().repeat_interleave(rows, 0)
    g = torch.Generator().manual_seed(3)
    tok = sample_tokens(lp, g)
    assert tok.dtype == torch.int64 and tok.shape == (2 * rows,)
    for r in range(2):
        freq = torch.bincount(tok[r * rows : (r + 1) * rows], minlength=5).double() / rows
        se = (probs[r].double() * (1 - probs[r].double()) / rows).sqrt()
        assert ((freq - probs[r].double()).abs() <= 5 * se + 1e-12).all(), (r, freq, probs[r])
    assert not torch.isin(tok[:rows], torch.tensor([1, 4])).any()
    assert torch.equal(sample_tokens(lp, torch.Generator().manual_seed(3)), tok)
    big = torch.full((4, 49_152), -30.0)
    big[:, 49_151] = 0.0  # all the mass on the last token: the upper edge of the cumulative sum
    assert sample_tokens(torch.log_softmax(big, -1)).tolist() == [49_151] * 4


def test_engine_satisfies_protocol(tiny):
    model, tok = tiny
    assert isinstance(HFEngine(model, tok), Engine)


def test_behaviour_logprobs_match_a_plain_recompute(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    out = engine.generate(PROMPTS, 3, SamplingConfig(max_new_tokens=12, seed=0))
    assert [len(g) for g in out] == [3, 3, 3]
    for prompt, group in zip(PROMPTS, out, strict=True):
        for c in group:
            assert len(c.token_ids) == len(c.logprobs)
            assert (c.finish_reason, len(c.token_ids)) == ("length", 12) or c.token_ids[
                -1
            ] == tok.eos_token_id
            ref = recompute_logprobs(model, prompt, c.token_ids)
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=1e-4)
            assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
    # the n samples of a prompt are distinct draws
    assert len({tuple(c.token_ids) for c in out[0]}) > 1


def test_a_prefix_common_to_the_prompts_is_prefilled_once_and_changes_nothing(tiny):
    """Prompts sharing a 12-token prefix (a system prompt, few-shot turns): the prefill runs the prefix once
    (batch 1), then the suffixes (batch 3); the behaviour log-probs still equal a plain recompute of each
    prompt + response, and greedy decoding is the same as with the left-padded prefill."""
    import winnow.hf_engine as hf

    model, tok = tiny
    common = list(range(40, 52))
    prompts = [common + [5, 17], common + [7, 7, 200, 31, 2], common + [9]]
    calls = []
    hook = model.register_forward_pre_hook(lambda _m, _a, kw: calls.append(tuple(kw["input_ids"].shape)),
                                           with_kwargs=True)
    try:
        out = HFEngine(model, tok).generate(prompts, 2, SamplingConfig(max_new_tokens=8, seed=0))
    finally:
        hook.remove()
    assert calls[:3] == [(1, 12), (3, 5), (6, 1)]
    for prompt, group in zip(prompts, out, strict=True):
        for c in group:
            ref = recompute_logprobs(model, prompt, c.token_ids)
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=1e-4)
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=8)
    shared = HFEngine(model, tok).generate(prompts, 1, greedy)
    old = hf.MIN_COMMON_PREFIX
    hf.MIN_COMMON_PREFIX = 10**9  # the left-padded prefill of every prompt
    try:
        plain = HFEngine(model, tok).generate(prompts, 1, greedy)
    finally:
        hf.MIN_COMMON_PREFIX = old
    assert [g[0].token_ids for g in shared] == [g[0].token_ids for g in plain]


def test_truncated_sampling_records_processed_logprobs(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    s = SamplingConfig(max_new_tokens=8, temperature=0.7, top_k=20, top_p=0.9, seed=1)
    out = engine.generate(PROMPTS[:1], 2, s)
    for c in out[0]:
        ids = torch.tensor([PROMPTS[0] + c.token_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(PROMPTS[0]) - 1 : -1]
        ref = (
            process_logprobs(logits, 0.7, 20, 0.9).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
        )
        torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=1e-4)
        assert all(math.isfinite(v) for v in c.logprobs)  # sampled tokens are inside the nucleus


def test_eos_ends_completion_and_is_kept():
    model, tok = eos_biased_model(eos_bias=3.5)
    engine = HFEngine(model, tok, max_batch_sequences=7)  # forces chunking: 3 prompts x 4 > 7
    out = engine.generate(PROMPTS, 4, SamplingConfig(max_new_tokens=10, seed=3))
    eos = tok.eos_token_id
    reasons = [c.finish_reason for g in out for c in g]
    assert "stop" in reasons and "length" in reasons  # this seed gives both
    for prompt, group in zip(PROMPTS, out, strict=True):
        assert len(group) == 4
        for c in group:
            assert len(c.token_ids) == len(c.logprobs)
            if c.finish_reason == "stop":
                assert c.token_ids[-1] == eos and eos not in c.token_ids[:-1]
            else:
                assert len(c.token_ids) == 10 and eos not in c.token_ids
            ref = recompute_logprobs(model, prompt, c.token_ids)  # EOS log-prob included
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=1e-4)


def test_seed_reproducible(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    s = SamplingConfig(max_new_tokens=6, seed=42)
    a = engine.generate(PROMPTS, 2, s)
    b = engine.generate(PROMPTS, 2, s)
    assert [[c.token_ids for c in g] for g in a] == [[c.token_ids for c in g] for g in b]


def test_greedy_is_argmax(tiny):
    model, tok = tiny
    out = HFEngine(model, tok).generate(PROMPTS[:1], 2, SamplingConfig(max_new_tokens=5, temperature=0.0))
    assert out[0][0].token_ids == out[0][1].token_ids and out[0][0].logprobs == [0.0] * 5
    ids = list(PROMPTS[0])
    for t in out[0][0].token_ids:
        with torch.no_grad():
            assert int(model(torch.tensor([ids])).logits[0, -1].argmax()) == t
        ids.append(t)


def test_cancel_interrupts_generation(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    engine.cancel()
    with pytest.raises(GenerationCancelled):
        engine.generate(PROMPTS, 1, SamplingConfig(max_new_tokens=4))
    engine.clear_cancel()
    assert len(engine.generate(PROMPTS, 1, SamplingConfig(max_new_tokens=4))) == 3


def test_load_weights_changes_outputs_and_version(tmp_path):
    from winnow.learner.tiny import build_tiny_model_and_tokenizer

    model, tok = build_tiny_model_and_tokenizer(seed=0)
    other, _ = build_tiny_model_and_tokenizer(seed=1)
    engine = HFEngine(model, tok, version=0)
    s = SamplingConfig(max_new_tokens=8, seed=11)
    before = engine.generate(PROMPTS, 1, s)
    # a learner-style file: the tied lm_head.weight alias is omitted
    state = {k: v.contiguous() for k, v in other.state_dict().items() if k != "lm_head.weight"}
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    engine.load_weights(str(path), version=5)
    assert engine.version == 5
    after = engine.generate(PROMPTS, 1, s)
    assert [g[0].logprobs for g in after] != [g[0].logprobs for g in before]
    ref = HFEngine(other, tok).generate(PROMPTS, 1, s)  # same seed, same weights: same draws
    assert [g[0].token_ids for g in after] == [g[0].token_ids for g in ref]
    for a, r in zip(after, ref, strict=True):
        assert a[0].logprobs == pytest.approx(r[0].logprobs, abs=1e-5)


def test_load_weights_rejects_other_architecture_and_keeps_model(tmp_path):
    from winnow.learner.tiny import build_tiny_model_and_tokenizer

    model, tok = build_tiny_model_and_tokenizer(seed=0)
    engine = HFEngine(model, tok, version=3)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    bigger, _ = build_tiny_model_and_tokenizer(seed=1, hidden=96)
    path = tmp_path / "big.safetensors"
    save_file({k: v.contiguous() for k, v in bigger.state_dict().items() if k != "lm_head.weight"}, str(path))
    with pytest.raises(WeightLoadError, match="shape mismatches"):
        engine.load_weights(str(path), version=4)
    partial = tmp_path / "partial.safetensors"
    save_file({"model.norm.weight": torch.ones(64), "extra.weight": torch.ones(2)}, str(partial))
    with pytest.raises(WeightLoadError, match=r"missing keys .*unexpected keys \['extra.weight'\]"):
        engine.load_weights(str(partial), version=4)
    assert engine.version == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k]), k
