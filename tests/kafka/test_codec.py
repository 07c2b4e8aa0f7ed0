"""Codec and OffsetTracker: pure logic, no broker."""

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from winnow.config import KafkaConfig
from winnow.kafka import (
    TYPE_HEADER,
    WEIGHTS_KEY,
    DecodeError,
    OffsetTracker,
    decode,
    decode_record,
    encode,
    message_key,
    topics,
    type_name,
)
from winnow.v1 import messages_pb2


def _record(value, offset=0, headers=(), topic="t", partition=0):
    return ConsumerRecord(
        topic, partition, offset, 0, 0, None, value, None, len(value or b""), 0, list(headers)
    )


def test_topic_names():
    t = topics(KafkaConfig(topic_prefix="run7"))
    assert t == ("run7.prompts", "run7.groups", "run7.weights")


@pytest.mark.parametrize("which", ["prompt_request", "scored_group", "weight_announcement"])
def test_round_trip_each_type(build, which):
    msg = getattr(build, which)(7)
    back = decode(type(msg), encode(msg))
    assert back == msg
    assert back.SerializeToString() == msg.SerializeToString()


def test_keys(build):
    assert message_key(build.scored_group(3)) == b"req-3"
    assert message_key(build.prompt_request(4)) == b"req-4"
    assert message_key(build.weight_announcement(9)) == WEIGHTS_KEY


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"hello world, not protobuf", b"", None],
    ids=["bad-varint", "truncated", "text", "empty", "null"],
)
def test_garbage_is_decode_error(data):
    with pytest.raises(DecodeError):
        decode(messages_pb2.ScoredGroup, data)


def test_invariants_checked(build):
    g = build.scored_group(1)
    del g.samples[1].behaviour_logprobs[-1]
    with pytest.raises(DecodeError, match=r"sample 1: behaviour_logprobs has 2 entries but response_token_ids has 3"):
        decode(messages_pb2.ScoredGroup, g.SerializeToString())
    with pytest.raises(DecodeError, match="behaviour_logprobs"):
        encode(g)  # producers cannot ship it either
    w = build.weight_announcement(1)
    w.sha256 = "abc"
    with pytest.raises(DecodeError, match="sha256"):
        decode(messages_pb2.WeightAnnouncement, w.SerializeToString())
    p = build.prompt_request(1)
    p.request_id = ""
    with pytest.raises(DecodeError, match=r"PromptRequest.request_id is empty"):
        decode(messages_pb2.PromptRequest, p.SerializeToString())


def test_the_wire_check_is_the_groups_validator_with_the_wire_limits(build):
    """One validator (winnow.groups.check_group): on the wire, per-token versions or none (the group's), ids set;
    the learner's limits (values, prompt, n) are not the codec's."""
    g = build.scored_group(1)
    del g.samples[0].policy_versions[:]  # none: the group's policy_version
    g.samples[1].behaviour_logprobs[0] = 0.5  # a value only the learner judges
    del g.prompt_token_ids[:]
    assert decode(messages_pb2.ScoredGroup, g.SerializeToString()).request_id == "req-1"
    g.samples[0].policy_versions.append(3)  # one version for three tokens: not on the wire
    with pytest.raises(DecodeError, match=r"sample 0: policy_versions has 1 entries"):
        decode(messages_pb2.ScoredGroup, g.SerializeToString())
    g = build.scored_group(1)
    g.prompt_id = ""
    with pytest.raises(DecodeError, match="prompt_id is empty"):
        encode(g)
    del g.samples[:]
    g.prompt_id = "p"
    with pytest.raises(DecodeError, match="group has no samples"):
        encode(g)


def test_decode_record_counts_and_skips(build):
    seen = []
    good = _record(
        encode(build.scored_group(1)), headers=[(TYPE_HEADER, type_name(messages_pb2.ScoredGroup).encode())]
    )
    assert decode_record(messages_pb2.ScoredGroup, good, lambda r, rec: seen.append(r)).request_id == "req-1"
    # a prompt request on the groups topic: declared type mismatch
    wrong = _record(encode(build.prompt_request(1)), headers=[(TYPE_HEADER, b"winnow.v1.PromptRequest")])
    assert decode_record(messages_pb2.ScoredGroup, wrong, lambda r, rec: seen.append(r)) is None
    assert (
        decode_record(messages_pb2.ScoredGroup, _record(b"\xff\xff"), lambda r, rec: seen.append(r)) is None
    )
    assert len(seen) == 2 and "declares type" in seen[0]


def test_offset_tracker_out_of_order():
    tp = TopicPartition("g", 0)
    tr = OffsetTracker()
    recs = [_record(b"x", offset=o, topic="g") for o in (10, 11, 12, 13)]
    for r in recs:
        tr.track(r)
    assert tr.committable() == {tp: 10}
    tr.done(recs[1])
    tr.done(recs[2])
    assert tr.committable() == {tp: 10}  # 10 still pending: nothing below 11 may be committed
    tr.done(recs[0])
    assert tr.committable() == {tp: 13}
    tr.mark_committed(tr.to_commit())
    assert tr.to_commit() == {}
    tr.done(recs[3])
    assert tr.to_commit() == {tp: 14} and tr.pending() == 0
    tr.forget([tp])
    assert tr.committable() == {}
