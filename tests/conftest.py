"""Top-level fixtures: real Kafka-protocol brokers for tests that need Kafka.

- ``kafka_bootstrap`` (session): ``"host:port"`` of a broker. With ``KAFKA_BOOTSTRAP_SERVERS``
  set, that cluster is used (one parameter); otherwise the fixture is parametrized over the two
  local brokers ("tansu", "noida"), each started once per session and stopped by PID at the end.
  Tests that use it run once per broker, which catches assumptions only one broker tolerates.
- ``kafka_bootstrap_one`` (session): a single broker (the env one, else noida, which is closer to
  Kafka and joins groups fast) for expensive tests that need Kafka but not both brokers.
- ``kafka_config`` / ``kafka_config_one``: a :class:`KafkaConfig` for that broker with a topic
  prefix unique to the test and short timeouts (session 6000 ms, the Kafka minimum).

Any test using these fixtures is marked ``kafka`` automatically.
"""

from __future__ import annotations

import os
import re
import uuid

import pytest

from winnow.brokers import LocalBroker
from winnow.config import KafkaConfig

_ENV_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
_KAFKA_FIXTURES = {"kafka_bootstrap", "kafka_bootstrap_one", "kafka_config", "kafka_config_one"}
_BROKERS: dict[str, LocalBroker] = {}


def _local_broker(kind: str, tmp_path_factory) -> str:
    broker = _BROKERS.get(kind)
    if broker is None or broker.proc is None or broker.proc.poll() is not None:
        broker = LocalBroker(kind, tmp_path_factory.mktemp(f"broker-{kind}"))
        broker.start()
        _BROKERS[kind] = broker
    return broker.bootstrap


@pytest.fixture(scope="session", autouse=False)
def _broker_registry():
    """Stops every local broker this session started, by PID, at the end of the session."""
    yield _BROKERS
    for broker in list(_BROKERS.values()):
        broker.stop()
    _BROKERS.clear()


@pytest.fixture(scope="session", params=["env"] if _ENV_BOOTSTRAP else ["tansu", "noida"])
def kafka_bootstrap(request, tmp_path_factory, _broker_registry) -> str:
    """Bootstrap servers of a real Kafka-protocol broker (parametrized over both local brokers)."""
    if request.param == "env":
        return _ENV_BOOTSTRAP
    return _local_broker(request.param, tmp_path_factory)


@pytest.fixture(scope="session")
def kafka_bootstrap_one(tmp_path_factory, _broker_registry) -> str:
    """One broker: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a local noida broker."""
    if _ENV_BOOTSTRAP:
        return _ENV_BOOTSTRAP
    return _local_broker("noida", tmp_path_factory)


def _unique_config(bootstrap: str, request) -> KafkaConfig:
    name = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:40].strip("-")
    return KafkaConfig(
        bootstrap_servers=bootstrap,
        topic_prefix=f"t-{name}-{uuid.uuid4().hex[:8]}",
        session_timeout_ms=6000,
        request_timeout_ms=10_000,
        max_message_bytes=1024 * 1024 - 1024,
    )


@pytest.fixture
def kafka_config(kafka_bootstrap, request) -> KafkaConfig:
    """KafkaConfig for ``kafka_bootstrap`` with a topic prefix unique to this test."""
    return _unique_config(kafka_bootstrap, request)


@pytest.fixture
def kafka_config_one(kafka_bootstrap_one, request) -> KafkaConfig:
    """KafkaConfig for ``kafka_bootstrap_one`` with a topic prefix unique to this test."""
    return _unique_config(kafka_bootstrap_one, request)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _KAFKA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)
