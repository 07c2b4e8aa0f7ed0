"""Topics, produce/consume, manual commits, corrupt records, weights, group hand-over.

Every test runs against both local brokers (tansu and noida), or against
KAFKA_BOOTSTRAP_SERVERS when it is set.
"""

import asyncio
import time

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from winnow.kafka import (
    TYPE_HEADER,
    WEIGHTS_KEY,
    OffsetTracker,
    commit_offsets,
    consumer_lag,
    decode_record,
    ensure_topics,
    make_consumer,
    make_producer,
    send,
    topics,
)
from winnow.v1 import messages_pb2

from ..weights_topic import latest_weight_announcement

pytestmark = pytest.mark.timeout(90)


async def test_ensure_topics_idempotent_and_weights_compacted(kafka_config):
    first = await ensure_topics(kafka_config, partitions=2)
    t = topics(kafka_config)
    assert set(first) == set(t) and all(v.startswith("created") for v in first.values())
    second = await ensure_topics(kafka_config, partitions=2)
    assert second == {name: "exists" for name in t}
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_config.bootstrap_servers)
    await admin.start()
    try:
        described = {d["topic"]: d for d in await admin.describe_topics(list(t))}
        assert [len(described[n]["partitions"]) for n in t] == [2, 2, 1]
        if first[t.weights] == "created":  # configs accepted: the weights topic is compacted
            [resp] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t.weights)])
            entries = {e[0]: e[1] for e in resp.resources[0][4]}
            assert entries.get("cleanup.policy") == "compact"
    finally:
        await admin.close()


@pytest.mark.parametrize("which", ["prompts", "groups", "weights"])
async def test_round_trip_each_message_type(kafka_config, build, which):
    await ensure_topics(kafka_config, partitions=2)
    topic = getattr(topics(kafka_config), which)
    make = {
        "prompts": build.prompt_request,
        "groups": build.scored_group,
        "weights": build.weight_announcement,
    }[which]
    cls = {"prompts": messages_pb2.PromptRequest, "groups": messages_pb2.ScoredGroup}.get(
        which, messages_pb2.WeightAnnouncement
    )
    sent = [make(i) for i in range(5)]
    producer = make_producer(kafka_config)
    await producer.start()
    try:
        for m in sent:
            await send(producer, topic, m)
    finally:
        await producer.stop()
    consumer = make_consumer(kafka_config, [topic], group_id=f"{kafka_config.topic_prefix}-rt")
    await consumer.start()
    try:
        records = await build.consume(consumer, len(sent))
    finally:
        await consumer.stop()
    got = [decode_record(cls, r) for r in records]
    assert sorted(g.SerializeToString() for g in got) == sorted(m.SerializeToString() for m in sent)
    keys = {r.key for r in records}
    assert keys == ({WEIGHTS_KEY} if which == "weights" else {f"req-{i}".encode() for i in range(5)})
    assert all(dict(r.headers)[TYPE_HEADER] == cls.DESCRIPTOR.full_name.encode() for r in records)


async def _produce(cfg, topic, msgs, *, batched=False):
    """Send ``msgs`` (protobuf messages or raw bytes); ``batched`` lets several share one batch."""
    producer = make_producer(cfg, linger_ms=50 if batched else 0)
    await producer.start()
    try:
        futures = []
        for m in msgs:
            if isinstance(m, bytes):
                fut = await producer.send(topic, m, key=b"raw")
            else:
                fut = await send(producer, topic, m, wait=False)
            if batched:
                futures.append(fut)
            else:
                await fut
        for fut in futures:
            await fut
    finally:
        await producer.stop()


async def test_commit_then_resume(kafka_config, build):
    """Committed records are not redelivered to the group; uncommitted ones are."""
    await ensure_topics(kafka_config, partitions=1)
    topic = topics(kafka_config).groups
    await _produce(kafka_config, topic, [build.scored_group(i) for i in range(10)])
    group = f"{kafka_config.topic_prefix}-learner"
    c1 = make_consumer(kafka_config, [topic], group)
    await c1.start()
    try:
        records = await build.consume(c1, 10)
        assert [r.offset for r in records] == list(range(10))
        # "processed" the first 6: commit next offset = 6
        await commit_offsets(c1, {TopicPartition(topic, 0): records[5].offset + 1})
    finally:
        await c1.stop()
    c2 = make_consumer(kafka_config, [topic], group)
    await c2.start()
    try:
        again = await build.consume(c2, 4)
        assert [decode_record(messages_pb2.ScoredGroup, r).request_id for r in again] == [
            f"req-{i}" for i in range(6, 10)
        ]
        assert await build.consume(c2, 1, timeout_s=1.0) == []  # nothing else redelivered
        assert await c2.committed(TopicPartition(topic, 0)) == 6
    finally:
        await c2.stop()


async def test_corrupt_records_skipped_and_counted(kafka_config, build):
    await ensure_topics(kafka_config, partitions=1)
    t = topics(kafka_config)
    bad_invariant = build.scored_group(90).SerializeToString()  # valid protobuf ...
    broken = messages_pb2.ScoredGroup.FromString(bad_invariant)
    del broken.samples[0].behaviour_logprobs[:]  # ... but logprobs no longer match the tokens
    msgs = [
        build.scored_group(0),
        b"\xff\xff\xff\xff garbage",
        build.scored_group(1),
        broken.SerializeToString(),
        build.scored_group(2),
    ]
    await _produce(kafka_config, t.groups, msgs)
    await _produce(kafka_config, t.groups, [build.prompt_request(5)])  # wrong type on this topic
    await _produce(kafka_config, t.groups, [build.scored_group(3)])
    corrupt: list[str] = []
    consumer = make_consumer(kafka_config, [t.groups], f"{kafka_config.topic_prefix}-c")
    await consumer.start()
    try:
        records = await build.consume(consumer, 7)
    finally:
        await consumer.stop()
    decoded = [
        decode_record(messages_pb2.ScoredGroup, r, lambda why, rec: corrupt.append(why)) for r in records
    ]
    assert [g.request_id for g in decoded if g is not None] == ["req-0", "req-1", "req-2", "req-3"]
    assert len(corrupt) == 3
    assert any("behaviour_logprobs" in why for why in corrupt)
    assert any("declares type" in why for why in corrupt)


async def test_latest_weight_announcement(kafka_config, build):
    cfg = kafka_config
    assert await latest_weight_announcement(cfg) is None  # no topic yet
    await ensure_topics(cfg, partitions=1)
    t0 = time.monotonic()
    assert await latest_weight_announcement(cfg) is None  # empty topic
    empty_s = time.monotonic() - t0
    await _produce(cfg, topics(cfg).weights, [build.weight_announcement(v) for v in (1, 2, 3)])
    assert (await latest_weight_announcement(cfg)).version == 3
    # several records in one batch (Tansu's ListOffsets "latest" is wrong for these)
    await _produce(
        cfg, topics(cfg).weights, [build.weight_announcement(v) for v in (4, 5, 6, 7)], batched=True
    )
    counted = []
    await _produce(cfg, topics(cfg).weights, [b"not a weight announcement"])
    await _produce(cfg, topics(cfg).weights, [build.weight_announcement(8)])
    await _produce(cfg, topics(cfg).weights, [b"trailing garbage"])
    got = await latest_weight_announcement(cfg, on_corrupt=lambda why, rec: counted.append(why))
    assert got == build.weight_announcement(8)
    assert len(counted) == 2
    assert empty_s < 5.0


async def test_group_hand_over(kafka_config, build):
    """A second consumer takes over the partitions of the first when it leaves; with manual
    commits nothing committed is redelivered and nothing is lost."""
    cfg = kafka_config
    await ensure_topics(cfg, partitions=2)
    topic = topics(cfg).groups
    tps = {TopicPartition(topic, 0), TopicPartition(topic, 1)}
    group = f"{cfg.topic_prefix}-gen"
    processed: dict[str, list[str]] = {"a": [], "b": []}
    revoked: dict[str, list] = {"a": [], "b": []}

    def runner(name, consumer, tracker):
        async def loop():
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for r in records:
                        tracker.track(r)
                        processed[name].append(decode_record(messages_pb2.ScoredGroup, r).request_id)
                        tracker.done(r)
                offsets = {tp: o for tp, o in tracker.to_commit().items() if tp in consumer.assignment()}
                if offsets:
                    await commit_offsets(consumer, offsets)
                    tracker.mark_committed(offsets)

        return asyncio.create_task(loop())

    def consumer_for(name, tracker):
        async def on_revoked(parts):
            revoked[name].append(set(parts))
            tracker.forget(parts)

        return make_consumer(cfg, [topic], group, on_revoked=on_revoked, client_id=f"test-{name}")

    await _produce(cfg, topic, [build.scored_group(i) for i in range(10)])
    ta, tb = OffsetTracker(), OffsetTracker()
    a = consumer_for("a", ta)
    await a.start()
    task_a = runner("a", a, ta)
    b = None
    task_b = None
    try:
        assert await build.wait_for(lambda: len(processed["a"]) == 10, 30), processed
        b = consumer_for("b", tb)
        await b.start()
        task_b = runner("b", b, tb)
        # the group rebalances: both own one partition
        assert await build.wait_for(lambda: len(a.assignment()) == 1 and len(b.assignment()) == 1, 30), (
            a.assignment(),
            b.assignment(),
        )
        task_a.cancel()
        await asyncio.gather(task_a, return_exceptions=True)
        await a.stop()  # leaves the group
        assert await build.wait_for(lambda: b.assignment() == tps, 30), b.assignment()
        await _produce(cfg, topic, [build.scored_group(i) for i in range(10, 20)])
        assert await build.wait_for(lambda: len(processed["b"]) >= 10, 30), processed
        await asyncio.sleep(0.5)
    finally:
        for task in (task_a, task_b):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await a.stop()
        if b is not None:
            await b.stop()
    assert sorted(processed["a"]) == sorted(f"req-{i}" for i in range(10))
    assert sorted(processed["b"]) == sorted(f"req-{i}" for i in range(10, 20))  # no redelivery, no loss
    assert revoked["a"], "the first consumer's rebalance hook ran"


async def test_dedupe_redelivered(kafka_config, build):
    """At-least-once: a group published twice (a generator retry) is processed once."""
    await ensure_topics(kafka_config, partitions=2)
    topic = topics(kafka_config).groups
    await _produce(kafka_config, topic, [build.scored_group(i) for i in (0, 1, 2, 1, 0, 3)])
    consumer = make_consumer(kafka_config, [topic], f"{kafka_config.topic_prefix}-d")
    await consumer.start()
    try:
        records = await build.consume(consumer, 6)
    finally:
        await consumer.stop()
    seen: set[str] = set()  # the learner's RequestBook keeps such a window (tests/learner/test_book.py)
    kept = [
        g.request_id
        for g in (decode_record(messages_pb2.ScoredGroup, r) for r in records)
        if g.request_id not in seen and not seen.add(g.request_id)
    ]
    assert sorted(kept) == ["req-0", "req-1", "req-2", "req-3"]
    # same key -> same partition, so a retry arrives after the original
    by_key = {}
    for r in records:
        by_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in by_key.values())


async def test_consumer_lag(kafka_config, build):
    await ensure_topics(kafka_config, partitions=1)
    topic = topics(kafka_config).groups
    await _produce(kafka_config, topic, [build.scored_group(i) for i in range(6)])
    consumer = make_consumer(kafka_config, [topic], f"{kafka_config.topic_prefix}-lag", max_poll_records=2)
    await consumer.start()
    try:
        assert await consumer_lag(consumer) >= 0  # before any fetch: 0 or a hint
        got = await build.consume(consumer, 2)
        assert len(got) == 2
        lag = await consumer_lag(consumer)
        assert 0 <= lag <= 4
        rest = await build.consume(consumer, 4)
        assert len(rest) == 4
        assert await consumer_lag(consumer) == 0
    finally:
        await consumer.stop()


async def _count_fetches_while_idle(cfg, topic: str, seconds: float):
    """Fetch requests an idle consumer (its topic drained) sends in ``seconds``; then one record still arrives."""
    producer = make_producer(cfg)
    await producer.start()
    consumer = make_consumer(cfg, [topic], f"{cfg.topic_prefix}-idle")
    await consumer.start()
    try:
        await producer.send_and_wait(topic, b"first")
        assert (await asyncio.wait_for(consumer.getone(), 30)).value == b"first"
        client_send, fetches = consumer._client.send, [0]

        async def counting_send(node_id, request, *args, **kwargs):
            fetches[0] += type(request).__name__.startswith("FetchRequest")
            return await client_send(node_id, request, *args, **kwargs)

        consumer._client.send = counting_send
        waiting = asyncio.create_task(consumer.getone())  # a service waits for records like this
        await asyncio.sleep(seconds)
        counted = fetches[0]
        await producer.send_and_wait(topic, b"second")  # the pause does not stop delivery
        assert (await asyncio.wait_for(waiting, 10)).value == b"second"
        return counted, consumer.early_empty_fetches
    finally:
        await consumer.stop()
        await producer.stop()


async def test_an_idle_consumer_does_not_spin(kafka_config):
    """A broker that answers an empty fetch at once (noida-db) made aiokafka's fetcher re-fetch in a loop: thousands
    of requests a second from every idle consumer, ~60% of a core each (docs/benchmarks.md, pipeline_profile). After
    an early empty answer the consumer pauses ``empty_fetch_pause_ms`` (20), so an idle second costs at most ~50
    fetches; a broker that holds the fetch (Kafka, Tansu) sends ~2 a second and never triggers the pause."""
    await ensure_topics(kafka_config, partitions=1)
    seconds = 1.5
    fetches, _ = await _count_fetches_while_idle(kafka_config, topics(kafka_config).groups, seconds)
    assert fetches <= seconds / 0.020 * 1.5 + 10, f"{fetches} fetch requests in {seconds} s of idling"


async def test_empty_fetch_pause_zero_turns_the_pacing_off(kafka_config):
    cfg = kafka_config.model_copy(update={"empty_fetch_pause_ms": 0})
    await ensure_topics(cfg, partitions=1)
    _, pauses = await _count_fetches_while_idle(cfg, topics(cfg).groups, 0.3)
    assert pauses == 0
