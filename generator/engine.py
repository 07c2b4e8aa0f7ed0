"""The inference-engine interface shared by the transformers and vLLM engines.

An engine samples ``n`` completions for each prompt (token ids in, token ids out) and records,
for every generated token, its *behaviour* log-probability: the log-prob of that token under
the processed distribution it was sampled from (logits / temperature, top-k, top-p,
renormalised). The learner's importance ratio pi_theta / mu needs exactly that mu.

Completions stop at the first end-of-sequence token, which is kept (with its log-prob) and
gives ``finish_reason == "stop"``; a completion that reaches ``max_new_tokens`` without one has
``finish_reason == "length"``. Nothing after the EOS token is returned.

The sampling primitives (:class:`~winnow.sampling.Completion`, ``process_logprobs``, ...) live in
the shared :mod:`winnow.sampling`; the transformers engine in :mod:`winnow.hf_engine` (the learner's
evaluation decodes with it too). This module is light (no torch at import time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from winnow.sampling import Completion, SamplingConfig

if TYPE_CHECKING:
    from winnow.generator.config import GeneratorConfig


@runtime_checkable
class Engine(Protocol):
    """What the generator service needs from an inference engine."""

    version: int
    """Policy version of the loaded weights."""

    @property
    def tokenizer(self) -> object:
        """The tokenizer (used to build prompts and decode); read-only here, so that an engine may hold any
        tokenizer class."""
        ...

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        """For each prompt (token ids), ``n`` completions; blocking."""
        ...

    def load_weights(self, path: str, version: int) -> None:
        """Replace the weights with the full state dict in the safetensors file ``path`` (same
        architecture, strict) and set ``version``; blocking. A LoRA learner's version (``path`` is a peft folder's
        ``adapter_model.safetensors``, announced ``format: peft_adapter``) is activated over the base weights
        instead: the transformers engine injects peft's LoRA layers, vLLM uses a ``LoRARequest`` when started with
        ``enable_lora`` and refuses it otherwise."""
        ...


def make_engine(cfg: GeneratorConfig) -> Engine:
    """Build the configured engine (imports torch / transformers / vLLM here, not at module load)."""
    from winnow.models import resolve_model

    model_dir = resolve_model(cfg.model)
    if cfg.engine == "vllm":
        from winnow.generator.vllm_engine import VLLMEngine

        return VLLMEngine(
            model_dir,
            dtype=cfg.numerics.precision,
            device=cfg.device,
            max_model_len=cfg.vllm_max_model_len,
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            enforce_eager=cfg.vllm_enforce_eager,
            version=cfg.weights.initial_version,
            reload=cfg.vllm_reload,
            enable_lora=cfg.vllm_enable_lora,
            max_lora_rank=cfg.vllm_max_lora_rank,
        )
    from winnow.hf_engine import HFEngine

    return HFEngine.from_pretrained(
        model_dir,
        device=cfg.device,
        dtype=cfg.numerics.precision,
        attention=cfg.numerics.attention,
        max_batch_sequences=cfg.max_batch_sequences,
        version=cfg.weights.initial_version,
    )
