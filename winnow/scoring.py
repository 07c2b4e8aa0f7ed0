"""The one seam between the services and the verifier's implementation.

The generators score samples and the learner scores its held-out evaluation, either in-process
(the sandboxed math verifier, a library) or through the Verifier gRPC API, routed by task. Both go through these
factories, so the learner and generator packages never import the verifier package (the
layering test, tests/test_layering.py, enforces it); the verifier is loaded here, lazily, as a
plug-in behind the :class:`Verifier` protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from winnow.verdict import Item, Verdict


class Verifier(Protocol):
    """Blocking scorer: one verdict per item, in order."""

    def verify_batch(self, items: list[Item]) -> list[Verdict]: ...

    def close(self) -> None: ...


class AsyncVerifier(Protocol):
    """Asyncio scorer (a Verifier gRPC client): one verdict per item, in order."""

    async def verify_batch(self, items: Sequence[Item]) -> list[Verdict]: ...

    async def close(self) -> None: ...


def in_process_verifier(*, workers: int = 1, timeout_s: float = 2.0) -> Verifier:
    """The sandboxed math verifier in worker processes of this process (``close()`` it)."""
    from winnow.verifier.engine import MathVerifier

    return MathVerifier(workers=workers, timeout_s=timeout_s)


def verifier_client(endpoint: str, **kwargs: Any) -> AsyncVerifier:
    """An asyncio client of the Verifier gRPC service at ``host:port`` (``await client.verify_batch(items)``);
    keyword arguments as :class:`winnow.verifier.client.VerifierClient`."""
    from winnow.verifier.client import VerifierClient

    return VerifierClient(endpoint, **kwargs)


def routed_verifier(endpoints: dict[str, str], *, workers: int = 1, timeout_s: float = 2.0,
                    call_timeout_s: float = 120.0, token: str | None = None) -> Verifier:
    """A blocking :class:`Verifier` that scores each item through its task's route, as the generators do:
    ``endpoints`` maps task patterns (fnmatch, first match wins, in order) to ``host:port`` of a Verifier gRPC
    server; unmatched tasks go to the in-process math verifier (started on first use). ``close()`` it."""
    return _RoutedVerifier(dict(endpoints), workers=workers, timeout_s=timeout_s, call_timeout_s=call_timeout_s,
                           token=token)


class _RoutedVerifier:
    def __init__(self, endpoints: dict[str, str], *, workers: int, timeout_s: float, call_timeout_s: float,
                 token: str | None) -> None:
        self.endpoints = endpoints
        self._workers, self._timeout_s = workers, timeout_s
        self._local: Verifier | None = None
        self._channels: dict[str, Any] = {}
        self._call_timeout_s = call_timeout_s
        self._metadata = [("authorization", f"Bearer {token}")] if token else None

    def route(self, task: str) -> str:
        """The endpoint of ``task`` ("" = in-process)."""
        import fnmatch

        return next((ep for pattern, ep in self.endpoints.items() if fnmatch.fnmatchcase(task, pattern)), "")

    def _remote(self, endpoint: str, items: list[Item]) -> list[Verdict]:
        import grpc

        from winnow.v1 import verifier_pb2, verifier_pb2_grpc
        from winnow.verifier.wire import item_to_proto, verdict_from_proto

        channel = self._channels.get(endpoint)
        if channel is None:
            channel = self._channels[endpoint] = grpc.insecure_channel(endpoint)
        stub = verifier_pb2_grpc.VerifierStub(channel)  # type: ignore[no-untyped-call]
        out: list[Verdict] = []
        for start in range(0, len(items), 256):
            chunk = items[start:start + 256]
            reply = stub.VerifyBatch(verifier_pb2.VerifyBatchRequest(items=[item_to_proto(i) for i in chunk]),
                                     timeout=self._call_timeout_s, wait_for_ready=True, metadata=self._metadata)
            out += [verdict_from_proto(r) for r in reply.results]
        return out

    def verify_batch(self, items: list[Item]) -> list[Verdict]:
        by_route: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            by_route.setdefault(self.route(it.task), []).append(i)
        out: list[Verdict | None] = [None] * len(items)
        for endpoint, idx in by_route.items():
            part = [items[i] for i in idx]
            if endpoint:
                verdicts = self._remote(endpoint, part)
            else:
                if self._local is None:
                    self._local = in_process_verifier(workers=self._workers, timeout_s=self._timeout_s)
                verdicts = self._local.verify_batch(part)
            for i, v in zip(idx, verdicts, strict=True):
                out[i] = v
        return out  # type: ignore[return-value]

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        if self._local is not None:
            self._local.close()
            self._local = None
