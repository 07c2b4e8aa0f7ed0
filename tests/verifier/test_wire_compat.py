"""Old and new peers interoperate across the scalar-score change (issue 27 item 2).

The "old" messages are the current ones with the fields added since removed (``VerifyResult.score`` = 7,
``VerifyRequest.prompt`` = 6, ``Sample.score`` = 9), built from the same descriptors in a separate pool: exactly
what a peer compiled from the previous protos serializes and parses. Bytes go both ways, and over real gRPC on
127.0.0.1 between an old server and the new client, and the new server and an old client.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from winnow.v1 import messages_pb2, verifier_pb2
from winnow.verdict import Item, Status, Verdict

REMOVED = {"VerifyResult": "score", "VerifyRequest": "prompt", "Sample": "score"}


def _old_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for fd in (verifier_pb2.DESCRIPTOR, messages_pb2.DESCRIPTOR):
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        for msg in proto.message_type:
            if msg.name in REMOVED:
                keep = [f for f in msg.field if f.name != REMOVED[msg.name]]
                assert len(keep) == len(msg.field) - 1
                del msg.field[:]
                msg.field.extend(keep)
                del msg.oneof_decl[:]  # proto3 `optional` is a synthetic oneof
                for f in msg.field:
                    f.ClearField("oneof_index")
                    f.ClearField("proto3_optional")
        pool.Add(proto)
    return pool


OLD = _old_pool()


def old(name: str):
    return message_factory.GetMessageClass(OLD.FindMessageTypeByName(f"winnow.v1.{name}"))


def test_the_old_shape_really_lacks_the_fields() -> None:
    assert "score" not in old("VerifyResult").DESCRIPTOR.fields_by_name
    assert "score" in verifier_pb2.VerifyResult.DESCRIPTOR.fields_by_name


def test_old_result_read_by_new_code_has_no_score() -> None:
    from winnow.verifier.wire import verdict_from_proto

    data = old("VerifyResult")(id="a", status=2, extracted="7", path="number").SerializeToString()
    msg = verifier_pb2.VerifyResult.FromString(data)
    assert not msg.HasField("score")
    assert verdict_from_proto(msg) == Verdict(id="a", status=Status.WRONG, extracted="7", path="number", score=None)


def test_new_result_read_by_old_code_keeps_every_old_field() -> None:
    from winnow.verifier.wire import verdict_to_proto

    new = verdict_to_proto(Verdict(id="a", status=Status.CORRECT, extracted="42", path="reward_fn", latency_ms=1.5,
                                   score=0.75))
    got = old("VerifyResult").FromString(new.SerializeToString())
    assert (got.id, got.status, got.extracted, got.path, got.latency_ms) == ("a", 1, "42", "reward_fn", 1.5)
    # the score is an unknown field to the old peer; re-serialized, it survives (a proxy keeps it)
    assert verifier_pb2.VerifyResult.FromString(got.SerializeToString()).score == 0.75


def test_new_request_read_by_an_old_server_and_back() -> None:
    from winnow.verifier.wire import item_from_proto, item_to_proto

    data = item_to_proto(Item(id="q", response="r", gold="g", task="t", options={"k": "v"}, prompt="P")).SerializeToString()
    got = old("VerifyRequest").FromString(data)
    assert (got.id, got.response, got.gold, got.task, dict(got.options)) == ("q", "r", "g", "t", {"k": "v"})
    item = item_from_proto(verifier_pb2.VerifyRequest.FromString(old("VerifyRequest")(id="q", gold="g").SerializeToString()))
    assert item.prompt == "" and item.gold == "g"


def test_kafka_sample_both_ways() -> None:
    new = messages_pb2.ScoredGroup(request_id="r", samples=[messages_pb2.Sample(status=1, score=1.5, text="x")])
    got = old("ScoredGroup").FromString(new.SerializeToString())  # an old learner
    assert got.samples[0].status == 1 and got.samples[0].text == "x" and got.samples[0].reward == 0.0
    back = messages_pb2.ScoredGroup.FromString(old("ScoredGroup")(request_id="r", samples=[
        old("Sample")(status=2)]).SerializeToString())  # an old generator's group
    assert not back.samples[0].HasField("score")


def _serve_old(results: dict[str, tuple[int, str]]):
    """A verifier compiled from the old protos (no score field), on 127.0.0.1 port 0."""
    req_cls, res_cls = old("VerifyBatchRequest"), old("VerifyBatchResponse")
    result_cls = old("VerifyResult")

    async def verify_batch(request, context):
        return res_cls(results=[result_cls(id=it.id, status=results[it.response][0], extracted=results[it.response][1])
                                for it in request.items])

    handler = grpc.method_handlers_generic_handler("winnow.v1.Verifier", {
        "VerifyBatch": grpc.unary_unary_rpc_method_handler(verify_batch, request_deserializer=req_cls.FromString,
                                                           response_serializer=res_cls.SerializeToString)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    return server, port


async def test_new_client_against_an_old_server() -> None:
    from winnow.scoring import verifier_client

    server, port = _serve_old({"right": (1, "4"), "wrong": (2, "5")})
    await server.start()
    try:
        async with verifier_client(f"127.0.0.1:{port}", timeout_s=10) as client:
            verdicts = await client.verify_batch([Item(id="a", response="right", gold="4", prompt="2+2?"),
                                                  Item(id="b", response="wrong", gold="4")])
    finally:
        await server.stop(0)
    assert [(v.id, v.status, v.extracted, v.score) for v in verdicts] == [
        ("a", Status.CORRECT, "4", None), ("b", Status.WRONG, "5", None)]


class _ScoringEngine:
    def verify_batch(self, items, deadline_s=None):
        return [Verdict(id=it.id, status=Status.WRONG, path="reward_fn", score=0.25) for it in items]


async def test_old_client_against_the_new_server(start_server) -> None:
    running = await start_server(engine_override=_ScoringEngine())
    req_cls, res_cls, item_cls = old("VerifyBatchRequest"), old("VerifyBatchResponse"), old("VerifyRequest")
    async with grpc.aio.insecure_channel(running.target) as channel:
        call = channel.unary_unary("/winnow.v1.Verifier/VerifyBatch", request_serializer=req_cls.SerializeToString,
                                   response_deserializer=res_cls.FromString)
        out = await call(req_cls(items=[item_cls(id="a", response="x", gold="y")]), timeout=10)
    assert [(r.id, r.status, r.path) for r in out.results] == [("a", 2, "reward_fn")]  # the score is ignored
