"""The two entry points of the learner's math: per-batch signals and the per-micro-batch loss.

1. :func:`prepare_batch_signals` runs once per batch of ``G`` groups: verifier status (or the verifier's scalar
   score, when it sent one) -> reward and validity (:func:`~winnow.learner.algo.reward_from_status`), filter
   (:func:`~winnow.learner.filters.sample_keep_mask`), advantages over each group's valid samples
   (:func:`~winnow.learner.advantages.compute_advantages`), sample weights, and batch metrics. Group
   statistics are computed here, over whole groups, so micro-batching never changes them.
2. :func:`compute_loss` runs per micro-batch:
   ``loss = policy + kl_coef * KL(pi || pi_ref) - entropy_coef * H``, each term aggregated by ``cfg.agg``
   over the tokens of samples with ``sample_weight > 0``, divided by ``loss_scale_tokens`` (the
   count over the *whole* batch, from :func:`~winnow.learner.losses.loss_denominator`). Then the sum of the
   micro-batch losses (and of their gradients) equals the loss (gradient) of the whole batch in one piece,
   for every aggregation mode.

Hard filter (default): filtered samples have ``sample_weight = 0`` and leave the loss, its denominator and
the KL/entropy terms. Soft filter (``cfg.soft_filter``, the released code): they keep ``sample_weight = 1``
with advantage 0. Invalid samples (verifier errors) have weight 0 either way.

Overlong responses (``cfg.overlong``, docs/algorithms.md section 8): DAPO's soft penalty is added to the reward
before the filter and the advantages; ``drop_truncated`` takes truncated samples out of ``keep`` (and so out of
the loss, its denominator and the KL/entropy terms, even under a soft filter) *after* the advantages, so their
rewards still count in their group's statistics.

Mismatch corrections (``cfg.mismatch``, docs/algorithms.md section 7): :func:`compute_loss` multiplies each token's
policy loss by the weight of :func:`~winnow.learner.corrections.behaviour_correction`; :func:`correction_metrics`
reports, once per batch, the shares of tokens and sequences it truncated or masked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from winnow.learner.advantages import compute_advantages
from winnow.learner.algo import AlgoConfig, correct_mask, overlong_penalty, reward_from_status
from winnow.learner.corrections import (
    Correction,
    behaviour_correction,
    behaviour_log_ratio,
    correction_fractions,
)
from winnow.learner.filters import (
    beta_keep_mask,
    group_stats,
    sample_keep_mask,
    sampler_diagnostics,
    uniform_draws,
)
from winnow.learner.losses import aggregate, clipped_policy_loss, kl_penalty, sft_loss
from winnow.samples import SampleJudgement


def prepare_batch_signals(
    statuses: Tensor,
    cfg: AlgoConfig,
    *,
    request_ids: Sequence[str] | None = None,
    finish_reasons: Sequence[str] | None = None,
    response_lengths: Tensor | None = None,
    scores: Tensor | None = None,
) -> dict[str, Any]:
    """``statuses (G, n)`` int verifier statuses -> per-sample signals and batch metrics.

    ``scores (G, n)`` float, NaN where the verifier sent none (None: no sample has one): a scored sample's reward
    is its score and it counts as correct iff ``score >= cfg.score_threshold`` (:func:`~winnow.learner.algo.correct_mask`).

    ``request_ids`` (G,): the groups' request ids, needed by ``filter=raft_beta`` (and, optionally, for the
    beta-sampler metrics of ``advantage=snis``): its acceptance draws are :func:`~winnow.learner.filters.uniform_draws` of
    ``(cfg.sampler_seed, request_id, sample index)``, so a replayed group keeps the same samples. With
    ``raft_beta`` or ``snis`` the metrics also hold :func:`~winnow.learner.filters.sampler_diagnostics`.

    ``finish_reasons`` (G n,) in row order (row ``b`` = group ``b // n``, sample ``b % n``; "length" = truncated),
    needed by ``cfg.overlong.drop_truncated``; ``response_lengths`` (G n,) or (G, n) tokens, needed by
    ``cfg.overlong.soft_penalty``. With either setting the metrics also hold ``overlong_dropped`` (samples the
    filter kept that were dropped as truncated), ``overlong_penalty_mean`` (mean penalty over valid samples) and
    ``overlong_penalized_fraction`` (valid samples with a penalty < 0 / valid samples).

    Returns ``rewards`` (G, n) fp32, ``correct``, ``valid``, ``keep`` (G, n) bool, ``advantages`` (G, n) fp32
    (0 outside ``keep``), ``sample_weight`` (G, n) fp32 (``keep``, or ``valid`` under a soft filter) and
    ``metrics``: dict of floats (``acceptance_rate`` = correct / valid samples, ``kept_group_fraction``,
    ``kept_sample_fraction``, ``groups_all_correct``, ``groups_all_wrong``, ``groups_mixed``, ``groups_empty``,
    ``reward_mean`` over valid samples, ``invalid_samples``, ``advantage_abs_mean`` over kept samples).
    """
    if statuses.dim() != 2:
        raise ValueError(f"statuses must be (G, n), got shape {tuple(statuses.shape)}")
    rewards, valid = reward_from_status(statuses, cfg, scores)
    correct = correct_mask(statuses, valid, cfg, scores)
    truncated, penalty = _overlong(statuses.shape, cfg, finish_reasons, response_lengths, valid)
    rewards = rewards + penalty
    beta_metrics: dict[str, float] = {}
    if cfg.filter == "raft_beta" and request_ids is None:
        raise ValueError("filter=raft_beta needs request_ids (its acceptance draws are keyed by them)")
    if request_ids is not None and (cfg.filter == "raft_beta" or cfg.advantage == "snis"):
        if len(request_ids) != statuses.shape[0]:
            raise ValueError(f"request_ids has {len(request_ids)} entries for {statuses.shape[0]} groups")
        draws = uniform_draws(cfg.sampler_seed, request_ids, statuses.shape[1])
        accepted = beta_keep_mask(rewards, draws, beta=cfg.beta, r_max=cfg.reward_correct, valid=valid)
        beta_metrics = sampler_diagnostics(rewards, accepted, beta=cfg.beta, r_max=cfg.reward_correct, valid=valid)
    if cfg.filter == "raft_beta":
        keep = accepted
    else:
        keep = sample_keep_mask(correct, cfg.filter, valid=valid)
    advantages = compute_advantages(
        rewards, cfg.advantage, keep=valid, std=cfg.std, eps=cfg.eps, beta=cfg.beta
    )
    dropped = keep & truncated
    keep = keep & ~truncated
    advantages = torch.where(keep, advantages, torch.zeros_like(advantages))
    sample_weight = ((valid & ~truncated) if cfg.soft_filter else keep).to(torch.float32)

    gs = group_stats(correct, valid=valid)
    n_valid = valid.sum().clamp(min=1)
    n_keep = keep.sum().clamp(min=1)
    stacked = torch.stack([
        correct.sum() / n_valid,
        keep.any(dim=-1).float().mean() if keep.shape[0] else keep.new_zeros((), dtype=torch.float32),
        keep.float().mean() if keep.numel() else keep.new_zeros((), dtype=torch.float32),
        gs["all_correct"].sum(),
        gs["all_wrong"].sum(),
        gs["mixed"].sum(),
        gs["empty"].sum(),
        (rewards * valid).sum() / n_valid,
        (~valid).sum(),
        (advantages.abs() * keep).sum() / n_keep,
    ]).double().tolist()
    names = ["acceptance_rate", "kept_group_fraction", "kept_sample_fraction", "groups_all_correct",
             "groups_all_wrong", "groups_mixed", "groups_empty", "reward_mean", "invalid_samples",
             "advantage_abs_mean"]
    overlong_metrics: dict[str, float] = {}
    if cfg.overlong.drop_truncated or cfg.overlong.soft_penalty is not None:
        overlong_metrics = dict(zip(
            ["overlong_dropped", "overlong_penalty_mean", "overlong_penalized_fraction"],
            torch.stack([dropped.sum(), (penalty * valid).sum() / n_valid,
                         ((penalty < 0) & valid).sum() / n_valid]).double().tolist(),
            strict=True,
        ))
    return {
        "rewards": rewards,
        "correct": correct,
        "valid": valid,
        "keep": keep,
        "advantages": advantages,
        "sample_weight": sample_weight,
        "metrics": {**dict(zip(names, stacked, strict=True)), **beta_metrics, **overlong_metrics},
    }


def _overlong(
    shape: torch.Size, cfg: AlgoConfig, finish_reasons: Sequence[str] | None, response_lengths: Tensor | None,
    valid: Tensor,
) -> tuple[Tensor, Tensor]:
    """``truncated`` (G, n) bool (only with ``drop_truncated``; else all False) and the soft ``penalty`` (G, n)
    fp32 on valid samples (0 without ``soft_penalty``)."""
    truncated = torch.zeros(shape, dtype=torch.bool, device=valid.device)
    penalty = torch.zeros(shape, dtype=torch.float32, device=valid.device)
    if cfg.overlong.drop_truncated:
        if finish_reasons is None or len(finish_reasons) != shape.numel():
            raise ValueError(f"overlong.drop_truncated needs finish_reasons for the {shape.numel()} samples, got "
                             f"{None if finish_reasons is None else len(finish_reasons)}")
        truncated = torch.tensor([r == "length" for r in finish_reasons], dtype=torch.bool,
                                 device=valid.device).reshape(shape)
    sp = cfg.overlong.soft_penalty
    if sp is not None:
        if response_lengths is None or response_lengths.numel() != shape.numel():
            raise ValueError(f"overlong.soft_penalty needs response_lengths for the {shape.numel()} samples")
        lengths = response_lengths.reshape(shape).to(valid.device)
        penalty = overlong_penalty(lengths, max_tokens=sp.max_tokens, buffer=sp.buffer, factor=sp.factor) * valid
    return truncated, penalty


def judge_samples(groups: Sequence[Any], cfg: AlgoConfig) -> SampleJudgement:
    """Per sample of ``groups`` (:class:`~winnow.learner.batch.GroupData`): kept by the algorithm's filter, valid,
    reward, from the same :func:`prepare_batch_signals` a training step uses (for the sample log of groups that
    are not trained, e.g. stale ones; a step reports its own in ``StepResult.judged``)."""
    statuses = torch.tensor([[s.status for s in g.samples] for g in groups], dtype=torch.long)
    scores = None
    if any(getattr(s, "score", None) is not None for g in groups for s in g.samples):
        scores = torch.tensor([[math.nan if getattr(s, "score", None) is None else s.score for s in g.samples]
                               for g in groups], dtype=torch.float32)
    sig = prepare_batch_signals(
        statuses, cfg, scores=scores, request_ids=[g.request_id for g in groups],
        finish_reasons=[s.finish_reason for g in groups for s in g.samples],
        response_lengths=torch.tensor([[len(s.response_token_ids) for s in g.samples] for g in groups],
                                      dtype=torch.long).reshape(statuses.shape),
    )
    return judgement(sig, cfg)


def judgement(sig: dict[str, Any], cfg: AlgoConfig) -> SampleJudgement:
    """The per-sample view of :func:`prepare_batch_signals`' output for the sample log."""
    return SampleJudgement(sig["keep"].tolist(), sig["valid"].tolist(), sig["rewards"].tolist(), str(cfg.filter))


def compute_loss(
    *,
    logprobs: Tensor,
    behaviour_logprobs: Tensor,
    mask: Tensor,
    advantages: Tensor,
    sample_weight: Tensor,
    cfg: AlgoConfig,
    entropy: Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    proximal_logprobs: Tensor | None = None,
    loss_scale_tokens: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The scalar loss of one micro-batch (to minimise) and float metrics.

    ``logprobs`` (B, T) fp32 with grad; ``behaviour_logprobs`` (B, T) from the generator; ``mask`` (B, T) 1 on
    response tokens; ``advantages`` (B,) and ``sample_weight`` (B,) from :func:`prepare_batch_signals`
    (flattened); ``entropy`` (B, T) (needed with grad when ``cfg.entropy_coef > 0``, else only logged);
    ``ref_logprobs`` (B, T) (needed when ``cfg.kl_coef > 0``); ``proximal_logprobs`` (B, T) (needed iff
    ``cfg.decoupled``); ``loss_scale_tokens``: the aggregation denominator over the whole batch (None = this
    micro-batch's own count, correct only without accumulation).

    The per-token weight (:func:`behaviour_weights`): with ``cfg.mismatch`` the correction's weight of
    ``w = pi_old / mu``, where ``pi_old`` is ``proximal_logprobs`` or else ``logprobs`` detached (the learner's
    recompute before this step's update); under ``decoupled`` without a correction ``min(w, is_cap)``.

    Metrics: ``loss``, ``pg_loss``, ``kl``, ``entropy`` use the same denominator as the loss (they add up over
    micro-batches and ranks to the batch value); ``clip_frac``, ``dual_clip_frac``, ``is_weight_mean``,
    ``is_trunc_frac`` are over this micro-batch's weighted tokens (``tokens``). How each combines is declared in
    its row of :data:`winnow.learner.metric_table.LEARNER`. Ratio statistics are the step's, computed once over the batch
    (:func:`~winnow.learner.losses.ratio_stats`).
    """
    if cfg.kl_coef > 0 and ref_logprobs is None:
        raise ValueError(f"cfg.kl_coef={cfg.kl_coef} > 0 needs ref_logprobs (or set kl_coef=0)")
    if cfg.entropy_coef > 0 and entropy is None:
        raise ValueError(f"cfg.entropy_coef={cfg.entropy_coef} > 0 needs entropy (with grad)")
    if cfg.decoupled != (proximal_logprobs is not None):
        raise ValueError(
            f"cfg.decoupled={cfg.decoupled} but proximal_logprobs is {'given' if proximal_logprobs is not None else 'None'}"
        )
    w_mask = mask.to(logprobs.dtype) * sample_weight.to(logprobs.dtype)[:, None]  # (B, T)
    adv = advantages.to(logprobs.dtype)

    def agg(values: Tensor) -> Tensor:
        return aggregate(values, w_mask, cfg.agg, denominator=loss_scale_tokens)

    corr = behaviour_weights(logprobs, behaviour_logprobs, w_mask, cfg, proximal_logprobs=proximal_logprobs)
    if cfg.loss == "sft":
        per_token = sft_loss(logprobs, mask) * (adv[:, None] if adv.dim() == 1 else adv)
        pg_stats: dict[str, Tensor] = {}
        if corr is not None:
            per_token = per_token * corr.weight.to(per_token.dtype)
            pg_stats = correction_fractions(corr, w_mask)
    else:
        per_token, pg_stats = clipped_policy_loss(
            logprobs, behaviour_logprobs, adv, w_mask,
            eps_low=cfg.eps_low, eps_high=cfg.eps_high, dual_clip_c=cfg.dual_clip_c,
            proximal_logprobs=proximal_logprobs, is_cap=cfg.is_cap, correction=corr,
        )
    pg_loss = agg(per_token)
    loss = pg_loss
    zero = pg_loss.detach() * 0
    kl = zero
    if ref_logprobs is not None:
        kl = agg(kl_penalty(logprobs if cfg.kl_coef > 0 else logprobs.detach(), ref_logprobs, cfg.kl_estimator))
        loss = loss + cfg.kl_coef * kl if cfg.kl_coef > 0 else loss
    ent = zero
    if entropy is not None:
        ent = agg(entropy if cfg.entropy_coef > 0 else entropy.detach())
        loss = loss - cfg.entropy_coef * ent if cfg.entropy_coef > 0 else loss

    # ratio statistics are not computed here: the step computes them once over every trained token of the batch
    names = ["loss", "pg_loss", "kl", "entropy", "clip_frac", "dual_clip_frac", "is_weight_mean", "is_trunc_frac",
             "tokens"]
    values = [loss.detach(), pg_loss.detach(), kl.detach(), ent.detach(),
              pg_stats.get("clip_frac", zero), pg_stats.get("dual_clip_frac", zero),
              pg_stats.get("is_weight_mean", zero + 1), pg_stats.get("is_trunc_frac", zero), w_mask.sum()]
    device = logprobs.device
    floats = torch.stack([v.detach().to(device=device, dtype=torch.float64).reshape(()) for v in values]).tolist()
    return loss, dict(zip(names, floats, strict=True))


def behaviour_weights(
    logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, cfg: AlgoConfig, *,
    proximal_logprobs: Tensor | None = None,
) -> Correction | None:
    """The per-token weight on the policy loss under ``cfg`` (None = no weight), all ``(B, T)``.

    ``w = pi_old / mu`` with ``pi_old`` = ``proximal_logprobs``, else ``logprobs`` detached (one optimizer step per
    batch: the learner's recompute before the update). How it combines with the ratio of the loss:

    - ``loss=sft`` (no ratio): ``c = correction(w)``; no correction: no weight (RAFT as before).
    - ``loss=clipped``, ``decoupled`` (ratio ``pi_theta / pi_old``): ``c = min(correction(w), is_cap)``; no
      correction: ``min(w, is_cap)`` (AReaL's decoupled PPO as before).
    - ``loss=clipped``, not decoupled (ratio ``pi_theta / mu``, which already holds ``w``): ``c`` = the correction's
      0/1 mask (the truncating kinds are refused by the config); no correction: no weight.
    """
    kind = cfg.mismatch.kind
    decoupled = cfg.loss == "clipped" and cfg.decoupled
    if kind == "none" and not decoupled:
        return None
    recomputed = proximal_logprobs if proximal_logprobs is not None else logprobs
    log_w = behaviour_log_ratio(recomputed, behaviour_logprobs)
    return behaviour_correction(
        log_w, mask, kind,
        cap=getattr(cfg.mismatch, "cap", None), lo=getattr(cfg.mismatch, "lo", None),
        hi=getattr(cfg.mismatch, "hi", None),
        is_cap=cfg.is_cap if decoupled else None,
        mask_only=cfg.loss == "clipped" and not cfg.decoupled,
    )


@torch.no_grad()
def correction_metrics(
    logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, cfg: AlgoConfig
) -> dict[str, float]:
    """Once per batch, over every trained token (``mask (B, T)``: response mask times sample weight) and
    sequence: what the per-token weight did (:func:`~winnow.learner.corrections.correction_fractions`):
    ``is_mask_frac``, ``is_seq_trunc_frac``, ``is_seq_mask_frac`` (0 when there is no weight). ``logprobs`` (B, T)
    are the recomputed log-probs the loss used as ``pi_old``. (``is_weight_mean`` and ``is_trunc_frac`` come with
    the loss, per micro-batch.)
    """
    keys = ("is_mask_frac", "is_seq_trunc_frac", "is_seq_mask_frac")
    corr = behaviour_weights(logprobs, behaviour_logprobs, mask, cfg)
    if corr is None:
        return dict.fromkeys(keys, 0.0)
    fr = correction_fractions(corr, mask)
    return {k: float(fr[k]) for k in keys}
