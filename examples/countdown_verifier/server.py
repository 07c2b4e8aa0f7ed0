"""A second winnow verifier: Countdown (reach a target with given numbers using + - * /).

It implements the same gRPC contract as the math verifier, ``winnow.v1.Verifier``
(protos/winnow/v1/verifier.proto), plus the standard gRPC health service and server reflection,
so the generator can route ``task: countdown`` to it (see docs/verifiers.md).

Scoring is safe by construction: the answer is parsed with :func:`ast.parse` (mode ``eval``) and the
tree is walked by hand. Only integer literals, parentheses, the binary operators ``+ - * /`` and unary
minus (reasoning-gym's reference solutions write ``-1 + 72*12``) are accepted; any other node (names,
calls, attributes, powers, floats, strings...) makes the answer UNPARSABLE and nothing is evaluated. Arithmetic uses :class:`fractions.Fraction`, so ``8/3*3`` is
exactly 8. Nothing is ever passed to ``eval``.

The puzzle (numbers and target) comes, in this order of precedence, from:
1. ``options["numbers"]`` ("6,61,94,4") and ``options["target"]`` ("309"),
2. ``gold`` as JSON ``{"numbers": [6, 61, 94, 4], "target": 309}``,
3. ``gold`` as a reference solution expression (``"94*4 - 61 - 6"``): its integers are the numbers and its
   value the target (reasoning-gym's ``countdown`` entries carry one in ``answer``).

Each number may be used at most once; by default all of them must be used (``options["use_all"]``
``"false"`` relaxes that). The answer is the last ``<answer>...</answer>``, else the last ``\\boxed{}``,
else the last line made only of digits, operators and parentheses; a trailing ``= 309`` is ignored.

Run: ``python examples/countdown_verifier/server.py --port 50061`` (``--port 0`` picks a free port and
prints it). ``--token`` (or env ``WINNOW_VERIFIER_TOKEN``) requires ``authorization: Bearer <token>``.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import logging
import os
import re
import signal
import sys
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

try:
    from winnow.v1 import verifier_pb2, verifier_pb2_grpc
except ModuleNotFoundError:  # run from a checkout without installing winnow
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from winnow.v1 import verifier_pb2, verifier_pb2_grpc

log = logging.getLogger("countdown_verifier")

MAX_ANSWER_CHARS = 500
"""Longer answers are TOO_COMPLEX (a Countdown solution is a few dozen characters)."""
MAX_NODES = 200
"""Largest syntax tree accepted."""
MAX_BATCH_ITEMS = 1024

S = verifier_pb2  # status constants: S.STATUS_CORRECT ...
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_BARE_EXPR = re.compile(r"^[\d\s+\-*/×÷()=.]*\d[\d\s+\-*/×÷()=.]*$")
_TRAILING_EQ = re.compile(r"=\s*-?\d+(?:\.\d+)?\s*$")


class Unparsable(ValueError):
    """The answer is not an expression made only of integers, parentheses and + - * /."""


class TooComplex(ValueError):
    """The answer is too long or too deep to score."""


def extract_answer(response: str) -> str | None:
    """The candidate expression in a model response, or None when there is none."""
    tags = _ANSWER_TAG.findall(response)
    if tags:
        text = tags[-1]
    else:
        boxed = _BOXED.findall(response)
        if boxed:
            text = boxed[-1]
        else:
            lines = [ln for ln in response.strip().splitlines() if _BARE_EXPR.match(ln.strip())]
            if not lines:
                return None
            text = lines[-1]
    text = text.strip().strip("$").strip()
    text = text.replace("×", "*").replace("÷", "/").replace("\\times", "*").replace("\\div", "/")
    text = _TRAILING_EQ.sub("", text).strip()
    return text or None


def parse(expr: str) -> ast.expr:
    """Parse ``expr`` and check every node is allowed (no evaluation happens here)."""
    if len(expr) > MAX_ANSWER_CHARS:
        raise TooComplex(f"answer longer than {MAX_ANSWER_CHARS} characters")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError) as e:  # ValueError: null bytes
        raise Unparsable(f"not an arithmetic expression: {e.msg if isinstance(e, SyntaxError) else e}") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise TooComplex(f"expression has more than {MAX_NODES} syntax nodes")
    for node in nodes:
        if isinstance(node, ast.Expression | ast.BinOp | ast.USub) or type(node) in _BINOPS:
            if isinstance(node, ast.BinOp) and type(node.op) not in _BINOPS:
                raise Unparsable(f"operator {type(node.op).__name__} is not allowed (only + - * /)")
            continue
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            continue
        if isinstance(node, ast.Constant) and type(node.value) is int:
            continue
        raise Unparsable(f"{type(node).__name__} is not allowed (only integers, parentheses and + - * /)")
    return tree.body


def evaluate(node: ast.expr) -> Fraction:
    """Exact value of a tree accepted by :func:`parse`. Raises ZeroDivisionError on x/0."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        return -evaluate(node.operand)
    left, right = evaluate(node.left), evaluate(node.right)
    match node.op:
        case ast.Add():
            return left + right
        case ast.Sub():
            return left - right
        case ast.Mult():
            return left * right
        case ast.Div():
            return left / right
    raise Unparsable(f"operator {type(node.op).__name__} is not allowed")  # unreachable after parse()


def numbers_in(node: ast.expr) -> list[int]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]


def puzzle(gold: str, options: dict[str, str]) -> tuple[list[int], Fraction]:
    """(numbers, target) for one request; raises ValueError when the request does not define one."""
    if "numbers" in options and "target" in options:
        numbers = [int(x) for x in re.split(r"[,\s]+", options["numbers"].strip()) if x]
        return numbers, Fraction(options["target"].strip())
    text = gold.strip()
    if text.startswith("{"):
        data = json.loads(text)
        return [int(x) for x in data["numbers"]], Fraction(str(data["target"]))
    tree = parse(text)
    return numbers_in(tree), evaluate(tree)


def score(item: verifier_pb2.VerifyRequest) -> verifier_pb2.VerifyResult:
    """Judge one request. Never raises for a bad model answer; a bad *gold* is STATUS_ERROR."""
    t0 = time.perf_counter()
    result = verifier_pb2.VerifyResult(id=item.id, path="countdown")
    options = dict(item.options)
    try:
        numbers, target = puzzle(item.gold, options)
    except (ValueError, KeyError, TypeError, ZeroDivisionError) as e:
        result.status, result.path, result.detail = S.STATUS_ERROR, "gold", f"bad countdown gold/options: {e}"
        return _timed(result, t0)
    expr = extract_answer(item.response)
    if expr is None:
        result.status, result.path = S.STATUS_NO_ANSWER, "extract"
        return _timed(result, t0)
    result.extracted = expr
    try:
        tree = parse(expr)
    except TooComplex as e:
        result.status, result.path, result.detail = S.STATUS_TOO_COMPLEX, "guard", str(e)
        return _timed(result, t0)
    except Unparsable as e:
        result.status, result.detail = S.STATUS_UNPARSABLE, str(e)
        return _timed(result, t0)
    used = Counter(numbers_in(tree))
    allowed = Counter(numbers)
    extra = used - allowed
    if extra:
        result.status, result.detail = S.STATUS_WRONG, f"uses numbers not available: {sorted(extra.elements())}"
        return _timed(result, t0)
    use_all = options.get("use_all", "true").lower() not in ("false", "0", "no")
    if use_all and used != allowed:
        missing = sorted((allowed - used).elements())
        result.status, result.detail = S.STATUS_WRONG, f"does not use every number (missing {missing})"
        return _timed(result, t0)
    try:
        value = evaluate(tree)
    except ZeroDivisionError:
        result.status, result.detail = S.STATUS_WRONG, "division by zero"
        return _timed(result, t0)
    if value == target:
        result.status = S.STATUS_CORRECT
    else:
        result.status, result.detail = S.STATUS_WRONG, f"evaluates to {value}, target is {target}"
    return _timed(result, t0)


def _timed(result: verifier_pb2.VerifyResult, t0: float) -> verifier_pb2.VerifyResult:
    result.latency_ms = (time.perf_counter() - t0) * 1000.0
    return result


class CountdownVerifier(verifier_pb2_grpc.VerifierServicer):
    def __init__(self, token: str = "", log_calls: bool = False) -> None:
        self.token = token
        self.log_calls = log_calls

    async def _check_auth(self, context: grpc.aio.ServicerContext) -> None:
        if not self.token:
            return
        md = dict(context.invocation_metadata() or ())
        if md.get("authorization", "") != f"Bearer {self.token}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong 'authorization: Bearer <token>'")

    async def Verify(self, request, context):  # noqa: N802 - gRPC method name
        await self._check_auth(context)
        return score(request)

    async def VerifyBatch(self, request, context):  # noqa: N802 - gRPC method name
        await self._check_auth(context)
        if len(request.items) > MAX_BATCH_ITEMS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"batch of {len(request.items)} items exceeds max_batch_items={MAX_BATCH_ITEMS}")
        results = [score(item) for item in request.items]
        if self.log_calls:
            tasks = ",".join(sorted({item.task for item in request.items}))
            print(f"VerifyBatch items={len(results)} tasks={tasks}", flush=True)
        return verifier_pb2.VerifyBatchResponse(results=results)


def create_server(
    address: str, token: str = "", log_calls: bool = False
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Build (not start) the server; returns it, the bound port (``:0`` picks one) and the health servicer."""
    server = grpc.aio.server()
    verifier_pb2_grpc.add_VerifierServicer_to_server(CountdownVerifier(token, log_calls), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_name = verifier_pb2.DESCRIPTOR.services_by_name["Verifier"].full_name
    reflection.enable_server_reflection([service_name, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(address)
    return server, port, health_servicer


async def serve(host: str, port: int, token: str, log_calls: bool = False) -> None:
    server, bound, health_servicer = create_server(f"{host}:{port}", token, log_calls)
    await server.start()
    service_name = verifier_pb2.DESCRIPTOR.services_by_name["Verifier"].full_name
    for name in ("", service_name):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    print(f"countdown verifier listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for name in ("", service_name):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=50061, help="gRPC port (0 picks a free one)")
    parser.add_argument("--token", default=os.environ.get("WINNOW_VERIFIER_TOKEN", ""),
                        help="require 'authorization: Bearer TOKEN' (default: env WINNOW_VERIFIER_TOKEN)")
    parser.add_argument("--log-calls", action="store_true", help="print one line per VerifyBatch call")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.host, args.port, args.token, args.log_calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
