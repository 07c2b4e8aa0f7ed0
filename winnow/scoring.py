"""The one seam between the services and the verifier's implementation.

The generators score samples and the learner scores its held-out evaluation, either in-process
(the sandboxed math verifier, a library) or through the Verifier gRPC API. Both go through these
two factories, so the learner and generator packages never import the verifier package (the
layering test, tests/test_layering.py, enforces it); the verifier is loaded here, lazily, as a
plug-in behind the :class:`Verifier` protocol.
"""

from __future__ import annotations

from typing import Any, Protocol

from winnow.verdict import Item, Verdict


class Verifier(Protocol):
    """Blocking scorer: one verdict per item, in order."""

    def verify_batch(self, items: list[Item]) -> list[Verdict]: ...

    def close(self) -> None: ...


def in_process_verifier(*, workers: int = 1, timeout_s: float = 2.0) -> Verifier:
    """The sandboxed math verifier in worker processes of this process (``close()`` it)."""
    from winnow.verifier.engine import MathVerifier

    return MathVerifier(workers=workers, timeout_s=timeout_s)


def verifier_client(endpoint: str, **kwargs: Any):
    """An asyncio client of the Verifier gRPC service at ``host:port`` (``await client.verify_batch(items)``);
    keyword arguments as :class:`winnow.verifier.client.VerifierClient`."""
    from winnow.verifier.client import VerifierClient

    return VerifierClient(endpoint, **kwargs)
