"""Training-inference mismatch corrections: per-token weights from the behaviour and recomputed log-probs.

The generator samples with its own kernels (vLLM, bf16) and reports ``log mu(a_t)`` (``behaviour_logprobs``);
the learner recomputes ``log pi_old(a_t)`` with the weights it holds before this step's update (the
*proximal* policy of decoupled PPO; one optimizer step per batch, so it is the detached log-probs of the
step's own forward pass, see learner/step.py). The behaviour weight of a token is

    w_t = pi_old(a_t) / mu(a_t) = exp(log pi_old - log mu)        (log-ratio clamped to +-20)

and carries *both* gaps between the two policies: numerics (same weights, different kernels) and staleness
(``mu`` may be a few versions older; a token sampled at the learner's own version has only the first). Each
function below turns ``log w`` into the weight ``c_t`` that multiplies the token's loss (detached):

- :func:`token_tis`: truncated IS, ``c_t = min(w_t, C)`` (Yao et al. 2025, "Your efficient RL framework
  secretly brings you off-policy RL training"; verl ``rollout_corr`` ``rollout_is: token``, TRL
  ``vllm_importance_sampling_mode: token_truncate``, OpenRLHF ``is_correction_type: tis``, SkyRL
  ``tis_ratio_type: token``, slime ``--use-tis``; all default ``C = 2``).
- :func:`token_mis`: masked IS, ``c_t = w_t 1[lo <= w_t <= hi]`` (Liu, Li et al. 2025, "When speed kills
  stability", which masks above ``hi``; TRL ``token_mask``; verl ``rollout_rs: token`` as a rejection mask).
  **IcePop** (Ling team, Ring-1T, arXiv 2510.18855; OpenRLHF ``is_correction_type: icepop``) is exactly this
  two-sided mask, ``M(k) = k`` if ``k in [alpha, beta]`` else 0, with ``alpha = 0.5``, ``beta = 5``: the config's
  ``icepop`` kind calls this function with those bounds.
- :func:`geo_mean_ratio`: the sequence's geometric-mean ratio ``rho = exp(mean_t log w_t)`` (GSPO's
  length-normalised sequence ratio, Zheng et al. 2025; verl ``rollout_rs: geometric``, SkyRL
  ``sequence_mask_metric: geometric``, OpenRLHF ``seq-mask-tis``).
- :func:`seq_tis`, :func:`seq_mis`: the token formulas applied to ``rho`` and broadcast to every token of the
  sequence: ``c_t = min(rho, C)`` and ``c_t = rho 1[lo <= rho <= hi]``.

:func:`behaviour_correction` combines one of them with the objective (``mask_only``: the PPO ratio is already
taken against ``mu``, so only the 0/1 mask is applied) and with decoupled PPO's own truncation
``min(., is_cap)``; docs/algorithms.md section 7 has the table of how the ratios combine per loss.
:func:`correction_fractions` gives the shares of tokens and sequences truncated or masked.

Left out: the sequence *product* ``prod_t w_t`` (verl ``rollout_is: sequence``, TRL ``sequence_*``, SkyRL
``tis_ratio_type: sequence``): over a few thousand tokens it under- or overflows long before the policies
differ much; verl's token veto and batch normalisation of the weights; masked tokens stay in the loss
denominator (their loss is multiplied by 0, as TRL and OpenRLHF do), since the denominator is fixed before the
forward pass that measures them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from winnow.learner.algo import MISMATCH_KINDS, MismatchKind  # noqa: F401  (defined with the config)

LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 5e8: keeps weights finite (the same clamp as the ratios in losses.py)


class Correction(NamedTuple):
    """Per-token weight ``(B, T)`` (detached) and which tokens it truncated or masked ``(B, T)`` bool."""

    weight: Tensor
    truncated: Tensor
    masked: Tensor


def behaviour_log_ratio(recomputed_logprobs: Tensor, behaviour_logprobs: Tensor) -> Tensor:
    """``log w = log pi_old - log mu``, detached, fp32, clamped to +-20. ``(B, T), (B, T) -> (B, T)``."""
    log_w = recomputed_logprobs.detach().float() - behaviour_logprobs.detach().float()
    return log_w.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def token_tis(log_w: Tensor, *, cap: float) -> tuple[Tensor, Tensor]:
    """Token-level truncated IS: ``log_w (B, T)`` -> ``c = min(w, cap) (B, T)``, ``truncated = w > cap`` bool."""
    w = log_w.exp()
    return w.clamp(max=cap), w > cap


def token_mis(log_w: Tensor, *, lo: float, hi: float) -> tuple[Tensor, Tensor]:
    """Token-level masked IS: ``log_w (B, T)`` -> ``c = w 1[lo <= w <= hi] (B, T)``, ``masked`` bool (B, T)."""
    w = log_w.exp()
    masked = (w < lo) | (w > hi)
    return torch.where(masked, torch.zeros_like(w), w), masked


def geo_mean_ratio(log_w: Tensor, mask: Tensor) -> Tensor:
    """``rho_b = exp(sum_t m log w / sum_t m)`` over the tokens of ``mask (B, T)`` -> ``(B,)``; 1 for an empty row."""
    on = (mask != 0).to(log_w.dtype)
    n = on.sum(dim=-1)
    mean_log = torch.where(on != 0, log_w, torch.zeros_like(log_w)).sum(dim=-1) / n.clamp(min=1)
    return mean_log.exp()


def seq_tis(log_w: Tensor, mask: Tensor, *, cap: float) -> tuple[Tensor, Tensor]:
    """Sequence-level truncated IS on the geometric mean: ``c_bt = min(rho_b, cap)`` broadcast over ``t``,
    ``truncated_bt = rho_b > cap``. ``(B, T), (B, T) -> (B, T), (B, T)``."""
    rho = geo_mean_ratio(log_w, mask)[:, None].expand_as(log_w)
    return rho.clamp(max=cap), rho > cap


def seq_mis(log_w: Tensor, mask: Tensor, *, lo: float, hi: float) -> tuple[Tensor, Tensor]:
    """Sequence-level masked IS on the geometric mean: ``c_bt = rho_b 1[lo <= rho_b <= hi]`` broadcast over ``t``,
    ``masked_bt`` = the whole row. ``(B, T), (B, T) -> (B, T), (B, T)``."""
    rho = geo_mean_ratio(log_w, mask)[:, None].expand_as(log_w)
    masked = (rho < lo) | (rho > hi)
    return torch.where(masked, torch.zeros_like(rho), rho), masked


def behaviour_correction(
    log_w: Tensor,
    mask: Tensor,
    kind: MismatchKind,
    *,
    cap: float | None = None,
    lo: float | None = None,
    hi: float | None = None,
    is_cap: float | None = None,
    mask_only: bool = False,
) -> Correction:
    """The weight ``c (B, T)`` that multiplies each token's policy loss, from ``log_w (B, T)`` (see
    :func:`behaviour_log_ratio`) and ``mask (B, T)`` (the sequences' tokens, for the sequence kinds).

    1. ``kind``: ``none`` -> ``w``; ``token_tis``/``seq_tis`` (``cap``), ``token_mis``/``seq_mis``/``icepop``
       (``lo``, ``hi``) -> the functions above.
    2. ``mask_only`` (the loss's ratio is already ``pi_theta / mu``, which contains ``w``): ``c = 1`` where
       step 1 kept the token, 0 where it masked it (a truncation has nothing to act on and is refused).
    3. ``is_cap`` (decoupled PPO's truncation): ``c = min(c, is_cap)``; a token it lowers counts as truncated.
    """
    zeros = torch.zeros_like(log_w, dtype=torch.bool)
    if kind == "none":
        weight, truncated, masked = log_w.exp(), zeros, zeros
    elif kind == "token_tis":
        weight, truncated = token_tis(log_w, cap=_need(cap, "cap", kind))
        masked = zeros
    elif kind == "seq_tis":
        weight, truncated = seq_tis(log_w, mask, cap=_need(cap, "cap", kind))
        masked = zeros
    elif kind in ("token_mis", "icepop"):
        weight, masked = token_mis(log_w, lo=_need(lo, "lo", kind), hi=_need(hi, "hi", kind))
        truncated = zeros
    elif kind == "seq_mis":
        weight, masked = seq_mis(log_w, mask, lo=_need(lo, "lo", kind), hi=_need(hi, "hi", kind))
        truncated = zeros
    else:
        raise ValueError(f"unknown mismatch correction {kind!r}; valid: {', '.join(MISMATCH_KINDS)}")
    if mask_only:
        if kind in ("token_tis", "seq_tis"):
            raise ValueError(f"{kind} truncates the weight pi_old/mu, which a ratio against mu already contains: "
                             "use it with a ratio against pi_old (decoupled) or without a ratio (sft)")
        weight, truncated = (~masked).to(log_w.dtype), zeros
    if is_cap is not None:
        truncated = truncated | (weight > is_cap)
        weight = weight.clamp(max=is_cap)
    return Correction(weight.detach(), truncated, masked)


def _need(value: float | None, name: str, kind: str) -> float:
    if value is None:
        raise ValueError(f"mismatch correction {kind} needs {name}")
    return value


def correction_fractions(corr: Correction, mask: Tensor) -> dict[str, Tensor]:
    """Shares of what ``corr`` did over the tokens of ``mask (B, T)`` (and its rows with a token); 0-d fp32.

    ``is_weight_mean`` = mean ``c_t``; ``is_trunc_frac`` / ``is_mask_frac`` = tokens truncated / masked over
    tokens; ``is_seq_trunc_frac`` / ``is_seq_mask_frac`` = sequences with a truncated / masked token over
    sequences (for the sequence kinds: sequences truncated / masked). An empty mask gives 1, 0, 0, 0, 0.
    """
    on = mask != 0
    rows = on.any(dim=-1)
    n_tok = on.sum().clamp(min=1).to(torch.float32)
    n_seq = rows.sum().clamp(min=1).to(torch.float32)

    def tok(b: Tensor) -> Tensor:
        return (b & on).sum().to(torch.float32) / n_tok

    def seq(b: Tensor) -> Tensor:
        return ((b & on).any(dim=-1) & rows).sum().to(torch.float32) / n_seq

    mean = (corr.weight.float() * on).sum() / n_tok if bool(on.any()) else torch.tensor(1.0)
    return {
        "is_weight_mean": mean,
        "is_trunc_frac": tok(corr.truncated),
        "is_mask_frac": tok(corr.masked),
        "is_seq_trunc_frac": seq(corr.truncated),
        "is_seq_mask_frac": seq(corr.masked),
    }

