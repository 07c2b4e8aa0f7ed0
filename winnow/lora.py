"""LoRA adapter folders, shared by the learner (publishes them), the generators' engines (load them) and
``winnow export`` (merges them): peft's ``save_pretrained`` layout, ``adapter_config.json`` +
``adapter_model.safetensors``. ``peft`` is imported only inside the functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT = "peft_adapter"
"""``WeightAnnouncement.format`` of an adapter version (full versions: ``safetensors``)."""


def is_adapter_file(path: str | Path) -> bool:
    """``path`` is a peft folder's ``adapter_model.safetensors`` (its ``adapter_config.json`` beside it)."""
    path = Path(path)
    return path.name == ADAPTER_FILE and (path.parent / ADAPTER_CONFIG).is_file()


def peft_lora_config(rank: int, alpha: float, target_modules: str | list[str], dropout: float = 0.0) -> Any:
    """The ``peft.LoraConfig`` of ``learner.lora``'s fields: causal-LM task, no bias."""
    import peft

    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    return peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                           task_type="CAUSAL_LM")


def load_peft(base_dir: str | Path, adapter: str | Path | None = None, peft_state: dict[str, Any] | None = None,
              lora: dict[str, Any] | None = None) -> Any:
    """The base model in ``base_dir`` (fp32) with LoRA adapters, a ``PeftModel``: from an adapter folder
    ``adapter``, or from a LoRA learner checkpoint's full ``peft_state`` and its ``lora`` section (``learner.lora``
    as a dict: rank, alpha, target_modules; strict). ``.merge_and_unload()`` gives the merged plain model."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    if adapter is not None:
        return peft.PeftModel.from_pretrained(base, str(adapter))
    lora = lora or {}
    config = peft_lora_config(lora.get("rank", 16), lora.get("alpha", 32.0), lora.get("target_modules", "all-linear"))
    model = peft.get_peft_model(base, config)
    model.load_state_dict(peft_state, strict=True)
    return model
