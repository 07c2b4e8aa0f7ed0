"""Which samples of a group of ``n`` contribute to the update (the "rejection" in rejection sampling).

Implements the filters of Xiong et al. (2025), "A Minimalist Approach to LLM Reasoning" (arXiv 2504.11343):

- ``raft``: keep the correct samples only (RAFT / RAFT++; docs/theory.md §3.1),
- ``mixed``: keep every sample of groups with ``0 < #correct < #valid`` (Reinforce-Rej, "remove both"),
- ``remove_all_wrong``: drop groups with no correct sample,
- ``remove_all_correct``: drop groups whose samples are all correct,
- ``none``: keep everything (Reinforce, GRPO),
- ``raft_beta``: rejection sampling at a finite temperature ``beta`` (docs/theory.md §1.2 and §2.4): sample ``i``
  is kept with probability ``alpha_i = min(1, exp((r_i - r_max) / beta))``, ``r_max`` the reward map's maximum,
  decided by a uniform draw that is a pure function of ``(seed, request_id, i)`` (:func:`uniform_draws`), so a
  replay of the same group after a crash keeps the same samples. The accepted samples are then exact draws
  from ``pi* ∝ pi · exp(r / beta)`` with the policy ``pi`` that generated them as the proposal. ``beta -> 0``
  gives ``alpha_i = 1[r_i = r_max]`` (``raft``; some write-ups say "beta -> infinity" for this limit,
  the algebra gives beta -> 0); ``beta -> inf`` gives ``alpha_i = 1`` (keep everything). With binary rewards
  and on-policy data its expected gradient is RAFT's times ``1 - exp(-1 / beta)`` (docs/algorithms.md
  section 6). Needs rewards and draws, so it goes through :func:`beta_keep_mask`, not :func:`sample_keep_mask`.

"Correct" is decided by the verifier's status (``Status.CORRECT``), never by comparing reward values:
the reward map is configurable ({0,1}, {-1,+1}, shaped), the status is not.

``valid`` marks samples the verifier actually judged (a verifier ERROR is not "wrong"): invalid samples are
never kept and do not count in a group's size, so a group of 3 correct + 1 error is "all correct".
A group with no valid sample is "empty" and dropped by every mode.

:func:`sampler_diagnostics` computes the beta-sampler's metrics (acceptance, the importance weights' variance
against ``1/acceptance - 1``, effective sample size per group, best-of-n); docs/metrics.md has the formulas.

Left out: the original RAFT's "keep only the best of K under a reward model" (with a binary verifier every
correct sample ties for best, which is the ``raft`` filter).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from winnow.learner.algo import FILTER_MODES, CorrectnessFilter, FilterMode  # noqa: F401  (defined with the config)


def group_stats(correct: Tensor, *, valid: Tensor | None = None) -> dict[str, Tensor]:
    """Per-group counts of ``correct (G, n)`` bool over the ``valid (G, n)`` samples (default: all).

    Returns ``num_correct``, ``num_valid`` (G,) long and ``all_correct``, ``all_wrong``, ``mixed``,
    ``empty`` (G,) bool; exactly one of the four flags is set for each group.
    """
    if valid is None:
        valid = torch.ones_like(correct, dtype=torch.bool)
    correct = correct & valid
    num_correct = correct.sum(dim=-1)  # (G,)
    num_valid = valid.sum(dim=-1)  # (G,)
    empty = num_valid == 0
    all_correct = (num_correct == num_valid) & ~empty
    all_wrong = (num_correct == 0) & ~empty
    mixed = (num_correct > 0) & (num_correct < num_valid)
    return {
        "num_correct": num_correct,
        "num_valid": num_valid,
        "all_correct": all_correct,
        "all_wrong": all_wrong,
        "mixed": mixed,
        "empty": empty,
    }


def sample_keep_mask(correct: Tensor, mode: CorrectnessFilter, *, valid: Tensor | None = None) -> Tensor:
    """Which samples contribute: ``correct (G, n)`` bool -> keep ``(G, n)`` bool.

    ``valid (G, n)`` (default all) marks samples the verifier judged; invalid samples are never kept.
    """
    if valid is None:
        valid = torch.ones_like(correct, dtype=torch.bool)
    s = group_stats(correct, valid=valid)
    if mode == "none":
        group_keep = ~s["empty"]
    elif mode == "raft":
        return correct & valid
    elif mode == "mixed":
        group_keep = s["mixed"]
    elif mode == "remove_all_wrong":
        group_keep = ~s["all_wrong"] & ~s["empty"]
    elif mode == "remove_all_correct":
        group_keep = ~s["all_correct"] & ~s["empty"]
    elif mode == "raft_beta":
        raise ValueError("filter raft_beta needs rewards and uniform draws: use beta_keep_mask")
    else:
        raise ValueError(f"unknown filter mode {mode!r}; valid: {', '.join(FILTER_MODES)}")
    return group_keep[:, None] & valid  # (G, n)


# ---------------------------------------------------------------- rejection sampling at temperature beta


def uniform_draws(seed: int, request_ids: Sequence[str], n: int) -> Tensor:
    """``G`` request ids -> ``(G, n)`` float64 uniforms in ``(0, 1]``, a pure function of ``(seed, id, i)``.

    ``u[g, i] = (k + 1) / 2**53`` with ``k`` the top 53 bits of the 8-byte
    ``blake2b(f"{seed}/{request_ids[g]}/{i}")`` (exact in float64, so ``0 < u <= 1``). No RNG state, so the same group replayed after a crash (or seen by another data-parallel rank) gets the same
    draws, whatever the batch it lands in.
    """
    values = [
        ((int.from_bytes(hashlib.blake2b(f"{seed}/{rid}/{i}".encode(), digest_size=8).digest(), "big") >> 11) + 1)
        / 2.0**53
        for rid in request_ids
        for i in range(n)
    ]
    return torch.tensor(values, dtype=torch.float64).reshape(len(request_ids), n)


def acceptance_probability(rewards: Tensor, *, beta: float, r_max: float) -> Tensor:
    """``rewards (G, n)`` -> ``alpha (G, n)`` = ``min(1, exp((r - r_max) / beta))`` in float64.

    The target is ``pi* ∝ q · exp(r / beta)`` with proposal ``q``; the tightest envelope is
    ``M = exp(r_max / beta)``, so ``p~(y) / (M q(y)) = exp((r - r_max) / beta)``. ``r <= r_max`` is assumed
    (the ``min`` only guards rounding).
    """
    if not beta > 0 or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    return torch.exp((rewards.double() - r_max) / beta).clamp(max=1.0)


def beta_keep_mask(
    rewards: Tensor, uniforms: Tensor, *, beta: float, r_max: float, valid: Tensor | None = None
) -> Tensor:
    """``raft_beta``: ``rewards (G, n)``, ``uniforms (G, n)`` in (0, 1] -> keep ``(G, n)`` bool.

    Sample ``i`` is kept iff ``u_i <= alpha_i`` (:func:`acceptance_probability`) and it is valid. With
    :func:`uniform_draws` (``2**-53 <= u <= 1``) a sample with ``alpha = 1`` is always kept and one with
    ``alpha < 2**-53`` never (``(r_max - r) / beta > 36.7``), so a small enough ``beta`` is exactly ``raft``.
    """
    if uniforms.shape != rewards.shape:
        raise ValueError(f"uniforms {tuple(uniforms.shape)} must match rewards {tuple(rewards.shape)}")
    if valid is None:
        valid = torch.ones_like(rewards, dtype=torch.bool)
    alpha = acceptance_probability(rewards, beta=beta, r_max=r_max)
    return (uniforms.to(alpha.device, torch.float64) <= alpha) & valid


def sampler_diagnostics(
    rewards: Tensor, accepted: Tensor, *, beta: float, r_max: float, valid: Tensor | None = None
) -> dict[str, float]:
    """The beta-sampler's batch metrics (formulas in docs/metrics.md, "Rejection sampling at temperature beta").

    ``rewards (G, n)``, ``accepted (G, n)`` bool (the draws' outcome, :func:`beta_keep_mask`), ``valid (G, n)``.
    Over the ``N`` valid samples of the batch, with ``alpha_i`` = :func:`acceptance_probability`:

    - ``beta_acceptance_rate`` ``a = #accepted / N`` (measured) and ``beta_acceptance_expected``
      ``A = mean alpha_i`` (its expectation given the rewards);
    - ``beta_is_weight_var`` ``V = mean w_i^2 - 1`` with ``w_i = alpha_i / A`` (the importance weights
      ``pi*/q`` normalised to mean 1), ``beta_is_weight_gap`` ``D = mean w_i (1/A - w_i)`` >= 0, and
      ``beta_inverse_acceptance_minus_one`` ``1/a - 1`` (``a`` and, in ``D``, ``A`` floored at ``1/N`` so
      that nothing is infinite). The identity
      ``Var_q[w] + E_q[w (w_max - w)] = 1/acceptance - 1`` says ``V + D ≈ 1/a - 1``; ``D = 0`` exactly
      when every weight is 0 or ``w_max`` (``beta -> 0``, RAFT), where ``V ≈ 1/a - 1`` on its own;
    - ``snis_ess_fraction``: mean over non-empty groups of ``ESS_g / N_g``, ``ESS_g = (sum w)^2 / sum w^2``
      of the group's own weights ``exp(r_i / beta)``; ``snis_ess_min_fraction`` the smallest;
    - ``beta_groups_accepted`` (fraction of non-empty groups with an accepted sample) against
      ``beta_groups_accepted_independent`` = mean over those groups of ``1 - (1 - a)^N_g``.
    """
    if valid is None:
        valid = torch.ones_like(rewards, dtype=torch.bool)
    v = valid.double()
    n_valid = float(v.sum())
    if n_valid == 0:
        return {}
    if not beta > 0 or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    neg_inf = torch.tensor(-math.inf, dtype=torch.float64, device=rewards.device)
    log_alpha = torch.where(valid, ((rewards.double() - r_max) / beta).clamp(max=0.0), neg_inf)  # (G, n)
    acc = accepted & valid
    a = float(acc.sum()) / n_valid
    log_A = float(torch.logsumexp(log_alpha.flatten(), 0)) - math.log(n_valid)  # log mean alpha, no underflow
    w = torch.exp(log_alpha - log_A)  # (G, n): alpha / A, mean 1 over the valid samples, 0 on invalid
    var = float((w**2).sum()) / n_valid - 1.0
    w_max = 1.0 / max(math.exp(log_A), 1.0 / n_valid)  # 1 / A, A floored at 1/N as a is
    gap = float((w * (w_max - w)).sum()) / n_valid
    n_g = v.sum(dim=-1)  # (G,)
    nonempty = n_g > 0
    # ESS of each group's own weights exp(r_i / beta) (∝ alpha_i within a group), in log space
    lse1 = torch.logsumexp(log_alpha[nonempty], -1)
    lse2 = torch.logsumexp(2 * log_alpha[nonempty], -1)
    ess_frac = torch.exp(2 * lse1 - lse2) / n_g[nonempty]
    groups_acc = acc.any(dim=-1)[nonempty].double()
    independent = 1.0 - (1.0 - a) ** n_g[nonempty]
    return {
        "beta_acceptance_rate": a,
        "beta_acceptance_expected": math.exp(log_A),
        "beta_is_weight_var": var,
        "beta_is_weight_gap": gap,
        "beta_inverse_acceptance_minus_one": 1.0 / max(a, 1.0 / n_valid) - 1.0,
        "snis_ess_fraction": float(ess_frac.mean()),
        "snis_ess_min_fraction": float(ess_frac.min()),
        "beta_groups_accepted": float(groups_acc.mean()),
        "beta_groups_accepted_independent": float(independent.mean()),
    }
