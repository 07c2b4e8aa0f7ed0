"""Token log-probabilities and entropies from logits without a full fp32 ``(B, T, V)`` log-softmax.

With a 150k vocabulary, ``log_softmax(logits.float())`` on a (8, 4096) batch holds 8*4096*151936*4 bytes
= 19.9 GB, and autograd keeps it (and the softmax) for the backward pass. Here the rows of the flattened
``(B*T, V)`` logits are processed in chunks of ``chunk_size`` rows, in fp32, by custom autograd functions
that save only their inputs plus two fp32 numbers per row (log-sum-exp and entropy) and recompute each
chunk's softmax in the backward pass. Peak extra memory is ``O(chunk_size * V)`` fp32 instead of
``O(B * T * V)``.

- :func:`token_logprobs_and_entropy`: from logits ``(B, T, V)`` (any float dtype).
- :func:`logprobs_from_hidden`: from the last hidden states ``(B, T, H)`` and the lm-head weight ``(V, H)``;
  the lm-head matmul is done chunk by chunk too, so the ``(B, T, V)`` logits never exist at all.

Both divide the logits by ``temperature`` first (the sampling temperature, as verl does), return fp32
``(B, T)`` tensors and are differentiable w.r.t. logits / hidden / weight (log-probs and entropy).
Gradients (per row, ``z`` = logits / temperature, ``p = softmax(z)``, ``H = -sum p log p``):
``d logp_target / dz = onehot(target) - p`` and ``dH / dz_k = -p_k (log p_k + H)``, times ``1 / temperature``.
Double backward is not supported.
"""

from __future__ import annotations

import torch
from torch import Tensor

_NEG = -1e30  # replaces -inf logits so that 0 * log 0 stays 0 in the entropy


def _forward_chunk(z: Tensor, t: Tensor, with_entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``z (C, V)`` fp32 scaled logits, ``t (C,)`` -> logprob of t, log-sum-exp, entropy (each (C,))."""
    lse = torch.logsumexp(z, dim=-1)
    lp = z.gather(1, t[:, None]).squeeze(1) - lse
    if with_entropy:
        logp = z.clamp(min=_NEG) - lse[:, None]
        ent = -(torch.exp(logp) * logp).sum(dim=-1)
    else:
        ent = torch.zeros_like(lse)
    return lp, lse, ent


def _backward_chunk(
    z: Tensor, t: Tensor, lse: Tensor, ent: Tensor, g_lp: Tensor, g_ent: Tensor | None
) -> Tensor:
    """Gradient w.r.t. the scaled logits ``z (C, V)`` fp32, given upstream grads ``g_lp, g_ent (C,)``."""
    logp = z.clamp(min=_NEG) - lse[:, None]
    p = torch.exp(logp)
    g = -p * g_lp[:, None]
    g.scatter_add_(1, t[:, None], g_lp[:, None])  # + onehot(t) * g_lp
    if g_ent is not None:
        g -= (g_ent[:, None] * p) * (logp + ent[:, None])
    return g


class _LogprobEntropyFromLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, chunk_size: int, temperature: float, with_entropy: bool):
        n = logits.shape[0]
        lp = torch.empty(n, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(lp)
        ent = torch.empty_like(lp)
        for s in range(0, n, chunk_size):
            z = logits[s : s + chunk_size].float() / temperature
            lp[s : s + chunk_size], lse[s : s + chunk_size], ent[s : s + chunk_size] = _forward_chunk(
                z, targets[s : s + chunk_size], with_entropy
            )
        ctx.save_for_backward(logits, targets, lse, ent)
        ctx.chunk_size, ctx.temperature, ctx.with_entropy = chunk_size, temperature, with_entropy
        ctx.mark_non_differentiable(lse)
        return lp, ent, lse

    @staticmethod
    def backward(ctx, g_lp: Tensor, g_ent: Tensor, _g_lse: Tensor):
        logits, targets, lse, ent = ctx.saved_tensors
        c, temp = ctx.chunk_size, ctx.temperature
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], c):
            z = logits[s : s + c].float() / temp
            g = _backward_chunk(
                z, targets[s : s + c], lse[s : s + c], ent[s : s + c], g_lp[s : s + c],
                g_ent[s : s + c] if ctx.with_entropy else None,
            )
            grad[s : s + c] = (g / temp).to(logits.dtype)
        return grad, None, None, None, None


class _LogprobEntropyFromHidden(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int, temperature: float,
                with_entropy: bool):
        n = hidden.shape[0]
        lp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(lp)
        ent = torch.empty_like(lp)
        for s in range(0, n, chunk_size):
            z = (hidden[s : s + chunk_size] @ weight.t()).float() / temperature
            lp[s : s + chunk_size], lse[s : s + chunk_size], ent[s : s + chunk_size] = _forward_chunk(
                z, targets[s : s + chunk_size], with_entropy
            )
        ctx.save_for_backward(hidden, weight, targets, lse, ent)
        ctx.chunk_size, ctx.temperature, ctx.with_entropy = chunk_size, temperature, with_entropy
        ctx.mark_non_differentiable(lse)
        return lp, ent, lse

    @staticmethod
    def backward(ctx, g_lp: Tensor, g_ent: Tensor, _g_lse: Tensor):
        hidden, weight, targets, lse, ent = ctx.saved_tensors
        c, temp = ctx.chunk_size, ctx.temperature
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for s in range(0, hidden.shape[0], c):
            h = hidden[s : s + c]
            z = (h @ weight.t()).float() / temp
            g = _backward_chunk(
                z, targets[s : s + c], lse[s : s + c], ent[s : s + c], g_lp[s : s + c],
                g_ent[s : s + c] if ctx.with_entropy else None,
            ) / temp  # (C, V) fp32
            if need_h:
                grad_h[s : s + c] = (g.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w += (g.t().to(hidden.dtype) @ h).float()
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None, None, None


def _check(targets: Tensor, lead: tuple[int, ...], chunk_size: int, temperature: float) -> None:
    if tuple(targets.shape) != lead:
        raise ValueError(f"targets shape {tuple(targets.shape)} must equal the leading dims {lead}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def token_logprobs_and_entropy(
    logits: Tensor,
    targets: Tensor,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """``logits (B, T, V)`` any float dtype, ``targets (B, T)`` long in [0, V) -> ``(logprobs, entropy)``.

    ``logprobs (B, T)`` fp32: ``log softmax(logits / temperature)[target]``; ``entropy (B, T)`` fp32 of the
    same distribution, or None when ``with_entropy=False``. ``chunk_size`` rows of the flattened ``B*T`` are
    processed at once. Positions you will mask still need a valid token id (e.g. the pad id).
    """
    *lead, v = logits.shape
    _check(targets, tuple(lead), chunk_size, temperature)
    lp, ent, _ = _LogprobEntropyFromLogits.apply(
        logits.reshape(-1, v), targets.reshape(-1), chunk_size, float(temperature), with_entropy
    )
    return lp.view(*lead), (ent.view(*lead) if with_entropy else None)


def logprobs_from_hidden(
    hidden: Tensor,
    lm_head_weight: Tensor,
    targets: Tensor,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """``hidden (B, T, H)``, ``lm_head_weight (V, H)``, ``targets (B, T)`` -> ``(logprobs, entropy)`` fp32 (B, T).

    Same result as ``token_logprobs_and_entropy(hidden @ lm_head_weight.T, targets)`` but the logits are
    computed ``chunk_size`` rows at a time (matmul in the inputs' dtype, softmax in fp32) and recomputed in
    the backward pass. Gradients flow to ``hidden`` and ``lm_head_weight`` (tied embeddings work: the
    gradient lands on the shared parameter). No lm-head bias (Qwen2/Llama have none).
    """
    *lead, h = hidden.shape
    _check(targets, tuple(lead), chunk_size, temperature)
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != h:
        raise ValueError(f"lm_head_weight must be (V, {h}), got {tuple(lm_head_weight.shape)}")
    lp, ent, _ = _LogprobEntropyFromHidden.apply(
        hidden.reshape(-1, h), lm_head_weight, targets.reshape(-1), chunk_size, float(temperature), with_entropy
    )
    return lp.view(*lead), (ent.view(*lead) if with_entropy else None)
