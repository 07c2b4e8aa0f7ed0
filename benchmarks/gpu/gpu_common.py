"""Shared helpers of the GPU check steps (``scripts/gpu_check.sh``): environment facts, the models the
steps run on, and writing each step's JSON.

Every step runs on CPU too, with a tiny model (``--dry-run``), so the whole script can be tried on a
machine without a GPU before the short GPU lease. The "0.5B-class" model is a *random* Qwen2 with
Qwen2.5-0.5B's shapes (hidden 896, 24 layers, 14 heads / 2 KV heads, vocab 151,936, tied
embeddings; 494M parameters) unless ``--model DIR`` names a real one: the GPU machine has no model
hub and no model on disk. Its tokenizer is the tiny test tokenizer of :mod:`winnow.learner.tiny`
padded with filler tokens to the model's vocabulary, so that every id the random model samples
decodes (vLLM detokenizes what it generates).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

QWEN2_0_5B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
"""Qwen2.5-0.5B's architecture (its config.json): 494M parameters with tied embeddings."""

QWEN2_1_5B = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
"""Qwen2.5-1.5B's architecture (its config.json): 1.54B parameters with tied embeddings."""


def train_flops_per_token(arch: dict[str, Any], seq_len: int) -> float:
    """Model FLOPs per trained token (forward + backward, no recompute): ``6 N + 12 L d T`` (PaLM, appendix B),
    N the parameters that multiply (every matrix, the tied head once, not the embedding lookup), L layers,
    d hidden size, T the sequence length (attention scores and values, causal masking not subtracted)."""
    d, L, f, V = arch["hidden_size"], arch["num_hidden_layers"], arch["intermediate_size"], arch["vocab_size"]
    kv = d // arch["num_attention_heads"] * arch["num_key_value_heads"]
    n = L * (d * d * 2 + 2 * d * kv + 3 * d * f) + V * d  # q, o, k, v, gate/up/down, LM head
    return 6 * n + 12 * L * d * seq_len


def read_matmul_tflops(out_dir: str | Path) -> float | None:
    """The bf16 matmul rate step 0 measured (``0_env.json``), the MFU denominator; None if missing."""
    p = Path(out_dir) / "0_env.json"
    try:
        return float(json.loads(p.read_text())["matmul_bf16_tflops"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


TINY = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    vocab_size=384,
    max_position_embeddings=4096,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
"""The dry-run model: head size 64 (vLLM's CPU attention rejects smaller heads), vocabulary 384."""


def device(dry_run: bool = False) -> torch.device:
    """cuda when available (and not a dry run), else cpu."""
    return torch.device("cuda" if torch.cuda.is_available() and not dry_run else "cpu")


def env_info() -> dict[str, Any]:
    """Versions and the accelerator: what a reported number was measured on."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cpus": os.cpu_count(),
        "host": platform.node(),
    }
    for name in ("transformers", "vllm", "safetensors", "pydantic"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # missing or broken: say which
            info[name] = f"not importable: {type(e).__name__}: {str(e)[:200]}"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def padded_tokenizer(vocab_size: int):
    """The tiny BPE tokenizer with filler tokens ``Ġt<i>`` appended up to ``vocab_size`` ids.

    Encoding is unchanged (no merge produces a filler token); decoding any id in ``[0, vocab_size)``
    gives text, so a random model with a large vocabulary can be sampled and detokenized.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from winnow.learner.tiny import CHATML_TEMPLATE, IM_END, IM_START, PAD_TOKEN, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    if vocab_size <= len(tok):
        return tok
    data = json.loads(tok.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    start = len(tok)
    for i in range(start, vocab_size):
        vocab[f"\u0120t{i}"] = i  # "\u0120" is the byte-level space: decodes to " t<i>"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        additional_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_model_dir(
    path: str | Path, arch: dict[str, Any], *, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
    init_device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Write a random Qwen2 of ``arch`` (``QWEN2_0_5B`` or ``TINY``) with its tokenizer as a HF model
    directory; returns a description (``kind``, parameters, seconds) for the step's JSON."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    t0 = time.perf_counter()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = padded_tokenizer(arch["vocab_size"])
    cfg = Qwen2Config(
        **arch,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        use_cache=True,
    )
    rng = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.device(init_device):
            model = Qwen2ForCausalLM(cfg)
    finally:
        torch.random.set_rng_state(rng)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = None
    model.to(dtype).save_pretrained(out)
    tok.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    del model
    return {
        "kind": "random Qwen2 (Qwen2.5-0.5B shapes)" if arch is QWEN2_0_5B else "random tiny Qwen2",
        "real_model": False,
        "path": str(out),
        "params_m": round(n / 1e6, 1),
        "dtype": str(dtype).replace("torch.", ""),
        "build_s": round(time.perf_counter() - t0, 2),
        "arch": arch,
    }


def describe_real_model(path: str | Path) -> dict[str, Any]:
    """The JSON description of a real model directory given with ``--model``."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    return {"kind": "real model", "real_model": True, "path": str(path),
            "architectures": cfg.get("architectures"), "hidden_size": cfg.get("hidden_size"),
            "num_hidden_layers": cfg.get("num_hidden_layers"), "vocab_size": cfg.get("vocab_size")}


def write_json(out_dir: str | Path, step: str, result: dict[str, Any]) -> Path:
    """``<out_dir>/<step>.json`` (indented), and the same line on stdout for the step's log."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{step}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"== {step}: {result.get('status')} -> {path}", flush=True)
    return path


def peak_rss_mib() -> float:
    """Peak resident set of this process so far (MiB, Linux ``ru_maxrss``)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
