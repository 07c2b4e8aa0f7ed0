"""One numerics policy (issue 9, item 1): the learner's held-out evaluation runs the policy exactly as the
generators sample it, at the precision the run trains in."""

from __future__ import annotations

import pytest
import torch

from winnow.hf_engine import HFEngine
from winnow.learner.algo import AlgoConfig
from winnow.learner.evaluate import Evaluator
from winnow.learner.step import OptimConfig, Trainer
from winnow.learner.tiny import build_tiny_model_and_tokenizer
from winnow.numerics import NumericsConfig, resolve_precision, torch_dtype
from winnow.prompts import Problem
from winnow.sampling import SamplingConfig

from .conftest import CORRECT, WRONG, make_groups


class _ContainsGold:
    """Stands in for MathVerifier: CORRECT when the gold letter appears in the response (so a random tiny
    model scores between 0 and 1, and two decoders that differ can score differently)."""

    def verify_batch(self, items):
        from winnow.verdict import Status, Verdict

        return [Verdict(id=i.id, status=Status.CORRECT if i.gold in i.response else Status.WRONG) for i in items]


def _widen(model) -> None:
    """Re-draw the matrices with std 0.2: the default tiny model greedily repeats one token in any dtype;
    this one writes varied text whose greedy path flips between fp32 and bf16 (6 of 16 prompts here)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _generator_responses(trainer, tok, prompts, path, dtype, max_new_tokens):
    """What a generator samples greedily: the published weights loaded into its engine, held in ``dtype``."""
    gen_model, _ = build_tiny_model_and_tokenizer(seed=1)  # other initial weights: load_weights must replace them
    engine = HFEngine(gen_model.to(dtype), tok, max_batch_sequences=8)
    engine.load_weights(path, trainer.version)
    out = engine.generate(prompts, 1, SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens))
    return [g[0].text for g in out]


def test_eval_agrees_with_the_generator_engine_under_autocast(tmp_path):
    """A tiny model trained under bf16 autocast: the learner's eval (greedy responses and accuracy) equals
    what the generator's engine decodes at the same version in bf16. Before the numerics policy the eval
    decoded in fp32 and disagreed (issue 9: eval 0.22 vs sampled 0.875 at the same version)."""
    model, tok = build_tiny_model_and_tokenizer(seed=0)
    _widen(model)
    trainer = Trainer(
        model,
        AlgoConfig(preset="grpo", kl_coef=0.0),
        OptimConfig(lr=1e-4),
        pad_token_id=tok.pad_token_id,
        autocast_dtype=torch.bfloat16,
    )
    for step in range(2):  # trained under autocast
        trainer.train_step(make_groups([[CORRECT, WRONG, WRONG, CORRECT]] * 2, seed=step, policy_version=step))
    assert trainer.version == 2
    problems = [Problem(f"p/{i}", f"What is {i} plus {i % 3}?", "etaoinsh"[i % 8], "math") for i in range(16)]
    ev = Evaluator(tok, problems, max_new_tokens=12, batch_size=8, verifier=_ContainsGold())
    accuracy = ev(trainer)

    path = tmp_path / "v2" / "model.safetensors"
    trainer.save_weights(path)
    prompts = [ev.format(p.problem) for p in problems]
    sampled = _generator_responses(trainer, tok, prompts, str(path), torch.bfloat16, 12)
    in_fp32 = _generator_responses(trainer, tok, prompts, str(path), torch.float32, 12)
    assert sampled != in_fp32, "precondition: this model decodes differently in fp32 and bf16"

    assert ev.last_responses == sampled
    assert accuracy == ev.score(sampled)
    assert trainer.model.training and next(trainer.model.parameters()).dtype == torch.float32


def test_eval_uses_the_model_itself_when_it_is_in_the_compute_dtype():
    model, tok = build_tiny_model_and_tokenizer(seed=0)
    trainer = Trainer(model, AlgoConfig(preset="grpo", kl_coef=0.0), pad_token_id=tok.pad_token_id, autocast_dtype=None)
    assert trainer.compute_dtype == torch.float32
    problems = [Problem("p/0", "What is 1 plus 1?", "2", "math")]
    ev = Evaluator(tok, problems, max_new_tokens=4, batch_size=2, verifier=_ContainsGold())
    ev(trainer)
    assert ev._copy is None and model.training


def test_resolve_precision():
    assert resolve_precision("float32", "cuda") == "float32"
    assert resolve_precision("bfloat16", "cpu") == "bfloat16"
    assert resolve_precision("auto", "cuda") == "bfloat16"
    assert resolve_precision("auto", "mps") == "float32"
    assert torch_dtype("bf16") is torch.bfloat16 and torch_dtype("float32") is torch.float32
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(ValueError, match="dtype: 'int8'"):
        torch_dtype("int8")
    assert NumericsConfig().precision == "auto"


def test_one_precision_setting_for_learner_and_generator(tmp_path):
    """The top-level numerics section reaches both services; the old per-service knobs are clear errors."""
    from winnow.config import ConfigError, load_config
    from winnow.generator.config import GeneratorConfig
    from winnow.learner.config import LearnerConfig

    data = {"numerics": {"precision": "float32"}, "learner": {}, "generator": {}}
    assert load_config(LearnerConfig, data=data).numerics.precision == "float32"
    assert load_config(GeneratorConfig, data=data).numerics.precision == "float32"
    with pytest.raises(ConfigError, match="numerics.precision"):
        load_config(LearnerConfig, data={"learner": {"autocast": "bfloat16"}})
    with pytest.raises(ConfigError, match="numerics.precision"):
        load_config(GeneratorConfig, data={"generator": {"dtype": "bfloat16"}})



def test_one_attention_setting_for_the_generator_engine_and_the_learner(tmp_path):
    """``numerics.attention`` picks one transformers attention kernel for the generators' engine, the learner
    (and so its evaluation, which decodes a copy of the learner's model): eager on CPU by default."""
    from winnow.config import ConfigError, load_config
    from winnow.generator.config import GeneratorConfig
    from winnow.learner.config import LearnerConfig
    from winnow.learner.model import build_trainer
    from winnow.numerics import resolve_attention

    assert resolve_attention("auto", "cpu") == "eager" and resolve_attention("auto", "cuda") is None
    assert resolve_attention("sdpa", "cpu") == "sdpa"
    with pytest.raises(ValueError, match="attention must be"):
        resolve_attention("paged", "cpu")
    with pytest.raises(ConfigError, match="attention"):
        load_config(LearnerConfig, data={"numerics": {"attention": "paged"}, "learner": {}})
    model, tok = build_tiny_model_and_tokenizer(seed=0)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    for attention in ("auto", "sdpa"):
        data = {"numerics": {"attention": attention}, "learner": {"model": str(tmp_path / "m")},
                "generator": {"model": str(tmp_path / "m")}}
        gen_cfg = load_config(GeneratorConfig, data=data)
        engine = HFEngine.from_pretrained(tmp_path / "m", attention=gen_cfg.numerics.attention)
        trainer, _ = build_trainer(load_config(LearnerConfig, data=data))
        want = "eager" if attention == "auto" else "sdpa"
        assert engine.model.config._attn_implementation == want
        assert trainer.model.config._attn_implementation == want


def test_mismatch_stats_hand_computed():
    from winnow.learner.losses import mismatch_stats

    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    behaviour = torch.tensor([[-1.0, -1.0], [-1.0, -3.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    m = mismatch_stats(logprobs, behaviour, mask)
    # log w = 0, -1, 0.5 -> w - 1 - log w = 0, e^-1 = 0.367879, e^0.5 - 1.5 = 0.148721; mean 0.172200
    assert float(m["mismatch_kl"]) == pytest.approx(0.172200, abs=1e-5)
    assert float(m["mismatch_max_abs_log_ratio"]) == pytest.approx(1.0)
    assert float(m["mismatch_tokens"]) == 3
    empty = mismatch_stats(logprobs, behaviour, torch.zeros_like(mask))
    assert float(empty["mismatch_tokens"]) == 0 and float(empty["mismatch_kl"]) == 0


def test_train_step_mismatch_only_at_the_same_version():
    """The behaviour log-probs are the fp32 model's own: in fp32 the mismatch is ~0, under bf16 autocast it is
    the bf16 rounding; groups sampled at another version are not counted."""
    from .conftest import current_logprobs

    model, tok = build_tiny_model_and_tokenizer(seed=0)
    groups = make_groups([[CORRECT, WRONG, CORRECT, WRONG]], vocab=300, seed=3)
    for g in groups:
        for s, lp in zip(g.samples, current_logprobs(model, g), strict=True):
            s.behaviour_logprobs = lp
    results = {}
    for name, autocast in (("fp32", None), ("bf16", torch.bfloat16)):
        trainer = Trainer(copy_of(model), AlgoConfig(preset="grpo", kl_coef=0.0), pad_token_id=tok.pad_token_id,
                          autocast_dtype=autocast)
        results[name] = trainer.train_step(groups)
    assert results["fp32"]["mismatch_tokens"] > 0 and results["fp32"]["mismatch_kl"] < 1e-6
    assert results["fp32"]["mismatch_max_abs_log_ratio"] < 1e-4
    assert results["bf16"]["mismatch_max_abs_log_ratio"] > 1e-3 and results["bf16"]["mismatch_kl"] > 0
    trainer = Trainer(copy_of(model), AlgoConfig(preset="grpo", kl_coef=0.0), pad_token_id=tok.pad_token_id)
    trainer.version = 2  # the groups were sampled at version 0: off-policy, not numerics
    assert trainer.train_step(groups)["mismatch_tokens"] == 0


def copy_of(model):
    import copy

    return copy.deepcopy(model)
