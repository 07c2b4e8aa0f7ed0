"""``winnow generator run --config FILE [--set key=value ...]``.

Imports lightly: the config is parsed and validated first; torch, transformers and vLLM are
imported only once the command runs.
"""

from __future__ import annotations

import argparse
import logging

from winnow.cli import add_config_args, load_service_config

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generator", help="sample responses for prompt requests, score them, publish groups"
    )
    sub = p.add_subparsers(dest="generator_command", metavar="SUBCOMMAND")
    run = sub.add_parser("run", help="run a generator (a Kafka consumer group member on the prompts topic)")
    add_config_args(run, "generator", "sampling.max_new_tokens=128")
    run.set_defaults(func=_run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _run(args: argparse.Namespace) -> int:
    from winnow.generator.config import GeneratorConfig

    cfg = load_service_config(GeneratorConfig, args)
    if cfg is None:
        return 0

    import asyncio

    return asyncio.run(serve(cfg))


async def serve(cfg) -> int:
    """Build the engine, start /metrics and /health, run until SIGTERM/SIGINT."""

    from prometheus_client import CollectorRegistry

    from winnow import compute_thread
    from winnow.generator.engine import make_engine
    from winnow.generator.service import GeneratorService
    from winnow.metrics import run_service

    engine = await compute_thread.run(make_engine, cfg)
    registry = CollectorRegistry()
    service = GeneratorService(cfg, engine, registry)
    await run_service(service, registry, cfg.metrics_port, cfg.metrics_host)
    return 0
