"""The cross-service rules of a pipeline config: what the generators and the learner must agree on.

A pipeline file (``winnow up``'s resolved config, the Helm chart's ConfigMaps, any ``--config`` file with
several service sections) defines the shared sections once, at the top level (:data:`winnow.config.SHARED_SECTIONS`):

    model: smollm2-135m        # the initial policy of the learner and every generator
    chat: {few_shot: []}       # the prompt format: the generators sample with it, the learner bounds and evaluates
    sampling: {max_new_tokens: 256}
    numerics: {precision: bfloat16}
    kafka: {topic_prefix: run7}
    generator: {...}
    learner: {...}

Each service reads the top-level values (:func:`winnow.config.load_config` merges them under its section). A
service's own key (``generator.chat``, the learner's old ``eval.chat``) still overrides them for that service, so
configs written before the shared sections keep working; :func:`check_pipeline` refuses a file whose services then
disagree, naming both fields. The rules use only the shared layer's models (no service is imported), so
every service runs them on its own config file at start-up and ``winnow up`` on the whole pipeline.

Defaults: the one source of every default is the code (the pydantic models); ``winnow/up_default.yaml`` holds
only the demo's overrides of them (tests/test_up.py fails when it restates a default).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from winnow.config import ConfigError, KafkaConfig, _show, deep_merge

WHY: dict[str, str] = {
    "model": "the learner publishes versions of its model; a generator starting from another samples a policy "
             "the learner does not train (and cannot load its weights)",
    "chat": "the learner bounds prompt lengths and evaluates in its prompt format; generators sampling another "
            "format train the policy on prompts it is not evaluated on",
    "sampling": "the learner divides its logits by sampling.temperature and its prompt requests carry these "
                "parameters; a generator default that differs changes the distribution the behaviour log-probs "
                "measure",
    "numerics": "the generators sample, the learner trains and evaluates at one precision; a difference is "
                "training-inference mismatch (mismatch_kl)",
    "kafka.topic_prefix": "the generators would consume and publish on other topics than the learner: nothing "
                          "would train",
}
"""Why each shared setting must agree (the second half of the error message)."""


def _shared_models() -> dict[str, type[BaseModel] | None]:
    from winnow.chat import ChatFormat
    from winnow.numerics import NumericsConfig
    from winnow.sampling import SamplingConfig

    return {"model": None, "chat": ChatFormat, "sampling": SamplingConfig, "numerics": NumericsConfig}


def _own(data: dict[str, Any], service: str, key: str) -> tuple[str, Any]:
    """``(where, value)`` of a service's own key for a shared setting (None when it has none)."""
    section = data.get(service) or {}
    if not isinstance(section, dict):
        return f"{service}.{key}", None
    if service == "learner" and key == "chat" and section.get("chat") is None:
        old = (section.get("eval") or {}).get("chat") if isinstance(section.get("eval"), dict) else None
        if old is not None:  # the learner's old key (before the shared chat)
            return "learner.eval.chat", old
    return f"{service}.{key}", section.get(key)


def effective(data: dict[str, Any], service: str, key: str) -> tuple[str, Any]:
    """``(where it is set, the value the service reads)`` for a shared setting: the top-level value with the
    service's own key over it; validated and dumped by its model so that defaults compare equal. Raises
    ValidationError for a bad value (the service's own validation reports it)."""
    where, own = _own(data, service, key)
    top = data.get(key)
    value: Any
    if isinstance(top, dict) and isinstance(own, dict):
        value, where = deep_merge(top, own), f"{key} + {where}"
    elif own is not None:
        value = own
    else:
        value, where = top, key
    model = _shared_models()[key]
    if model is None:
        return where, value or "smollm2-135m"  # both services' default model
    return where, model.model_validate(value or {}).model_dump(mode="json")


def lift_shared(data: dict[str, Any]) -> dict[str, Any]:
    """The migration of older pipeline files: a shared setting that only one service's section sets
    (``generator.chat``, which ``winnow up`` used to copy into ``learner.eval.chat``; ``learner.sampling``;
    ``generator.model``) is moved to the top level (merged over the top-level section), where both services read
    it. Set by both, it stays (and :func:`pipeline_problems` checks that they agree). Returns a new dict; ``data``
    is not changed."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key in _shared_models():
        found: list[tuple[str, tuple[str, ...]]] = []
        for service in ("generator", "learner"):
            section = out.get(service)
            if not isinstance(section, dict):
                continue
            if section.get(key) is not None:
                found.append((service, (key,)))
            elif service == "learner" and key == "chat" and isinstance(section.get("eval"), dict) \
                    and section["eval"].get("chat") is not None:
                found.append((service, ("eval", "chat")))
        if len(found) != 1:
            continue
        ((service, path),) = found
        section = out[service]
        if len(path) == 1:
            value = section.pop(key)
        else:
            section[path[0]] = dict(section[path[0]])
            value = section[path[0]].pop(path[1])
        top = out.get(key)
        out[key] = deep_merge(top, value) if isinstance(top, dict) and isinstance(value, dict) else value
    return out


def _differences(a: Any, b: Any) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
        return ", ".join(f"{k}: {_show(a.get(k), 60)} vs {_show(b.get(k), 60)}" for k in keys)
    return f"{_show(a, 80)} vs {_show(b, 80)}"


def pipeline_problems(data: dict[str, Any]) -> list[str]:
    """One line per cross-service rule the pipeline config ``data`` breaks ([] when the generator and learner
    sections agree, or when it does not hold both)."""
    gen, learner = data.get("generator"), data.get("learner")
    if not isinstance(gen, dict) or not isinstance(learner, dict):
        return []
    problems = []
    for key in _shared_models():
        try:
            (gwhere, g), (lwhere, lv) = effective(data, "generator", key), effective(data, "learner", key)
        except ValidationError:
            continue  # a bad value: the service's own config names it
        if g != lv:
            problems.append(f"{gwhere} and {lwhere} differ ({_differences(g, lv)}): {WHY[key]}. Set it once, in "
                            f"the top-level `{key}` section, and remove the per-service keys")
    prefixes = {}
    for service, section in (("generator", gen), ("learner", learner)):
        kafka = deep_merge(data.get("kafka") or {}, section.get("kafka") or {})
        prefix = kafka.get("topic_prefix", KafkaConfig.model_fields["topic_prefix"].default)
        prefixes[f"{service}.kafka.topic_prefix" if "topic_prefix" in (section.get("kafka") or {})
                 else "kafka.topic_prefix"] = prefix
    if len(set(prefixes.values())) > 1:
        (gwhere, g), (lwhere, lv) = prefixes.items()
        problems.append(f"{gwhere} and {lwhere} differ ({_show(g)} vs {_show(lv)}): {WHY['kafka.topic_prefix']}. "
                        "Set it once, in the top-level `kafka` section")
    lora = learner.get("lora")
    if isinstance(lora, dict) and gen.get("engine") == "vllm":
        rank = lora.get("rank", 16)
        if not gen.get("vllm_enable_lora"):
            problems.append("generator.vllm_enable_lora must be true: learner.lora publishes adapter-only versions, "
                            "which vLLM serves only when started with LoRA support")
        elif isinstance(rank, int) and rank > int(gen.get("vllm_max_lora_rank", 64)):
            problems.append(f"generator.vllm_max_lora_rank ({gen.get('vllm_max_lora_rank', 64)}) must be at least "
                            f"learner.lora.rank ({rank})")
    return problems


def check_pipeline(data: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` listing every cross-service rule ``data`` breaks (see :func:`pipeline_problems`)."""
    problems = pipeline_problems(data)
    if problems:
        raise ConfigError("the generator and learner configs disagree (" + str(len(problems)) + " problem"
                          + ("s" if len(problems) > 1 else "") + "):\n" + "\n".join(f"  - {p}" for p in problems))
