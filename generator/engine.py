"""The inference-engine interface shared by the transformers and vLLM engines.

An engine samples ``n`` completions for each prompt (token ids in, token ids out) and records,
for every generated token, its *behaviour* log-probability: the log-prob of that token under
the processed distribution it was sampled from (logits / temperature, top-k, top-p,
renormalised). The learner's importance ratio pi_theta / mu needs exactly that mu.

Completions stop at the first end-of-sequence token, which is kept (with its log-prob) and
gives ``finish_reason == "stop"``; a completion that reaches ``max_new_tokens`` without one has
``finish_reason == "length"``. Nothing after the EOS token is returned.

This module is light (no torch at import time); :func:`process_logprobs` and
:func:`sample_tokens` import torch when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from winnow.generator.config import SamplingConfig

if TYPE_CHECKING:
    import torch
    from winnow.generator.config import GeneratorConfig


@dataclass(slots=True)
class Completion:
    """One sampled response: generated token ids (EOS included if generated), per-token
    behaviour log-probs (same length), "stop" or "length", and the decoded text (special tokens
    skipped)."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str


@runtime_checkable
class Engine(Protocol):
    """What the generator service needs from an inference engine."""

    version: int
    """Policy version of the loaded weights."""
    tokenizer: object
    """The tokenizer (used to build prompts and decode)."""

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        """For each prompt (token ids), ``n`` completions; blocking."""
        ...

    def load_weights(self, path: str, version: int) -> None:
        """Replace the weights with the full state dict in the safetensors file ``path`` (same
        architecture, strict) and set ``version``; blocking."""
        ...


class GenerationCancelled(RuntimeError):
    """``generate`` was interrupted by ``engine.cancel()`` (the service is stopping)."""


class WeightLoadError(RuntimeError):
    """A weight file does not fit the loaded model (missing/unexpected keys, wrong shapes)."""


def raise_on_mismatch(missing: list[str], unexpected: list[str], bad_shapes: list[str]) -> None:
    """Raise :class:`WeightLoadError` naming (up to 5 of) each kind of mismatch, if there is any."""

    def some(items: list[str]) -> str:
        return f"{items[:5]}{' ...' if len(items) > 5 else ''}"

    problems = []
    if missing:
        problems.append(f"missing keys {some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {some(unexpected)}")
    if bad_shapes:
        problems.append(f"shape mismatches {some(bad_shapes)}")
    if problems:
        raise WeightLoadError("weight file does not match the model architecture: " + "; ".join(problems))


def process_logprobs(
    logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Log-probs of the processed sampling distribution.

    logits: (B, V) next-token logits (any float dtype; computed in float32).
    Returns (B, V) float32 log-probs: log_softmax(logits / temperature) restricted to the top-k
    tokens (k = 0: all) and then to the smallest prefix (by descending probability) whose mass
    reaches top_p, renormalised; tokens outside get -inf. Ties at the top-k boundary keep every
    tied token (like HF's TopKLogitsWarper). The most likely token is always kept.
    ``temperature == 0`` means greedy: a point mass on the argmax (log-prob 0, others -inf).
    """
    import torch

    x = logits.float()
    if temperature == 0.0:
        out = torch.full_like(x, float("-inf"))
        out.scatter_(-1, x.argmax(dim=-1, keepdim=True), 0.0)
        return out
    x = x / temperature
    if top_k and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before >= top_p  # keep tokens until the mass before them reaches top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return torch.log_softmax(x, dim=-1)


def sample_tokens(logprobs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row from (B, V) log-probs; returns (B,) int64.

    ``torch.multinomial`` on the probabilities (exp of the log-probs), so the draw follows exactly
    the distribution whose log-probs are recorded."""
    import torch

    probs = logprobs.exp()
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def make_engine(cfg: GeneratorConfig) -> Engine:
    """Build the configured engine (imports torch / transformers / vLLM here, not at module load)."""
    from winnow.generator.models import resolve_model

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
        )
    from winnow.generator.hf_engine import HFEngine

    return HFEngine.from_pretrained(
        model_dir,
        device=cfg.device,
        dtype=cfg.numerics.precision,
        max_batch_sequences=cfg.max_batch_sequences,
        version=cfg.weights.initial_version,
    )
