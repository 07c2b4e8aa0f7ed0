"""The algorithm config (``AlgoConfig``), its presets, and the verifier-status -> reward map.

A preset fills the algorithm fields (filter, advantage, loss, ...); any field given explicitly wins, so
``AlgoConfig(preset="grpo", kl_coef=0)`` or ``WINNOW_LEARNER_ALGO__PRESET=raft`` both work. The presets
follow Xiong et al. (2025, arXiv 2504.11343) and the defaults follow the released scripts
(RLHFlow/Minimal-RL ``scripts/run_*.sh``): eps 0.2 both sides, dual-clip 3, k3 KL loss 0.001, entropy
bonus 0.001, token-mean. See docs/algorithms.md for the table with the formula of each preset.

Reward map: default {0, 1} (``reward_wrong = 0``), as the released code (its ``math_verify`` scorer returns
0/1 and nothing rescales it); the paper's text says {-1, +1}. Under {0, 1} the ``reinforce_rej`` preset
gives wrong answers advantage 0 (a positive-only update on mixed prompts, as the released code); set
``reward_wrong=-1`` for the paper's formula, where wrong answers in mixed groups get -1.

Statuses: ``CORRECT`` -> ``reward_correct``; ``WRONG`` -> ``reward_wrong``; ``NO_ANSWER``, ``UNPARSABLE``,
``TIMEOUT``, ``TOO_COMPLEX`` -> their own reward (None = ``reward_wrong``); ``ERROR`` and ``UNSPECIFIED`` are
*invalid*: the verifier failed, so the sample is excluded from training (and from group statistics), never
counted as wrong.

Two settings apply to every preset: ``mismatch`` (a training-inference mismatch correction, a ``kind``-discriminated
sub-config; the functions are in :mod:`winnow.learner.corrections`) and ``overlong`` (drop truncated samples from the
loss, and/or DAPO's soft overlong penalty, :func:`overlong_penalty`, added to the reward). docs/algorithms.md
sections 7 and 8.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import Field, ValidationError, model_validator

from winnow.config import ConfigError, Model, format_validation_error
from winnow.verdict import Status

if TYPE_CHECKING:
    from torch import Tensor

# The modes of the math modules (filters.py, advantages.py, losses.py), defined here so that this config
# imports without torch (``--help`` stays fast); those modules import them from here.
CorrectnessFilter = Literal["none", "raft", "mixed", "remove_all_wrong", "remove_all_correct"]
FILTER_MODES: tuple[str, ...] = get_args(CorrectnessFilter)
"""The filters decided by correctness alone (:func:`~winnow.learner.filters.sample_keep_mask`)."""
FilterMode = Literal[CorrectnessFilter, "raft_beta"]
"""Every filter: the correctness filters and ``raft_beta`` (:func:`~winnow.learner.filters.beta_keep_mask`)."""
AdvantageKind = Literal["raw", "mean_zero", "mean_std", "raft", "unit", "snis"]
ADVANTAGE_KINDS: tuple[str, ...] = get_args(AdvantageKind)
AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]
AGG_MODES: tuple[str, ...] = get_args(AggMode)
MismatchKind = Literal["none", "token_tis", "token_mis", "seq_tis", "seq_mis", "icepop"]
MISMATCH_KINDS: tuple[str, ...] = get_args(MismatchKind)
"""The training-inference mismatch corrections (:mod:`winnow.learner.corrections`)."""

# name -> fields; everything not listed takes the AlgoConfig default.
PRESETS: dict[str, dict[str, Any]] = {
    # RAFT (paper eq. 1; released: estimator raft + policy_loss vanilla): SFT on the correct samples.
    "raft": {"filter": "raft", "advantage": "raft", "loss": "sft"},
    # RAFT++ (eq. 6): RAFT with the importance ratio and PPO clipping.
    "raft++": {"filter": "raft", "advantage": "raft", "loss": "clipped"},
    # RAFT++ with DAPO's clip-higher (paper Fig. 2: keeps entropy up).
    "raft++clip_higher": {"filter": "raft", "advantage": "raft", "loss": "clipped", "eps_high": 0.28},
    # Vanilla Reinforce (eq. 5): raw reward, no filter.
    "reinforce": {"filter": "none", "advantage": "raw", "loss": "clipped"},
    # GRPO: group mean/std normalised reward, no filter.
    "grpo": {"filter": "none", "advantage": "mean_std", "loss": "clipped"},
    # Reinforce-Rej (the paper's proposal): raw reward on mixed groups only ("remove both").
    "reinforce_rej": {"filter": "mixed", "advantage": "raw", "loss": "clipped"},
    # Ablations (paper Fig. 4, LLaMA-3.2-3B).
    "reinforce+mean_zero": {"filter": "none", "advantage": "mean_zero", "loss": "clipped"},
    "reinforce+remove_all_wrong": {"filter": "remove_all_wrong", "advantage": "raw", "loss": "clipped"},
    "reinforce+remove_all_correct": {"filter": "remove_all_correct", "advantage": "raw", "loss": "clipped"},
    "reinforce_rej+std": {"filter": "mixed", "advantage": "mean_std", "loss": "clipped"},
    # Rejection sampling at temperature beta (docs/theory.md §1.2, §2.4; docs/algorithms.md "RAFT at a finite beta"):
    # keep each sample with probability exp((r - r_max) / beta), SFT on the kept ones. beta -> 0 is raft.
    "raft_beta": {"filter": "raft_beta", "advantage": "unit", "loss": "sft"},
    "raft++_beta": {"filter": "raft_beta", "advantage": "unit", "loss": "clipped"},
    # Its importance-sampling twin: every sample, weighted N * softmax_group(r / beta).
    "raft_snis": {"filter": "none", "advantage": "snis", "loss": "sft"},
}
DEFAULT_PRESET = "reinforce_rej"
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]  # the names are written once: PRESETS' keys
"""The preset names as a ``Literal`` (validation errors and the JSON schema list them)."""

# The paper's Fig. 4 ablations compare under its +-1 reward; under {0, 1} (reward_wrong >= 0) they lose their
# meaning, so using one there warns (AlgoConfig._warn_ablation_reward). Value: what goes wrong under {0, 1}.
PLUS_MINUS_ONE_ABLATIONS: dict[str, str] = {
    "reinforce+remove_all_wrong": "all-wrong groups already have advantage 0, so this is `reinforce` up to the loss "
    "normaliser (identical with soft_filter)",
    "reinforce+remove_all_correct": "wrong answers are never pushed down, so the comparison with reinforce and "
    "reinforce_rej is not the paper's",
    "reinforce+mean_zero": "r - mean does not depend on the reward offset, but the `reinforce` it is compared with does",
    "reinforce_rej+std": "(r - mean) / std does not depend on the reward offset, but the `reinforce_rej` it is "
    "compared with does",
}


def _valid_names() -> str:
    return ", ".join(PRESETS)


# ---------------------------------------------------------------- mismatch corrections (docs/algorithms.md section 7)
# Each multiplies a token's policy loss by a weight c_t computed from w_t = pi_old(a_t) / mu(a_t), the learner's
# recomputed probability over the generator's (learner/corrections.py has the formulas and sources).


class NoCorrection(Model):
    """No mismatch correction (today's objective): c_t = w_t under decoupled (then truncated at is_cap), nothing
    else."""

    kind: Literal["none"] = "none"


class TokenTIS(Model):
    """Token-level truncated importance sampling: c_t = min(w_t, cap)."""

    kind: Literal["token_tis"] = "token_tis"
    cap: float = Field(default=2.0, ge=1.0)
    """C. 2 is the default of TRL, SkyRL, slime and verl's examples."""


class _MaskBounds(Model):
    lo: float = Field(default=0.0, ge=0.0, le=1.0)
    """Lower bound of the accepted weights (0 = one-sided)."""
    hi: float = Field(default=2.0, ge=1.0)
    """Upper bound of the accepted weights."""

    @model_validator(mode="after")
    def _ordered(self) -> _MaskBounds:
        if not self.lo < self.hi:
            raise ValueError(f"need lo < hi, got lo={self.lo}, hi={self.hi}")
        return self


class TokenMIS(_MaskBounds):
    """Token-level masked importance sampling: c_t = w_t if lo <= w_t <= hi, else 0 (the token leaves the
    update). Defaults: TRL's token_mask (one-sided, 2)."""

    kind: Literal["token_mis"] = "token_mis"


class IcePop(_MaskBounds):
    """IcePop (Ring-1T, arXiv 2510.18855): the two-sided token mask c_t = w_t if alpha <= w_t <= beta, else 0;
    token_mis with the paper's bounds alpha = lo = 0.5, beta = hi = 5."""

    kind: Literal["icepop"] = "icepop"
    lo: float = Field(default=0.5, ge=0.0, le=1.0)
    """alpha."""
    hi: float = Field(default=5.0, ge=1.0)
    """beta."""


class SeqTIS(Model):
    """Sequence-level truncated importance sampling on the geometric-mean ratio rho = exp(mean_t log w_t):
    c_t = min(rho, cap) on every token of the sequence."""

    kind: Literal["seq_tis"] = "seq_tis"
    cap: float = Field(default=1.01, ge=1.0)
    """C. rho is a per-token average, so it stays near 1: the default is SkyRL's geometric bound (1.01)."""


class SeqMIS(_MaskBounds):
    """Sequence-level masked importance sampling on the geometric-mean ratio: c_t = rho if lo <= rho <= hi, else
    0 for the whole sequence. Defaults: SkyRL's geometric sequence mask [0.99, 1.01]."""

    kind: Literal["seq_mis"] = "seq_mis"
    lo: float = Field(default=0.99, ge=0.0, le=1.0)
    """Lower bound of the accepted rho."""
    hi: float = Field(default=1.01, ge=1.0)
    """Upper bound of the accepted rho."""


MismatchCorrection = Annotated[
    NoCorrection | TokenTIS | TokenMIS | SeqTIS | SeqMIS | IcePop, Field(discriminator="kind")
]
"""Typed config of a mismatch correction, discriminated on ``kind``."""


# ---------------------------------------------------------------- overlong responses (docs/algorithms.md section 8)
class SoftOverlongPenalty(Model):
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the reward: 0 up to max_tokens - buffer
    tokens, then falling linearly to -factor at max_tokens."""

    max_tokens: int = Field(ge=1)
    """L_max: the generators' sampling.max_new_tokens."""
    buffer: int = Field(ge=1)
    """L_cache: the length of the penalty ramp (DAPO: 4096 of 20480)."""
    factor: float = Field(default=1.0, ge=0.0)
    """The penalty at max_tokens (verl's overlong_buffer.penalty_factor; DAPO: 1)."""

    @model_validator(mode="after")
    def _fits(self) -> SoftOverlongPenalty:
        if self.buffer > self.max_tokens:
            raise ValueError(f"buffer={self.buffer} must be at most max_tokens={self.max_tokens}")
        return self


class OverlongConfig(Model):
    """What happens to responses that hit the length limit."""

    drop_truncated: bool = False
    """Truncated samples (finish_reason "length") leave the loss (DAPO's overlong filtering; SkyRL's
    apply_overlong_filtering). Their rewards still enter their group's statistics."""
    soft_penalty: SoftOverlongPenalty | None = None
    """DAPO's soft overlong penalty on the reward (None = off)."""


class AlgoConfig(Model):
    """The RL algorithm: filter, advantage, loss and their coefficients (a preset fills the first three)."""

    preset: PresetName = DEFAULT_PRESET  # type: ignore[valid-type]  # a Literal built from PRESETS' keys
    """Named algorithm (the keys of ``PRESETS``; docs/algorithms.md has the table). It fills filter, advantage,
    loss (and the fields a preset sets); fields set explicitly override the preset's."""
    filter: FilterMode
    """Which samples contribute: none | raft (correct samples) | mixed (groups with 0 < #correct < n) |
    remove_all_wrong | remove_all_correct | raft_beta (each sample with probability exp((r - reward_correct) / beta))."""
    advantage: AdvantageKind
    """raw (r) | mean_zero (r - group mean) | mean_std ((r - mean) / (std + eps), GRPO) | raft (max(r, 0)) |
    unit (1) | snis (N * softmax over the group of r / beta)."""
    beta: float = Field(default=0.5, gt=0.0, allow_inf_nan=False)
    """Temperature of raft_beta / raft_snis: the target is pi* ∝ pi * exp(r / beta). With rewards {0, 1} a wrong
    sample is kept with probability exp(-1 / beta) (0.5: 0.135, 0.25: 0.018); beta -> 0 is raft (only the best
    reward), a large beta keeps everything (plain SFT on all samples)."""
    sampler_seed: int = 0
    """Seed of raft_beta's acceptance draws; a draw is a pure function of (sampler_seed, request_id, sample index)."""
    loss: Literal["sft", "clipped"]
    """sft: -A log pi (RAFT, no ratio); clipped: PPO clipped surrogate with the per-token ratio."""
    eps_low: float = Field(default=0.2, ge=0.0, lt=1.0)
    """Lower clip: the ratio is clipped at 1 - eps_low (negative advantages)."""
    eps_high: float = Field(default=0.2, ge=0.0, le=10.0)
    """Upper clip: the ratio is clipped at 1 + eps_high (positive advantages); DAPO's clip-higher uses 0.28."""
    dual_clip_c: float | None = Field(default=3.0, gt=1.0)
    """Dual-clip bound for negative advantages: the token loss is at most -A * c. None disables it."""
    kl_coef: float = Field(default=0.001, ge=0.0)
    """Weight of the KL(pi || pi_ref) loss term (released scripts: 0.001; DeepSeekMath GRPO: 0.04). 0 = no
    reference model needed."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token KL estimator: k1 = log(pi/ref), k2 = log(pi/ref)^2 / 2, k3 = ref/pi - log(ref/pi) - 1
    (verl's low_var_kl, clamped to [-10, 10])."""
    entropy_coef: float = Field(default=0.001, ge=0.0)
    """Entropy bonus: the loss subtracts entropy_coef * mean token entropy. 0.001 is the verl default the
    released scripts ran with (they do not override it); 0 turns it off (then entropy is only logged)."""
    agg: AggMode = "token-mean"
    """Loss aggregation: token-mean (released code) | seq-mean-token-mean (the paper's 1/|a| formula) |
    seq-mean-token-sum."""
    std: Literal["unbiased", "population"] = "unbiased"
    """Group std for mean_std: unbiased (torch.std, the released code) or population (docs/theory.md §6.2)."""
    eps: float = Field(default=1e-6, gt=0.0)
    """Added to the group std in mean_std."""
    reward_correct: float = 1.0
    """Reward of a CORRECT verdict; must exceed every other reward."""
    reward_wrong: float = 0.0
    """Reward of a WRONG verdict. 0 follows the released code, -1 the paper's text."""
    reward_no_answer: float | None = None
    """Reward when no final answer was found (None = reward_wrong)."""
    reward_unparsable: float | None = None
    """Reward when the answer could not be parsed (None = reward_wrong)."""
    reward_timeout: float | None = None
    """Reward when verification timed out on the answer (None = reward_wrong)."""
    reward_too_complex: float | None = None
    """Reward when the answer exceeded the verifier's complexity limits (None = reward_wrong)."""
    score_threshold: float = Field(default=1.0, allow_inf_nan=False)
    """For samples the verifier gave a scalar score (reward functions, a reward model; docs/algorithms.md section 9):
    the score is the reward (the status map above is not used), and the sample counts as correct iff
    score >= score_threshold: RAFT's filter keeps it, it makes its group mixed for Reinforce-Rej (0 < #correct <
    #valid), acceptance_rate counts it. Samples without a score: correct iff status CORRECT, as always."""
    error_policy: Literal["exclude_sample", "exclude_group"] = "exclude_sample"
    """A verifier ERROR/UNSPECIFIED is never a reward: exclude_sample drops that sample (the group's statistics
    use the others), exclude_group drops its whole group."""
    soft_filter: bool = False
    """False: filtered samples leave the loss, its normaliser and the KL/entropy terms. True (the released
    code): they stay with advantage 0, count in the token-mean denominator and get KL and entropy terms."""
    decoupled: bool = False
    """Decoupled PPO (AReaL) for stale data: ratio against the proximal policy (the weights before this
    update), times the truncated importance weight pi_prox / pi_behaviour. Needs proximal logprobs."""
    is_cap: float | None = Field(default=5.0, gt=0.0)
    """Truncation of the decoupled importance weight (None = no truncation)."""
    max_staleness: int = Field(default=1, ge=0)
    """Groups generated by a policy more than this many versions behind the one being trained are dropped
    (and counted); 0 = strictly on-policy."""
    mismatch: MismatchCorrection = NoCorrection()
    """Training-inference mismatch correction, by kind: none | token_tis {cap} | token_mis {lo, hi} | seq_tis {cap}
    | seq_mis {lo, hi} | icepop {lo, hi}, on w = pi_old / mu (learner recompute over generator). With loss=sft it
    weights -A log pi; with decoupled it replaces the weight pi_prox / mu (then truncated at is_cap); with a ratio
    against mu (clipped, not decoupled) only its mask applies, so the truncations need decoupled=true."""
    overlong: OverlongConfig = OverlongConfig()
    """Truncated responses: drop_truncated and/or DAPO's soft_penalty {max_tokens, buffer, factor}."""
    dynamic_sampling: bool | None = None
    """Full batches of informative groups (DAPO's dynamic sampling, in the stream): the learner judges each group as
    it arrives and drops those the filter would leave without a trained sample (finished in the book and the ledger
    as all_correct / all_wrong), so every batch holds batch_groups groups that train; it keeps releasing prompts
    while groups are dropped, the admission limit growing with 1 / keep rate up to max_prompts_per_group. None = on
    for the presets whose filter drops groups (filter other than none), off otherwise; false = filter inside the
    batch (the batch shrinks with the drop rate)."""
    max_prompts_per_group: float = Field(default=4.0, ge=1.0, le=64.0, allow_inf_nan=False)
    """Dynamic sampling's cap: prompts in flight are at most this multiple of the admission limit without it
    ((max_staleness + 1) x batch_groups), however low the keep rate, and at most (this - 1) x batch_groups groups
    are dropped while one batch fills; past that the batch fills with whatever comes (the trainer's filter decides),
    so a policy that never passes the filter still moves (DAPO's max_num_gen_batches)."""

    @property
    def dynamic(self) -> bool:
        """Whether dynamic sampling is on (see ``dynamic_sampling``)."""
        return self.filter != "none" if self.dynamic_sampling is None else self.dynamic_sampling

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        name = data.get("preset", DEFAULT_PRESET)
        if name not in PRESETS:
            raise ValueError(f"preset: unknown algorithm {name!r}; valid: {_valid_names()}")
        return {**PRESETS[name], **data}

    @model_validator(mode="after")
    def _check_combination(self) -> AlgoConfig:
        others = {
            "reward_wrong": self.reward_wrong,
            "reward_no_answer": self.reward_no_answer,
            "reward_unparsable": self.reward_unparsable,
            "reward_timeout": self.reward_timeout,
            "reward_too_complex": self.reward_too_complex,
        }
        for name, value in others.items():
            if value is not None and value >= self.reward_correct:
                raise ValueError(f"{name}={value} must be below reward_correct={self.reward_correct}")
        if self.loss == "sft":
            if self.advantage in ("mean_zero", "mean_std"):
                raise ValueError(
                    f"loss=sft with advantage={self.advantage} gives negative weights to -log pi (unbounded "
                    "unlikelihood); use advantage=raft or raw, or loss=clipped"
                )
            if self.advantage == "raw":
                kept = [self.reward_correct] if self.filter == "raft" else [
                    self.reward_correct, *(v for v in others.values() if v is not None)]
                penalty = self.overlong.soft_penalty.factor if self.overlong.soft_penalty is not None else 0.0
                if min(kept) - penalty < 0:
                    raise ValueError(
                        f"loss=sft with advantage=raw and filter={self.filter} trains on a negative reward "
                        f"(reward map min {min(kept)}, overlong penalty down to -{penalty}); use advantage=raft, "
                        "filter=raft, or rewards >= 0"
                    )
            if self.decoupled:
                raise ValueError("decoupled=True needs a ratio: it applies to loss=clipped, not loss=sft")
        elif not self.decoupled and self.mismatch.kind in ("token_tis", "seq_tis"):
            raise ValueError(
                f"mismatch.kind={self.mismatch.kind} truncates the weight pi_old / mu, but with decoupled=false the "
                "PPO ratio is taken against mu and already contains it: set decoupled=true (ratio against pi_old, "
                "times the truncated weight), or use a mask (token_mis, seq_mis, icepop)"
            )
        return self

    @model_validator(mode="after")
    def _warn_ablation_reward(self) -> AlgoConfig:
        if self.preset in PLUS_MINUS_ONE_ABLATIONS and self.reward_wrong >= 0:
            warnings.warn(
                f"algo.preset={self.preset!r} is a Fig. 4 ablation of the paper, which uses rewards +-1; with "
                f"reward_wrong={self.reward_wrong} {PLUS_MINUS_ONE_ABLATIONS[self.preset]}. Set "
                "algo.reward_wrong=-1 to reproduce the ablation.",
                UserWarning,
                stacklevel=2,
            )
        return self

    def reward_of(self, status: Status) -> float | None:
        """The reward for one status, or None when the status is invalid (excluded from training)."""
        if status == Status.CORRECT:
            return self.reward_correct
        fallback = {
            Status.NO_ANSWER: self.reward_no_answer,
            Status.UNPARSABLE: self.reward_unparsable,
            Status.TIMEOUT: self.reward_timeout,
            Status.TOO_COMPLEX: self.reward_too_complex,
        }
        if status == Status.WRONG:
            return self.reward_wrong
        if status in fallback:
            v = fallback[status]
            return self.reward_wrong if v is None else v
        return None  # ERROR, UNSPECIFIED

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> AlgoConfig:
        """``AlgoConfig.from_preset("grpo", kl_coef=0.0)``; an unknown name raises ConfigError listing the valid ones."""
        if name not in PRESETS:
            raise ConfigError(f"algo.preset: unknown algorithm {name!r}; valid: {_valid_names()}")
        try:
            return cls(preset=name, **overrides)
        except ValidationError as e:
            raise ConfigError(format_validation_error("algo", e)) from None


def reward_from_status(statuses: Tensor, cfg: AlgoConfig, scores: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Verifier statuses ``(G, n)`` int (``Status`` values) -> ``rewards (G, n)`` fp32, ``valid (G, n)`` bool.

    Invalid samples (ERROR, UNSPECIFIED) get reward 0 and ``valid = False``; with
    ``cfg.error_policy == "exclude_group"`` every sample of a group holding one is invalid.
    An int outside the ``Status`` range raises ValueError.

    ``scores (G, n)`` float, NaN where the verifier sent none: a valid sample with a score gets the score as its
    reward instead of its status's; an infinite score makes the sample invalid (never a reward).
    """
    import torch

    statuses = statuses.long()
    n_status = len(Status)
    if statuses.numel() and (int(statuses.min()) < 0 or int(statuses.max()) >= n_status):
        bad = statuses[(statuses < 0) | (statuses >= n_status)][0].item()
        raise ValueError(f"unknown verifier status {bad}; valid: 0..{n_status - 1} ({', '.join(s.name for s in Status)})")
    table = [cfg.reward_of(Status(i)) for i in range(n_status)]
    reward_table = torch.tensor([0.0 if v is None else v for v in table], dtype=torch.float32, device=statuses.device)
    valid_table = torch.tensor([v is not None for v in table], dtype=torch.bool, device=statuses.device)
    rewards, valid = reward_table[statuses], valid_table[statuses]
    if scores is not None:
        scores = scores.to(device=statuses.device, dtype=torch.float32)
        scored = ~torch.isnan(scores)
        valid = valid & ~torch.isinf(scores)
        rewards = torch.where(scored & valid, scores, rewards)
    if cfg.error_policy == "exclude_group":
        valid = valid & valid.all(dim=-1, keepdim=True)
    return rewards, valid


def correct_mask(statuses: Tensor, valid: Tensor, cfg: AlgoConfig, scores: Tensor | None = None) -> Tensor:
    """Which samples count as correct, ``(G, n)`` bool, for the filters and ``acceptance_rate``: a valid sample with a
    score (``scores (G, n)``, NaN = none) iff ``score >= cfg.score_threshold``, one without iff its status is
    CORRECT."""
    import torch

    correct = statuses.long() == int(Status.CORRECT)
    if scores is not None:
        scores = scores.to(statuses.device)
        correct = torch.where(torch.isnan(scores), correct, scores >= cfg.score_threshold)
    return correct & valid


def overlong_penalty(lengths: Tensor, *, max_tokens: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, eq. 13) times ``factor``:
    ``lengths`` (any shape, response tokens) -> the reward term, same shape, fp32:

        0                                 if |y| <= L_max - L_cache
        factor ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
        -factor                           if |y| > L_max

    with ``L_max = max_tokens``, ``L_cache = buffer`` (verl's ``overlong_buffer``: ``len``, ``penalty_factor``).
    """
    import torch

    if not 1 <= buffer <= max_tokens:
        raise ValueError(f"need 1 <= buffer <= max_tokens, got buffer={buffer}, max_tokens={max_tokens}")
    over = (lengths.to(torch.float32) - (max_tokens - buffer)).clamp(min=0.0)
    return -factor * (over / buffer).clamp(max=1.0)
