"""Kafka plumbing shared by every winnow service: topics, codec, clients, commits, dedupe.

Topics (``<prefix>`` is ``KafkaConfig.topic_prefix``; see docs/kafka.md):

====================  ==========  ==========  ==================  ==================
topic                 producer    consumer    message             key
====================  ==========  ==========  ==================  ==================
<prefix>.prompts      learner     generators  PromptRequest       request_id
<prefix>.groups       generators  learner     ScoredGroup         request_id
<prefix>.weights      learner     generators  WeightAnnouncement  ``weights`` (compacted)
====================  ==========  ==========  ==================  ==================

Delivery is at-least-once: consumers commit offsets by hand (:func:`commit_offsets`, with
:class:`OffsetTracker` telling which offsets are safe) only after the work they did with a
message is durable, so a crash re-delivers, never loses. Exactly-once *into training* comes from
idempotency: every message carries a ``request_id`` and the learner drops repeats with its
request book's window of done ids (``learner/book.py``). A payload that does not decode is logged,
counted and skipped (:func:`decode_record`), never allowed to crash a consumer loop; a record larger
than the bound it is given is refused before protobuf parses it.

Optional authentication of scored groups: with a shared secret (:func:`group_hmac_key`: env
``WINNOW_GROUP_HMAC_KEY`` or the file named by ``WINNOW_GROUP_HMAC_KEY_FILE``, e.g. a mounted
Kubernetes Secret) generators sign every ``ScoredGroup`` with an HMAC-SHA256 over its type name and
serialized bytes, sent as the record header ``winnow-hmac``; the learner refuses a group whose header
is missing or wrong (:func:`verify_group_record`), so a foreign writer with access to the topic cannot
get a group trained. A copied signed record is still only a duplicate of its request id.

Everything here works on Apache Kafka and on the two local brokers of :mod:`winnow.brokers`;
where a broker deviates (Tansu's ListOffsets "latest", idempotent producer) the functions avoid
depending on the deviating behaviour and say so.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import logging
import os
import re
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import aiokafka
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import AbstractTokenProvider, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.helpers import create_ssl_context
from google.protobuf import message as pb_message

from winnow.config import KafkaConfig
from winnow.groups import check_wire_group
from winnow.offsets import OffsetTracker as OffsetTracker  # the one offset tracker, re-exported for consumers
from winnow.v1 import messages_pb2

log = logging.getLogger(__name__)

M = TypeVar("M", bound=pb_message.Message)

PromptRequest = messages_pb2.PromptRequest
ScoredGroup = messages_pb2.ScoredGroup
WeightAnnouncement = messages_pb2.WeightAnnouncement

#: Key of every message on the weights topic: one key, so compaction keeps only the latest.
WEIGHTS_KEY = b"weights"
#: Record header naming the protobuf type of the value (lets a consumer reject a wrong topic).
TYPE_HEADER = "winnow-type"
#: Record header carrying the hex HMAC-SHA256 of a signed record (see :func:`record_hmac`).
HMAC_HEADER = "winnow-hmac"
#: Env var holding the shared group-signing secret itself.
HMAC_KEY_ENV = "WINNOW_GROUP_HMAC_KEY"
#: Env var naming a file that holds the shared group-signing secret (a mounted Kubernetes Secret).
HMAC_KEY_FILE_ENV = "WINNOW_GROUP_HMAC_KEY_FILE"
#: Largest record value :func:`decode_record` parses when its caller gives no bound (64 MiB: far above
#: ``kafka.max_message_bytes``' 8 MiB default, far below what exhausts a consumer's memory).
MAX_RECORD_BYTES = 64 * 1024 * 1024

# Kafka error codes handled by ensure_topics
_TOPIC_ALREADY_EXISTS = 36
_INVALID_CONFIG = 40
_POLICY_VIOLATION = 44


# --------------------------------------------------------------------------------------- topics


class Topics(NamedTuple):
    prompts: str
    groups: str
    weights: str


def topics(cfg: KafkaConfig) -> Topics:
    """The three topic names for ``cfg.topic_prefix``."""
    return Topics(cfg.topic("prompts"), cfg.topic("groups"), cfg.topic("weights"))


def topic_configs(cfg: KafkaConfig) -> dict[str, dict[str, str]]:
    """Per-topic configs requested at creation (brokers that do not support one may ignore it)."""
    t = topics(cfg)
    size = {"max.message.bytes": str(cfg.max_message_bytes)}
    return {
        t.prompts: dict(size),
        t.groups: dict(size),
        t.weights: {**size, "cleanup.policy": "compact"},
    }


async def ensure_topics(
    cfg: KafkaConfig,
    partitions: int = 4,
    replication_factor: int | None = None,
    timeout_s: float = 30.0,
) -> dict[str, str]:
    """Create the prompts/groups/weights topics if missing; idempotent.

    ``partitions`` applies to prompts and groups (the most generator replicas that can share the
    prompt stream); the weights topic always has one partition (a single ordered log, compacted
    to the latest announcement). ``replication_factor`` defaults to ``min(3, brokers)``.
    Returns ``{topic: "created" | "exists" | "created-without-configs"}``. A broker that rejects
    the topic configs gets the topics without them (logged).
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    admin = make_admin(cfg)
    await admin.start()
    try:
        if replication_factor is None:
            cluster = await admin.describe_cluster()
            replication_factor = max(1, min(3, len(cluster.get("brokers", []) or [1])))
        t = topics(cfg)
        counts = {t.prompts: partitions, t.groups: partitions, t.weights: 1}
        configs = topic_configs(cfg)
        result: dict[str, str] = {}
        todo = list(counts)
        for with_configs in (True, False):
            new = [
                NewTopic(
                    name,
                    counts[name],
                    replication_factor,
                    topic_configs=configs[name] if with_configs else {},
                )
                for name in todo
            ]
            response = await admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
            retry = []
            for entry in response.topic_errors:
                name, code = entry[0], entry[1]
                message = entry[2] if len(entry) > 2 else ""
                if code == 0:
                    result[name] = "created" if with_configs else "created-without-configs"
                elif code == _TOPIC_ALREADY_EXISTS:
                    result[name] = "exists"
                elif code in (_INVALID_CONFIG, _POLICY_VIOLATION) and with_configs:
                    log.warning(
                        "broker rejected configs %s for topic %s (%s); creating without",
                        configs[name],
                        name,
                        message,
                    )
                    retry.append(name)
                else:
                    raise KafkaSetupError(
                        f"cannot create topic {name!r}: Kafka error {code} {message or ''}".strip()
                    )
            todo = retry
            if not todo:
                break
        await _wait_topics_ready(admin, list(counts), timeout_s)
        for name, how in result.items():
            if how != "exists":
                log.info("topic %s %s (%d partitions)", name, how, counts[name])
        return result
    finally:
        await admin.close()


async def _wait_topics_ready(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        ready = {
            d["topic"]
            for d in described
            if d["error_code"] == 0 and d["partitions"] and all(p["leader"] >= 0 for p in d["partitions"])
        }
        if ready >= set(names):
            return
        if time.monotonic() > deadline:
            raise KafkaSetupError(f"topics not ready after {timeout_s:.0f}s: {sorted(set(names) - ready)}")
        await asyncio.sleep(0.1)


class KafkaSetupError(RuntimeError):
    """Topics could not be created or did not become ready."""


# ---------------------------------------------------------------------------------------- codec


class DecodeError(ValueError):
    """A payload is not a valid message of the expected type (corrupt, truncated, wrong topic)."""


def encode(msg: pb_message.Message) -> bytes:
    """Protobuf wire bytes of a message (validated first, so producers never ship garbage)."""
    validate(msg)
    return msg.SerializeToString(deterministic=True)


def decode(cls: type[M], data: bytes | None) -> M:
    """Parse ``data`` as ``cls`` and validate it; raises :class:`DecodeError` naming the problem."""
    if data is None:
        raise DecodeError(f"empty record (null value) where a {cls.DESCRIPTOR.name} was expected")
    msg = cls()
    try:
        msg.ParseFromString(data)
    except (pb_message.DecodeError, ValueError, TypeError) as e:
        raise DecodeError(f"not a {cls.DESCRIPTOR.name}: {e}") from None
    validate(msg)
    return msg


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def validate(msg: pb_message.Message) -> None:
    """Check the invariants consumers rely on (protobuf alone accepts many random byte strings)."""
    name = msg.DESCRIPTOR.name
    if isinstance(msg, PromptRequest):
        _require(name, "request_id", msg.request_id)
        _require(name, "prompt_id", msg.prompt_id)
    elif isinstance(msg, ScoredGroup):
        try:
            check_wire_group(msg)  # the one scored-group validator (winnow.groups), with the wire's limits
        except ValueError as e:
            raise DecodeError(str(e)) from None
    elif isinstance(msg, WeightAnnouncement):
        _require(name, "uri", msg.uri)
        if msg.version < 0:
            raise DecodeError(f"{name}.version must be >= 0, got {msg.version}")
        if not _HEX64.match(msg.sha256):
            raise DecodeError(f"{name}.sha256 must be 64 lowercase hex digits, got {msg.sha256!r}")


def _require(name: str, field: str, value: str) -> None:
    if not value:
        raise DecodeError(f"{name}.{field} is empty")


def message_key(msg: pb_message.Message) -> bytes:
    """Partitioning key: the request id (so a request's retries share a partition), or
    :data:`WEIGHTS_KEY` for weight announcements (compaction keeps the latest)."""
    if isinstance(msg, WeightAnnouncement):
        return WEIGHTS_KEY
    request_id = getattr(msg, "request_id", "")
    return request_id.encode() if request_id else uuid.uuid4().hex.encode()


def type_name(msg_or_cls: pb_message.Message | type[pb_message.Message]) -> str:
    return msg_or_cls.DESCRIPTOR.full_name


async def send(producer: AIOKafkaProducer, topic: str, msg: pb_message.Message, *, wait: bool = True,
               hmac_key: bytes | None = None):
    """Encode and produce ``msg`` with its key and type header (and, with ``hmac_key``, its
    :data:`HMAC_HEADER` signature).

    ``wait=True`` returns the RecordMetadata once the broker acknowledged (acks=all);
    ``wait=False`` returns a future (use ``await producer.flush()`` before relying on it).
    """
    value = encode(msg)
    headers = [(TYPE_HEADER, type_name(msg).encode())]
    if hmac_key is not None:
        headers.append((HMAC_HEADER, record_hmac(hmac_key, type_name(msg), value).encode()))
    if wait:
        return await producer.send_and_wait(topic, value, key=message_key(msg), headers=headers)
    return await producer.send(topic, value, key=message_key(msg), headers=headers)


#: Called with (reason, record) for every payload that could not be decoded.
OnCorrupt = Callable[[str, ConsumerRecord], Any]


def decode_record(cls: type[M], record: ConsumerRecord, on_corrupt: OnCorrupt | None = None, *,
                  max_bytes: int = MAX_RECORD_BYTES) -> M | None:
    """Decode one consumed record, or log + count it and return None (the caller skips it).

    A value longer than ``max_bytes`` (pass ``kafka.max_message_bytes``) is corrupt before it is parsed:
    a hostile record must not make the consumer allocate what its size allows.
    The caller still treats the record as processed (its offset may be committed): a corrupt
    payload will never become valid by being re-read.
    """
    try:
        if record.value is not None and len(record.value) > max_bytes:
            raise DecodeError(f"record of {len(record.value)} bytes is larger than the {max_bytes} allowed")
        headers = dict(record.headers or ())
        declared = headers.get(TYPE_HEADER)
        if declared is not None and declared.decode("utf-8", "replace") != type_name(cls):
            raise DecodeError(f"record declares type {declared!r}, expected {type_name(cls)}")
        return decode(cls, record.value)
    except DecodeError as e:
        reason = str(e)
        log.warning(
            "skipping corrupt record %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason
        )
        if on_corrupt is not None:
            on_corrupt(reason, record)
        return None


# ------------------------------------------------------------------------------ authentication


def record_hmac(key: bytes, type_full_name: str, value: bytes) -> str:
    """Hex HMAC-SHA256 of a record: over the protobuf type name, a NUL and the serialized message (the
    type name keeps a signature from being valid for a message of another type)."""
    return hmac.new(key, type_full_name.encode() + b"\0" + value, hashlib.sha256).hexdigest()


def verify_record(record: ConsumerRecord, key: bytes | None, cls: type[pb_message.Message]) -> bool:
    """True if ``key`` is None (authentication off) or ``record`` carries exactly one
    :data:`HMAC_HEADER` equal to the HMAC of its value as a ``cls`` under ``key`` (constant-time compare).
    An unsigned record, one signed with another key, or one whose bytes changed after signing is False."""
    if key is None:
        return True
    sigs = [v for k, v in (record.headers or ()) if k == HMAC_HEADER]
    if len(sigs) != 1 or record.value is None or not isinstance(sigs[0], bytes):
        return False
    expected = record_hmac(key, type_name(cls), record.value).encode()
    return hmac.compare_digest(sigs[0], expected)


def verify_group_record(record: ConsumerRecord, key: bytes | None) -> bool:
    """The learner's check of a groups-topic record before it decodes it: :func:`verify_record` for a
    ``ScoredGroup``. Refuse (count, dead-letter, mark done) a record for which it is False."""
    return verify_record(record, key, ScoredGroup)


def group_hmac_key(cfg: KafkaConfig | None = None, environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The shared group-signing secret, or None (authentication off).

    In order: the file named by ``cfg.group_hmac_key_file`` (when the config has that field), the file
    named by env :data:`HMAC_KEY_FILE_ENV`, env :data:`HMAC_KEY_ENV`. A file's content is stripped of
    surrounding whitespace (a Secret's trailing newline). A key source that is set but unreadable or
    shorter than 16 bytes raises :class:`KafkaSetupError`: a configured secret must never silently turn
    authentication off."""
    path = getattr(cfg, "group_hmac_key_file", None) or environ.get(HMAC_KEY_FILE_ENV) or None
    if path is not None:
        try:
            key = Path(path).read_bytes().strip()
        except OSError as e:
            raise KafkaSetupError(f"group HMAC key file {path}: {e.strerror or e}") from None
        where = f"group HMAC key file {path}"
    elif environ.get(HMAC_KEY_ENV):
        key, where = environ[HMAC_KEY_ENV].strip().encode(), f"env {HMAC_KEY_ENV}"
    else:
        return None
    if len(key) < 16:
        raise KafkaSetupError(f"{where}: the key has {len(key)} bytes; use at least 16 (e.g. openssl rand -hex 32)")
    return key


# ------------------------------------------------------------------------------------- security


class FileTokenProvider(AbstractTokenProvider):
    """OAUTHBEARER token read from a file at every (re)connection (a sidecar or a projected
    service-account token keeps it fresh)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    async def token(self) -> str:
        text = await asyncio.to_thread(self.path.read_text)
        token = text.strip()
        if not token:
            raise KafkaSetupError(f"OAUTHBEARER token file {self.path} is empty")
        return token


def ssl_context(cfg: KafkaConfig) -> ssl.SSLContext:
    """The TLS context of every client: verifies the broker's certificate (``ssl_cafile`` or the
    system CAs) and host name; presents ``ssl_certfile``/``ssl_keyfile`` for mutual TLS.
    A missing or unreadable file is a :class:`KafkaSetupError` naming the field."""
    for field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(cfg, field)
        if path is not None and not Path(path).is_file():
            raise KafkaSetupError(f"kafka.{field}: {path} is not a readable file")
    password = cfg.ssl_key_password.get_secret_value() if cfg.ssl_key_password is not None else None
    try:
        return create_ssl_context(cafile=cfg.ssl_cafile, certfile=cfg.ssl_certfile, keyfile=cfg.ssl_keyfile,
                                  password=password)
    except (ssl.SSLError, OSError) as e:
        raise KafkaSetupError(
            f"kafka TLS files (ssl_cafile={cfg.ssl_cafile}, ssl_certfile={cfg.ssl_certfile}, "
            f"ssl_keyfile={cfg.ssl_keyfile}) do not load: {e}"
        ) from None


def security_kwargs(cfg: KafkaConfig) -> dict[str, Any]:
    """The aiokafka arguments for ``cfg``'s security settings, shared by every producer, consumer and
    admin client (see docs/kafka.md "Security")."""
    kwargs: dict[str, Any] = {"security_protocol": cfg.security_protocol}
    if cfg.security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = ssl_context(cfg)
    if cfg.security_protocol.startswith("SASL_"):
        kwargs["sasl_mechanism"] = cfg.sasl_mechanism
        if cfg.sasl_mechanism == "OAUTHBEARER":
            kwargs["sasl_oauth_token_provider"] = FileTokenProvider(cfg.sasl_oauth_token_file)
        else:
            kwargs["sasl_plain_username"] = cfg.sasl_username
            kwargs["sasl_plain_password"] = cfg.sasl_password.get_secret_value() if cfg.sasl_password else None
    return kwargs


# -------------------------------------------------------------------------------------- clients


def make_producer(cfg: KafkaConfig, *, client_id: str = "winnow", **overrides: Any) -> AIOKafkaProducer:
    """An AIOKafkaProducer (not started): acks=all, idempotence per config, small linger.

    Call ``await producer.start()`` and ``await producer.stop()`` (in a ``finally``).
    """
    kwargs: dict[str, Any] = dict(
        bootstrap_servers=cfg.bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=cfg.idempotent_producer,
        max_request_size=cfg.max_message_bytes,
        request_timeout_ms=cfg.request_timeout_ms,
        linger_ms=5,
        **security_kwargs(cfg),
    )
    kwargs.update(overrides)
    return AIOKafkaProducer(**kwargs)


def make_admin(cfg: KafkaConfig, *, client_id: str = "winnow-admin") -> AIOKafkaAdminClient:
    """An AIOKafkaAdminClient (not started) with ``cfg``'s security settings."""
    return AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers, request_timeout_ms=cfg.request_timeout_ms,
                               client_id=client_id, **security_kwargs(cfg))


Callback = Callable[[set[TopicPartition]], Awaitable[None] | None]


class RebalanceHooks(ConsumerRebalanceListener):
    """Calls ``on_revoked(partitions)`` / ``on_assigned(partitions)`` (sync or async) on rebalance.

    aiokafka awaits ``on_partitions_revoked`` before giving partitions up, so a consumer that
    commits its finished work there hands over cleanly (the next owner starts after it).
    """

    def __init__(self, on_assigned: Callback | None = None, on_revoked: Callback | None = None) -> None:
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked

    async def on_partitions_revoked(self, revoked) -> None:
        log.info("partitions revoked: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))
        if self._on_revoked is not None:
            result = self._on_revoked(set(revoked))
            if inspect.isawaitable(result):
                await result

    async def on_partitions_assigned(self, assigned) -> None:
        log.info("partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        if self._on_assigned is not None:
            result = self._on_assigned(set(assigned))
            if inspect.isawaitable(result):
                await result


class PacedConsumer(AIOKafkaConsumer):
    """An AIOKafkaConsumer that pauses ``empty_fetch_pause_s`` after a fetch the broker answered with no
    records before ``fetch_max_wait_ms`` was up (see ``KafkaConfig.empty_fetch_pause_ms``).

    aiokafka's fetcher sends the next fetch as soon as one returns and relies on the broker to hold an
    empty fetch for ``fetch_max_wait_ms``; a broker that answers at once (noida-db) turns every idle
    consumer into a busy loop on its event loop's thread. The pause only follows an *early* empty answer,
    so on a broker that waits (Kafka) nothing changes. ``early_empty_fetches`` counts the pauses.
    """

    def __init__(self, *topics: str, empty_fetch_pause_s: float = 0.02, **kwargs: Any) -> None:
        super().__init__(*topics, **kwargs)
        self.empty_fetch_pause_s = empty_fetch_pause_s
        self.fetch_max_wait_s = kwargs.get("fetch_max_wait_ms", 500) / 1000
        self.early_empty_fetches = 0

    async def start(self) -> None:
        await super().start()
        if self.empty_fetch_pause_s > 0:
            self._pace_fetcher()

    def _pace_fetcher(self) -> None:
        fetcher = getattr(self, "_fetcher", None)
        fetch_one = getattr(fetcher, "_proc_fetch_request", None)
        if fetch_one is None:  # an aiokafka whose fetcher is built differently: run unpaced, say so once
            log.warning("aiokafka %s has no Fetcher._proc_fetch_request: empty fetches are not paced",
                        aiokafka.__version__)
            return

        async def paced(assignment: Any, node_id: int, request: Any) -> bool:
            started = time.monotonic()
            got_records = await fetch_one(assignment, node_id, request)
            if not got_records and time.monotonic() - started < self.fetch_max_wait_s / 2:
                self.early_empty_fetches += 1
                try:
                    await asyncio.sleep(self.empty_fetch_pause_s)
                except asyncio.CancelledError:  # the fetcher cancels its requests on close or rebalance
                    return False
            return bool(got_records)

        fetcher._proc_fetch_request = paced  # type: ignore[union-attr]


def make_consumer(
    cfg: KafkaConfig,
    topics: Iterable[str] | None,
    group_id: str | None,
    *,
    on_assigned: Callback | None = None,
    on_revoked: Callback | None = None,
    client_id: str = "winnow",
    max_poll_records: int | None = None,
    max_poll_interval_ms: int = 600_000,
    isolation_level: str = "read_committed",
    **overrides: Any,
) -> AIOKafkaConsumer:
    """An AIOKafkaConsumer (:class:`PacedConsumer`, not started) with manual commits, subscribed to ``topics``.

    - ``enable_auto_commit=False``: commit with :func:`commit_offsets` after the work is durable.
    - ``auto_offset_reset="earliest"``: a new group reads from the start (no "latest": Tansu's
      ListOffsets latest is wrong, and a new group must not skip work).
    - session timeout from ``cfg`` (>= 6000 ms), heartbeat at a third of it.
    - ``read_committed``: never see aborted transactional writes.
    - ``on_assigned`` / ``on_revoked`` run on rebalances (see :class:`RebalanceHooks`).
    - an empty fetch the broker answered early is followed by a pause of ``cfg.empty_fetch_pause_ms``.

    With ``topics=None`` nothing is subscribed (use ``consumer.assign([...])``).
    """
    kwargs: dict[str, Any] = dict(
        bootstrap_servers=cfg.bootstrap_servers,
        client_id=client_id,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=cfg.session_timeout_ms,
        heartbeat_interval_ms=max(1000, cfg.session_timeout_ms // 3),
        request_timeout_ms=cfg.request_timeout_ms,
        max_poll_interval_ms=max_poll_interval_ms,
        max_partition_fetch_bytes=max(1024 * 1024, cfg.max_message_bytes),
        fetch_max_bytes=max(50 * 1024 * 1024, cfg.max_message_bytes),
        isolation_level=isolation_level,
        **security_kwargs(cfg),
    )
    if max_poll_records is not None:
        kwargs["max_poll_records"] = max_poll_records
    kwargs.update(overrides)
    consumer = PacedConsumer(empty_fetch_pause_s=cfg.empty_fetch_pause_ms / 1000, **kwargs)
    if topics is not None:
        names = [topics] if isinstance(topics, str) else list(topics)
        if group_id is None:
            raise ValueError(
                "subscribing to topics needs a group_id (use topics=None and assign() without one)"
            )
        consumer.subscribe(names, listener=RebalanceHooks(on_assigned, on_revoked))
    return consumer


async def fetch_records(consumer: AIOKafkaConsumer, max_records: int, wait_ms: int = 0,
                        stopping: Callable[[], bool] = lambda: False) -> list[ConsumerRecord]:
    """Up to ``max_records`` records (waiting up to 500 ms for the first); once one arrived, up to ``wait_ms`` more
    milliseconds for the rest of a full batch, unless ``stopping()`` turns true. [] when nothing came."""
    first = await consumer.getmany(timeout_ms=500, max_records=max_records)
    records = [r for rs in first.values() for r in rs]
    if records and len(records) < max_records and wait_ms:
        deadline = time.monotonic() + wait_ms / 1000
        while len(records) < max_records and not stopping():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            more = await consumer.getmany(timeout_ms=int(left * 1000), max_records=max_records - len(records))
            records += [r for rs in more.values() for r in rs]
    return records


async def commit_offsets(consumer: AIOKafkaConsumer, offsets: Mapping[tuple[str, int], int]) -> None:
    """Commit ``{partition: next offset to read}`` (i.e. last processed offset + 1); partitions as
    ``TopicPartition`` or plain ``(topic, partition)`` tuples.

    Call only after the work done with the messages below those offsets is durable (a
    checkpoint written, a group published). An empty mapping is a no-op.
    """
    if offsets:
        await consumer.commit({TopicPartition(*tp): int(off) for tp, off in offsets.items()})


# ------------------------------------------------------------------------------ partitions, lag


async def assign_all_partitions(consumer: AIOKafkaConsumer, topic: str, offsets: Mapping[int, int],
                                timeout_s: float = 30.0) -> None:
    """Assign every partition of ``topic`` to ``consumer`` (no consumer group membership: a singleton
    reader, such as the learner) and seek the partitions in ``offsets`` (partition -> next offset)."""
    deadline, parts = time.monotonic() + timeout_s, None
    while not parts:
        await consumer.topics()  # refreshes metadata
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic} has no partitions (metadata timeout)")
            await asyncio.sleep(0.2)
    consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
    for p, off in offsets.items():
        consumer.seek(TopicPartition(topic, p), off)
        log.info("resuming %s[%d] at offset %d", topic, p, off)


async def consumer_lag(consumer: AIOKafkaConsumer) -> int:
    """Best-effort records behind the high watermark, summed over assigned partitions.

    Uses the high watermark from the latest fetch responses (no extra ListOffsets request), so
    it is 0 before the first fetch and lags by one fetch. On Tansu the reported watermark can be
    wrong when the last batch holds several records; treat the value as a hint, not an invariant.
    """
    total = 0
    for tp in consumer.assignment():
        hw = consumer.highwater(tp)
        if hw is None:
            continue
        try:
            pos = await asyncio.wait_for(consumer.position(tp), 1.0)
        except Exception:  # noqa: BLE001 - metric only: a partition without a position is skipped
            continue
        total += max(0, hw - pos)
    return total
