"""Configuration of the learner service (section ``learner``), typed end to end.

Pure pydantic: importing it does not import torch, so ``winnow learner run --help`` answers at
once. ``algo`` is :class:`winnow.learner.algo.AlgoConfig` (``preset``, a ``Literal`` of the preset
names, fills filter/advantage/loss; explicit fields win; ``algo.max_staleness`` bounds both staleness
drops and admission control), ``optim`` is :class:`OptimConfig`, ``prompts`` a
:data:`winnow.prompts.PromptSourceConfig` discriminated on ``kind``. Validated once; ``--print-config``
and ``<run_dir>/learner-config.json`` show every resolved field.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from winnow.chat import ChatFormat
from winnow.config import KafkaConfig, Model, Settings, settings_config
from winnow.learner.algo import AlgoConfig
from winnow.learner.tracking import TrackingConfig
from winnow.numerics import NumericsConfig
from winnow.prompts import PromptSourceConfig, ReasoningGymSourceConfig
from winnow.sampling import SamplingConfig


class OptimConfig(Model):
    """AdamW and batching settings of the training step."""

    lr: float = Field(default=1e-6, gt=0)
    """Peak learning rate (reached after warm-up; the paper uses 1e-6 and a constant schedule)."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning rate after warm-up: ``constant`` (``lr``), or a decay from ``lr`` to ``min_lr_ratio * lr`` at
    ``total_steps``: ``linear`` or ``cosine`` (half a cosine wave), as transformers' ``get_scheduler`` computes
    them (``get_linear_schedule_with_warmup``, ``get_cosine_schedule_with_warmup``) with a floor."""
    total_steps: int | None = Field(default=None, ge=1)
    """Optimizer steps over which ``linear``/``cosine`` decay, warm-up included (None = ``learner.max_steps``);
    after it the rate stays at the floor."""
    min_lr_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    """Floor of the decay as a fraction of ``lr`` (0 = decay to zero, as transformers' schedules)."""
    weight_decay: float = Field(default=0.01, ge=0)
    """AdamW decoupled weight decay."""
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    """AdamW (beta1, beta2), each in [0, 1)."""
    eps: float = Field(default=1e-8, gt=0)
    """AdamW epsilon."""
    max_grad_norm: float = Field(default=1.0, ge=0)
    """Clip the global gradient L2 norm to this value; 0 disables clipping (the norm is still logged)."""
    warmup_steps: int = Field(default=0, ge=0)
    """Linear learning-rate warm-up over this many optimizer steps (0 = none): step s (0-based) uses
    ``lr * (s + 1) / warmup_steps``."""
    micro_batch_size: int = Field(default=8, ge=1)
    """At most this many sequences per forward/backward pass (gradients are accumulated over the batch)."""
    micro_batch_tokens: int | None = Field(default=None, ge=1)
    """And at most this many tokens per forward/backward pass, padding included (None = no token
    limit): rows x the padded sequence width, or with ``share_prompt`` rows x the padded response width
    plus each distinct prompt once. Bounds activation memory by work rather than by rows, so a batch of
    short answers runs in few passes (fewer passes = less per-pass overhead on CPU) and long ones
    still fit; a single sequence longer than the budget gets a pass of its own."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% more compute)."""
    logprob_mode: Literal["auto", "hidden", "logits"] = "auto"
    """How the training step computes token log-probs and entropy: ``hidden`` applies the LM head chunk by chunk to
    the decoder's hidden states, so the (batch, tokens, vocabulary) logits never exist (needs a plain linear LM
    head); ``logits`` takes the model's logits and computes log-softmax and entropy in chunks; ``auto`` = hidden
    when the model has a plain linear head, else logits (decided when the model is loaded)."""
    logprob_chunk_size: int | None = Field(default=None, ge=1, le=1 << 24)
    """Response tokens whose (tokens x vocabulary) log-softmax is computed at once by the log-prob and entropy
    kernels; None = about 64 MiB of fp32 logits per chunk (``learner.step.auto_chunk_size``). Lower it if the
    training step runs out of memory at a large vocabulary."""

    @model_validator(mode="after")
    def _share_prompt_needs(self) -> OptimConfig:
        if self.share_prompt and self.gradient_checkpointing:
            raise ValueError("optim.share_prompt needs optim.gradient_checkpointing false (the shared prompt's "
                             "activations are reused across the group's responses)")
        if self.share_prompt and self.logprob_mode == "logits":
            raise ValueError("optim.share_prompt needs optim.logprob_mode hidden or auto (it runs the responses "
                             "against the prompt's cached hidden states)")
        return self

    def lr_factor(self, step: int) -> float:
        """The multiplier of ``lr`` at optimizer step ``step`` (0-based): ``(step + 1) / warmup_steps`` during
        warm-up, then 1 (``constant``) or transformers' ``linear``/``cosine`` decay over ``total_steps`` raised to
        the floor: ``min_lr_ratio + (1 - min_lr_ratio) * decay`` (transformers' ``cosine_with_min_lr`` form)."""
        w = self.warmup_steps
        if step < w:
            return (step + 1) / w
        if self.schedule == "constant":
            return 1.0
        if self.total_steps is None:
            raise ValueError(f"optim.schedule {self.schedule} needs optim.total_steps")
        decay = _decay_lambda(self.schedule, w, self.total_steps)(min(step, self.total_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * decay

    share_prompt: bool = False
    """Run each distinct prompt once per micro-batch (and a prefix common to them once) and the samples'
    responses against the cached prompt (micro-batches keep a group's rows together; same gradient, see
    winnow.learner.prefix).
    Saves most of the compute when prompts are long next to responses (few-shot demonstrations).
    Needs ``logprob_mode`` hidden (or auto on a model with a plain linear LM head) and no gradient checkpointing."""


@functools.lru_cache(maxsize=8)
def _decay_lambda(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """transformers' schedule function ``step -> factor`` (``get_scheduler(schedule, ...)``'s LambdaLR), built once
    over a throw-away optimizer; torch and transformers are imported only here."""
    import torch
    from transformers import get_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    factor: Callable[[int], float] = get_scheduler(
        schedule, opt, num_warmup_steps=warmup_steps, num_training_steps=total_steps
    ).lr_lambdas[0]
    return factor


class LoraConfig(Model):
    """Low-rank adapters (LoRA, Hu et al. 2021) through ``peft``: only the adapters train and are published."""

    rank: int = Field(default=16, ge=1, le=4096)
    """Rank r of each adapter pair (A: r x in, B: out x r; B starts at zero, so step 0 is the base model)."""
    alpha: float = Field(default=32.0, gt=0)
    """Scaling numerator: the update is ``(alpha / rank) * B @ A``."""
    dropout: float = 0.0
    """Dropout on the adapters' input: must be 0 (the importance ratio pi_theta / mu must not be noise; the Trainer
    turns every dropout off)."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Modules that get adapters: peft's ``all-linear`` (every linear layer but the LM head) or a list of module
    names (e.g. ``[q_proj, k_proj, v_proj, o_proj]``)."""

    @field_validator("dropout")
    @classmethod
    def _no_dropout(cls, v: float) -> float:
        if v != 0:
            raise ValueError(f"learner.lora.dropout must be 0, got {v}: dropout makes pi_theta / mu noise (the "
                             "Trainer turns every dropout off); remove it")
        return v

    @field_validator("target_modules")
    @classmethod
    def _some_targets(cls, v: Any) -> Any:
        if isinstance(v, list) and (not v or any(not m for m in v)):
            raise ValueError("learner.lora.target_modules: give module names (e.g. [q_proj, v_proj]) or all-linear")
        return v


class WeightStoreConfig(Model):
    """Where the learner writes weights for the generators and how it announces them."""

    dir: str = "runs/weights"
    """Directory of the weight store (a shared volume in Kubernetes): ``<dir>/v<version>/model.safetensors``."""
    uri_root: str = ""
    """If set, announced URIs are relative to this root as generators see it (e.g. the volume's mount
    path there): ``<uri_root>/v<version>/model.safetensors``. "" = the absolute local path as a file:// URI."""
    publish_every: int = Field(default=1, ge=1)
    """Publish weights every this many optimizer steps (and always after the last one); at most
    ``algo.max_staleness + 1``, else every group is stale before the next publication and the run stalls (checked)."""
    keep: int = Field(default=3, ge=1)
    """Keep the newest this many versions in the store (generators may still be loading an older one)."""
    keep_every: int = Field(default=0, ge=0)
    """Also keep every version divisible by this (0 = none): the policy every this many steps, to evaluate the run's
    learning curve afterwards (``winnow eval RUN --version N``; each ``v<version>/`` folder is a Hugging Face model
    folder)."""
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """dtype of the published tensors. "auto" = ``numerics.precision`` when that is bfloat16 or float32 (the
    generators hold the weights in it anyway: bf16 halves the bytes to write, hash and read, same numbers once
    loaded), else as trained; the resolved value is shown by ``--print-config``."""


class CheckpointConfig(Model):
    """Learner checkpoints: model, optimizer, version, data position, dedupe state, consumed offsets."""

    dir: str = "runs/checkpoints"
    """Checkpoint directory (``step-<version>/`` folders plus a ``LATEST`` marker)."""
    every: int = Field(default=1, ge=1)
    """Checkpoint every this many steps. Kafka offsets are committed only after a checkpoint, so a
    larger value means more groups are re-read (and deduped) after a crash."""
    keep: int = Field(default=2, ge=1)
    """Keep the newest this many checkpoints."""
    resume: bool = True
    """Resume from the latest checkpoint in ``dir`` if there is one."""


class EvalSet(Model):
    """One named eval set of the learner's in-run evaluation."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    """Label of the set: ``winnow_learner_eval_accuracy{set=NAME}`` and ``eval_accuracy.NAME`` in metrics.jsonl."""
    source: PromptSourceConfig | None = None
    """Its prompt source (same schema as ``prompts``, e.g. ``{kind: jsonl, path: test.jsonl}``); None = the
    training source with ``split: eval`` (needs ``prompts.holdout > 0``)."""
    prompts: int | None = Field(default=None, ge=1)
    """Problems of this set per evaluation, the first ones of the source (None = ``eval.prompts``)."""

    @model_validator(mode="before")
    @classmethod
    def _kind_needed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            check_source_kind(data.get("source"), "source")
        return data


class EvalConfig(Model):
    """Held-out evaluation (greedy decoding on the learner's own model, scored in-process)."""

    every: int = Field(default=0, ge=0)
    """Evaluate every this many steps (0 = never)."""
    prompts: int = Field(default=32, ge=1)
    """Number of held-out problems per evaluation."""
    max_new_tokens: int = Field(default=128, ge=1)
    """Generation length for evaluation."""
    k: int = Field(default=0, ge=0, le=256)
    """Also sample k responses per problem and report mean@k (mean correctness over the k samples;
    0 = greedy accuracy only)."""
    temperature: float = Field(default=1.0, gt=0.0, le=10.0)
    """Sampling temperature of the mean@k samples."""
    set_name: str = "heldout"
    """Label of the ``set`` in ``winnow_learner_eval_accuracy{set}``."""
    source: PromptSourceConfig | None = None
    """Prompt source of the eval set (same schema as ``prompts``); None = the training source with
    ``split: eval`` (needs ``prompts.holdout > 0``)."""
    chat: ChatFormat = ChatFormat()
    """Set from ``learner.chat`` (the shared top-level ``chat``): not a setting of its own. Kept so that readers of
    ``learner-config.json`` (``winnow export``, ``winnow eval``) find the prompt format here; an older config's
    ``eval.chat`` is read as ``chat``, and one that differs from ``chat`` is refused."""
    verifier_endpoints: dict[str, str] = Field(default_factory=dict)
    """Where each held-out problem is scored, by its task, as the generators' ``verifier.endpoints``: task pattern
    (fnmatch, first match wins) -> ``host:port`` of a Verifier server; other tasks: the in-process math verifier.
    ``winnow up`` fills it from ``up.verifiers``. Accuracy counts status CORRECT."""
    sets: list[EvalSet] = Field(default_factory=list, max_length=32)
    """Several named eval sets, each ``{name, source, prompts}``, evaluated one after the other every ``every``
    steps (the first is the one shown as ``eval_accuracy``); [] = one set from ``set_name``, ``source`` and
    ``prompts``."""

    @model_validator(mode="before")
    @classmethod
    def _kind_needed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            check_source_kind(data.get("source"), "source")
        return data

    @model_validator(mode="after")
    def _unique_names(self) -> EvalConfig:
        names = [s.name for s in self.sets]
        if len(set(names)) != len(names):
            raise ValueError(f"eval.sets: names must be distinct, got {names}")
        return self

    def resolved_sets(self) -> list[EvalSet]:
        """The eval sets to run: ``sets``, or the single set of ``set_name``/``source``/``prompts``; every
        ``prompts`` filled in."""
        sets = self.sets or [EvalSet(name=self.set_name, source=self.source, prompts=self.prompts)]
        return [s if s.prompts is not None else s.model_copy(update={"prompts": self.prompts}) for s in sets]


FILE_FIELDS = ("path", "dataset")
"""Fields that only a file or dataset source has (kind jsonl / parquet: path; kind hf: dataset)."""


def check_source_kind(prompts: Any, where: str) -> None:
    """A prompt source given a file (``path``/``dataset``) must name its ``kind``: without it pydantic reports the
    discriminator, or, merged over ``winnow up``'s reasoning-gym default, an extra field; say what is needed."""
    if not isinstance(prompts, dict):
        return
    if not set(FILE_FIELDS) & set(prompts):
        if "kind" not in prompts:
            raise ValueError(f"{where}.kind is needed (reasoning_gym, jsonl, parquet or hf)")
        return
    kind = prompts.get("kind")
    if kind is None or kind == "reasoning_gym":
        field = "path" if "path" in prompts else "dataset"
        guess = "hf" if field == "dataset" else {".parquet": "parquet"}.get(Path(str(prompts[field])).suffix, "jsonl")
        got = "no kind" if kind is None else "kind reasoning_gym"
        example = f" (--set learner.{where}.kind={guess})" if where == "prompts" else ""
        raise ValueError(f"{where}.{field} needs {where}.kind (jsonl, parquet or hf), got {got}: set "
                         f"{where}.kind: {guess}{example}")


class LearnerConfig(Settings):
    """The learner: releases prompts, trains on scored groups, publishes weights, checkpoints."""

    section = "learner"
    model_config = settings_config("learner")

    model: str = "smollm2-135m"
    """Initial policy: "smollm2-135m" (the embedded SmolLM2-135M-Instruct), a Hugging Face model directory,
    or a hub id. Generators must start from the same weights: set it once, as the top-level ``model`` of a pipeline
    file."""
    device: str = "auto"
    """Torch device ("auto" = cuda if available, else cpu)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Parameter (master-weight) dtype. "auto" = fp32 on every device: AdamW updates fp32 weights and keeps fp32
    moments, and the forward/backward computes at ``numerics.precision`` (bf16 on GPU) by autocast or, sharded,
    by FSDP2's MixedPrecisionPolicy. "bfloat16"/"float16" store the parameters themselves in 16 bits, an
    explicit opt-in that logs a warning: updates of ~lr (1e-6..1e-5) round to nothing for most weights."""
    numerics: NumericsConfig = NumericsConfig()
    """Compute precision shared with the generators (the top-level ``numerics`` section): the forward/
    backward and log-prob recompute run under autocast to it over the master weights, and the held-out
    evaluation decodes with the generators' engine in it."""

    chat: ChatFormat = ChatFormat()
    """Prompt format (the shared top-level ``chat`` section, which the generators sample with): the learner bounds
    prompt lengths (``max_prompt_tokens``) and runs the held-out evaluation in it."""

    algo: AlgoConfig = AlgoConfig()  # type: ignore[call-arg]  # the preset validator fills filter, advantage, loss
    """Algorithm: ``preset`` (raft, raft++, reinforce, grpo, reinforce_rej, ...) plus any AlgoConfig field
    to override (see docs/algorithms.md), e.g. ``{preset: grpo, kl_coef: 0}``."""
    optim: OptimConfig = OptimConfig()
    """Optimizer and micro-batching."""
    lora: LoraConfig | None = None
    """LoRA adapters (``{rank, alpha, target_modules}``; docs/benchmarks.md): only the adapters train, the KL
    reference is the base model with the adapters off, and each version is published as a peft adapter folder
    (``format: peft_adapter``). None = full fine-tuning."""

    batch_groups: int = Field(default=8, ge=1, le=65536)
    """Prompts (scored groups) per optimizer step."""
    n: int = Field(default=8, ge=1, le=1024)
    """Samples per prompt (the group size), sent in every prompt request."""
    sampling: SamplingConfig = SamplingConfig()
    """Sampling parameters (the shared top-level ``sampling`` section, the generators' defaults too) sent with every
    prompt request; ``temperature`` (> 0 here) is also the one the learner divides its logits by, so that pi_theta
    matches the behaviour distribution."""
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps in total (None = run until stopped)."""
    on_finish: Literal["exit", "idle"] = "exit"
    """After ``max_steps`` (or when restarted on a finished run, see ``<run_dir>/finished.json``):
    ``exit`` (code 0), or ``idle``: stay up serving /metrics and /health without training (the Helm
    chart's choice, so a StatefulSet does not restart a finished run)."""
    request_timeout_s: float = Field(default=900.0, gt=0)
    """A released prompt whose scored group has not arrived after this long is released again (new
    request id); the late group, if it ever comes, is dropped as a duplicate."""
    max_prompt_tokens: int = Field(default=4096, ge=1, le=1_000_000)
    """A prompt longer than this many tokens (formatted as the generators do, ``chat``) is not released:
    it is counted as ``rejected`` and its position skipped, so one huge dataset row cannot take the
    generators down."""
    rerelease_on_resume: bool = True
    """After resuming from a checkpoint, send the released-but-unconsumed requests again under the same
    request ids (in case the prompts were lost with the broker or by retention). Whichever group
    arrives first is trained; the other is dropped as a duplicate."""

    prompts: PromptSourceConfig = ReasoningGymSourceConfig()
    """Training prompt source (winnow.prompts: kind reasoning_gym | jsonl | parquet | hf)."""
    eval: EvalConfig = EvalConfig()
    """Held-out evaluation."""

    kafka: KafkaConfig = KafkaConfig()
    """Kafka connection and topic prefix (shared with the generators: the top-level ``kafka`` section)."""
    group_id: str = Field(default="winnow-learner", min_length=1)
    """Consumer group of the learner on the groups topic."""
    kafka_partitions: int = Field(default=4, ge=1, le=10_000)
    """Partitions of the prompts and groups topics when the learner creates them."""
    dedupe_capacity: int = Field(default=200_000, ge=1)
    """How many processed request ids are remembered (and checkpointed) to drop repeats."""

    weights: WeightStoreConfig = WeightStoreConfig()
    """Weight store and announcements."""
    checkpoint: CheckpointConfig = CheckpointConfig()
    """Checkpoints."""
    run_dir: str = "runs/learner"
    """Directory for ``metrics.jsonl`` (one line per step), ``samples.jsonl``, TensorBoard events and the
    resolved config."""
    tracking: TrackingConfig = TrackingConfig()
    """Experiment tracking (winnow.learner.tracking): sinks (tensorboard, wandb, mlflow, trackio) and the sample
    log; short form ``tracking: [tensorboard, wandb]``."""
    metrics_port: int = Field(default=9402, ge=0, le=65535)
    """Port of /metrics and /health (0 = pick a free one)."""
    metrics_host: str = "127.0.0.1"
    """Address /metrics and /health bind to: loopback unless configured (the Helm chart sets
    0.0.0.0 so Prometheus can scrape the pod)."""
    seed: int = Field(default=0, ge=-(2**63), le=2**63 - 1)
    """Torch seed."""

    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            check_source_kind(data.get("prompts"), "prompts")
        if isinstance(data, dict) and "autocast" in data:
            raise ValueError(
                "learner.autocast was replaced by numerics.precision (auto | bfloat16 | float32), one setting "
                "shared by the generators, the learner and its evaluation"
            )
        old = (data.get("eval") or {}).get("chat") if isinstance(data, dict) and isinstance(data.get("eval"), dict) \
            else None
        if old is not None:  # learner.eval.chat was replaced by the shared chat: read it as chat
            if data.get("chat") is None:
                data = {**data, "chat": old}
            elif ChatFormat.model_validate(old) != ChatFormat.model_validate(data["chat"]):
                raise ValueError("learner.eval.chat was replaced by chat (the shared top-level chat section, read by "
                                 "the generators and the learner) and the two differ: remove eval.chat")
        return data

    @field_validator("sampling")
    @classmethod
    def _sampled_temperature(cls, v: SamplingConfig) -> SamplingConfig:
        if v.temperature <= 0:
            raise ValueError(f"sampling.temperature must be > 0 for training, got {v.temperature}: the learner divides "
                             "its logits by it, greedy groups carry no policy-gradient signal, and 0 on the wire "
                             "means the generators' own default")
        return v

    @model_validator(mode="after")
    def _derived(self) -> LearnerConfig:
        """``eval.chat`` mirrors ``chat``; ``weights.dtype`` "auto" follows an explicit ``numerics.precision``."""
        if self.eval.chat != self.chat:
            self.eval = self.eval.model_copy(update={"chat": self.chat})
        if self.weights.dtype == "auto" and self.numerics.precision != "auto":
            self.weights = self.weights.model_copy(update={"dtype": self.numerics.precision})
        return self

    @model_validator(mode="after")
    def _schedule_length(self) -> LearnerConfig:
        """``optim.total_steps`` defaults to ``max_steps`` for a decaying schedule (the Trainer sees only optim)."""
        if self.optim.schedule != "constant" and self.optim.total_steps is None:
            if self.max_steps is None:
                raise ValueError(f"optim.schedule {self.optim.schedule} decays over optim.total_steps: set it, or "
                                 "learner.max_steps")
            self.optim = self.optim.model_copy(update={"total_steps": self.max_steps})
        return self

    @model_validator(mode="after")
    def _publish_within_staleness(self) -> LearnerConfig:
        """Generators sample with the last published weights; a group more than ``algo.max_staleness`` versions old
        is dropped. Publishing less often than every ``max_staleness + 1`` steps makes every group stale before the
        next publication, and with no step there is no next publication: the run stops for good."""
        if self.weights.publish_every > self.algo.max_staleness + 1:
            raise ValueError(
                f"weights.publish_every {self.weights.publish_every} > algo.max_staleness + 1 "
                f"({self.algo.max_staleness + 1}): the groups sampled with one publication are all stale before the "
                "next one, and the run stalls; raise algo.max_staleness or lower weights.publish_every")
        return self

    @property
    def max_staleness(self) -> int:
        return self.algo.max_staleness
