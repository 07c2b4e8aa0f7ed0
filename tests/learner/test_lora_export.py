"""``winnow export RUN OUT [--merge]`` of a LoRA run (issue 28 item 1): the adapter folder, or the merged model."""

from __future__ import annotations

import json

import pytest
import torch

from winnow.learner.algo import AlgoConfig
from winnow.learner.config import LoraConfig
from winnow.learner.lora import LoraTrainer, apply_lora
from winnow.learner.step import OptimConfig
from winnow.learner.tiny import save_tiny
from winnow.lora import ADAPTER_FILE

from .conftest import make_groups
from .test_step import STATUSES


@pytest.fixture
def lora_run(tmp_path):
    """A run directory as a LoRA learner leaves it: learner-config.json and one published adapter version (v2)."""
    from transformers import AutoModelForCausalLM

    base_dir = save_tiny(tmp_path / "tiny")
    model = apply_lora(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(rank=4, alpha=8.0))
    tr = LoraTrainer(model, AlgoConfig.from_preset("raft", kl_coef=0.0), OptimConfig(lr=1e-2, micro_batch_size=4),
                     ref_model=None, pad_token_id=0)
    for _ in range(2):
        tr.train_step(make_groups(STATUSES))
    run = tmp_path / "run"
    run.mkdir()
    (run / "learner-config.json").write_text(json.dumps({
        "model": base_dir, "lora": {"rank": 4, "alpha": 8.0}, "weights": {"dir": str(run / "weights")},
        "checkpoint": {"dir": str(run / "checkpoints")}}))
    tr.save_weights(run / "weights" / "v00000002" / ADAPTER_FILE)
    tr.model.eval()
    return run, base_dir, tr.model


def test_export_merge_writes_a_full_model_with_the_adapters_logits(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from winnow.export import export_run

    run, _, model = lora_run
    out = export_run(run, tmp_path / "merged", merge=True)
    assert out.version == 2 and out.source.name == ADAPTER_FILE
    assert (out.path / "model.safetensors").is_file() and not (out.path / "adapter_config.json").exists()
    assert json.loads((out.path / "winnow-export.json").read_text())["merged"] is True
    merged = AutoModelForCausalLM.from_pretrained(str(out.path)).eval()
    ids = torch.tensor([[5, 9, 17, 33, 65, 129, 7]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)


def test_export_without_merge_is_the_adapter_folder(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from winnow.export import export_run

    run, base_dir, model = lora_run
    out = export_run(run, tmp_path / "adapter")
    names = {p.name for p in out.path.iterdir()}
    assert {"adapter_config.json", ADAPTER_FILE, "tokenizer.json"} <= names and "model.safetensors" not in names
    opened = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(out.path)).eval()
    ids = torch.tensor([[5, 9, 17, 33, 65, 129, 7]])
    with torch.no_grad():
        assert torch.allclose(opened(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def test_eval_loads_a_lora_checkpoint_merged(lora_run, tmp_path):
    """``winnow eval RUN --version N`` where N is only a checkpoint (a LoRA learner's ``trainer.pt`` holds peft's
    state dict: base + adapters under peft's names): merged into the base, the engine gives the adapters' logits."""
    from winnow.evaluation import _load_version, resolve_target
    from winnow.hf_engine import HFEngine

    run, base_dir, model = lora_run
    ckpt = run / "checkpoints" / "step-00000003"
    ckpt.mkdir(parents=True)
    torch.save({"model": model.state_dict()}, ckpt / "trainer.pt")
    target = resolve_target(str(run), 3)
    assert target.weights == str(ckpt / "trainer.pt") and target.lora == {"rank": 4, "alpha": 8.0}
    engine = HFEngine.from_pretrained(base_dir, device="cpu", dtype="float32")
    _load_version(engine, target.weights, 3, base=target.model_dir, lora=target.lora)
    ids = torch.tensor([[5, 9, 17, 33, 65, 129, 7]])
    with torch.no_grad():
        assert torch.allclose(engine.model(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)
    assert engine.version == 3
