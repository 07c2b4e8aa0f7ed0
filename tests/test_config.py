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
