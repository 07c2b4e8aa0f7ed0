"""One typed pipeline config (issue 26 item 4): the shared top-level sections every service reads, the
cross-service rules (winnow/pipeline.py) with errors naming the fields, the migration of the old per-service keys,
the learner's knobs and rules moved into its config, and one source of defaults (the code; up_default.yaml holds
only overrides)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from winnow.config import ConfigError, load_config
from winnow.generator.config import GeneratorConfig
from winnow.learner.config import LearnerConfig, OptimConfig
from winnow.pipeline import lift_shared, pipeline_problems

ROOT = Path(__file__).resolve().parent.parent
NO_DEMOS = {"few_shot": [], "system_prompt": None}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def both(path: Path) -> tuple[GeneratorConfig, LearnerConfig]:
    return load_config(GeneratorConfig, path), load_config(LearnerConfig, path)


# ------------------------------------------------------------------------------- shared sections


def test_every_service_reads_the_shared_sections_once(tmp_path):
    path = write(tmp_path, {"model": "/models/m", "chat": NO_DEMOS, "sampling": {"max_new_tokens": 64, "top_p": 0.9},
                            "numerics": {"precision": "float32"}, "kafka": {"topic_prefix": "run7"},
                            "generator": {"batch_prompts": 2}, "learner": {"n": 4}})
    gen, learner = both(path)
    for cfg in (gen, learner):
        assert cfg.model == "/models/m" and cfg.chat.few_shot == [] and cfg.chat.system_prompt is None
        assert (cfg.sampling.max_new_tokens, cfg.sampling.top_p) == (64, 0.9)
        assert cfg.numerics.precision == "float32" and cfg.kafka.topic_prefix == "run7"
    assert learner.eval.chat == learner.chat  # the evaluation formats prompts as the generators sample them
    assert learner.weights.dtype == "float32"  # auto follows the explicit precision


def test_a_single_service_file_reads_the_shared_sections(tmp_path):
    """What the Helm chart renders: the shared sections at the top, one service's section under them."""
    path = write(tmp_path, {"chat": NO_DEMOS, "sampling": {"max_new_tokens": 32}, "generator": {}})
    gen = load_config(GeneratorConfig, path)
    assert gen.chat.few_shot == [] and gen.sampling.max_new_tokens == 32


@pytest.mark.parametrize(("key", "gen_value", "learner_value", "message"), [
    ("chat", NO_DEMOS, {}, r"generator\.chat and learner\.chat differ \(system_prompt: None vs 'Please reason"),
    ("model", "a/b", "c/d", r"generator\.model and learner\.model differ \('a/b' vs 'c/d'\): the learner publishes"),
    ("sampling", {"temperature": 0.7}, {"temperature": 1.0},
     r"generator\.sampling and learner\.sampling differ \(temperature: 0\.7 vs 1\.0\): the learner divides"),
    ("numerics", {"precision": "bfloat16"}, {"precision": "float32"},
     r"generator\.numerics and learner\.numerics differ \(precision: 'bfloat16' vs 'float32'\)"),
])
def test_services_that_disagree_on_a_shared_setting_are_refused(tmp_path, key, gen_value, learner_value, message):
    path = write(tmp_path, {"generator": {key: gen_value}, "learner": {key: learner_value}})
    for cls in (GeneratorConfig, LearnerConfig):  # either service refuses the file at start-up
        with pytest.raises(ConfigError, match=message) as e:
            load_config(cls, path)
        assert f"Set it once, in the top-level `{key}` section" in str(e.value)


def test_per_service_overrides_of_the_top_level_are_checked_too(tmp_path):
    path = write(tmp_path, {"sampling": {"max_new_tokens": 24}, "generator": {"sampling": {"top_k": 50}},
                            "learner": {"sampling": {"top_k": 40}}})
    with pytest.raises(ConfigError, match=r"sampling \+ generator\.sampling and sampling \+ learner\.sampling differ "
                                          r"\(top_k: 50 vs 40\)"):
        load_config(LearnerConfig, path)


def test_topic_prefixes_must_agree(tmp_path):
    path = write(tmp_path, {"kafka": {"topic_prefix": "a"}, "generator": {"kafka": {"topic_prefix": "b"}},
                            "learner": {}})
    with pytest.raises(ConfigError, match=r"generator\.kafka\.topic_prefix and kafka\.topic_prefix differ \('b' vs "
                                          r"'a'\): the generators would consume and publish on other topics"):
        load_config(GeneratorConfig, path)


def test_a_lora_learner_needs_vllm_generators_with_lora_support():
    base = {"learner": {"lora": {"rank": 128}}}
    assert pipeline_problems({**base, "generator": {"engine": "transformers"}}) == []
    [p] = pipeline_problems({**base, "generator": {"engine": "vllm"}})
    assert p.startswith("generator.vllm_enable_lora must be true: learner.lora publishes adapter-only versions")
    [p] = pipeline_problems({**base, "generator": {"engine": "vllm", "vllm_enable_lora": True}})
    assert p == "generator.vllm_max_lora_rank (64) must be at least learner.lora.rank (128)"


# ------------------------------------------------------------------------------- migration


def test_old_generator_chat_alone_is_the_pipelines_chat(tmp_path):
    """Before the shared sections, ``winnow up`` copied generator.chat into learner.eval.chat: such a file keeps
    working, both services read the one format."""
    gen, learner = both(write(tmp_path, {"generator": {"chat": NO_DEMOS}, "learner": {}}))
    assert gen.chat == learner.chat == learner.eval.chat and learner.chat.few_shot == []


def test_old_learner_eval_chat_is_read_as_chat(tmp_path):
    learner = load_config(LearnerConfig, data={"learner": {"eval": {"chat": NO_DEMOS}}})
    assert learner.chat.few_shot == [] and learner.eval.chat == learner.chat
    gen, learner = both(write(tmp_path, {"generator": {}, "learner": {"eval": {"chat": NO_DEMOS, "every": 2}}}))
    assert gen.chat == learner.chat and learner.eval.every == 2
    lifted = lift_shared({"generator": {}, "learner": {"eval": {"chat": NO_DEMOS, "every": 2}}})
    assert lifted == {"chat": NO_DEMOS, "generator": {}, "learner": {"eval": {"every": 2}}}


def test_an_old_eval_chat_that_differs_from_chat_is_refused():
    with pytest.raises(ConfigError, match=r"learner\.eval\.chat was replaced by chat \(the shared top-level chat "
                                          r"section, read by the generators and the learner\) and the two differ"):
        load_config(LearnerConfig, data={"learner": {"chat": NO_DEMOS, "eval": {"chat": {}}}})


def test_a_setting_given_in_one_section_merges_over_the_top_level():
    lifted = lift_shared({"sampling": {"max_new_tokens": 24}, "learner": {"sampling": {"max_new_tokens": 512}},
                          "generator": {}})
    assert lifted["sampling"] == {"max_new_tokens": 512} and "sampling" not in lifted["learner"]
    both_set = {"generator": {"model": "a"}, "learner": {"model": "a"}}
    assert lift_shared(both_set) == both_set and pipeline_problems(both_set) == []  # set twice, equal: accepted


def test_a_run_directory_written_before_the_shared_sections_resumes(tmp_path):
    """``winnow up --resume`` reads the run's saved config/up.yaml: one written before the shared sections (the
    sampling and model in both sections, the chat in the generator's only) resolves to the same settings."""
    from winnow.up import Pipeline

    sampling = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 24}
    old = {"up": {"generators": 1}, "kafka": {"topic_prefix": "winnow"}, "numerics": {"precision": "bfloat16"},
           "generator": {"model": "smollm2-135m", "sampling": sampling, "chat": NO_DEMOS},
           "learner": {"model": "smollm2-135m", "sampling": sampling, "algo": {"preset": "raft"}}}
    p = Pipeline(old, tmp_path, resume=True)
    p.ports = dict.fromkeys(("verifier", "verifier_metrics", "learner_metrics", "generator_metrics"), 1)
    shown = p.resolved("127.0.0.1:9092")
    gen, learner = shown["generator-0"], shown["learner"]
    assert gen["chat"] == learner["chat"] == learner["eval"]["chat"] and gen["chat"]["few_shot"] == []
    assert gen["sampling"] == learner["sampling"] and gen["sampling"]["max_new_tokens"] == 24
    assert learner["weights"]["dtype"] == "bfloat16"  # what winnow up used to derive, now the learner's own rule


def test_generator_dtype_still_names_its_replacement():
    with pytest.raises(ConfigError, match=r"generator\.dtype was replaced by numerics\.precision"):
        load_config(GeneratorConfig, data={"generator": {"dtype": "bfloat16"}})


# ------------------------------------------------------------------------------- the learner's rules and knobs


def test_publishing_less_often_than_the_staleness_bound_is_refused():
    """Every group sampled with one publication would be stale before the next: the run would stall for good."""
    with pytest.raises(ConfigError, match=r"weights\.publish_every 3 > algo\.max_staleness \+ 1 \(2\)"):
        load_config(LearnerConfig, data={"learner": {"weights": {"publish_every": 3}, "algo": {"max_staleness": 1}}})
    cfg = load_config(LearnerConfig, data={"learner": {"weights": {"publish_every": 3}, "algo": {"max_staleness": 2}}})
    assert cfg.weights.publish_every == 3


def test_training_needs_a_positive_temperature():
    with pytest.raises(ConfigError, match=r"sampling: sampling\.temperature must be > 0 for training, got 0\.0: the "
                                          r"learner divides its logits by it"):
        load_config(LearnerConfig, data={"learner": {}, "sampling": {"temperature": 0}})
    load_config(GeneratorConfig, data={"generator": {}, "sampling": {"temperature": 0}})  # a generator alone may


def test_trainer_knobs_are_learner_config():
    optim = load_config(LearnerConfig, data={"learner": {"optim": {"logprob_mode": "logits",
                                                                   "logprob_chunk_size": 512}}}).optim
    assert (optim.logprob_mode, optim.logprob_chunk_size) == ("logits", 512)
    with pytest.raises(ConfigError, match=r"optim\.logprob_mode: Input should be 'auto', 'hidden' or 'logits'"):
        load_config(LearnerConfig, data={"learner": {"optim": {"logprob_mode": "fast"}}})
    with pytest.raises(ConfigError, match=r"optim\.logprob_chunk_size: Input should be greater than or equal to 1"):
        load_config(LearnerConfig, data={"learner": {"optim": {"logprob_chunk_size": 0}}})


@pytest.mark.parametrize(("optim", "message"), [
    ({"gradient_checkpointing": True}, r"optim\.share_prompt needs optim\.gradient_checkpointing false"),
    ({"logprob_mode": "logits"}, r"optim\.share_prompt needs optim\.logprob_mode hidden or auto"),
])
def test_share_prompt_needs_are_checked_at_load(optim, message):
    with pytest.raises(ConfigError, match=message):
        load_config(LearnerConfig, data={"learner": {"optim": {"share_prompt": True, **optim}}})
    OptimConfig(**optim)  # without share_prompt either is fine


def test_weights_dtype_auto_follows_an_explicit_precision():
    def dtype(**learner):
        return load_config(LearnerConfig, data={"learner": learner}).weights.dtype

    assert dtype() == "auto"  # precision auto: as trained
    assert dtype(numerics={"precision": "bfloat16"}) == "bfloat16"
    assert dtype(numerics={"precision": "bfloat16"}, weights={"dtype": "float32"}) == "float32"  # explicit wins


# ------------------------------------------------------------------------------- one source of defaults


def _leaves(node: dict, path: tuple[str, ...] = ()):
    for k, v in node.items():
        if isinstance(v, dict) and v and k != "config":  # a reasoning-gym `config` is free-form: one leaf
            yield from _leaves(v, (*path, k))
        else:
            yield (*path, k), v


def _without(data: dict, path: tuple[str, ...]) -> dict:
    out = dict(data)
    if len(path) == 1:
        out.pop(path[0])
    else:
        out[path[0]] = _without(out[path[0]], path[1:])
    return out


def _get(node, path):
    for k in path:
        node = node[k]
    return node


def test_up_default_restates_no_default_of_the_code(tmp_path):
    """The code is the one source of defaults; up_default.yaml holds only what the demo changes. Each value, taken
    out, must change what ``winnow up --print-config`` resolves: a value equal to the code's default is a second
    definition that would drift (a prompt source's ``kind`` is its type, not a default)."""
    from winnow.up import DEFAULT_CONFIG, Pipeline

    default = yaml.safe_load(DEFAULT_CONFIG.read_text())

    def resolved(data: dict) -> dict:
        p = Pipeline({"up": {}, **data}, tmp_path, resume=False)
        p.ports = dict.fromkeys(("verifier", "verifier_metrics", "learner_metrics", "generator_metrics"), 1)
        out = p.resolved("127.0.0.1:9092")
        out["generator"] = out.pop("generator-0")
        return out

    restated = []
    for path, value in _leaves(default):
        if path[-1] == "kind":
            continue
        shown = resolved(_without(default, path))
        services = [path[0]] if path[0] in ("up", "verifier", "generator", "learner") else ["generator", "learner"]
        where = path if path[0] in services else None
        if all(_get(shown[s], where[1:] if where else path) == value for s in services):
            restated.append(".".join(path))
    assert restated == [], f"up_default.yaml restates the code's defaults: {restated} (remove them)"


def test_the_charts_algorithm_is_the_learners_default():
    from winnow.learner.algo import DEFAULT_PRESET

    values = yaml.safe_load((ROOT / "helm" / "winnow" / "values.yaml").read_text())
    assert values["learner"]["algorithm"] == DEFAULT_PRESET


def test_print_config_shows_the_shared_sections_in_every_service(capsys):
    from winnow.cli import main

    assert main(["up", "--print-config", "--run-dir", "/nonexistent/x", "--set", "chat.few_shot=[]",
                 "--set", "sampling.top_p=0.9", "--model", "/models/m"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    gen, learner = shown["generator-0"], shown["learner"]
    assert gen["chat"]["few_shot"] == learner["chat"]["few_shot"] == learner["eval"]["chat"]["few_shot"] == []
    assert gen["sampling"] == learner["sampling"] and gen["sampling"]["top_p"] == 0.9
    assert gen["sampling"]["max_new_tokens"] == 24  # up_default's, in both
    assert gen["model"] == learner["model"] == "/models/m" and gen["numerics"] == learner["numerics"]
