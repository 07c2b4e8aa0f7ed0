"""Per-sample advantages from per-sample rewards, one value per sequence (outcome reward, no critic).

Xiong et al. (2025, arXiv 2504.11343) and the released code (RLHFlow/Minimal-RL ``core_algos.py``):

- ``raw``: ``A_i = r_i`` (vanilla Reinforce, Reinforce-Rej: "no normalisation"),
- ``mean_zero``: ``A_i = r_i - mean_j r_j`` (the "Reinforce + Mean-Zero" ablation),
- ``mean_std``: ``A_i = (r_i - mean_j r_j) / (std_j r_j + eps)`` (GRPO; the released code uses the unbiased
  ``torch.std`` and ``eps = 1e-6``; docs/theory.md §6.2 writes the population std; both are offered),
- ``raft``: ``A_i = max(r_i, 0)`` (``compute_raft_outcome_advantage``): 1 for a correct sample under either
  the {0,1} or the {-1,+1} reward map, 0 for a wrong one,
- ``unit``: ``A_i = 1``: plain SFT on whatever the filter kept (``raft_beta`` keeps some wrong samples, which
  must count as much as the correct ones: they are draws from the same target),
- ``snis``: ``A_i = N · w_i`` with the self-normalised importance weights
  ``w_i = exp(r_i / beta) / sum_j exp(r_j / beta)`` over the group's ``N`` samples in ``keep``
  (:func:`snis_weights`; docs/theory.md §2.5, target ``pi* ∝ pi · exp(r / beta)``, proposal ``pi``). The
  factor ``N`` makes the weights average 1 in each group, so the loss has the scale of SFT: ``beta -> inf``
  gives ``A_i = 1`` (plain SFT on all samples), ``beta -> 0`` gives ``A_i = N / K`` on the ``K`` samples with
  the group's highest reward and 0 elsewhere (RAFT with each group weighted ``N / K``; an all-wrong group has
  equal rewards and keeps ``A_i = 1`` on every sample: self-normalisation cannot tell that nobody was right).

Group statistics are taken over the samples in ``keep`` (default: all ``n``, as the released code). The
objective passes the *valid* samples (those the verifier judged), not the filter's output, so filtering
never changes another sample's advantage; samples outside ``keep`` get advantage 0.
A group with fewer than 2 samples in ``keep`` has unbiased std 0 (not NaN).

Left out: token-level rewards, discounting and GAE (outcome rewards only; PPO with a critic is not
implemented).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from winnow.learner.algo import ADVANTAGE_KINDS, AdvantageKind  # noqa: F401  (defined with the config)


def group_mean_std(
    rewards: Tensor, keep: Tensor, std: Literal["unbiased", "population"] = "unbiased"
) -> tuple[Tensor, Tensor]:
    """Mean and std of ``rewards (G, n)`` over ``keep (G, n)`` bool -> ``(G, 1)``, ``(G, 1)``.

    Empty groups get mean 0 and std 0; with ``std="unbiased"`` a single-sample group gets std 0.
    """
    k = keep.to(rewards.dtype)
    count = k.sum(dim=-1, keepdim=True)  # (G, 1)
    mean = (rewards * k).sum(dim=-1, keepdim=True) / count.clamp(min=1)
    sq = (((rewards - mean) * k) ** 2).sum(dim=-1, keepdim=True)
    dof = count - 1 if std == "unbiased" else count
    var = torch.where(dof > 0, sq / dof.clamp(min=1), torch.zeros_like(sq))
    return mean, var.sqrt()


def snis_weights(rewards: Tensor, keep: Tensor, *, beta: float) -> Tensor:
    """Self-normalised importance weights: ``rewards (G, n)``, ``keep (G, n)`` bool -> ``w (G, n)`` float.

    ``w_i = exp(r_i / beta) / sum_{j in keep} exp(r_j / beta)`` within each group (a softmax of ``r / beta``
    over the kept samples, so it never overflows); 0 outside ``keep``; each non-empty group sums to 1.
    """
    if not beta > 0 or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    logits = torch.where(keep, rewards / beta, torch.full_like(rewards, -math.inf))
    w = torch.softmax(logits, dim=-1)  # a group with nothing kept is all -inf: NaN, zeroed below
    return torch.where(keep, w, torch.zeros_like(w))


def snis_ess(weights: Tensor) -> Tensor:
    """Effective sample size per group: ``weights (G, n)`` >= 0 -> ``(G,)`` = ``(sum w)^2 / sum w^2`` (0 if empty).

    Between 1 (one sample carries all the weight) and the number of samples with weight (equal weights).
    """
    s1 = weights.sum(dim=-1)
    s2 = (weights**2).sum(dim=-1)
    return torch.where(s2 > 0, s1**2 / s2.clamp(min=torch.finfo(weights.dtype).tiny), torch.zeros_like(s1))


def compute_advantages(
    rewards: Tensor,
    kind: AdvantageKind,
    *,
    keep: Tensor | None = None,
    std: Literal["unbiased", "population"] = "unbiased",
    eps: float = 1e-6,
    beta: float | None = None,
) -> Tensor:
    """``rewards (G, n)`` float -> advantages ``(G, n)`` float (see the module docstring for each kind).

    ``beta`` is needed (and only used) by ``snis``.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (G, n), got shape {tuple(rewards.shape)}")
    if keep is None:
        keep = torch.ones_like(rewards, dtype=torch.bool)
    if kind == "raw":
        adv = rewards.clone()
    elif kind == "raft":
        adv = rewards.clamp(min=0)
    elif kind == "unit":
        adv = torch.ones_like(rewards)
    elif kind == "snis":
        if beta is None:
            raise ValueError("advantage snis needs beta")
        count = keep.sum(dim=-1, keepdim=True).to(rewards.dtype)  # (G, 1)
        adv = count * snis_weights(rewards, keep, beta=beta)
    elif kind == "mean_zero":
        mean, _ = group_mean_std(rewards, keep, std)
        adv = rewards - mean
    elif kind == "mean_std":
        mean, sd = group_mean_std(rewards, keep, std)
        adv = (rewards - mean) / (sd + eps)
    else:
        raise ValueError(f"unknown advantage kind {kind!r}; valid: {', '.join(ADVANTAGE_KINDS)}")
    return torch.where(keep, adv, torch.zeros_like(adv))
