"""Kafka security: TLS, mutual TLS and SASL settings of ``KafkaConfig`` reach every client.

What runs for real here (docs/kafka.md "Security" lists what does not):
- config validation of the protocol/mechanism/credential/file combinations, env credentials,
  the password never printed by ``--print-config``;
- the TLS context built from a CA and a client certificate generated with ``openssl``;
- a produce/consume round trip, topic creation through the admin client, and the weights reader,
  all over **mutual TLS**: a local broker (Tansu, plaintext) behind a TLS-terminating proxy that
  requires a client certificate signed by the test CA and advertises itself in the metadata;
  the same clients without the client certificate, or trusting another CA, are refused.
- SASL: the aiokafka arguments for PLAIN / SCRAM / OAUTHBEARER (the local brokers offer no SASL
  listener, so no SASL handshake runs here).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from winnow.brokers import broker_binary, free_port, probe_metadata
from winnow.config import ConfigError, KafkaConfig, kafka_from_env
from winnow.kafka import (
    FileTokenProvider,
    KafkaSetupError,
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
    security_kwargs,
    send,
    ssl_context,
    topics,
)
from winnow.v1 import messages_pb2

from ..weights_topic import latest_weight_announcement

# ---------------------------------------------------------------------------------------------------
# config


@pytest.mark.parametrize("kw, msg", [
    ({"security_protocol": "SASL_SSL"}, "needs sasl_mechanism"),
    ({"sasl_mechanism": "PLAIN"}, "needs security_protocol SASL_SSL"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u"},
     "needs sasl_username and sasl_password"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"}, "needs sasl_oauth_token_file"),
    ({"security_protocol": "SSL", "ssl_certfile": "/c.pem"}, "must be set together"),
    ({"ssl_cafile": "/ca.pem"}, "use SSL or SASL_SSL"),
    ({"security_protocol": "TLS"}, "PLAINTEXT"),
])
def test_bad_security_combinations_are_rejected(kw, msg) -> None:
    with pytest.raises(ValueError, match=msg):
        KafkaConfig(**kw)


def test_credentials_from_env_and_never_printed(monkeypatch, capsys) -> None:
    from winnow.cli import main

    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "winnow")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cr3t-pw")
    cfg = kafka_from_env(KafkaConfig())
    assert (cfg.security_protocol, cfg.sasl_mechanism, cfg.sasl_username) == ("SASL_SSL", "SCRAM-SHA-512", "winnow")
    assert cfg.sasl_password.get_secret_value() == "s3cr3t-pw"
    assert "s3cr3t-pw" not in repr(cfg) and "s3cr3t-pw" not in cfg.model_dump_json()
    for service in ("learner", "generator"):
        assert main([service, "run", "--print-config"]) == 0
        out = capsys.readouterr().out
        kafka = json.loads(out)["kafka"]
        assert kafka["sasl_username"] == "winnow" and kafka["sasl_password"] == "**********"
        assert "s3cr3t-pw" not in out
    # a half-configured env is a clear error naming the field
    monkeypatch.delenv("KAFKA_SASL_PASSWORD")
    with pytest.raises(ConfigError, match="needs sasl_username and sasl_password"):
        kafka_from_env(KafkaConfig())


async def test_sasl_arguments_reach_every_client(tmp_path) -> None:
    plain = KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256", sasl_username="u",
                        sasl_password="p")
    kw = security_kwargs(plain)
    assert kw == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
                  "sasl_plain_username": "u", "sasl_plain_password": "p"}
    token = tmp_path / "token"
    token.write_text("eyJhbGciOi.token\n")
    oauth = KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", sasl_oauth_token_file=token)
    kw = security_kwargs(oauth)
    assert isinstance(kw["ssl_context"], ssl.SSLContext)
    provider = kw["sasl_oauth_token_provider"]
    assert isinstance(provider, FileTokenProvider) and await provider.token() == "eyJhbGciOi.token"
    token.write_text("rotated")  # re-read at every connection
    assert await provider.token() == "rotated"
    # every client factory passes them on (aiokafka checks the combination in its constructors)
    for cfg in (plain, oauth):
        producer = make_producer(cfg)
        consumer = make_consumer(cfg, None, None)
        admin = make_admin(cfg)
        assert producer.client._security_protocol == cfg.security_protocol
        assert producer.client._sasl_mechanism == cfg.sasl_mechanism
        assert consumer._client._sasl_mechanism == cfg.sasl_mechanism
        assert admin._client._sasl_mechanism == cfg.sasl_mechanism
        await consumer._client.close()
        await producer.client.close()
        await admin.close()


# ---------------------------------------------------------------------------------------------------
# TLS: certificates made with openssl


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a second CA."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-days", "2", "-subj", f"/CN=winnow-test-{ca}", cwd=d)
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn in (("server", "localhost"), ("client", "winnow-generator")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={cn}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d


def test_ssl_context_from_files(pki) -> None:
    cfg = KafkaConfig(security_protocol="SSL", ssl_cafile=pki / "ca.crt", ssl_certfile=pki / "client.crt",
                      ssl_keyfile=pki / "client.key")
    ctx = ssl_context(cfg)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "winnow-test-ca"),),)]
    with pytest.raises(KafkaSetupError, match="kafka.ssl_cafile: .*missing.pem is not a readable file"):
        ssl_context(cfg.model_copy(update={"ssl_cafile": pki / "missing.pem"}))
    with pytest.raises(KafkaSetupError, match="do not load"):  # a key that does not match the certificate
        ssl_context(cfg.model_copy(update={"ssl_keyfile": pki / "server.key"}))


class TLSProxy:
    """Terminates (mutual) TLS on ``port`` and pipes the bytes to a plaintext broker."""

    def __init__(self, pki: Path, upstream: int) -> None:
        self.port = free_port()
        self.upstream = upstream
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
        self.ctx.load_cert_chain(pki / "server.crt", pki / "server.key")
        self.ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS
        self.handshakes = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.ctx)

    async def _handle(self, reader, writer) -> None:
        self.handshakes += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return

        async def pipe(src, dst) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def tls_broker(pki, tmp_path):
    """(KafkaConfig over mutual TLS, proxy): Tansu listens in plaintext on one port and advertises
    the proxy's port, so every connection a client makes (bootstrap and partition leaders) is TLS."""
    try:
        binary = broker_binary("tansu")
    except Exception as e:  # noqa: BLE001 - optional extra
        pytest.skip(f"tansu not installed: {e}")
    plain = free_port()
    proxy = TLSProxy(pki, plain)
    cwd = tmp_path / "tansu"
    cwd.mkdir()
    log = (tmp_path / "tansu.log").open("w")
    proc = subprocess.Popen([str(binary), "broker", "--listener-url", f"tcp://127.0.0.1:{plain}",
                             "--advertised-listener-url", f"tcp://127.0.0.1:{proxy.port}",
                             "--storage-engine", "memory://tansu/"], cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            if probe_metadata("127.0.0.1", plain):
                break
            await asyncio.sleep(0.05)
        await proxy.start()
        cfg = KafkaConfig(bootstrap_servers=f"127.0.0.1:{proxy.port}", topic_prefix=f"tls{plain}",
                          security_protocol="SSL", ssl_cafile=pki / "ca.crt", ssl_certfile=pki / "client.crt",
                          ssl_keyfile=pki / "client.key", session_timeout_ms=6000)
        yield cfg, proxy
    finally:
        if proxy.server is not None:
            await proxy.stop()
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.mark.skipif(sys.platform != "linux", reason="local broker binaries are Linux builds")
async def test_round_trip_over_mutual_tls(tls_broker, pki) -> None:
    cfg, proxy = tls_broker
    t = topics(cfg)
    created = await ensure_topics(cfg, partitions=1)  # the admin client, over TLS
    assert set(created) == set(t)
    producer = make_producer(cfg)
    await producer.start()
    try:
        for i in range(3):
            await send(producer, t.prompts, messages_pb2.PromptRequest(
                prompt_id=f"p/{i}", request_id=f"r-{i}", problem="1+1?", gold="2", n=2, release_version=0))
        await send(producer, t.weights, messages_pb2.WeightAnnouncement(
            version=4, uri="file:///w/v4/model.safetensors", sha256="a" * 64, format="safetensors", final=True))
    finally:
        await producer.stop()
    consumer = make_consumer(cfg, [t.prompts], "tls-readers")
    await consumer.start()
    got = []
    try:
        for _ in range(100):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got += [r.key for r in records]
            if len(got) >= 3:
                break
    finally:
        await consumer.stop()
    assert got == [b"r-0", b"r-1", b"r-2"]
    ann = await latest_weight_announcement(cfg)  # the weights reader, over TLS
    assert ann.version == 4 and ann.final
    assert proxy.handshakes >= 4  # every client connected through the TLS port

    # refused: no client certificate (the proxy requires one) ...
    no_cert = cfg.model_copy(update={"ssl_certfile": None, "ssl_keyfile": None})
    # ... or a broker certificate the configured CA did not sign
    wrong_ca = cfg.model_copy(update={"ssl_cafile": pki / "other-ca.crt"})
    for bad in (no_cert, wrong_ca):
        producer = AIOKafkaProducer(bootstrap_servers=bad.bootstrap_servers, request_timeout_ms=3000,
                                    **security_kwargs(bad))
        with pytest.raises(Exception):  # noqa: B017, PT011 - aiokafka wraps the TLS failure differently by case
            await asyncio.wait_for(producer.start(), 20)
        await producer.stop()
    # and plaintext against the TLS port does not get through either
    plaintext = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, request_timeout_ms=3000)
    with pytest.raises(Exception):  # noqa: B017, PT011
        await asyncio.wait_for(plaintext.start(), 20)
    await plaintext.stop()


async def test_admin_client_gets_security_settings(pki) -> None:
    cfg = KafkaConfig(security_protocol="SSL", ssl_cafile=pki / "ca.crt")
    admin = make_admin(cfg)
    assert isinstance(admin, AIOKafkaAdminClient)
    assert admin._client._security_protocol == "SSL"
    assert isinstance(admin._client._ssl_context, ssl.SSLContext)
    await admin.close()
