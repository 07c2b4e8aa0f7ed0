"""LoRA for the learner: adapters through ``peft``, the base model as the KL reference, adapter-only publishing.

With ``learner.lora`` set (:class:`winnow.learner.config.LoraConfig`) the policy is ``peft.get_peft_model`` over the
initial model: every targeted linear layer computes ``W0 x + (alpha / r) * B (A x)`` with ``W0`` frozen, ``A``
random and ``B`` zero at step 0 (Hu et al., "LoRA", 2021). The rest is the ordinary
:class:`~winnow.learner.step.Trainer`:

- the optimizer: the Trainer builds AdamW over the parameters with ``requires_grad``, which peft leaves to the
  adapters only (the base weights keep no AdamW moments);
- the reference of the KL term: :class:`AdaptersOff`, the same modules run with the adapters disabled
  (``PeftModel.disable_adapter()``), i.e. exactly the initial model, without a second copy in memory;
- publishing: :class:`LoraTrainer` writes each version as a peft adapter folder (``adapter_config.json`` +
  ``adapter_model.safetensors``, ``PeftModel.save_pretrained``'s format, which ``PeftModel.from_pretrained``, vLLM's
  ``LoRARequest`` and ``winnow export --merge`` open), announced with ``format: "peft_adapter"``; its sha256 is the
  one of ``adapter_model.safetensors``.

Left out: DoRA, rsLoRA, QLoRA (quantised base), adapters on the embeddings or the LM head, several adapters.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from winnow.learner.step import Trainer, save_state_dict
from winnow.lora import ADAPTER_FILE, FORMAT, peft_lora_config

if TYPE_CHECKING:
    from winnow.learner.config import LoraConfig

log = logging.getLogger(__name__)



def peft_config(cfg: LoraConfig) -> Any:
    """The ``peft.LoraConfig`` of ``learner.lora``: causal-LM task, no dropout, no bias."""
    return peft_lora_config(cfg.rank, cfg.alpha, cfg.target_modules, cfg.dropout)


def apply_lora(model: torch.nn.Module, cfg: LoraConfig) -> torch.nn.Module:
    """``model`` wrapped with fresh adapters (a ``PeftModel``; the base weights frozen in place)."""
    import peft

    model = peft.get_peft_model(model, peft_config(cfg))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("LoRA r=%d alpha=%g on %s: %.2fM trainable of %.1fM parameters (%.2f%%)", cfg.rank, cfg.alpha,
             cfg.target_modules, trainable / 1e6, total / 1e6, 100 * trainable / total)
    return model


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


class AdaptersOff(torch.nn.Module):
    """The KL reference of a LoRA policy: the policy's own modules with the adapters disabled (the base model).

    Holds the policy without registering it (so it owns no parameters: the Trainer's ``eval()`` and
    ``requires_grad_(False)`` on its reference leave the policy alone) and runs every entry point the Trainer
    uses (``forward``, ``get_decoder()``, the LM head) with peft's adapter layers switched off."""

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        if not is_peft(policy):
            raise TypeError(f"AdaptersOff needs a peft model, got {type(policy).__name__}")
        object.__setattr__(self, "policy", policy)
        self.config = policy.config

    def off(self) -> contextlib.AbstractContextManager:
        return self.policy.disable_adapter()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.off():
            return self.policy(*args, **kwargs)

    def get_decoder(self) -> torch.nn.Module:
        return _Off(self.policy, self.policy.get_decoder())

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.policy.get_output_embeddings()

    def set_output_embeddings(self, value: torch.nn.Module) -> None:
        self.policy.set_output_embeddings(value)


class _Off:
    """``module(...)`` with the policy's adapters disabled for the call; other attributes are the module's."""

    def __init__(self, policy: torch.nn.Module, module: torch.nn.Module) -> None:
        self.policy, self.module = policy, module

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.policy.disable_adapter():
            return self.module(*args, **kwargs)


def adapter_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The adapter tensors of the peft ``model`` under the names ``save_pretrained`` writes (adapter name
    removed), taken from ``state`` (a full state dict of ``model``, e.g. gathered from FSDP2 shards) or the model."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, state_dict=state)


def write_adapter_config(model: torch.nn.Module, folder: Path) -> None:
    """``adapter_config.json`` of the active adapter, as ``save_pretrained`` writes it."""
    config = model.peft_config[model.active_adapter]
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))


class LoraTrainer(Trainer):
    """A :class:`~winnow.learner.step.Trainer` over a peft model whose published weights are the adapters."""

    weights_format = FORMAT
    weights_file = ADAPTER_FILE

    def save_weights(self, path: str | Path, dtype: torch.dtype | None = None) -> str:
        """Write the adapters of the current version as a peft folder (``path`` is the folder or a file in it);
        returns the hex sha256 of ``adapter_model.safetensors``. Every rank calls it under FSDP2 (the gather is a
        collective); rank 0 writes the config, then the weights atomically."""
        folder = Path(path)
        if folder.suffix == ".safetensors":
            folder = folder.parent
        full = self.full_state_dict() if self.world_size > 1 else None  # a collective under FSDP2
        digest = [""]
        if self.rank == 0:
            state = adapter_state_dict(self.model, full)
            write_adapter_config(self.model, folder)
            digest[0] = save_state_dict(state, folder / ADAPTER_FILE, dtype=dtype,
                                        metadata={"version": str(self.version), "format": "pt"})
        if self.world_size > 1:
            torch.distributed.broadcast_object_list(digest, src=0, group=self.dp_group)
        return digest[0]
