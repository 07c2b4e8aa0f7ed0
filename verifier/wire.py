"""Conversions between the verifier's plain types (:mod:`winnow.verifier.types`) and the protobuf
messages of ``winnow.v1.Verifier``. Shared by the gRPC server and :mod:`winnow.verifier.client`."""

from __future__ import annotations

import math
from typing import cast

from winnow.v1 import verifier_pb2
from winnow.verifier.types import Item, Status, Verdict


def item_to_proto(item: Item) -> verifier_pb2.VerifyRequest:
    return verifier_pb2.VerifyRequest(
        id=item.id, response=item.response, gold=item.gold, task=item.task, options=dict(item.options),
        prompt=item.prompt,
    )


def item_from_proto(msg: verifier_pb2.VerifyRequest) -> Item:
    return Item(id=msg.id, response=msg.response, gold=msg.gold, task=msg.task, options=dict(msg.options),
                prompt=msg.prompt)


def verdict_to_proto(v: Verdict) -> verifier_pb2.VerifyResult:
    return verifier_pb2.VerifyResult(
        id=v.id,
        status=cast("verifier_pb2.Status", int(v.status)),  # the same numbers on the wire
        extracted=v.extracted,
        path=v.path,
        detail=v.detail,
        latency_ms=float(v.latency_ms),
        score=v.score,  # None leaves the optional field unset: "no score", never 0
    )


def verdict_from_proto(msg: verifier_pb2.VerifyResult) -> Verdict:
    """A result from any server; an unknown or UNSPECIFIED status reads as ERROR (see the proto), and so does a
    non-finite score. An unset ``score`` (servers that predate it, or that only judge) reads as None."""
    detail = msg.detail
    try:
        status = Status(msg.status)
    except ValueError:
        status, detail = Status.ERROR, detail or f"server sent unknown status {msg.status}"
    if status == Status.UNSPECIFIED:
        status, detail = Status.ERROR, detail or "server sent STATUS_UNSPECIFIED"
    score = msg.score if msg.HasField("score") else None  # a server that predates the field: no score
    if score is not None and not math.isfinite(score):
        status, detail, score = Status.ERROR, f"server sent a non-finite score {score}", None
    if score is not None and status == Status.ERROR:
        score = None  # a failure is never a reward
    return Verdict(
        id=msg.id, status=status, extracted=msg.extracted, path=msg.path, detail=detail, latency_ms=msg.latency_ms,
        score=score,
    )
