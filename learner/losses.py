"""Per-token losses, KL estimators, ratio diagnostics and loss aggregation (pure functions over tensors).

Xiong et al. (2025, arXiv 2504.11343), eq. 1 (RAFT), eq. 5-6 (Reinforce, RAFT++), and the released code
(RLHFlow/Minimal-RL, a verl fork: ``core_algos.py::compute_policy_loss``, ``kl_penalty``, ``agg_loss``):

- :func:`sft_loss`: ``-log pi(a_t)``, RAFT's maximum likelihood on accepted samples (no ratio, no clip).
- :func:`clipped_policy_loss`: PPO's clipped surrogate with a per-token ratio
  ``s_t = pi_theta(a_t) / pi_old(a_t)``: ``max(-A s, -A clip(s, 1-eps_low, 1+eps_high))``, plus dual-clip
  (Ye et al. 2020) for ``A < 0``: ``min(that, -A c)``. Optional decoupled off-policy correction (AReaL,
  Fu et al. 2025): ratio against a *proximal* policy and a detached, truncated importance weight
  ``w = min(pi_prox / mu, is_cap)`` for the behaviour policy ``mu`` that generated the data; or any
  per-token weight from :mod:`winnow.learner.corrections` (TIS, MIS, IcePop) in its place.
- :func:`kl_penalty`: k1, k2, k3 (Schulman's "low variance" estimator, verl's ``low_var_kl``).
- :func:`ratio_stats`: ratio mean/max/min, normalised effective sample size, training-inference mismatch KL.
- :func:`mismatch_stats`: training-inference mismatch on tokens sampled at the learner's own version.
- :func:`aggregate`: verl's ``token-mean``, ``seq-mean-token-mean`` and ``seq-mean-token-sum``, with an
  explicit denominator so that micro-batches sum to the full-batch loss.

All losses here are to be *minimised* (the paper writes objectives to maximise). Logprobs are natural
logs, shape ``(B, T)``; ``mask (B, T)`` is 1 on response tokens (it may carry 0/1 sample weights).

Left out: PPO's value loss (no critic), GSPO's sequence-level ratio, Dr.GRPO's constant-length normaliser.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from winnow.learner.algo import AGG_MODES, AggMode  # noqa: F401  (defined with the config)
from winnow.learner.corrections import LOG_RATIO_CLAMP, Correction, behaviour_correction, behaviour_log_ratio

KLKind = Literal["k1", "k2", "k3"]

_LOG_RATIO_CLAMP = LOG_RATIO_CLAMP  # exp(20) ~ 5e8: keeps ratios finite (verl clamps the same way)


def _masked(values: Tensor, mask: Tensor) -> Tensor:
    """``values * mask`` with non-finite values outside the mask replaced by 0 first."""
    return torch.where(mask != 0, values, torch.zeros_like(values)) * mask


def aggregate(values: Tensor, mask: Tensor, mode: AggMode, *, denominator: float | Tensor | None = None) -> Tensor:
    """Reduce per-token ``values (B, T)`` under ``mask (B, T)`` to a scalar.

    - ``token-mean``: ``sum(v m) / D``, ``D`` = total mask weight (``sum(m)``),
    - ``seq-mean-token-mean``: ``sum_b [sum_t v m / #tokens_b] / D``, ``D`` = sequences with any token,
    - ``seq-mean-token-sum``: ``sum_b sum_t v m / D``, ``D`` = sequences with any token.

    ``denominator`` overrides ``D``: pass the count over the *whole* batch (see :func:`loss_denominator`)
    when accumulating gradients over micro-batches, so that the micro-batch results sum to the full-batch
    value. ``D = 0`` (nothing to train on) gives 0, still connected to the graph (zero gradient).
    """
    mask = mask.to(values.dtype)
    vm = _masked(values, mask)
    if mode == "token-mean":
        num = vm.sum()
        default = mask.sum()
    elif mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
        per_seq = vm.sum(dim=-1)  # (B,)
        if mode == "seq-mean-token-mean":
            n_tok = (mask != 0).sum(dim=-1).to(values.dtype)  # (B,)
            per_seq = per_seq / n_tok.clamp(min=1)
        num = per_seq.sum()
        default = (mask != 0).any(dim=-1).sum().to(values.dtype)
    else:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid: {', '.join(AGG_MODES)}")
    d = default if denominator is None else torch.as_tensor(denominator, dtype=values.dtype, device=values.device)
    return num / torch.where(d > 0, d, torch.ones_like(d))


def loss_denominator(mask: Tensor, sample_weight: Tensor | None, mode: AggMode) -> float:
    """The global normaliser for :func:`aggregate` over a whole batch.

    ``mask (B, T)``, ``sample_weight (B,)`` (None = all 1): total weighted tokens for ``token-mean``,
    number of sequences with a nonzero weighted token for the ``seq-mean`` modes.
    """
    m = mask.to(torch.float32)
    if sample_weight is not None:
        m = m * sample_weight.to(torch.float32)[:, None]
    if mode == "token-mean":
        return float(m.sum())
    if mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
        return float((m != 0).any(dim=-1).sum())
    raise ValueError(f"unknown aggregation mode {mode!r}; valid: {', '.join(AGG_MODES)}")


def sft_loss(logprobs: Tensor, mask: Tensor) -> Tensor:
    """RAFT's per-token loss: ``-log pi(a_t)`` on ``mask``, 0 elsewhere. ``(B, T)`` -> ``(B, T)``."""
    return -_masked(logprobs, mask.to(logprobs.dtype))


def _per_token(adv: Tensor, like: Tensor) -> Tensor:
    """Advantages ``(B,)`` or ``(B, T)`` -> ``(B, T)``."""
    if adv.dim() == 1:
        adv = adv[:, None]
    return adv.to(like.dtype).expand_as(like)


def clipped_policy_loss(
    logprobs: Tensor,
    behaviour_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip_c: float | None = 3.0,
    proximal_logprobs: Tensor | None = None,
    is_cap: float | None = None,
    correction: Correction | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate per token (to minimise) and detached statistics.

    ``logprobs`` (B, T) under the current policy (with grad), ``behaviour_logprobs`` (B, T) of the policy
    that generated the tokens (mu), ``advantages`` (B,) or (B, T), ``mask`` (B, T).

    Without ``proximal_logprobs``: ``s = exp(logprobs - behaviour_logprobs)`` and
    ``loss = max(-A s, -A clip(s, 1 - eps_low, 1 + eps_high))``; for ``A < 0`` and ``dual_clip_c = c``
    the loss is further capped: ``min(loss, -A c)`` (so a huge ratio on a bad token cannot blow up).

    With ``proximal_logprobs`` (decoupled PPO): ``s = exp(logprobs - proximal_logprobs)`` and the token loss
    is multiplied by ``w = exp(proximal - behaviour)``, detached and truncated at ``is_cap`` (None = no cap).

    ``correction`` (from :func:`~winnow.learner.corrections.behaviour_correction`): its ``weight`` (B, T)
    multiplies the token loss *instead of* the default weight above (with a ratio against ``mu`` it is a 0/1
    mask; with ``proximal_logprobs`` the TIS/MIS weight of ``pi_prox / mu``, already truncated at ``is_cap``).

    Stats (all detached): ``ratio`` (B, T), ``clipped`` (B, T) bool (the clipped branch is active, so the
    token has zero gradient), ``dual_clipped`` (B, T) bool, ``is_weight`` (B, T), and masked-mean scalars
    ``clip_frac``, ``dual_clip_frac``, ``is_weight_mean``, ``is_trunc_frac`` (tokens whose weight was truncated).
    """
    if not 0.0 <= eps_low < 1.0 or eps_high < 0.0:
        raise ValueError(f"need 0 <= eps_low < 1 and eps_high >= 0, got eps_low={eps_low}, eps_high={eps_high}")
    if dual_clip_c is not None and dual_clip_c <= 1.0:
        raise ValueError(f"dual_clip_c must be > 1 (or None), got {dual_clip_c}")
    adv = _per_token(advantages, logprobs)
    anchor = behaviour_logprobs if proximal_logprobs is None else proximal_logprobs
    log_ratio = (logprobs - anchor).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(pg_unclipped, pg_clipped)
    clipped = pg_clipped > pg_unclipped
    dual_clipped = torch.zeros_like(clipped)
    if dual_clip_c is not None:
        cap = -adv * dual_clip_c
        dual_clipped = (adv < 0) & (loss > cap)
        loss = torch.where(adv < 0, torch.minimum(loss, cap), loss)
    if correction is None and proximal_logprobs is not None:
        log_w = behaviour_log_ratio(proximal_logprobs, behaviour_logprobs)
        correction = behaviour_correction(log_w, mask, "none", is_cap=is_cap)
    if correction is not None:
        is_weight, truncated = correction.weight.to(loss.dtype), correction.truncated
        loss = loss * is_weight
    else:
        is_weight = torch.ones_like(ratio)
        truncated = torch.zeros_like(clipped)

    on = mask != 0
    n = on.sum().clamp(min=1)

    def frac(b: Tensor) -> Tensor:
        return (b & on).sum().to(torch.float32) / n

    stats = {
        "ratio": ratio.detach(),
        "clipped": clipped.detach(),
        "dual_clipped": dual_clipped.detach(),
        "is_weight": is_weight.detach(),
        "clip_frac": frac(clipped.detach()),
        "dual_clip_frac": frac(dual_clipped.detach()),
        "is_weight_mean": (is_weight.detach() * on).sum() / n,
        "is_trunc_frac": frac(truncated),
    }
    return loss, stats


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: KLKind, *, clamp: float | None = 10.0) -> Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from tokens sampled from ``pi``. ``(B, T)`` -> ``(B, T)``.

    With ``x = ref_logprobs - logprobs`` (``log pi_ref / pi``):
    ``k1 = -x``, ``k2 = x^2 / 2``, ``k3 = exp(x) - x - 1`` (>= 0, unbiased, low variance; verl's
    ``low_var_kl``). For k3 ``x`` is clamped to [-20, 20] and the result to [-clamp, clamp] (verl: 10).
    """
    x = ref_logprobs - logprobs
    if kind == "k1":
        return -x
    if kind == "k2":
        return 0.5 * x**2
    if kind == "k3":
        x = x.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
        k3 = torch.exp(x) - x - 1.0
        return k3 if clamp is None else k3.clamp(-clamp, clamp)
    raise ValueError(f"unknown KL estimator {kind!r}; valid: k1, k2, k3")


@torch.no_grad()
def ratio_stats(logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Diagnostics of ``w = pi_theta / mu`` per token over ``mask``; 0-d fp32 tensors, no grad.

    ``ratio_mean``, ``ratio_max``, ``ratio_min``; ``ess`` = ``(sum w)^2 / (N sum w^2)`` in (0, 1] (1 = on-policy);
    ``mismatch_kl`` = mean of ``w - 1 - log w``, the k3 estimate of ``KL(mu || pi_theta)`` (training-inference
    mismatch when taken before the first update); ``mismatch_k1`` = mean ``log mu - log pi``; ``tokens`` = N.
    An empty mask gives the on-policy values (1, 1, 1, 1, 0, 0) and ``tokens = 0``.
    """
    on = mask != 0
    log_w = (logprobs.float() - behaviour_logprobs.float()).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)[on]
    n = log_w.numel()
    if n == 0:
        one, zero = torch.tensor(1.0), torch.tensor(0.0)
        return {"ratio_mean": one, "ratio_max": one, "ratio_min": one, "ess": one, "mismatch_kl": zero,
                "mismatch_k1": zero, "tokens": zero}
    w = log_w.exp()
    return {
        "ratio_mean": w.mean(),
        "ratio_max": w.max(),
        "ratio_min": w.min(),
        "ess": w.sum() ** 2 / (n * (w**2).sum()),
        "mismatch_kl": (w - 1.0 - log_w).mean(),
        "mismatch_k1": (-log_w).mean(),
        "tokens": torch.tensor(float(n)),
    }


def mismatch_stats(logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Training-inference mismatch between the learner's recompute ``log pi`` and the generator's
    ``log mu`` (both ``(B, T)``) over the tokens of ``mask`` (the caller keeps only tokens sampled at the
    weights version the learner holds, so any difference is numerics, not policy change).

    ``mismatch_kl`` = mean of ``w - 1 - log w`` with ``w = pi / mu`` (k3 estimate of ``KL(mu || pi)``, >= 0);
    ``mismatch_max_abs_log_ratio`` = max ``|log pi - log mu|``; ``mismatch_tokens`` = N. Empty mask: 0, 0, 0.
    Log-ratios are clamped to +-20 as in :func:`ratio_stats`. 0-d fp32 tensors, no grad.
    """
    on = mask != 0
    log_w = (logprobs.detach().float() - behaviour_logprobs.float()).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)[on]
    if log_w.numel() == 0:
        zero = torch.tensor(0.0)
        return {"mismatch_kl": zero, "mismatch_max_abs_log_ratio": zero, "mismatch_tokens": zero}
    return {
        "mismatch_kl": (log_w.exp() - 1.0 - log_w).mean(),
        "mismatch_max_abs_log_ratio": log_w.abs().max(),
        "mismatch_tokens": torch.tensor(float(log_w.numel())),
    }
