"""The vLLM engine and LoRA versions (issue 28 item 1): without enable_lora an adapter is refused, saying why."""

from __future__ import annotations

import pytest

from winnow.generator.vllm_engine import VLLMEngine
from winnow.sampling import WeightLoadError


def test_an_adapter_without_enable_lora_is_refused_clearly(tmp_path):
    engine = VLLMEngine.__new__(VLLMEngine)  # vLLM itself is not needed to refuse
    engine.enable_lora, engine.version = False, 1
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(WeightLoadError, match="started without enable_lora"):
        engine.load_weights(str(tmp_path / "adapter_model.safetensors"), 2)
    assert engine.version == 1
