"""Conversions between the verifier's plain types (:mod:`winnow.verifier.types`) and the protobuf
messages of ``winnow.v1.Verifier``. Shared by the gRPC server and :mod:`winnow.verifier.client`."""

from __future__ import annotations

from winnow.v1 import verifier_pb2
from winnow.verifier.types import Item, Status, Verdict


def item_to_proto(item: Item) -> verifier_pb2.VerifyRequest:
    return verifier_pb2.VerifyRequest(
        id=item.id, response=item.response, gold=item.gold, task=item.task, options=dict(item.options)
    )


def item_from_proto(msg: verifier_pb2.VerifyRequest) -> Item:
    return Item(id=msg.id, response=msg.response, gold=msg.gold, task=msg.task, options=dict(msg.options))


def verdict_to_proto(v: Verdict) -> verifier_pb2.VerifyResult:
    return verifier_pb2.VerifyResult(
        id=v.id,
        status=int(v.status),
        extracted=v.extracted,
        path=v.path,
        detail=v.detail,
        latency_ms=float(v.latency_ms),
    )


def verdict_from_proto(msg: verifier_pb2.VerifyResult) -> Verdict:
    """A result from any server; an unknown or UNSPECIFIED status reads as ERROR (see the proto)."""
    detail = msg.detail
    try:
        status = Status(msg.status)
    except ValueError:
        status, detail = Status.ERROR, detail or f"server sent unknown status {msg.status}"
    if status == Status.UNSPECIFIED:
        status, detail = Status.ERROR, detail or "server sent STATUS_UNSPECIFIED"
    return Verdict(
        id=msg.id, status=status, extracted=msg.extracted, path=msg.path, detail=detail, latency_ms=msg.latency_ms
    )
