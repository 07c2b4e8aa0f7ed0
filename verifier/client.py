"""Async client of any winnow.v1.Verifier server (ours or a user's own implementation).

Used by ``winnow score --verifier`` and by the generator service. Depends only on grpcio and the
committed stubs (no sympy, no engine)::

    async with VerifierClient("verifier:50051", token=os.environ.get("WINNOW_VERIFIER_TOKEN")) as client:
        verdicts = await client.verify_batch([Item(id="q1-s0", response="... \\boxed{42}", gold="42")])

- ``verify_batch`` splits the items into chunks of at most ``max_batch_items`` items and about
  ``max_message_bytes`` bytes, sends up to ``concurrency`` chunks at once and returns one
  :class:`Verdict` per item, in input order (ids need not be unique across chunks).
- Load balancing: the channel uses gRPC's ``round_robin`` policy, so every address the target resolves
  to gets calls. In Kubernetes point it at a *headless* Service with a ``dns:///`` target
  (``dns:///winnow-verifier-headless:50051``): DNS returns one address per verifier pod. gRPC re-resolves
  the name when a connection closes; the verifier closes each connection after
  ``max_connection_age_s`` (60 s), so pods the HPA adds start getting calls within about a minute.
  Several static addresses: ``ipv4:10.0.0.1:50051,10.0.0.2:50051``. (A ClusterIP Service is one virtual
  IP: one HTTP/2 connection, so every call goes to one pod whatever the policy.)
- Retries: gRPC's own retry policy (service config ``retryPolicy``: up to 5 attempts, backoff 0.1 s
  doubling to 2 s, on UNAVAILABLE only) plus ``wait_for_ready``: a call waits for a ready verifier
  instead of failing fast while one restarts. When no verifier becomes ready within ``retry_total_s``
  (or the call still ends UNAVAILABLE) :class:`VerifierUnavailableError` is raised. Any other failure
  raises :class:`VerifierError` with the gRPC code. A client never turns a failure into a verdict: the
  caller decides (skip the group, retry later, stop).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from winnow.v1 import verifier_pb2, verifier_pb2_grpc
from winnow.verifier.types import Item, Verdict
from winnow.verifier.wire import item_to_proto, verdict_from_proto

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the server's default max_message_bytes
SERVICE = "winnow.v1.Verifier"


def service_config(initial_backoff_s: float = 0.1, max_backoff_s: float = 2.0) -> str:
    """The channel's service config (JSON): ``round_robin`` and a retry policy for UNAVAILABLE."""
    return json.dumps({
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{
            "name": [{"service": SERVICE}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": f"{initial_backoff_s:g}s",
                "maxBackoff": f"{max_backoff_s:g}s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }],
    })


class VerifierError(RuntimeError):
    """A verifier call failed (``code`` is the grpc.StatusCode, or None for a protocol error)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class VerifierUnavailableError(VerifierError):
    """The verifier stayed UNAVAILABLE for the whole retry budget."""


class VerifierClient:
    """Async client; create it inside a running event loop (or use ``async with``)."""

    def __init__(
        self,
        target: str,
        token: str | None = None,
        tls: bool = False,
        *,
        root_certificates: bytes | str | Path | None = None,
        timeout_s: float = 120.0,
        max_batch_items: int = 4096,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        concurrency: int = 4,
        retry_total_s: float = 30.0,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 2.0,
    ) -> None:
        """
        Args:
            target: any gRPC target: ``host:port``, ``dns:///verifier-headless:50051`` (one address per
                pod, balanced round-robin), ``ipv4:127.0.0.1:5001,127.0.0.1:5002``.
            token: bearer token sent as ``authorization: Bearer <token>`` (None: no header).
            tls: use TLS; ``root_certificates`` (PEM bytes or a file path) pins the CA, else the
                system roots. Setting ``root_certificates`` implies ``tls``.
            timeout_s: deadline of each call (one chunk).
            max_batch_items: most items per VerifyBatch call (match the server's max_batch_items).
            max_message_bytes: most bytes per request message (and per response received).
            concurrency: chunks in flight at once within one ``verify_batch``.
            retry_total_s: how long a call waits for a ready verifier before giving up (at least 1 s).
            retry_initial_s, retry_max_s: backoff of gRPC's retry policy between attempts.
        """
        if max_batch_items < 1 or concurrency < 1:
            raise ValueError("max_batch_items and concurrency must be >= 1")
        self.target = target
        self.timeout_s = timeout_s
        self.max_batch_items = max_batch_items
        self.max_message_bytes = max_message_bytes
        self.concurrency = concurrency
        self.retry_total_s = retry_total_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.service_config", service_config(retry_initial_s, retry_max_s)),
            ("grpc.enable_retries", 1),
        ]
        if isinstance(root_certificates, (str, Path)):
            root_certificates = Path(root_certificates).read_bytes()
        if tls or root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.aio.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._stub = verifier_pb2_grpc.VerifierStub(self._channel)  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> VerifierClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def verify(self, item: Item) -> Verdict:
        """Score one item (the Verify RPC)."""
        result = await self._call(self._stub.Verify, item_to_proto(item), "Verify")
        return verdict_from_proto(result)

    async def verify_batch(self, items: Sequence[Item]) -> list[Verdict]:
        """Score ``items``; one verdict per item, in input order."""
        chunks = list(chunk_items(items, self.max_batch_items, self.max_message_bytes))
        sem = asyncio.Semaphore(self.concurrency)

        async def one(chunk: list[Item]) -> list[Verdict]:
            async with sem:
                request = verifier_pb2.VerifyBatchRequest(items=[item_to_proto(it) for it in chunk])
                response = await self._call(self._stub.VerifyBatch, request, "VerifyBatch")
            if len(response.results) != len(chunk):
                raise VerifierError(
                    f"verifier {self.target} answered {len(response.results)} results for {len(chunk)} items"
                )
            verdicts = [verdict_from_proto(r) for r in response.results]
            for it, v in zip(chunk, verdicts, strict=True):
                if v.id != it.id:
                    raise VerifierError(f"verifier {self.target} answered id {v.id!r} for item {it.id!r}")
            return verdicts

        results = await asyncio.gather(*(one(c) for c in chunks))
        return [v for chunk in results for v in chunk]

    async def _wait_ready(self, name: str) -> None:
        """Wait (at most ``retry_total_s``, at least 1 s to connect) for a READY connection."""
        if self._channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY:
            return
        budget = max(self.retry_total_s, 1.0)
        try:
            await asyncio.wait_for(self._channel.channel_ready(), budget)
        except TimeoutError:
            raise VerifierUnavailableError(
                f"verifier {self.target} unavailable for {budget:.1f}s ({name}): no ready connection",
                grpc.StatusCode.UNAVAILABLE,
            ) from None

    async def _call(self, method: Any, request: Any, name: str) -> Any:
        start = time.monotonic()
        await self._wait_ready(name)
        try:
            return await method(request, timeout=self.timeout_s, metadata=self._metadata, wait_for_ready=True)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNAVAILABLE or (
                code == grpc.StatusCode.DEADLINE_EXCEEDED
                and self._channel.get_state() != grpc.ChannelConnectivity.READY
            ):
                raise VerifierUnavailableError(
                    f"verifier {self.target} unavailable for {time.monotonic() - start:.1f}s ({name}, "
                    f"after gRPC's retries): {code.name}: {e.details()}",
                    code,
                ) from None
            raise VerifierError(f"verifier {self.target} {name} failed: {code.name}: {e.details()}", code) from None


def _approx_bytes(item: Item) -> int:
    return (
        len(item.id.encode())
        + len(item.response.encode())
        + len(item.gold.encode())
        + len(item.task.encode())
        + sum(len(k.encode()) + len(v.encode()) + 8 for k, v in item.options.items())
        + 32
    )


def chunk_items(items: Sequence[Item], max_items: int, max_bytes: int) -> Iterator[list[Item]]:
    """Consecutive chunks of at most ``max_items`` items and about 90% of ``max_bytes`` each."""
    budget = int(max_bytes * 0.9)
    chunk: list[Item] = []
    size = 0
    for it in items:
        n = _approx_bytes(it)
        if chunk and (len(chunk) >= max_items or size + n > budget):
            yield chunk
            chunk, size = [], 0
        chunk.append(it)
        size += n
    if chunk:
        yield chunk
