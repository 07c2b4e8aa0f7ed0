"""``winnow bench NAME [ARGS...]``: run a benchmark from the repository's ``benchmarks/`` folder.

Each benchmark is a script ``benchmarks/NAME.py`` with a ``main(argv) -> int`` that measures winnow
against a baseline in the same run and prints the ratio (see the benchmark's docstring).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def available() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.name.startswith("_")) if BENCH_DIR.is_dir() else []


def run(args: argparse.Namespace) -> int:
    names = available()
    if args.name not in names:
        where = f"in {BENCH_DIR}" if BENCH_DIR.is_dir() else "(benchmarks/ ships with the source checkout only)"
        print(f"winnow bench: unknown benchmark {args.name!r} {where}; available: {', '.join(names) or 'none'}",
              file=sys.stderr)
        return 2
    path = BENCH_DIR / f"{args.name}.py"
    spec = importlib.util.spec_from_file_location(f"winnow_bench_{args.name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return int(module.main(list(args.args)) or 0)


def run_experiment(args: argparse.Namespace) -> int:
    """``winnow experiment ARGS``: ``benchmarks/experiment.py`` (the algorithm comparison)."""
    args.name = "experiment"
    return run(args)


def register(sub) -> None:
    p = sub.add_parser("bench", help=f"run a benchmark ({', '.join(available()) or 'benchmarks/'})",
                       description=__doc__)
    p.add_argument("name", help=f"benchmark name: {', '.join(available()) or 'see benchmarks/'}")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    p.set_defaults(func=run)
    e = sub.add_parser("experiment", add_help=False, prefix_chars="+",  # every flag goes to the script
                       help="compare the algorithm presets through the pipeline (benchmarks/experiment.py; --help)")
    e.add_argument("args", nargs=argparse.REMAINDER, help="arguments of benchmarks/experiment.py")
    e.set_defaults(func=run_experiment)
