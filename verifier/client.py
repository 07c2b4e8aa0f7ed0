"""Async client of any winnow.v1.Verifier server (ours or a user's own implementation).

Used by ``winnow score --verifier`` and by the generator service. Depends only on grpcio and the
committed stubs (no sympy, no engine)::

    async with VerifierClient("verifier:50051", token=os.environ.get("WINNOW_VERIFIER_TOKEN")) as client:
        verdicts = await client.verify_batch([Item(id="q1-s0", response="... \\boxed{42}", gold="42")])

- ``verify_batch`` splits the items into chunks of at most ``max_batch_items`` items and about
  ``max_message_bytes`` bytes, sends up to ``concurrency`` chunks at once and returns one
  :class:`Verdict` per item, in input order (ids need not be unique across chunks).
- UNAVAILABLE (server down, restarting, connection refused) is retried with exponential backoff and
  jitter for at most ``retry_total_s`` seconds; then :class:`VerifierUnavailableError` is raised.
  Any other failure raises :class:`VerifierError` with the gRPC code. A client never turns a
  failure into a verdict: the caller decides (skip the group, retry later, stop).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
from winnow.verifier.types import Item, Verdict
from winnow.verifier.wire import item_to_proto, verdict_from_proto

from winnow.v1 import verifier_pb2, verifier_pb2_grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


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
            target: ``host:port`` (any gRPC target string, e.g. ``dns:///verifier:50051``).
            token: bearer token sent as ``authorization: Bearer <token>`` (None: no header).
            tls: use TLS; ``root_certificates`` (PEM bytes or a file path) pins the CA, else the
                system roots. Setting ``root_certificates`` implies ``tls``.
            timeout_s: deadline of each call (one chunk).
            max_batch_items: most items per VerifyBatch call (match the server's max_batch_items).
            max_message_bytes: most bytes per request message (and per response received).
            concurrency: chunks in flight at once within one ``verify_batch``.
            retry_total_s: how long to keep retrying UNAVAILABLE before giving up.
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
        ]
        if isinstance(root_certificates, (str, Path)):
            root_certificates = Path(root_certificates).read_bytes()
        if tls or root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.aio.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._stub = verifier_pb2_grpc.VerifierStub(self._channel)

    async def __aenter__(self) -> VerifierClient:
        return self

    async def __aexit__(self, *exc) -> None:
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

    async def _call(self, method, request, name: str):
        start = time.monotonic()
        delay = self.retry_initial_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return await method(request, timeout=self.timeout_s, metadata=self._metadata)
            except grpc.aio.AioRpcError as e:
                code = e.code()
                waited = time.monotonic() - start
                if code != grpc.StatusCode.UNAVAILABLE:
                    raise VerifierError(
                        f"verifier {self.target} {name} failed: {code.name}: {e.details()}", code
                    ) from None
                if waited + delay > self.retry_total_s:
                    raise VerifierUnavailableError(
                        f"verifier {self.target} unavailable for {waited:.1f}s ({attempt} attempts): "
                        f"{e.details()}",
                        code,
                    ) from None
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(self.retry_max_s, delay * 2)


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
