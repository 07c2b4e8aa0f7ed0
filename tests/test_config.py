"""The shared config system: file < env < overrides, errors name the field."""

import pytest
from pydantic import Field

from winnow.config import ConfigError, KafkaConfig, Settings, load_config, parse_overrides, settings_config


class DemoConfig(Settings):
    section = "demo"
    model_config = settings_config("demo")

    port: int = Field(default=50051, ge=0, le=65535)
    """Port to bind."""
    name: str = "x"
    """A name."""
    kafka: KafkaConfig = KafkaConfig()
    """Kafka."""


def test_priority_file_env_override(tmp_path, monkeypatch):
    f = tmp_path / "c.yaml"
    f.write_text("demo:\n  port: 1\n  name: fromfile\nkafka:\n  topic_prefix: run7\n")
    cfg = load_config(DemoConfig, f)
    assert (cfg.port, cfg.name, cfg.kafka.topic_prefix) == (1, "fromfile", "run7")
    monkeypatch.setenv("WINNOW_DEMO_PORT", "2")
    monkeypatch.setenv("WINNOW_DEMO_KAFKA__TOPIC_PREFIX", "envrun")
    cfg = load_config(DemoConfig, f)
    assert (cfg.port, cfg.name, cfg.kafka.topic_prefix) == (2, "fromfile", "envrun")
    cfg = load_config(DemoConfig, f, {"port": 3})
    assert cfg.port == 3


def test_kafka_bootstrap_env(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1234")
    assert load_config(DemoConfig).kafka.bootstrap_servers == "127.0.0.1:1234"


def test_bad_value_names_field(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("port: 70000\n")
    with pytest.raises(ConfigError, match=r"port: .*less than or equal to 65535.*70000"):
        load_config(DemoConfig, f)


def test_unknown_key_rejected(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("prot: 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load_config(DemoConfig, f)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(DemoConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(DemoConfig, bad)


def test_parse_overrides():
    assert parse_overrides(["a.b=1", "a.c=x", "d=true"]) == {"a": {"b": 1, "c": "x"}, "d": True}
    with pytest.raises(ConfigError):
        parse_overrides(["nokey"])


def test_unknown_env_var_names_nearest_field(monkeypatch):
    # fault 6: WINNOW_LEARNER_BATCH_GROUP=4 (typo) was silently ignored
    monkeypatch.setenv("WINNOW_DEMO_PROT", "4")
    with pytest.raises(ConfigError, match=r"WINNOW_DEMO_PROT: demo has no field 'prot' \(did you mean port, i.e. WINNOW_DEMO_PORT\?\)"):
        load_config(DemoConfig)


def test_unknown_nested_env_var_names_nearest_field(monkeypatch):
    monkeypatch.setenv("WINNOW_DEMO_KAFKA__TOPIC_PREFX", "r")
    with pytest.raises(ConfigError, match=r"demo.kafka has no field 'topic_prefx' \(did you mean kafka.topic_prefix, "
                                          r"i.e. WINNOW_DEMO_KAFKA__TOPIC_PREFIX\?\)"):
        load_config(DemoConfig)
    monkeypatch.setenv("WINNOW_DEMO_KAFKA__TOPIC_PREFIX", "r")  # the right names still work
    monkeypatch.delenv("WINNOW_DEMO_KAFKA__TOPIC_PREFX")
    monkeypatch.setenv("WINNOW_OTHER_THING", "1")  # another service's variables are not this one's business
    assert load_config(DemoConfig).kafka.topic_prefix == "r"


def test_env_check_on_real_service_config(monkeypatch):
    from winnow.learner.config import LearnerConfig

    monkeypatch.setenv("WINNOW_LEARNER_BATCH_GROUP", "4")
    with pytest.raises(ConfigError, match=r"did you mean batch_groups, i.e. WINNOW_LEARNER_BATCH_GROUPS"):
        load_config(LearnerConfig)


def test_non_json_nested_env_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WINNOW_DEMO_KAFKA", "{not json")
    with pytest.raises(ConfigError, match=r'field "kafka".*must hold JSON.*WINNOW_DEMO_KAFKA__TOPIC_PREFIX'):
        load_config(DemoConfig)


def test_binary_config_file_is_a_clear_error(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_bytes(b"port: 1\n\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xff at offset 8\)"):
        load_config(DemoConfig, f)
    f.write_bytes(b"port: 1\n\x00\x01")
    with pytest.raises(ConfigError, match="NUL bytes"):
        load_config(DemoConfig, f)


def test_cli_reports_env_typo_with_exit_2(monkeypatch, capsys):
    from winnow.cli import main

    monkeypatch.setenv("WINNOW_LEARNER_BATCH_GROUP", "4")
    assert main(["learner", "run", "--print-config"]) == 2
    assert "WINNOW_LEARNER_BATCH_GROUPS" in capsys.readouterr().err


# ---- issue 22, "Errors and hygiene": untrusted config text is refused quickly, with a short error


def test_misspelled_section_in_env_names_the_variable(monkeypatch):
    from winnow.learner.config import LearnerConfig

    monkeypatch.setenv("WINNOW_LERNER_MAX_STEPS", "3")  # no service reads WINNOW_LERNER_*: the setting was lost
    with pytest.raises(ConfigError, match=r"WINNOW_LERNER_MAX_STEPS: no config section 'lerner' \(did you mean "
                                          r"learner, i\.e\. WINNOW_LEARNER_MAX_STEPS\?\)"):
        load_config(LearnerConfig)
    with pytest.raises(ConfigError, match="WINNOW_LERNER_MAX_STEPS"):  # every service refuses it, not just one
        load_config(DemoConfig)
    monkeypatch.delenv("WINNOW_LERNER_MAX_STEPS")
    monkeypatch.setenv("WINNOW_CACHE_DIR", "/tmp")  # WINNOW_* names that are not config pass
    assert load_config(DemoConfig).port == 50051


BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
demo:
  port: *h
"""


def test_yaml_alias_bomb_is_refused_at_once_with_a_short_error(tmp_path):
    import time

    f = tmp_path / "c.yaml"
    f.write_text(BOMB)  # 9^8 = 43 million strings once expanded: before, a 300 MB error message
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"refused: its aliases \(\*name\) expand it to .* values") as err:
        load_config(DemoConfig, f)
    assert time.monotonic() - start < 1.0
    assert len(str(err.value)) < 300
    with pytest.raises(ConfigError, match="refused: its aliases"):  # the same reader parses --set values
        parse_overrides(["port=" + BOMB.replace("\n", ", ").replace("demo:, ", "").join("{}").replace(
            "  port: *h, ", "port: *h")])
    f.write_text("a: &a [1, *a]\ndemo: {port: *a}\n")
    with pytest.raises(ConfigError, match="recursive alias at line 1"):
        load_config(DemoConfig, f)


def test_anchors_and_merge_keys_within_the_budget_still_work(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("base: &base {port: 5, name: a}\ndemo:\n  <<: *base\n  name: b\n")  # a merge key may be overridden
    cfg = load_config(DemoConfig, f)
    assert (cfg.port, cfg.name) == (5, "b")


def test_duplicate_keys_are_refused_naming_the_key_and_lines(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("demo:\n  port: 4\n  name: x\n  port: 5\n")  # YAML kept the last silently
    with pytest.raises(ConfigError, match=r"c\.yaml is refused: duplicate key 'port' at line 4 \(first at line 2\)"):
        load_config(DemoConfig, f)
    j = tmp_path / "c.json"
    j.write_text('{"port": 4, "port": 5}')
    with pytest.raises(ConfigError, match=r"c\.json is refused: duplicate key 'port'"):
        load_config(DemoConfig, j)


def test_inf_and_nan_are_refused_for_every_float_field():
    import types
    import typing

    from pydantic import BaseModel

    from winnow.generator.config import GeneratorConfig
    from winnow.learner.config import LearnerConfig
    from winnow.verifier.config import VerifierConfig

    def models(cls, seen):
        if cls in seen:
            return
        seen.add(cls)
        for info in cls.model_fields.values():
            stack = [info.annotation]
            while stack:
                t = stack.pop()
                if isinstance(t, type) and issubclass(t, BaseModel):
                    models(t, seen)
                stack += typing.get_args(t)

    def is_float(t):  # float, float | None, Annotated[float, ...]
        return t is float or (typing.get_origin(t) in (typing.Union, typing.Annotated, types.UnionType)
                              and any(is_float(a) for a in typing.get_args(t)))

    seen: set = set()
    for cls in (LearnerConfig, GeneratorConfig, VerifierConfig):
        models(cls, seen)
    checked = []
    for cls in seen:
        for name, info in cls.model_fields.items():
            if not is_float(info.annotation):
                continue
            for bad in (float("inf"), float("-inf"), float("nan")):
                try:
                    cls.model_validate({name: bad})
                except ValueError as e:
                    errors = e.errors() if hasattr(e, "errors") else []
                    assert any(x["loc"][:1] == (name,) and x["type"] == "finite_number" for x in errors), (cls, name)
                else:
                    raise AssertionError(f"{cls.__name__}.{name} accepted {bad}")
            checked.append(f"{cls.__name__}.{name}")
    assert "OptimConfig.lr" in checked and "SamplingConfig.temperature" in checked and len(checked) > 20


def test_adamw_betas_in_zero_one_and_finite():
    from winnow.learner.config import LearnerConfig

    with pytest.raises(ConfigError, match=r"optim\.betas\.0: Input should be less than 1 \(got 2\)"):
        load_config(LearnerConfig, overrides=parse_overrides(["optim.betas=[2, 0.5]"]))
    with pytest.raises(ConfigError, match=r"optim\.betas\.1: Input should be greater than or equal to 0"):
        load_config(LearnerConfig, overrides=parse_overrides(["optim.betas=[0.9, -0.1]"]))
    with pytest.raises(ConfigError, match=r"optim\.lr: Input should be a finite number \(got inf\)"):
        load_config(LearnerConfig, overrides=parse_overrides(["optim.lr=.inf"]))
    assert load_config(LearnerConfig, overrides=parse_overrides(["optim.betas=[0, 0.95]"])).optim.betas == (0, 0.95)


def test_a_yaml_boolean_is_not_a_number(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("demo:\n  port: yes\n")  # pydantic took True as 1
    with pytest.raises(ConfigError, match=r"expected a number, got a boolean for port \(got True\)"):
        load_config(DemoConfig, f)
    from winnow.learner.config import LearnerConfig

    for override in ("n=yes", "optim.lr=on", "optim.betas=[0.9, no]", "sampling.seed=true"):
        with pytest.raises(ConfigError, match="expected a number, got a boolean"):
            load_config(LearnerConfig, overrides=parse_overrides([override]))
    assert load_config(LearnerConfig, overrides=parse_overrides(["optim.share_prompt=yes"])).optim.share_prompt


def test_a_5000_digit_value_is_a_short_error(tmp_path, capsys):
    from winnow.cli import main

    with pytest.raises(ConfigError, match=r"--set port holds a value that cannot be read: .*4300 digits.*5000 digits"):
        parse_overrides(["port=" + "1" * 5000])
    assert main(["learner", "run", "--print-config", "--set", "n=" + "1" * 5000]) == 2  # was a traceback
    err = capsys.readouterr().err
    assert err.startswith("winnow: --set n holds a value") and len(err) < 300
    big_hex = "0x" + "f" * 5000  # converts (base 16), but an int of 6,000 digits cannot be repr'd
    with pytest.raises(ConfigError, match=r"port: .*\(got <an integer of about 6,020 digits>\)"):
        load_config(DemoConfig, overrides=parse_overrides(["port=" + big_hex]))
    j = tmp_path / "c.json"
    j.write_text('{"port": ' + "9" * 5000 + "}")
    with pytest.raises(ConfigError, match=r"c\.json holds a value that cannot be read"):
        load_config(DemoConfig, j)


def test_values_quoted_in_errors_are_cut(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("demo:\n  port: " + "x" * 1_000_000 + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(DemoConfig, f)
    assert len(str(err.value)) < 600 and "1,000,000 chars" in str(err.value)


def test_config_path_that_is_a_directory_or_too_big(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .* is a directory: pass the YAML or JSON file"):
        load_config(DemoConfig, tmp_path)  # was "not found"
    big = tmp_path / "c.yaml"
    with big.open("wb") as f:
        f.truncate(17 * 1024 * 1024)  # sparse: read whole before, then refused as NUL bytes
    with pytest.raises(ConfigError, match=r"c\.yaml has 17,825,792 bytes, more than a config file may \(16,777,216\)"):
        load_config(DemoConfig, big)


def test_deeply_nested_config_is_a_short_error(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("demo: " + "[" * 20_000 + "]" * 20_000 + "\n")  # was a RecursionError traceback
    with pytest.raises(ConfigError, match=r"c\.yaml is nested too deeply"):
        load_config(DemoConfig, f)
