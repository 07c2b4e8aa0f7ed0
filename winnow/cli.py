"""The ``winnow`` command. Each service module registers its own subcommands.

Subcommand modules must import lightly (no torch/vLLM at import time) so that ``--help``
answers at once; heavy imports happen inside the command function.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# command -> the module whose ``register(subparsers)`` defines it; each parser sets ``func(args) -> int``.
# Only the named command's module is imported (``winnow score`` starts without pydantic: winnow.config is
# ~0.15 s); ``winnow --help``, no command or an unknown one import every module. A test checks this table
# against what each module registers.
COMMANDS = {
    "verifier": "winnow.verifier.main",  # winnow verifier serve
    "score": "winnow.verifier.main",
    "learner": "winnow.learner.main",  # winnow learner run
    "generator": "winnow.generator.main",  # winnow generator run
    "up": "winnow.up",
    "bench": "winnow.bench",
    "experiment": "winnow.bench",
    "samples": "winnow.commands",
    "plot": "winnow.commands",
    "export": "winnow.commands",
    "config": "winnow.commands",
    "eval": "winnow.evaluation",
}
COMMAND_MODULES = list(dict.fromkeys(COMMANDS.values()))

# section -> its config class, imported only to print --help (pydantic only: no torch)
CONFIG_CLASSES = {
    "learner": "winnow.learner.config:LearnerConfig",
    "generator": "winnow.generator.config:GeneratorConfig",
    "verifier": "winnow.verifier.config:VerifierConfig",
    "up": "winnow.up:UpConfig",
}


class WinnowParser(argparse.ArgumentParser):
    """An ArgumentParser whose ``--help`` ends with the config fields of its service (see
    :func:`document_config`), listed from the pydantic model only when help is asked for."""

    winnow_config: str = ""

    def format_help(self) -> str:
        text = super().format_help()
        if self.winnow_config:
            text += "\n" + config_fields_help(self.winnow_config)
        return text


def document_config(parser: argparse.ArgumentParser, section: str) -> None:
    """Make ``parser``'s ``--help`` list every field of ``section``'s config (name, type, default, doc)."""
    parser.winnow_config = section
    if parser.formatter_class is argparse.HelpFormatter:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _config_class(section: str):
    module, _, name = CONFIG_CLASSES[section].partition(":")
    return getattr(importlib.import_module(module), name)


def config_fields_help(section: str) -> str:
    from winnow.config import env_prefix

    cls = _config_class(section)
    lines = [
        f"config fields ({section}): set with --set {'up.' if section == 'up' else ''}KEY=VALUE, "
        f"env {env_prefix(section)}KEY "
        f"(nested: A__B), or in the --config file",
    ]
    for name, type_s, default, doc in field_rows(cls):
        lines.append(f"  {name}: {type_s} = {default}")
        for doc_line in doc.splitlines():
            lines.append(f"      {doc_line.strip()}")
    return "\n".join(lines) + "\n"


def _type_name(annotation) -> str:
    import typing

    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def field_rows(cls, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(dotted name, type, default as JSON, docstring)`` for every field of a pydantic model, nested
    models flattened (``checkpoint.dir``)."""
    import json

    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    rows = []
    for name, field in cls.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if field.description:
                rows.append((f"{prefix}{name}", ann.__name__, "{...}", field.description))
            rows.extend(field_rows(ann, f"{prefix}{name}."))
            continue
        if field.default is not PydanticUndefined:
            default = field.default
        elif field.default_factory is not None:
            default = field.default_factory()
        else:
            rows.append((f"{prefix}{name}", _type_name(ann), "(required)", field.description or ""))
            continue
        try:
            default_s = json.dumps(default.get_secret_value() if hasattr(default, "get_secret_value") else default,
                                   default=str)
        except (TypeError, ValueError):
            default_s = str(default)
        rows.append((f"{prefix}{name}", _type_name(ann), default_s, field.description or ""))
    return rows


def print_config_fields(section: str) -> None:
    """``winnow config SECTION``: the --help field list, plus the learner's algo and optim blocks (held
    as dicts in the config because their classes import torch)."""
    print(config_fields_help(section), end="")
    if section == "learner":
        from winnow.learner.algo import AlgoConfig
        from winnow.learner.step import OptimConfig

        for block, cls in (("algo", AlgoConfig), ("optim", OptimConfig)):
            print(f"\n{block} fields (--set {block}.KEY=VALUE):")
            for name, type_s, default, doc in field_rows(cls, f"{block}."):
                print(f"  {name}: {type_s} = {default}")
                for line in doc.splitlines():
                    print(f"      {line.strip()}")


def add_config_args(parser: argparse.ArgumentParser, section: str, example: str) -> None:
    """The config flags every service's ``run`` command takes: ``--config``, ``--set``, ``--print-config``;
    its ``--help`` lists the config fields."""
    if section in CONFIG_CLASSES:
        document_config(parser, section)
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
    from winnow.config import ConfigError, load_config, parse_overrides

    cfg = load_config(cls, args.config, parse_overrides(args.overrides))
    if args.print_config:
        print(cfg.model_dump_json(indent=2))
        return None
    if cls.section == "learner":  # a missing prompt file is a one-line error before the (long) config line
        from winnow.up import source_path_problems

        if problems := source_path_problems(cfg):
            raise ConfigError("\n".join(problems))
    logging.getLogger(f"winnow.{cls.section}").info("%s config: %s", cls.section, cfg.model_dump_json())
    return cfg


def command_name(argv: list[str]) -> str | None:
    """The command ``argv`` names (its first positional; ``--log-level``'s value skipped), or None."""
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token == "--log-level":
            skip = True
        elif token == "--":
            return None
        elif not token.startswith("-"):
            return token
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``winnow`` parser; with ``argv``, only the module of the command it names registers (see ``COMMANDS``)."""
    import winnow

    summary = " ".join(winnow.__doc__.split("\n\n")[0].split())  # the docstring's first paragraph, whole
    parser = WinnowParser(prog="winnow", description=summary)
    parser.add_argument("--version", action="version", version=f"winnow {winnow.__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    command = command_name(argv) if argv is not None else None
    for mod in [COMMANDS[command]] if command in COMMANDS else COMMAND_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:  # not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader went away (``winnow ... | head``): not an error of ours. Point stdout at devnull so
        # that the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _config_error() -> tuple[type[Exception], ...]:
    """``winnow.config.ConfigError`` once that module is loaded; () before (nothing could have raised it)."""
    config = sys.modules.get("winnow.config")
    return (config.ConfigError,) if config is not None else ()


def _main(argv: list[str] | None) -> int:
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        return 130
    except _config_error() as e:  # evaluated only when something was raised
        print(f"winnow: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
