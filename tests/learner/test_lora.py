"""LoRA (issue 28 item 1): the config, a training step that moves only the adapters, the base model as the KL
reference, adapter folders that peft opens and the generators' engine samples with, and the merged export."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from pydantic import ValidationError

from winnow.learner.algo import AlgoConfig
from winnow.learner.config import LearnerConfig, LoraConfig
from winnow.learner.lora import AdaptersOff, LoraTrainer, apply_lora
from winnow.learner.step import OptimConfig
from winnow.learner.tiny import build_tiny_model_and_tokenizer
from winnow.lora import ADAPTER_CONFIG, ADAPTER_FILE

from .conftest import CORRECT, current_logprobs, make_groups
from .test_step import STATUSES, on_policy, sum_logprob

LORA = LoraConfig(rank=4, alpha=8.0)


def lora_trainer(preset: str = "reinforce_rej", lr: float = 1e-2, share_prompt: bool = False, **algo) -> LoraTrainer:
    algo.setdefault("kl_coef", 0.0)
    algo.setdefault("entropy_coef", 0.0)
    model, tok = build_tiny_model_and_tokenizer(seed=0)
    model = apply_lora(model, LORA)
    return LoraTrainer(model, AlgoConfig.from_preset(preset, **algo),
                       OptimConfig(lr=lr, micro_batch_size=4, weight_decay=0.0, share_prompt=share_prompt),
                       ref_model=AdaptersOff(model), pad_token_id=tok.pad_token_id)


def test_lora_config_is_validated():
    assert LearnerConfig().lora is None  # full fine-tuning unless asked
    cfg = LearnerConfig(lora={"rank": 8, "target_modules": ["q_proj", "v_proj"]})
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (8, 32.0, 0.0,
                                                                                         ["q_proj", "v_proj"])
    assert LearnerConfig(lora={}).lora.target_modules == "all-linear"
    with pytest.raises(ValidationError, match="lora.dropout must be 0"):
        LearnerConfig(lora={"dropout": 0.05})
    with pytest.raises(ValidationError, match="target_modules"):
        LearnerConfig(lora={"target_modules": []})
    with pytest.raises(ValidationError, match="rank"):
        LearnerConfig(lora={"rank": 0})
    with pytest.raises(ValidationError, match="alpha"):
        LearnerConfig(lora={"alpha": 0})
    with pytest.raises(ValidationError, match="Extra inputs"):
        LearnerConfig(lora={"r": 8})


def test_a_step_moves_only_the_adapters_and_in_the_right_direction():
    tr = lora_trainer()
    model = tr.model
    adapters = {n for n, p in model.named_parameters() if p.requires_grad}
    assert adapters and all("lora_A" in n or "lora_B" in n for n in adapters)
    # AdamW holds exactly the adapter parameters: the base weights get no moments
    in_optimizer = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for n, p in model.named_parameters() if n in adapters}
    groups = on_policy(model, make_groups(STATUSES, seed=2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    correct0 = sum_logprob(model, groups, CORRECT)
    result = tr.train_step(groups)
    assert tr.version == 1 and result["grad_norm"] > 0
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= adapters  # base weights bit-identical
    assert any("lora_B" in n for n in moved)  # B starts at zero and must move for the policy to change
    # on-policy (ratio 1), rewards {0, 1}: pg_loss = -mean(A) over tokens <= 0; correct answers become likelier
    assert result["pg_loss"] < 0 and result["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert sum_logprob(model, groups, CORRECT) > correct0


@pytest.mark.parametrize("share_prompt", [False, True], ids=["plain", "share_prompt"])
def test_the_kl_reference_is_the_base_model_and_kl_is_zero_at_step_0(share_prompt):
    tr = lora_trainer(preset="grpo", kl_coef=0.1, share_prompt=share_prompt)
    assert isinstance(tr.ref_model, AdaptersOff) and not list(tr.ref_model.parameters())  # no copy of the model
    groups = make_groups(STATUSES)
    first = tr.train_step(groups)
    assert first["kl"] == 0.0  # B = 0: policy == base at step 0, exactly
    assert all(p.requires_grad for n, p in tr.model.named_parameters() if "lora_" in n)  # the reference froze nothing
    second = tr.train_step(groups)
    assert second["kl"] > 0
    # the reference's log-probs are the untouched base model's, after the policy moved
    base, _ = build_tiny_model_and_tokenizer(seed=0)
    g = groups[0]
    ids = torch.tensor([g.prompt_token_ids + g.samples[0].response_token_ids])
    with torch.no_grad():
        assert torch.allclose(tr.ref_model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-5)
        assert not torch.allclose(tr.model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-5)


def test_build_trainer_applies_lora(tmp_path):
    from winnow.learner.model import build_trainer
    from winnow.learner.tiny import save_tiny

    model_dir = save_tiny(tmp_path / "tiny")
    cfg = LearnerConfig(model=model_dir, device="cpu", numerics={"precision": "float32"},
                        algo={"preset": "grpo", "kl_coef": 0.05}, lora={"rank": 4, "target_modules": ["q_proj"]})
    tr, _ = build_trainer(cfg)
    assert isinstance(tr, LoraTrainer) and isinstance(tr.ref_model, AdaptersOff)
    trained = [n for n, p in tr.model.named_parameters() if p.requires_grad]
    assert trained and all("q_proj.lora_" in n for n in trained)


def test_published_adapter_opens_with_peft_and_gives_the_learners_logits(tmp_path):
    from peft import PeftModel

    from winnow.learner.weights import WeightPublisher

    tr = lora_trainer()
    groups = on_policy(tr.model, make_groups(STATUSES))
    for _ in range(2):
        tr.train_step(groups)
    ann = WeightPublisher(tmp_path / "store", None, "weights", hf_model=tr.model).write(tr)
    folder = tmp_path / "store" / "v00000002"
    assert ann.format == "peft_adapter" and ann.version == 2
    assert ann.uri == (folder / ADAPTER_FILE).as_uri()
    assert sorted(p.name for p in folder.iterdir()) == [ADAPTER_CONFIG, ADAPTER_FILE]  # adapters only
    assert ann.sha256 == hashlib.sha256((folder / ADAPTER_FILE).read_bytes()).hexdigest()
    assert json.loads((folder / ADAPTER_CONFIG).read_text())["r"] == 4
    base, _ = build_tiny_model_and_tokenizer(seed=0)
    opened = PeftModel.from_pretrained(base, str(folder)).eval()
    ids = torch.tensor([groups[0].prompt_token_ids + groups[0].samples[0].response_token_ids])
    tr.model.eval()
    with torch.no_grad():
        assert torch.allclose(opened(input_ids=ids).logits, tr.model(input_ids=ids).logits, atol=1e-5)


def test_the_engine_samples_with_a_published_adapter(tmp_path):
    from winnow.hf_engine import HFEngine
    from winnow.sampling import SamplingConfig, WeightLoadError

    tr = lora_trainer()
    groups = on_policy(tr.model, make_groups(STATUSES))
    for _ in range(3):
        tr.train_step(groups)
    path = tmp_path / "v3" / ADAPTER_FILE
    tr.save_weights(path)
    base, tok = build_tiny_model_and_tokenizer(seed=0)
    engine = HFEngine(base, tok, version=0)
    engine.load_weights(str(path), 3)
    assert engine.version == 3
    prompt = groups[0].prompt_token_ids
    out = engine.generate([prompt], 3, SamplingConfig(temperature=1.0, max_new_tokens=6, seed=0))
    tr.model.eval()
    from winnow.learner.batch import GroupData, SampleData

    for c in out[0]:  # the behaviour log-probs are the learner's model's (the adapter is active)
        g = GroupData("p", "r", prompt, [SampleData(c.token_ids, [], [], CORRECT)])
        assert torch.allclose(torch.tensor(c.logprobs), torch.tensor(current_logprobs(tr.model, g)[0]), atol=1e-4)
        base_lp = current_logprobs(build_tiny_model_and_tokenizer(seed=0)[0], g)[0]
        assert not torch.allclose(torch.tensor(c.logprobs), torch.tensor(base_lp), atol=1e-4)
    # another rank cannot replace the active adapter: refused, nothing changes
    other = LoraTrainer(apply_lora(build_tiny_model_and_tokenizer(seed=0)[0], LoraConfig(rank=2)),
                        AlgoConfig.from_preset("raft", kl_coef=0.0), OptimConfig(), ref_model=None, pad_token_id=tok.pad_token_id)
    other.save_weights(tmp_path / "v4")
    with pytest.raises(WeightLoadError, match="differs from the active adapter"):
        engine.load_weights(str(tmp_path / "v4" / ADAPTER_FILE), 4)
    assert engine.version == 3


def test_a_checkpoint_resumes_the_adapters_and_their_optimizer_state(tmp_path):
    from winnow.learner.checkpoint import LearnerState

    tr = lora_trainer()
    groups = on_policy(tr.model, make_groups(STATUSES))
    tr.train_step(groups)
    folder = tr.write_checkpoint(tmp_path / "ckpt", LearnerState(version=tr.version), keep=1)
    resumed = lora_trainer()  # rebuilt from the initial weights, as a restarted learner is
    resumed.read_checkpoint(folder)
    assert resumed.version == 1
    a, b = tr.train_step(groups), resumed.train_step(groups)
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    for (n, p), (_, q) in zip(tr.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), n
