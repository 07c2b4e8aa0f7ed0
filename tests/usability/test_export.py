"""winnow export: a published version or a checkpoint becomes a HF folder that from_pretrained loads and
that generates exactly what the learner's model generates."""

from __future__ import annotations

import json
import os

import pytest
import torch

from winnow.cli import main
from winnow.config import ConfigError
from winnow.export import available_versions, export_run
from winnow.learner.algo import AlgoConfig
from winnow.learner.checkpoint import LearnerState, save_checkpoint
from winnow.learner.model import load_causal_lm
from winnow.learner.step import OptimConfig, Trainer
from winnow.learner.tiny import save_tiny


def _perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)


def _greedy(model, tokenizer, text="what is two plus three", n=12):
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    model.eval()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        logits = model(ids).logits
    return out[0, ids.shape[1]:].tolist(), logits


@pytest.fixture
def run(tmp_path):
    """A run directory as the learner leaves it: config, weight store v1, checkpoint v2."""
    base = save_tiny(tmp_path / "base")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = {"model": base, "weights": {"dir": str(tmp_path / "weights")}, "checkpoint": {"dir": "ckpt"},
           "algo": {"preset": "grpo"}, "eval": {"chat": {"system_prompt": "sys"}}}
    (run_dir / "learner-config.json").write_text(json.dumps(cfg))
    model, tokenizer = load_causal_lm(base, dtype="float32", device="cpu")
    trainer = Trainer(model, AlgoConfig(preset="grpo", kl_coef=0.0), OptimConfig(lr=1e-3), pad_token_id=0)
    _perturb(model, 1)
    trainer.version = 1
    trainer.save_weights(tmp_path / "weights" / "v00000001" / "model.safetensors")
    v1 = _greedy(model, tokenizer)
    _perturb(model, 2)
    trainer.version = 2
    save_checkpoint(run_dir / "ckpt", trainer.state_dict(), LearnerState(version=2))  # relative to RUN_DIR
    v2 = _greedy(model, tokenizer)
    return {"dir": run_dir, "base": base, "tok": tokenizer, "v1": v1, "v2": v2}


def test_export_generates_like_the_learner(run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert sorted(available_versions(run["dir"])) == [1, 2]
    base_tokens, base_logits = _greedy(AutoModelForCausalLM.from_pretrained(run["base"]), run["tok"])
    for version, source in ((1, "model.safetensors"), (2, "trainer.pt")):
        out = tmp_path / f"export-v{version}"
        exported = export_run(run["dir"], out, version=version)
        assert exported.source.name == source
        for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                  "tokenizer_config.json", "winnow-export.json"):
            assert (out / f).is_file(), f
        model = AutoModelForCausalLM.from_pretrained(out)
        tokens, logits = _greedy(model, AutoTokenizer.from_pretrained(out))
        want_tokens, want_logits = run[f"v{version}"]
        assert tokens == want_tokens
        torch.testing.assert_close(logits, want_logits)
        assert not torch.allclose(logits, base_logits, atol=1e-3)  # the trained weights, not the base's
        umask = os.umask(0)
        os.umask(umask)
        assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not safetensors' 0600
        meta = json.loads((out / "winnow-export.json").read_text())
        assert meta["version"] == version and meta["chat"] == {"system_prompt": "sys"}
        assert model.config.tie_word_embeddings and model.lm_head.weight.data_ptr() == \
            model.model.embed_tokens.weight.data_ptr()


def test_export_cli_newest_dtype_and_errors(run, tmp_path, capsys):
    out = tmp_path / "bf16"
    assert main(["export", str(run["dir"]), str(out), "--dtype", "bfloat16"]) == 0
    assert "exported version 2" in capsys.readouterr().out
    from safetensors import safe_open
    from transformers import AutoConfig

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert str(AutoConfig.from_pretrained(out).dtype).endswith("bfloat16")
    assert main(["export", str(run["dir"]), str(out)]) == 2  # not empty
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(run["dir"]), str(tmp_path / "x"), "--version", "7"]) == 2
    assert "available: [1, 2]" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="learner-config.json"):
        export_run(tmp_path, tmp_path / "y")


def test_published_versions_are_hf_folders(tmp_path):
    """With the trained model (and tokenizer) given, every published version folder loads as it is."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from winnow.learner.weights import WeightPublisher

    base = save_tiny(tmp_path / "base")
    model, tokenizer = load_causal_lm(base, dtype="float32", device="cpu")
    trainer = Trainer(model, AlgoConfig(preset="grpo", kl_coef=0.0), OptimConfig(lr=1e-3), pad_token_id=0)
    pub = WeightPublisher(tmp_path / "store", producer=None, topic="t", hf_model=model, hf_tokenizer=tokenizer)
    _perturb(model, 3)
    trainer.version = 1
    ann = pub.write(trainer)
    folder = tmp_path / "store" / "v00000001"
    assert ann.uri.endswith("v00000001/model.safetensors")
    want = _greedy(model, tokenizer)
    got = _greedy(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder))
    assert got[0] == want[0]
    torch.testing.assert_close(got[1], want[1])
    # without a model object (tests, fakes) the store stays bare
    bare = WeightPublisher(tmp_path / "bare", producer=None, topic="t")
    assert bare.hf_template is None
