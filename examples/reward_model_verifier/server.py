"""A reward-model verifier: scores (prompt, response) with a Hugging Face sequence-classification model.

It serves the same gRPC contract as every winnow verifier, ``winnow.v1.Verifier``
(protos/winnow/v1/verifier.proto), plus the standard health service and server reflection, so generators route
tasks to it by configuration (``generator.verifier.endpoints``, ``up.verifiers``, the chart's
``verifier.extra``) like any other verifier. Each result carries the model's score in ``VerifyResult.score``,
which the learner takes as the reward (``algo.score_threshold`` decides what counts as accepted); the status is
CORRECT when the score is at least ``--pass-score`` and WRONG otherwise (for metrics and logs).

- Score: with one label (a reward head, as in TRL's RewardTrainer), the logit; with several, the log-probability
  of ``--label`` (default: the last, "positive").
- Input: the tokenizer's chat template over [user: prompt, assistant: response] when it has one, else the text
  pair (prompt, response); truncated to ``--max-length`` tokens from the left of the prompt side.
- Batching: the items of a ``VerifyBatch`` call are scored ``--batch-size`` at a time (padded, sorted by length);
  one forward at a time on the device (a lock), run in a thread so health checks are answered meanwhile.
- Device: CUDA when present (``--device`` overrides), in ``--dtype`` (bfloat16 on GPU, float32 on CPU by default).
- A failed forward is STATUS_ERROR for its items, without a score (never a zero reward).

Run: ``python examples/reward_model_verifier/server.py --model PATH_OR_HUB_ID --port 50071`` (``--port 0`` picks
a free port and prints it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

try:
    from winnow.v1 import verifier_pb2, verifier_pb2_grpc
except ModuleNotFoundError:  # run from a checkout without installing winnow
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from winnow.v1 import verifier_pb2, verifier_pb2_grpc

log = logging.getLogger("reward_model_verifier")
MAX_BATCH_ITEMS = 4096
SERVICE = verifier_pb2.DESCRIPTOR.services_by_name["Verifier"].full_name


class RewardModel:
    """A sequence-classification model and its tokenizer; ``score(pairs) -> list[float]`` (thread-safe)."""

    def __init__(self, model: str, *, device: str | None = None, dtype: str | None = None, max_length: int = 2048,
                 batch_size: int = 16, label: int = -1) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if self.device.startswith("cuda") else torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.truncation_side = "left"
        self.model = AutoModelForSequenceClassification.from_pretrained(model, torch_dtype=torch_dtype).to(self.device)
        self.model.eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.max_length = max_length
        self.batch_size = batch_size
        self.label = label
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        self._lock = threading.Lock()

    def _encode(self, prompt: str, response: str) -> list[int]:
        if self.chat:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=True)
            if not isinstance(ids, list):  # newer transformers may return an encoding
                ids = list(ids["input_ids"])
            return ids[-self.max_length:]
        return self.tokenizer(prompt, response, truncation=True, max_length=self.max_length)["input_ids"]

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        """One score per (prompt, response), in order."""
        torch = self.torch
        encoded = [self._encode(p, r) for p, r in pairs]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out = [math.nan] * len(encoded)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                width = max(len(encoded[i]) for i in idx)
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):  # right padding: the classifier reads the last real token
                    ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
                    mask[row, :len(encoded[i])] = 1
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
                if logits.shape[-1] == 1:
                    values = logits[:, 0]
                else:
                    values = torch.log_softmax(logits, dim=-1)[:, self.label]
                for i, v in zip(idx, values.cpu().tolist(), strict=True):
                    out[i] = v
        return out


class RewardModelVerifier(verifier_pb2_grpc.VerifierServicer):
    def __init__(self, model: RewardModel, pass_score: float = 0.0, token: str = "") -> None:
        self.model = model
        self.pass_score = pass_score
        self.token = token

    async def _check_auth(self, context) -> None:
        if self.token and dict(context.invocation_metadata() or ()).get("authorization") != f"Bearer {self.token}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong 'authorization: Bearer <token>'")

    async def _score(self, items) -> list[verifier_pb2.VerifyResult]:
        t0 = time.perf_counter()
        try:
            scores = await asyncio.to_thread(self.model.score, [(it.prompt, it.response) for it in items])
            error = ""
        except Exception as e:  # process boundary: the model failed on this call; never a zero reward
            log.exception("reward model forward failed")
            scores, error = [math.nan] * len(items), f"reward model failed: {type(e).__name__}: {e}"
        ms = (time.perf_counter() - t0) * 1000.0 / max(1, len(items))
        results = []
        for it, s in zip(items, scores, strict=True):
            r = verifier_pb2.VerifyResult(id=it.id, path="reward_model", latency_ms=ms)
            if math.isfinite(s):
                r.score = s
                r.status = verifier_pb2.STATUS_CORRECT if s >= self.pass_score else verifier_pb2.STATUS_WRONG
            else:
                r.status, r.detail = verifier_pb2.STATUS_ERROR, error or f"non-finite score {s}"
            results.append(r)
        return results

    async def Verify(self, request, context):  # noqa: N802 - gRPC method name
        await self._check_auth(context)
        return (await self._score([request]))[0]

    async def VerifyBatch(self, request, context):  # noqa: N802 - gRPC method name
        await self._check_auth(context)
        if len(request.items) > MAX_BATCH_ITEMS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"batch of {len(request.items)} items exceeds max_batch_items={MAX_BATCH_ITEMS}")
        if not request.items:
            return verifier_pb2.VerifyBatchResponse()
        return verifier_pb2.VerifyBatchResponse(results=await self._score(list(request.items)))


def create_server(address: str, model: RewardModel, pass_score: float = 0.0, token: str = ""):
    """Build (not start) the server; returns it, the bound port (``:0`` picks one) and the health servicer."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    verifier_pb2_grpc.add_VerifierServicer_to_server(RewardModelVerifier(model, pass_score, token), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return server, server.add_insecure_port(address), health_servicer


async def serve(args) -> None:
    model = RewardModel(args.model, device=args.device, dtype=args.dtype, max_length=args.max_length,
                        batch_size=args.batch_size, label=args.label)
    server, bound, health_servicer = create_server(f"{args.host}:{args.port}", model, args.pass_score, args.token)
    await server.start()
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    print(f"reward model verifier listening on {args.host}:{bound} (device {model.device})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Hugging Face sequence-classification model (folder or hub id)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=50071, help="gRPC port (0 picks a free one)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    parser.add_argument("--dtype", default=None, help="bfloat16 | float16 | float32 (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward")
    parser.add_argument("--max-length", type=int, default=2048, help="tokens per (prompt, response), cut from the left")
    parser.add_argument("--label", type=int, default=-1, help="with several labels: the one whose log-prob is the score")
    parser.add_argument("--pass-score", type=float, default=0.0, help="status CORRECT iff score >= this (else WRONG)")
    parser.add_argument("--token", default=os.environ.get("WINNOW_VERIFIER_TOKEN", ""),
                        help="require 'authorization: Bearer TOKEN' (default: env WINNOW_VERIFIER_TOKEN)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
