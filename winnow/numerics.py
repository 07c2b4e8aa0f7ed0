"""One numerics policy for the whole pipeline (the shared ``numerics`` config section).

The generators sample, the learner recomputes log-probs and trains, and the learner's held-out
evaluation decodes, all at one declared compute precision, ``numerics.precision``:

- generators (transformers and vLLM engines) hold the weights in that dtype;
- the learner keeps fp32 master weights (on CPU) and runs its forward/backward under autocast to
  that dtype (no autocast when it is float32 or the parameters already are in it);
- the evaluation decodes with the generators' own engine on a copy of the weights in that dtype,
  so ``eval_accuracy`` measures the policy the generators sample.

Devices: :func:`resolve_device` is the one rule ("auto": cuda when available, else cpu) for every service. Dtypes
have two "auto" rules on purpose: an inference engine holds its weights in the resolved precision
(``winnow.hf_engine.resolve_dtype``), the learner keeps fp32 master weights whatever the precision
(``winnow.learner.model.resolve_dtype``: AdamW updates of 1e-6 round to nothing in bf16).

Pure pydantic; torch is imported only by :func:`torch_dtype` and :func:`resolve_device`. The residual training-inference
mismatch (different kernels, batch shapes) is measured per step as ``mismatch_kl`` and
``mismatch_max_abs_log_ratio`` (see docs/metrics.md).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from winnow.config import Model

if TYPE_CHECKING:
    import torch

Precision = Literal["auto", "bfloat16", "float32"]
ResolvedPrecision = Literal["bfloat16", "float32"]
Attention = Literal["auto", "eager", "sdpa", "flash_attention_2"]


class NumericsConfig(Model):
    """Compute precision shared by sampling, the learner's log-prob recompute and the evaluation."""

    precision: Precision = "auto"
    """"auto" = bfloat16 on CUDA and on CPUs with native bf16 (AVX512-BF16 or AMX), else float32.
    Set it once at the top level of a pipeline config (like ``kafka``): every service reads it."""

    attention: Attention = "auto"
    """The transformers attention kernel of the generators' transformers engine, the learner and the
    evaluation (vLLM uses its own kernels). "auto" = "eager" on CPU, the transformers default (sdpa)
    elsewhere. On CPU the eager kernel is faster at the short sequences of RL on small models
    (measured in docs/benchmarks.md: sampling 1.5x, the training step 1.3x at 2-core, bf16) because
    sdpa with a padding mask copies the grouped key/value heads; it materialises the (q, k) attention
    weights, so set "sdpa" for long contexts on CPU."""


@cache
def cpu_has_bf16() -> bool:
    """True when /proc/cpuinfo lists avx512_bf16 or amx_bf16 (native bf16 matmuls)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device_type: str) -> ResolvedPrecision:
    """``precision`` ("auto" | "bfloat16" | "float32") on a device type ("cpu", "cuda", ...) -> a dtype name."""
    if precision in ("bfloat16", "float32"):
        return precision  # type: ignore[return-value]
    if precision != "auto":
        raise ValueError(f"precision must be auto, bfloat16 or float32, got {precision!r}")
    if device_type == "cuda" or (device_type == "cpu" and cpu_has_bf16()):
        return "bfloat16"
    return "float32"


def resolve_device(device: Any = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` if available, else ``cpu``; a ``torch.device`` as it is; anything else is passed to
    ``torch.device``. ValueError for a string torch does not know and for cuda without CUDA (the one device rule of
    the generators' engines and the learner; imports torch)."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device: {device!r} is not a torch device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    return dev


def resolve_attention(attention: str, device_type: str) -> str | None:
    """``numerics.attention`` on a device type -> the ``attn_implementation`` to load a transformers model
    with (None: the library's default)."""
    if attention == "auto":
        return "eager" if device_type == "cpu" else None
    if attention not in ("eager", "sdpa", "flash_attention_2"):
        raise ValueError(f"attention must be auto, eager, sdpa or flash_attention_2, got {attention!r}")
    return attention


_DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def torch_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` / ``"bf16"`` / ``"float32"`` / ``"fp32"`` / ``"float16"`` / ``"fp16"`` -> ``torch.dtype``
    (the one string-to-dtype table; imports torch)."""
    import torch

    if name not in _DTYPE_NAMES:
        raise ValueError(f"dtype: {name!r} is not one of {', '.join(sorted(_DTYPE_NAMES))}")
    dtype: torch.dtype = getattr(torch, _DTYPE_NAMES[name])
    return dtype
