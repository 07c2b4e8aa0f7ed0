"""Record bounds and the optional HMAC authentication of scored groups: pure logic, no broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import ConsumerRecord

from winnow.kafka import (
    HMAC_HEADER,
    HMAC_KEY_ENV,
    HMAC_KEY_FILE_ENV,
    TYPE_HEADER,
    KafkaSetupError,
    decode_record,
    encode,
    group_hmac_key,
    record_hmac,
    send,
    type_name,
    verify_group_record,
)
from winnow.v1 import messages_pb2

KEY = b"k" * 32
OTHER = b"o" * 32


def _record(value, headers=()):
    return ConsumerRecord("g", 0, 0, 0, 0, b"req-1", value, None, len(value or b""), 0, list(headers))


class _CapturingProducer:
    """Records what ``send`` hands to aiokafka."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict]] = []

    async def send_and_wait(self, topic, value, **kw):
        self.sent.append((topic, value, kw))


def _signed(build, key: bytes | None) -> ConsumerRecord:
    producer = _CapturingProducer()
    asyncio.run(send(producer, "w.groups", build.scored_group(1), hmac_key=key))
    _, value, kw = producer.sent[0]
    return _record(value, kw["headers"])


def test_a_record_larger_than_the_bound_is_corrupt_before_it_is_parsed(build):
    """Issue 22: every received record is bounded before it is decoded."""
    value = encode(build.scored_group(1))
    seen = []
    assert decode_record(messages_pb2.ScoredGroup, _record(value), max_bytes=len(value)) is not None
    assert decode_record(messages_pb2.ScoredGroup, _record(value), lambda why, r: seen.append(why),
                         max_bytes=len(value) - 1) is None
    assert seen == [f"record of {len(value)} bytes is larger than the {len(value) - 1} allowed"]


def test_only_a_group_signed_with_the_shared_key_verifies(build):
    """Issue 22: with a key set, a group signed with another key, an unsigned one, or one changed after signing
    is refused; with no key, authentication is off."""
    good = _signed(build, KEY)
    assert verify_group_record(good, KEY)
    assert not verify_group_record(_signed(build, OTHER), KEY)
    unsigned = _signed(build, None)
    assert [k for k, _ in unsigned.headers] == [TYPE_HEADER]
    assert not verify_group_record(unsigned, KEY)
    assert verify_group_record(unsigned, None)  # authentication off
    tampered = good.value.replace(b"gen-0", b"gen-9")
    assert tampered != good.value and not verify_group_record(_record(tampered, good.headers), KEY)
    # a signature is bound to the message type: the same bytes signed as another type do not verify
    as_prompt = record_hmac(KEY, type_name(messages_pb2.PromptRequest), good.value).encode()
    assert not verify_group_record(_record(good.value, [(TYPE_HEADER, b"x"), (HMAC_HEADER, as_prompt)]), KEY)
    # two signature headers (one valid) are refused, not resolved
    sig = dict(good.headers)[HMAC_HEADER]
    assert not verify_group_record(_record(good.value, [*good.headers, (HMAC_HEADER, sig)]), KEY)
    assert not verify_group_record(_record(None, good.headers), KEY)


def test_the_group_key_comes_from_a_file_or_the_env_and_a_bad_one_is_an_error(tmp_path):
    assert group_hmac_key(None, {}) is None
    assert group_hmac_key(None, {HMAC_KEY_ENV: "s" * 20}) == b"s" * 20
    secret = tmp_path / "hmac"
    secret.write_bytes(b"f" * 32 + b"\n")  # a Secret's trailing newline is not part of the key
    assert group_hmac_key(None, {HMAC_KEY_FILE_ENV: str(secret), HMAC_KEY_ENV: "s" * 20}) == b"f" * 32
    with pytest.raises(KafkaSetupError, match="missing"):
        group_hmac_key(None, {HMAC_KEY_FILE_ENV: str(tmp_path / "missing")})
    with pytest.raises(KafkaSetupError, match="at least 16"):
        group_hmac_key(None, {HMAC_KEY_ENV: "short"})


def test_the_group_key_file_is_a_kafka_config_field(tmp_path):
    """Every service reads the key from the one shared KafkaConfig (a mounted Secret's file)."""
    from winnow.config import KafkaConfig
    from winnow.kafka import group_hmac_key

    path = tmp_path / "key"
    path.write_text("a-secret-of-at-least-16-bytes\n")
    assert group_hmac_key(KafkaConfig(group_hmac_key_file=path), environ={}) == b"a-secret-of-at-least-16-bytes"
    assert group_hmac_key(KafkaConfig(), environ={}) is None
