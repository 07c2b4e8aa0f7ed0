"""Loading a Hugging Face causal LM and running the response-only forward pass.

:func:`load_causal_lm` loads any model directory or hub id with ``transformers`` (the generators
load the same directory). :func:`response_logits` runs one micro-batch and returns only the
logits that predict response tokens, using ``logits_to_keep`` so the LM head never runs on the
prompt.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from winnow.numerics import resolve_device

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from winnow.learner.config import LearnerConfig
    from winnow.learner.step import Trainer

log = logging.getLogger(__name__)

def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the learner keeps its parameters (the *master weights*) in: ``"auto"`` -> fp32 on every
    device. This differs on purpose from the engines' rule (``winnow.hf_engine.resolve_dtype``: "auto" is the
    resolved ``numerics.precision``): what trains is fp32, what samples is the precision. The forward/backward then computes in bf16 by autocast (one process) or by FSDP2's
    ``MixedPrecisionPolicy`` (sharded), while AdamW updates fp32 weights and keeps fp32 moments.

    Low-precision parameters (``"bfloat16"``/``"float16"``) are an explicit opt-in: AdamW then keeps the
    weights in that dtype, and an update smaller than half the spacing of representable values rounds to
    nothing (see :func:`low_precision_warning`)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float32
    from winnow.numerics import torch_dtype

    return torch_dtype(dtype)


def low_precision_warning(dtype: torch.dtype, lr: float) -> str | None:
    """The warning for training parameters stored in ``dtype`` at learning rate ``lr`` (None for fp32/fp64).

    bf16 keeps 8 significant bits: near |w| = 0.03 neighbouring values are 2^-13 ~ 1.2e-4 apart, so an
    AdamW update of about ``lr`` (1e-6..1e-5 in RL) rounds to nothing for almost every weight, and the
    weight-decay factor ``1 - lr * wd`` rounds to 1."""
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    import math

    spacing = 2.0 ** math.floor(math.log2(0.03)) * torch.finfo(dtype).eps  # the gap between values near 0.03
    return (f"learner.dtype {str(dtype).removeprefix('torch.')}: AdamW updates {str(dtype).removeprefix('torch.')} "
            f"parameters in place; near |w| = 0.03 representable values are {spacing:.1e} apart, so an update of "
            f"~lr = {lr:g} rounds to nothing for most weights. Use learner.dtype: auto (fp32 master weights, "
            f"{str(dtype).removeprefix('torch.')} compute by autocast) unless you know this is what you want.")


def load_causal_lm(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
):
    """Load ``(model, tokenizer)`` from a HF model directory or hub id, on ``device`` in ``dtype``.

    ``dtype="auto"`` is fp32 on every device (the master weights for training, see :func:`resolve_dtype`). The
    tokenizer gets a pad token if it has none (its EOS). The model is returned in train mode
    with ``use_cache`` off (no KV cache during training).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    src = str(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(src, **kwargs)
    model.to(dev)
    model.config.use_cache = False
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.train()
    log.info(
        "loaded %s: %.1fM parameters, %s on %s",
        src,
        sum(p.numel() for p in model.parameters()) / 1e6,
        torch_dtype,
        dev,
    )
    return model, tokenizer


def response_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    prompt_width: int,
    response_width: int,
) -> torch.Tensor:
    """Logits predicting the response tokens: (b, t, V) for rows laid out ``[prompt (p) | response (t)]``.

    The logit at column ``j`` predicts token ``j + 1``, so the response tokens at columns
    ``[p, p+t)`` are predicted by columns ``[p-1, p+t-1)``: the last ``t + 1`` columns minus the
    final one. ``logits_to_keep=t+1`` skips the LM head on the prompt.
    """
    if input_ids.shape[1] != prompt_width + response_width:
        raise ValueError(
            f"input width {input_ids.shape[1]} != prompt {prompt_width} + response {response_width}"
        )
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        logits_to_keep=response_width + 1,
    )
    logits = out.logits
    if logits.shape[1] != response_width + 1:  # a model that ignores logits_to_keep
        logits = logits[:, -(response_width + 1) :]
    return logits[:, :-1]


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout probability to 0 (``nn.Dropout`` modules and HF attention's ``attention_dropout``),
    so that recomputed log-probs are deterministic and equal the generator's (TRL does the same).
    Returns how many were non-zero."""
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            module.p = 0.0
            changed += 1
        p = getattr(module, "attention_dropout", None)
        if isinstance(p, float) and p > 0:
            module.attention_dropout = 0.0
            changed += 1
    return changed


_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def plain_lm_head(model: torch.nn.Module) -> torch.Tensor | None:
    """The LM-head weight ``(V, H)`` when ``logits = hidden @ W.T`` exactly (no bias, no scaling or
    soft-capping of the logits, a decoder reachable with ``get_decoder()``), else None.

    When it is not None, :func:`response_hidden` + ``logprobs_from_hidden`` give the same log-probs
    as :func:`response_logits` without ever materialising the ``(b, t, V)`` logits. Under FSDP2 the weight is
    the sharded DTensor: gather it with :func:`gathered_head` (the decoder is its own FSDP unit, so calling it
    alone runs its hooks; see :func:`winnow.learner.fsdp.shard_model`).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear) or head.bias is not None or not hasattr(model, "get_decoder"):
        return None
    config = getattr(model, "config", None)
    text_config = getattr(config, "get_text_config", lambda: config)()
    for name in _LOGIT_TRANSFORMS:
        value = getattr(text_config, name, None)
        if value not in (None, 0, 1, 1.0):
            return None
    return head.weight


def sharded_response_hidden(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    prompt_width: int,
    response_width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`response_hidden` for an FSDP2-sharded model: ``(hidden (b, t, H), lm_head weight (V, H))``.

    The decoder cannot be called alone (the root unit holds the embeddings, the final norm and the head), so the
    root's forward runs with the head swapped for ``Identity``: its hooks gather the root's parameters (in the
    MixedPrecisionPolicy's dtype) and keep them gathered through the backward, its "logits" are the hidden states,
    and the head's weight is then the gathered tensor, whose gradient FSDP2 reduce-scatters like any other. The
    caller applies it chunk by chunk (``logprobs_from_hidden``): the (b, t, V) logits never exist."""
    head = model.get_output_embeddings()
    model.set_output_embeddings(torch.nn.Identity())
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                    logits_to_keep=response_width + 1)
    finally:
        model.set_output_embeddings(head)
    hidden = out.logits
    if hidden.shape[1] != response_width + 1:
        hidden = hidden[:, -(response_width + 1):]
    weight = head.weight
    if type(weight).__name__ == "DTensor":
        raise RuntimeError("the LM head is still sharded after the root's forward (is the model fully_shard-ed at "
                           "the root?)")
    return hidden[:, :-1], weight


def response_hidden(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    prompt_width: int,
    response_width: int,
) -> torch.Tensor:
    """Final hidden states ``(b, t, H)`` at the columns that predict the response tokens (see
    :func:`response_logits`), from the decoder alone (the LM head is applied by the caller, chunked)."""
    if input_ids.shape[1] != prompt_width + response_width:
        raise ValueError(
            f"input width {input_ids.shape[1]} != prompt {prompt_width} + response {response_width}"
        )
    out = model.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    )
    return out.last_hidden_state[:, prompt_width - 1 : prompt_width + response_width - 1]


def build_trainer(cfg: LearnerConfig) -> tuple[Trainer, PreTrainedTokenizerBase]:
    """Load the initial policy named by ``cfg.model`` and build the Trainer (imports torch).

    The forward/backward runs at ``numerics.precision``: autocast to it when the master weights are
    in another dtype (fp32 on CPU), none when they already are in it; with the attention kernel of
    ``numerics.attention``, as the generators' transformers engine.
    """
    from winnow.learner.step import Trainer
    from winnow.models import resolve_model
    from winnow.numerics import resolve_attention, resolve_precision, torch_dtype

    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    compute = torch_dtype(resolve_precision(cfg.numerics.precision, device.type))
    model, tokenizer = load_causal_lm(resolve_model(cfg.model), dtype=cfg.dtype, device=device,
                                      attn_implementation=resolve_attention(cfg.numerics.attention, device.type))
    param_dtype = next(model.parameters()).dtype
    if param_dtype != compute and param_dtype != torch.float32:
        raise ValueError(
            f"learner.dtype {cfg.dtype} ({param_dtype}) cannot compute at numerics.precision "
            f"{cfg.numerics.precision} ({compute}); use learner.dtype: auto (fp32 master weights)"
        )
    if (warning := low_precision_warning(param_dtype, cfg.optim.lr)) is not None:
        log.warning(warning)
    temperature = cfg.sampling.temperature  # > 0: LearnerConfig refuses 0 (greedy groups carry no signal)
    ref, trainer_cls = "copy", Trainer
    if cfg.lora is not None:  # only the adapters train; the KL reference is the base model (adapters off), no copy
        from winnow.learner.lora import AdaptersOff, LoraTrainer, apply_lora

        model = apply_lora(model, cfg.lora)
        ref, trainer_cls = AdaptersOff(model), LoraTrainer
    trainer = trainer_cls(
        model,
        cfg.algo,
        cfg.optim,
        ref_model=ref,
        pad_token_id=tokenizer.pad_token_id,
        temperature=temperature,
        autocast_dtype=compute if compute != param_dtype else None,
    )
    return trainer, tokenizer
