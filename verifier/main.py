"""CLI of the verifier: ``winnow verifier serve`` and ``winnow score``.

Imports stay light (argparse only): grpc, sympy and the engine load inside the command functions,
so ``winnow --help`` answers at once.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    verifier = subparsers.add_parser("verifier", help="the math verifier gRPC service")
    vsub = verifier.add_subparsers(dest="verifier_command", metavar="COMMAND")
    serve = vsub.add_parser(
        "serve",
        help="serve winnow.v1.Verifier over gRPC (plus /metrics and /health)",
        description="Serve winnow.v1.Verifier. Config: defaults < --config FILE (verifier: section) "
        "< WINNOW_VERIFIER_* env < flags and --set. See docs/verifier.md.",
    )
    serve.add_argument("--config", metavar="FILE", help="YAML/JSON config file (its verifier: section)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 in a container)")
    serve.add_argument("--port", type=int, help="gRPC port (default 50051; 0 picks a free one)")
    serve.add_argument("--workers", type=int, help="engine worker processes (0 = one per CPU core)")
    serve.add_argument("--metrics-port", type=int, help="/metrics port (default 9101; 0 picks; -1 disables)")
    serve.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any field, e.g. tls.cert_file=/x"
    )
    serve.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    from winnow.cli import document_config

    document_config(serve, "verifier")  # --help lists the config fields
    serve.set_defaults(func=_serve)
    verifier.set_defaults(func=lambda args: (verifier.print_help(), 2)[1])

    score = subparsers.add_parser(
        "score",
        help="grade a JSONL file of answers (in-process or via a verifier server)",
        description="Grade INPUT.jsonl lines {id?, response, gold, task?, options?}; writes each line back "
        "in order with status, correct, extracted, path, detail, latency_ms. Exit 1 if any line was "
        "malformed or errored. See docs/verifier.md.",
    )
    score.add_argument("input", metavar="INPUT.jsonl", help="input file ('-' = stdin)")
    score.add_argument("-o", "--output", metavar="OUTPUT.jsonl", help="output file (default: stdout)")
    score.add_argument("--verifier", metavar="HOST:PORT", help="use this running verifier instead of in-process")
    score.add_argument("--token", help="bearer token for --verifier (default: env WINNOW_VERIFIER_TOKEN)")
    score.add_argument("--tls", action="store_true", help="TLS to --verifier (system roots unless --ca-file)")
    score.add_argument("--ca-file", metavar="PEM", help="CA certificate for --verifier (implies --tls)")
    score.add_argument("--workers", type=int, help="in-process engine workers (default: one per CPU core)")
    score.add_argument("--batch-size", type=int, default=256, help="lines per batch (default 256)")
    score.add_argument("--config", metavar="FILE", help="verifier config for the in-process engine")
    score.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a verifier field")
    score.add_argument(
        "--retry-s", type=float, default=30.0, help="keep retrying an unavailable --verifier this long (default 30)"
    )
    score.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    score.set_defaults(func=_score)


def _serve(args) -> int:
    import asyncio

    from winnow.config import load_config, parse_overrides
    from winnow.verifier.config import VerifierConfig
    from winnow.verifier.server import serve

    overrides = parse_overrides(args.set)
    for name in ("host", "port", "workers", "metrics_port"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    cfg = load_config(VerifierConfig, args.config, overrides)
    if args.print_config:
        print(cfg.model_dump_json(indent=2))
        return 0
    return asyncio.run(serve(cfg))


def _score(args) -> int:
    from winnow.verifier.score import run

    return run(args)
