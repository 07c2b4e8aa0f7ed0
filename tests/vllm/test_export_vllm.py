"""vLLM loads what `winnow export` writes, and a published weight-store version, as they are, and
generates the tokens transformers generates from the same folder. Runs only where vLLM imports
(``.venv-vllm/bin/python -m pytest tests/vllm -m vllm``)."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.vllm

try:  # skip the module unless vLLM imports
    import vllm  # noqa: F401
except Exception as e:  # ImportError, or a broken install
    pytest.skip(f"vllm not importable: {e}", allow_module_level=True)

ARCH = {"hidden": 128, "heads": 2, "kv_heads": 1}  # vLLM's CPU attention needs head size 64
PROMPT = [5, 17, 33, 80, 12, 40]


def _hf_greedy(folder, n=8):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([PROMPT]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(PROMPT):].tolist()


def test_vllm_serves_the_export_and_the_published_version(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB, as the vLLM engine does on CPU
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    from winnow.export import export_run
    from winnow.learner.step import save_state_dict
    from winnow.learner.tiny import build_tiny_model_and_tokenizer, save_tiny
    from winnow.learner.weights import WeightPublisher

    base = save_tiny(tmp_path / "base", dtype=torch.bfloat16, **ARCH)
    model, tokenizer = build_tiny_model_and_tokenizer(seed=0, **ARCH)
    model = model.to(torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * 0.5)

    class _Trainer:  # what WeightPublisher needs of the trainer
        version = 1

        def save_weights(self, path, dtype=None):
            return save_state_dict(model.state_dict(), path, dtype=dtype)

    store = tmp_path / "weights"
    WeightPublisher(store, producer=None, topic="t", hf_model=model, hf_tokenizer=tokenizer).write(_Trainer())
    run = tmp_path / "run"
    run.mkdir()
    (run / "learner-config.json").write_text(json.dumps({"model": base, "weights": {"dir": str(store)}}))
    out = tmp_path / "export"
    export_run(run, out)

    for folder in (out, store / "v00000001"):
        want = _hf_greedy(folder)
        llm = LLM(model=str(folder), dtype="bfloat16", max_model_len=256, enforce_eager=True, seed=0)
        params = SamplingParams(temperature=0.0, max_tokens=len(want), min_tokens=len(want))
        got = llm.generate([{"prompt_token_ids": PROMPT}], params)[0].outputs[0].token_ids
        del llm
        # greedy under bf16 (vLLM) vs fp32 (transformers): the first tokens agree on this model
        assert list(got)[:4] == want[:4], (folder, got, want)
