"""``winnow learner run --config FILE [--set key=value ...]``.

Imports lightly: the config is parsed and validated first; torch and transformers are imported
only once the command runs.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING

from winnow.cli import add_config_args, load_service_config

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from winnow.learner.completion import IdleLearner
    from winnow.learner.config import LearnerConfig
    from winnow.learner.metrics import LearnerMetrics
    from winnow.learner.step import ServiceTrainer

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("learner", help="release prompts, train on scored groups, publish weights")
    sub = p.add_subparsers(dest="learner_command", metavar="SUBCOMMAND")
    run = sub.add_parser("run", help="run the learner (the pipeline's controller)")
    add_config_args(run, "learner", "algo.preset=grpo --set batch_groups=16")
    run.set_defaults(func=_run)

    def usage(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=usage)


def _run(args: argparse.Namespace) -> int:
    from winnow.learner.config import LearnerConfig

    cfg = load_service_config(LearnerConfig, args)
    if cfg is None:
        return 0

    import asyncio

    return asyncio.run(serve(cfg))


async def serve(cfg: LearnerConfig) -> int:
    """Build the trainer and prompt source, start /metrics and /health, run until SIGTERM/SIGINT
    or ``max_steps``."""
    import asyncio
    from pathlib import Path

    from prometheus_client import CollectorRegistry

    from winnow import compute_thread
    from winnow.chat import PromptFormatter
    from winnow.learner.completion import IdleLearner, finished_run
    from winnow.learner.evaluate import build_evaluator
    from winnow.learner.model import build_trainer
    from winnow.learner.service import LearnerService
    from winnow.metrics import run_service
    from winnow.prompts import make_source

    marker = finished_run(cfg.run_dir, cfg.max_steps, cfg.checkpoint.resume)
    if marker is not None:  # a finished run stays finished (learner/completion.py)
        log.info("run in %s finished at version %s (max_steps %s): not training%s", cfg.run_dir,
                 marker["version"], cfg.max_steps, "; idle, serving metrics" if cfg.on_finish == "idle" else "")
        if cfg.on_finish == "exit":
            return 0
        from winnow.learner.metrics import LearnerMetrics

        registry = CollectorRegistry()
        metrics = LearnerMetrics(registry)
        metrics.weight_version.set(int(marker["version"]))
        return await _idle(cfg, registry, metrics, IdleLearner())
    from winnow.learner import distributed

    sharded: distributed.ShardedTrainer | None = None
    if distributed.launched_by_torchrun():  # every rank builds its shard; rank 0 goes on as the service, the others follow it
        world = int(os.environ["WORLD_SIZE"])
        if cfg.batch_groups < world:
            from winnow.config import ConfigError

            raise ConfigError(f"learner.batch_groups: {cfg.batch_groups} groups cannot feed {world} learner processes "
                              f"(each rank trains whole groups): set it to at least {world}")
        local, tokenizer = await compute_thread.run(distributed.build_sharded_trainer, cfg)
        channel = distributed.Channel()
        if int(os.environ.get("RANK", "0")) != 0:
            import signal

            for sig in (signal.SIGTERM, signal.SIGINT):  # rank 0 stops the run (it checkpoints: a collective)
                signal.signal(sig, signal.SIG_IGN)
            steps = await compute_thread.run(distributed.worker_loop, local, channel)
            log.info("learner rank %s stopped after %d steps", os.environ.get("RANK"), steps)
            return 0
        sharded = distributed.ShardedTrainer(local, channel)
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.run_dir) / "learner-config.json").write_text(cfg.model_dump_json(indent=2))
    source = await asyncio.to_thread(make_source, cfg.prompts)
    trainer: ServiceTrainer
    if sharded is None:
        trainer, tokenizer = await compute_thread.run(build_trainer, cfg)
    else:
        trainer = sharded
    evaluator = await compute_thread.run(build_evaluator, cfg, tokenizer)
    registry = CollectorRegistry()
    fmt = PromptFormatter(tokenizer, cfg.chat)  # the shared prompt format (the generators'): bound prompts at release
    service = LearnerService(cfg, trainer, source, registry, evaluate=evaluator,
                             prompt_tokens=lambda p: len(fmt(p.problem, p.messages)), tokenizer=tokenizer)
    try:
        steps = await run_service(service, registry, cfg.metrics_port, cfg.metrics_host)
    finally:
        if evaluator is not None:
            evaluator.close()
    if sharded is not None:  # the other ranks leave their loop (after an error above, torchrun stops them instead)
        sharded.stop()
    log.info("learner stopped after %d steps (version %d)", steps, service.version)
    stopped = service._stop.is_set()  # SIGTERM/SIGINT, not max_steps
    if cfg.on_finish == "idle" and not stopped and finished_run(cfg.run_dir, cfg.max_steps, True) is not None:
        return await _idle(cfg, registry, service.metrics, IdleLearner())
    return 0


async def _idle(cfg: LearnerConfig, registry: CollectorRegistry, metrics: LearnerMetrics, idle: IdleLearner) -> int:
    """Serve /metrics and /health (winnow_learner_run_finished 1) until SIGTERM, training nothing."""
    from winnow.metrics import run_service

    metrics.run_finished.set(1)
    return await run_service(idle, registry, cfg.metrics_port, cfg.metrics_host)
