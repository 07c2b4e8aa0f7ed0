"""The learner's training step: scored groups in, one optimizer step out.

:class:`Trainer` owns the policy model, an optional frozen reference model and the AdamW
optimizer. :meth:`Trainer.train_step` reads top to bottom:

    collate -> prepare_batch_signals (rewards, filter, advantages: once over all groups)
    -> global loss normaliser -> micro-batches of the kept rows
    -> forward (recompute log pi_theta and entropy; log pi_ref under no_grad) -> compute_loss -> backward
    -> clip -> AdamW step -> version += 1 -> metrics

The math (filters, advantages, ratios, losses) lives in :mod:`winnow.learner.objective` and is
not repeated here. Choices made in this file:

- **One optimizer step per call** over the whole batch, gradients accumulated over micro-batches
  of ``OptimConfig.micro_batch_size`` sequences. Each micro-batch loss is divided by the
  normaliser of the *whole* batch, so the accumulated gradient equals the full-batch gradient.
- **Hard filter**: rows whose ``sample_weight`` is 0 contribute nothing (no policy, KL or
  entropy term), so they are not forwarded at all.
- **Nothing to train on** (e.g. RAFT on a batch with no correct answer): no forward, no
  optimizer step (AdamW's momentum and weight decay would move the weights even with a zero
  gradient), but ``version`` still advances so the pipeline's bookkeeping (staleness, prompt
  release) keeps moving; ``metrics["skipped"] = 1``. The weights are unchanged.
- **Decoupled PPO** (``algo.decoupled``): the proximal policy is the current policy before this
  step's update. Because a call takes exactly one optimizer step, that is the detached
  log-probs of the same forward pass (AReaL's "recompute proximal logp" needs its extra forward
  only when one batch feeds several optimizer steps).
- **Reference model** (``kl_coef > 0`` only): a frozen deep copy of the model at construction,
  or a model passed in; its log-probs are computed under ``no_grad`` per micro-batch.
- **Precision**: parameters stay in the dtype they were loaded in (fp32 on CPU); the forward runs
  under autocast to ``autocast_dtype`` (the service passes ``numerics.precision``, the dtype the
  generators sample in; see :mod:`winnow.numerics`). Log-probs and entropy are fp32.
- **Data parallel** (``dp_group``): see docs/distributed.md. The normaliser is all-reduced so
  every rank divides by the global count, and the loss is multiplied by the world size to undo
  the gradient averaging of FSDP/DDP.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from winnow.learner.algo import AlgoConfig
from winnow.learner.batch import GroupData, MicroBatch, TrainBatch, collate
from winnow.learner.config import OptimConfig
from winnow.learner.filters import group_stats
from winnow.learner.logits import logprobs_from_hidden, token_logprobs_and_entropy
from winnow.learner.losses import loss_denominator, mismatch_stats, ratio_stats
from winnow.learner.metric_table import LEARNER
from winnow.learner.model import (
    disable_dropout,
    plain_lm_head,
    response_hidden,
    response_logits,
    sharded_response_hidden,
)
from winnow.learner.objective import compute_loss, correction_metrics, judgement, prepare_batch_signals
from winnow.learner.prefix import pack_micro_batches, shared_prompt_hidden
from winnow.metric_defs import combine_micro_batches, derive, from_rank_vectors, rank_vectors, step_keys
from winnow.samples import SampleJudgement
from winnow.weight_store import sha256_file

if TYPE_CHECKING:
    from winnow.learner.checkpoint import LearnerState
    from winnow.learner.evaluate import EvalView

GroupOutcome = Literal["trained", "all_correct", "all_wrong"]
STEP_KEYS = frozenset(step_keys(LEARNER))


def group_outcomes(keep: torch.Tensor, correct: torch.Tensor, valid: torch.Tensor) -> tuple[GroupOutcome, ...]:
    """Per group of ``keep``/``correct``/``valid`` (G, n) bool: "trained" if the filter kept a sample, else
    "all_correct" or "all_wrong" (a group with no valid sample counts as all wrong)."""
    kept = keep.any(dim=-1).tolist()
    all_correct = group_stats(correct, valid=valid)["all_correct"].tolist()
    return tuple("trained" if k else ("all_correct" if c else "all_wrong") for k, c in zip(kept, all_correct, strict=True))


@dataclass(frozen=True)
class StepResult:
    """What a training step did: per group whether it was trained (or why not), and every metric by name for
    ``metrics.jsonl`` (``result["clip_frac"]``); each key is a row of :data:`~winnow.learner.metric_table.LEARNER`, which says
    how it combines over micro-batches and ranks and where it is exported."""

    group_outcomes: tuple[GroupOutcome, ...]
    metrics: dict[str, float]
    judged: SampleJudgement | None = None
    """Per sample: kept by the filter, valid, reward (the sample log)."""

    @classmethod
    def build(cls, outcomes: tuple[GroupOutcome, ...], metrics: dict[str, float],
              judged: SampleJudgement | None = None) -> StepResult:
        """A key without a row in the metric table is an error: it would be neither reduced nor documented."""
        if unknown := metrics.keys() - STEP_KEYS:
            raise ValueError(f"step metrics without a row in learner/metric_table.py: {sorted(unknown)}")
        return cls(group_outcomes=tuple(outcomes), metrics=dict(metrics), judged=judged)

    def __getitem__(self, name: str) -> float:
        return self.metrics[name]

    @property
    def skipped(self) -> bool:
        """No optimizer step was taken (nothing carried weight, or a non-finite gradient norm)."""
        return bool(self.metrics["skipped"])


CHUNK_ELEMENTS = 1 << 24
"""Target size of one log-prob chunk: rows x vocabulary = 16M fp32 values (64 MiB). The kernels hold
several temporaries of this size at once (about 7 in the backward pass)."""


def auto_chunk_size(model: torch.nn.Module) -> int:
    """Rows per log-prob chunk: ``CHUNK_ELEMENTS // vocab`` clamped to [16, 8192] (1024 without a vocab).

    Qwen2.5 (151,936 tokens): 110 rows; SmolLM2 (49,152): 341; the tiny test model (384): 8192.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = (
        head.weight.shape[0]
        if head is not None
        else getattr(getattr(model, "config", None), "vocab_size", None)
    )
    if not vocab:
        return 1024
    return max(16, min(8192, CHUNK_ELEMENTS // int(vocab)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class ServiceTrainer(Protocol):
    """What the learner service (:class:`~winnow.learner.service.LearnerService`) drives of a trainer: the plain
    :class:`Trainer`, the LoRA one (:class:`~winnow.learner.lora.LoraTrainer`) and rank 0's view of the sharded one
    (:class:`~winnow.learner.distributed.ShardedTrainer`); mypy checks all three against it (learner/service.py)."""

    @property
    def model(self) -> torch.nn.Module:
        """The policy: its vocabulary bounds the token ids of a group; its config goes next to published weights."""
        ...

    @property
    def algo(self) -> AlgoConfig:
        """The RL algorithm: staleness bound, dynamic sampling, the filter that judges a group on arrival."""
        ...

    @property
    def version(self) -> int:
        """Optimizer steps taken: the policy version of the current weights."""
        ...

    def train_step(self, groups: list[GroupData]) -> StepResult:
        """One optimizer step on a batch of groups (blocking: the service runs it off the event loop)."""
        ...

    def eval_view(self) -> EvalView:
        """What the held-out evaluation reads (an unsharded model at the compute precision)."""
        ...

    def save_weights(self, path: str | Path, dtype: torch.dtype | None = None) -> str:
        """Write the weights to publish (:class:`~winnow.learner.weights.WeightSource`); their hex sha256."""
        ...

    def write_checkpoint(self, directory: str | Path, state: LearnerState, keep: int) -> Path:
        """Checkpoint the trainer with the service's ``state``; the checkpoint's folder."""
        ...

    def read_checkpoint(self, path: Path) -> LearnerState:
        """Load a checkpoint folder into the trainer; the service state saved with it."""
        ...


class Trainer:
    """Owns the policy, the optional reference model and the optimizer; one :meth:`train_step` per batch."""

    def __init__(
        self,
        model: torch.nn.Module,
        algo: AlgoConfig,
        optim: OptimConfig | None = None,
        *,
        ref_model: torch.nn.Module | str | None = "copy",
        pad_token_id: int,
        device: torch.device | str | None = None,
        logprob_chunk_size: int | None = None,
        temperature: float = 1.0,
        autocast_dtype: torch.dtype | None | str = "auto",
        logprob_mode: str | None = None,
        dp_group: Any = None,
    ):
        """``ref_model``: ``"copy"`` (frozen deep copy of ``model``, made only when ``algo.kl_coef > 0``),
        a module, or None. ``temperature``: the sampling temperature; logits are divided by it so that
        pi_theta is the distribution the behaviour log-probs were measured under. ``autocast_dtype``:
        ``"auto"`` = bf16 autocast on CUDA when the parameters are fp32, none otherwise.
        ``logprob_chunk_size``, ``logprob_mode``: override ``optim.logprob_chunk_size`` / ``optim.logprob_mode``
        (the learner config's, documented there; None = the config's value). Chunk size None = :func:`auto_chunk_size`
        (about 64 MiB of fp32 logits per chunk); mode ``"hidden"`` needs a plain linear head (``plain_lm_head``),
        ``"auto"`` = hidden when possible.
        ``dp_group``: a torch.distributed process group (or None = the default group when
        torch.distributed is initialised); see docs/distributed.md.
        """
        self.model = model
        self.algo = algo
        self.optim_cfg = optim or OptimConfig()
        self.pad_token_id = int(pad_token_id)
        self.device = torch.device(device) if device is not None else _model_device(model)
        if _model_device(model) != self.device:
            self.model.to(self.device)
        logprob_chunk_size = logprob_chunk_size or self.optim_cfg.logprob_chunk_size
        logprob_mode = logprob_mode or self.optim_cfg.logprob_mode
        self.logprob_chunk_size = int(logprob_chunk_size or auto_chunk_size(self.model))
        if self.logprob_chunk_size < 1:
            raise ValueError(f"logprob_chunk_size must be >= 1, got {logprob_chunk_size}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        param_dtype = next(self.model.parameters()).dtype
        if autocast_dtype == "auto":
            use_bf16 = self.device.type == "cuda" and param_dtype == torch.float32
            self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        else:
            self.autocast_dtype = autocast_dtype
        if logprob_mode not in ("auto", "hidden", "logits"):
            raise ValueError(f"logprob_mode must be auto, hidden or logits, got {logprob_mode!r}")
        has_plain_head = plain_lm_head(self.model) is not None
        if logprob_mode == "hidden" and not has_plain_head:
            raise ValueError("optim.logprob_mode hidden needs a plain linear LM head (see plain_lm_head): use auto or logits")
        self.logprob_mode = "hidden" if logprob_mode == "auto" and has_plain_head else logprob_mode
        if self.logprob_mode == "auto":
            self.logprob_mode = "logits"
        if self.optim_cfg.share_prompt and (self.logprob_mode != "hidden" or self.optim_cfg.gradient_checkpointing):
            raise ValueError("optim.share_prompt needs a plain linear LM head (hidden log-prob mode) and "
                             "gradient_checkpointing off")
        self.dp_group = dp_group
        self.version = 0

        if self.optim_cfg.gradient_checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.x
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if hasattr(self.model, "config"):
            self.model.config.use_cache = False
        disable_dropout(self.model)  # the ratio pi_theta / mu must not be noise
        self.model.train()

        self.ref_model: torch.nn.Module | None = None
        if algo.kl_coef > 0 and ref_model is not None:
            if isinstance(ref_model, str):
                if ref_model != "copy":
                    raise ValueError(f"ref_model must be 'copy', a module or None, got {ref_model!r}")
                ref_model = copy.deepcopy(self.model)
            self.ref_model = ref_model.to(self.device).eval()
            for p in self.ref_model.parameters():
                p.requires_grad_(False)
        elif algo.kl_coef > 0:
            raise ValueError("algo.kl_coef > 0 needs a reference model (ref_model='copy' or a module)")

        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.dim() < 2 or "norm" in name.lower() else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.optim_cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.optim_cfg.lr,
            betas=self.optim_cfg.betas,
            eps=self.optim_cfg.eps,
            foreach=self.device.type != "cpu" or None,
        )

    # ------------------------------------------------------------------ helpers
    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the forward runs in: the autocast dtype, else the parameters' dtype. The
        evaluation decodes in it (see :mod:`winnow.numerics`)."""
        return self.autocast_dtype or next(self.model.parameters()).dtype

    @property
    def world_size(self) -> int:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(self.dp_group)
        return 1

    @property
    def rank(self) -> int:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(self.dp_group)
        return 0

    def lr_at(self, version: int) -> float:
        """The learning rate used for the optimizer step that produces ``version + 1``: ``optim.lr`` times the
        warm-up / schedule factor of :meth:`OptimConfig.lr_factor` (constant, or transformers' linear or cosine
        decay over ``optim.total_steps`` down to ``min_lr_ratio``)."""
        return self.optim_cfg.lr * self.optim_cfg.lr_factor(version)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    autocast_region = True
    """Open one autocast region for all micro-batches of a step (see :meth:`forward_backward`); False: one
    per forward, as under FSDP/DDP. The same gradient either way (tests/learner/test_prefix.py)."""

    def _no_autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, enabled=False)

    def _logprobs(self, model: torch.nn.Module, mb: MicroBatch, with_entropy: bool):
        """log pi(a_t) (b, t) fp32 and entropy (b, t) fp32 or None for the micro-batch's response tokens."""
        args = (mb.input_ids, mb.attention_mask, mb.position_ids, mb.prompt_width, mb.response_width)
        if self.logprob_mode == "hidden":
            with self._autocast():
                weight = plain_lm_head(model)
                if type(weight).__name__ == "DTensor":  # FSDP2: through the root's forward, head gathered
                    hidden, weight = sharded_response_hidden(model, *args)
                else:
                    hidden = (shared_prompt_hidden if self.optim_cfg.share_prompt else response_hidden)(model, *args)
                if self.autocast_dtype is not None:  # the matmul runs in the autocast dtype, as the model's head
                    hidden = hidden.to(self.autocast_dtype)
                weight = weight.to(hidden.dtype)
                return logprobs_from_hidden(
                    hidden,
                    weight,
                    mb.targets,
                    chunk_size=self.logprob_chunk_size,
                    temperature=self.temperature,
                    with_entropy=with_entropy,
                )
        with self._autocast():
            logits = response_logits(model, *args)
        return token_logprobs_and_entropy(
            logits,
            mb.targets,
            chunk_size=self.logprob_chunk_size,
            temperature=self.temperature,
            with_entropy=with_entropy,
        )

    def _check_vocab(self, batch: TrainBatch) -> None:
        vocab = (
            self.model.get_input_embeddings().num_embeddings
            if hasattr(self.model, "get_input_embeddings")
            else None
        )
        if vocab is None:
            return
        too_big = (batch.input_ids >= vocab).any(dim=1)
        if bool(too_big.any()):
            row = int(torch.nonzero(too_big)[0])
            rid = batch.request_ids[int(batch.group_index[row])]
            bad = int(batch.input_ids[row].max())
            raise ValueError(
                f"group request_id={rid!r}: token id {bad} is outside the model's vocabulary ({vocab})"
            )

    def _micro_batches(self, batch: TrainBatch, rows: torch.Tensor) -> list[torch.Tensor]:
        """Chunks of ``rows``, longest sequences first (similar lengths together: less padding), of at most
        ``micro_batch_size`` rows and ``micro_batch_tokens`` padded tokens (see :func:`pack_micro_batches`)."""
        lengths = (batch.prompt_lengths + batch.response_lengths).index_select(0, rows)
        order = rows[torch.argsort(lengths, descending=True, stable=True)]
        cfg = self.optim_cfg
        return pack_micro_batches(order, batch.group_index, batch.prompt_lengths, batch.response_lengths,
                                  max_rows=cfg.micro_batch_size, max_tokens=cfg.micro_batch_tokens,
                                  share_prompt=cfg.share_prompt)

    sync_timings = False
    """Synchronise the device after every forward and backward so that ``time_forward_s``/``time_backward_s`` are
    exact on a GPU (a profiling aid: it stalls the launch queue once per micro-batch). Off: the phase times on a
    GPU are launch times, and only the step's total is exact (one synchronisation, after the optimizer step)."""

    def _timing_sync(self) -> None:
        if self.sync_timings:
            _sync(self.device)

    def _all_reduce(self, values: torch.Tensor, op: str) -> torch.Tensor:
        """``values`` reduced over the data-parallel group (``op``: "sum" or "max"); identity on one rank."""
        if self.world_size > 1:
            dist = torch.distributed
            values = values.to(self.device)
            dist.all_reduce(
                values, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=self.dp_group
            )
        return values.cpu()

    # ------------------------------------------------------------------ the step
    def train_step(self, groups: list[GroupData]) -> StepResult:
        """One optimizer step on ``groups`` (G groups of n samples); returns a :class:`StepResult`.

        Metrics: the objective's ``loss``, ``pg_loss``, ``kl``, ``entropy`` (summed over micro-batches:
        the batch values), ``clip_frac`` etc. (token-weighted over micro-batches), ratio statistics over
        all trained tokens, the mismatch at equal versions, the filter metrics of ``prepare_batch_signals``,
        ``grad_norm`` (before clipping), ``lr``, ``tokens`` (trained response tokens), ``staleness_mean/max``
        (``version - group.policy_version`` before the step), timings and ``skipped``.
        """
        t_start = time.perf_counter()
        result = self.forward_backward(groups)
        metrics = dict(result.metrics)
        t_opt = time.perf_counter()
        grad_norm, stepped = self.optimizer_step(skip=bool(metrics["skipped"]))
        metrics["time_optimizer_s"] = time.perf_counter() - t_opt
        metrics["grad_norm"] = grad_norm
        metrics["skipped"] = float(not stepped)
        total = time.perf_counter() - t_start
        metrics["time_total_s"] = total
        metrics = self._reduce_metrics(metrics) if self.world_size > 1 else derive(LEARNER, metrics)
        return StepResult.build(result.group_outcomes, metrics, result.judged)

    def forward_backward(self, groups: list[GroupData]) -> StepResult:
        """Accumulate the gradient of the whole batch's loss into ``.grad`` (zeroed first); the per-group
        outcomes and metrics (no optimizer fields yet).

        ``metrics["skipped"]`` is 1 when no sample carries weight (nothing was forwarded).
        """
        t_start = time.perf_counter()
        algo = self.algo
        batch = collate(groups, self.pad_token_id)
        self._check_vocab(batch)
        batch = batch.to(self.device)

        # rewards, filter, advantages: once over the whole batch
        sig = prepare_batch_signals(batch.statuses, algo, request_ids=batch.request_ids,
                                    finish_reasons=batch.finish_reasons, response_lengths=batch.response_lengths,
                                    scores=batch.scores)
        advantages = sig["advantages"].reshape(-1).to(self.device, torch.float32)  # (B,)
        sample_weight = sig["sample_weight"].reshape(-1).to(self.device, torch.float32)  # (B,)
        mask = batch.response_mask.to(torch.float32)  # (B, T)

        # the global normaliser (summed over data-parallel ranks)
        denom_local = loss_denominator(mask, sample_weight, algo.agg)
        denom = float(self._all_reduce(torch.tensor([denom_local], dtype=torch.float64), "sum")[0])
        rows = torch.nonzero((sample_weight != 0) & (batch.response_lengths > 0)).flatten()
        skipped = denom <= 0  # globally: every rank agrees

        B, T = batch.targets.shape
        logprobs_all = torch.zeros(B, T, device=self.device)  # (B, T) log pi_theta, detached
        scale = float(self.world_size)  # undo FSDP/DDP gradient averaging: each rank holds a share of a sum

        self.optimizer.zero_grad(set_to_none=True)
        micro = [] if skipped else self._micro_batches(batch, rows)
        real = len(micro)
        if self.world_size > 1 and not skipped:
            # FSDP runs collectives in every forward/backward: all ranks must run as many micro-batches.
            # A rank with fewer kept rows runs zero-weighted copies of its first row.
            most = int(self._all_reduce(torch.tensor([real], dtype=torch.float64), "max")[0])
            micro += [torch.zeros(1, dtype=torch.long, device=self.device)] * (most - real)
        # One autocast region for every micro-batch: autocast caches its casts of the fp32 weights while a
        # region is open, so the weights are cast once per step instead of once per micro-batch (and per
        # decoder call). The backward runs with autocast off, as outside the region; the cache is dropped
        # when the region closes, before the optimizer changes the weights. Not under FSDP/DDP, whose
        # parameters are re-gathered around every forward (a cached cast would bypass their hooks).
        with self._autocast() if self.world_size == 1 and self.autocast_region else contextlib.nullcontext():
            parts, (t_fwd, t_ref, t_bwd) = self._micro_loop(batch, micro, real, advantages, sample_weight, denom,
                                                            scale, logprobs_all)

        # metrics: ratio statistics over every trained token of the batch
        trained = torch.zeros_like(mask)
        trained[rows] = mask[rows] * sample_weight[rows, None]
        rs = ratio_stats(logprobs_all, batch.behaviour_logprobs, trained)
        same_version = (trained != 0) & (batch.policy_versions == self.version)  # before this step's update
        mm = mismatch_stats(logprobs_all, batch.behaviour_logprobs, same_version)
        staleness = (self.version - batch.group_policy_versions).to(torch.float32)
        metrics = combine_micro_batches(LEARNER, parts)  # loss terms summed, token shares token-weighted
        metrics.update(
            {k: float(rs[k]) for k in ("ratio_mean", "ratio_max", "ratio_min", "ess")}
        )
        metrics.update({k: float(v) for k, v in mm.items()})
        metrics.update(correction_metrics(logprobs_all, batch.behaviour_logprobs, trained, algo))
        metrics.update(
            {
                "skipped": float(skipped),
                "lr": self.lr_at(self.version),
                "tokens_total": float(mask.sum()),
                "sequences": float(rows.numel()),
                "groups": float(batch.num_groups),
                "staleness_mean": float(staleness.mean()),
                "staleness_max": float(staleness.max()),
                "response_length_mean": float(batch.response_lengths.to(torch.float32).mean()),
                "truncated_fraction": sum(r == "length" for r in batch.finish_reasons) / batch.num_sequences,
                "time_forward_s": t_fwd,
                "time_ref_s": t_ref,
                "time_backward_s": t_bwd,
                "time_forward_backward_s": time.perf_counter() - t_start,
            }
        )
        metrics.update({k: float(v) for k, v in sig["metrics"].items()})
        return StepResult.build(group_outcomes(sig["keep"], sig["correct"], sig["valid"]), metrics, judgement(sig, algo))

    def _micro_loop(self, batch, micro, real, advantages, sample_weight, denom, scale, logprobs_all):
        """Forward and backward of every micro-batch (gradients accumulate in ``.grad``); fills
        ``logprobs_all`` and returns the loss metrics of each real micro-batch with the phase times."""
        algo = self.algo
        parts: list[dict[str, float]] = []
        t_fwd = t_ref = t_bwd = 0.0
        # Under FSDP2, reduce-scatter the gradients once per step (after the last micro-batch), not after every one;
        # every rank runs the same number of micro-batches, so they agree on which is last.
        sync_control = self.world_size > 1 and hasattr(self.model, "set_requires_gradient_sync")
        for i, idx in enumerate(micro):
            dummy = i >= real
            if sync_control:
                self.model.set_requires_gradient_sync(i == len(micro) - 1)
            mb = batch.rows(idx)
            t0 = time.perf_counter()
            logprobs, entropy = self._logprobs(self.model, mb, with_entropy=True)
            self._timing_sync()
            t1 = time.perf_counter()
            ref_logprobs = None
            if self.ref_model is not None:
                with torch.no_grad():
                    ref_logprobs, _ = self._logprobs(self.ref_model, mb, with_entropy=False)
                self._timing_sync()
            t2 = time.perf_counter()
            loss, m = compute_loss(
                logprobs=logprobs,
                behaviour_logprobs=mb.behaviour_logprobs,
                mask=mb.response_mask.to(torch.float32),
                advantages=advantages[idx],
                sample_weight=sample_weight[idx] * (0.0 if dummy else 1.0),
                cfg=algo,
                entropy=entropy,
                ref_logprobs=ref_logprobs,
                proximal_logprobs=logprobs.detach() if algo.decoupled else None,
                loss_scale_tokens=denom,
            )
            with self._no_autocast():
                (loss * scale).backward()
            self._timing_sync()
            t3 = time.perf_counter()
            t_fwd, t_ref, t_bwd = t_fwd + t1 - t0, t_ref + t2 - t1, t_bwd + t3 - t2
            if not dummy:
                logprobs_all[idx, : mb.response_width] = logprobs.detach()
                parts.append(m)
        return parts, (t_fwd, t_ref, t_bwd)

    def optimizer_step(self, skip: bool = False) -> tuple[float, bool]:
        """Clip the accumulated gradient, take the AdamW step (unless ``skip`` or a non-finite norm) and
        advance ``version``. Returns ``(grad_norm before clipping, stepped)``."""
        stepped = False
        grad_norm = 0.0
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not skip and params:
            max_norm = self.optim_cfg.max_grad_norm if self.optim_cfg.max_grad_norm > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            if math.isfinite(grad_norm):
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr_at(self.version)
                self.optimizer.step()
                stepped = True
        self.optimizer.zero_grad(set_to_none=True)
        _sync(self.device)
        self.version += 1
        return grad_norm, stepped

    def _reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Across ranks, as each key's row in the metric table declares (sum, weighted mean, max, min, ...): one
        sum and one max all-reduce (:func:`~winnow.metric_defs.rank_vectors`)."""
        keys, to_sum, to_max = rank_vectors(LEARNER, metrics)
        summed = self._all_reduce(torch.tensor(to_sum, dtype=torch.float64), "sum").tolist()
        maxed = self._all_reduce(torch.tensor(to_max, dtype=torch.float64), "max").tolist()
        return from_rank_vectors(LEARNER, keys, summed, maxed, self.world_size)

    # ------------------------------------------------------------------ checkpoints and weights
    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer and version, for checkpoints.

        The reference model is not included: it is the model the Trainer was constructed with, so a
        resumed run builds its Trainer from the *initial* weights and then loads this state dict.
        """
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "version": self.version,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.model.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.version = int(sd["version"])

    def write_checkpoint(self, directory: str | Path, state: LearnerState, keep: int) -> Path:
        """Checkpoint this trainer and the service ``state`` (:func:`winnow.learner.checkpoint.save_checkpoint`).
        The sharded learner's rank 0 does the same through :class:`winnow.learner.distributed.ShardedTrainer`."""
        from winnow.learner.checkpoint import save_checkpoint

        return save_checkpoint(directory, self.state_dict(), state, keep)

    def read_checkpoint(self, path: str | Path) -> LearnerState:
        """Load a checkpoint folder into this trainer and return its service state: ``trainer.pt``, or the
        ``trainer.dcp/`` shards a sharded learner wrote at any world size (read whole here)."""
        from winnow.learner.checkpoint import LearnerState, load_checkpoint

        if (Path(path) / "trainer.dcp").is_dir():
            from winnow.learner.distributed import load_into

            load_into(self, Path(path))
            state = LearnerState.from_json((Path(path) / "state.json").read_text())
            self.version = int(state.version)
            return state
        trainer_state, state = load_checkpoint(path)
        self.load_state_dict(trainer_state)
        return state

    def eval_view(self) -> Trainer:
        """What the held-out evaluation reads (model, compute dtype, version): the trainer itself."""
        return self

    def save_weights(self, path: str | Path, dtype: torch.dtype | None = None) -> str:
        """Write the model's full state dict as one ``model.safetensors`` and return its hex sha256.

        ``path`` is a ``.safetensors`` file or a directory (``model.safetensors`` inside it). Tensors
        sharing storage (tied embeddings) are written once, under their first name in the state dict
        (as ``save_pretrained`` does); the metadata records the dropped aliases and the version. The
        file appears atomically (written to a temporary name, fsynced, renamed). Under data parallelism
        every rank must call it (gathering the shards is a collective); rank 0 writes the file.
        """
        state = self.full_state_dict()  # a collective under FSDP2: every rank calls save_weights
        digest = [""]
        if self.rank == 0:  # rank 0 writes; the others get its digest
            digest[0] = save_state_dict(state, path, dtype=dtype, metadata={"version": str(self.version)})
        if self.world_size > 1:
            torch.distributed.broadcast_object_list(digest, src=0, group=self.dp_group)
        return digest[0]

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The unsharded state dict (gathers FSDP2 DTensors to full CPU tensors when sharded)."""
        params = list(self.model.parameters())
        if params and type(params[0]).__name__ == "DTensor":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(
                self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
            # the gather returns tied parameters (a tied lm_head) as separate copies: alias them again,
            # so that save_state_dict writes each once, as in the unsharded case
            first: dict[int, str] = {}
            for name, p in self.model.named_parameters(remove_duplicate=False):
                if id(p) in first and name in state and first[id(p)] in state:
                    state[name] = state[first[id(p)]]
                first.setdefault(id(p), name)
            return state
        return self.model.state_dict()


def save_state_dict(
    state_dict: dict[str, torch.Tensor],
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
) -> str:
    """Atomically write ``state_dict`` as one safetensors file (see :meth:`Trainer.save_weights`); hex sha256."""
    from safetensors.torch import save_file

    p = Path(path)
    if p.suffix != ".safetensors":
        p = p / "model.safetensors"
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    aliases: dict[str, str] = {}
    for name, t in state_dict.items():
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.to("cpu").contiguous()
    meta = {"format": "pt", **(metadata or {})}
    if aliases:
        meta["tied"] = json.dumps(aliases)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        digest = sha256_file(tmp, fsync=True)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return digest
