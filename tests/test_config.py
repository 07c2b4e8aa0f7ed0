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
