"""The ``winnow`` command. Each service module registers its own subcommands.

Subcommand modules must import lightly (no torch/vLLM at import time) so that ``--help``
answers at once; heavy imports happen inside the command function.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from winnow.config import ConfigError

# module path -> it defines ``register(subparsers)``; each parser sets ``func(args) -> int``.
COMMAND_MODULES = [
    "winnow.verifier.main",  # winnow verifier serve, winnow score
    "winnow.learner.main",  # winnow learner run
    "winnow.generator.main",  # winnow generator run
    "winnow.up",  # winnow up
    "winnow.bench",  # winnow bench ...
]


def add_config_args(parser: argparse.ArgumentParser, section: str, example: str) -> None:
    """The config flags every service's ``run`` command takes: ``--config``, ``--set``, ``--print-config``."""
    parser.add_argument(
        "--config", "-c", default=None, help=f"YAML/JSON config file (a {section}: section or flat)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config field, e.g. --set {example} (repeatable)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")


def load_service_config(cls, args: argparse.Namespace):
    """Resolve the config from ``args`` (see :func:`add_config_args`); None after ``--print-config``."""
    from winnow.config import load_config, parse_overrides

    cfg = load_config(cls, args.config, parse_overrides(args.overrides))
    if args.print_config:
        print(cfg.model_dump_json(indent=2))
        return None
    logging.getLogger(f"winnow.{cls.section}").info("%s config: %s", cls.section, cfg.model_dump_json())
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="winnow", description=__import__("winnow").__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:  # not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"winnow: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
