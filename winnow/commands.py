"""Commands around a run: ``winnow samples``, ``winnow plot``, ``winnow export``, ``winnow config``.

Imports stay light (argparse only); each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "samples",
        help="print what the model wrote at each step (RUN_DIR/samples.jsonl)",
        description="Print the sample log of a learner run directory: each group's problem, gold, "
        "responses, verifier statuses, rewards, extracted answers, and whether each sample was kept.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="learner run directory (or a samples.jsonl file)")
    p.add_argument("--step", type=int, help="only this step (policy version after the step)")
    p.add_argument("--status", help="only samples with this verifier status (correct, wrong, no_answer, ...)")
    p.add_argument("--outcome", help="only groups with this outcome (trained, all_correct, all_wrong, stale)")
    p.add_argument("--prompt", help="only prompt ids containing this text")
    p.add_argument("--last", type=int, metavar="N", help="only the last N matching groups")
    p.add_argument("--max-chars", type=int, default=1500, help="cut texts to this many characters (0 = all)")
    p.add_argument("--json", action="store_true", help="print the matching rows as JSON lines")
    p.set_defaults(func=_samples)

    p = sub.add_parser(
        "plot",
        help="plot reward, accuracy, entropy, KL, mismatch, staleness, throughput of runs",
        description="Draw the training curves of one or more learner run directories (their metrics.jsonl), "
        "one line per run, against step and against wall time. Needs matplotlib.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="learner run directories (or metrics.jsonl)")
    p.add_argument("-o", "--output", default="winnow-runs.png", help="image file (.png, .svg, .pdf)")
    p.add_argument("--label", action="append", default=[], help="legend label per run (default: its folder)")
    p.add_argument("--smooth", type=int, default=1, help="moving-average window in steps (default 1: none)")
    p.set_defaults(func=_plot)

    p = sub.add_parser(
        "export",
        help="export a published version or the final model as a Hugging Face folder",
        description="Write OUT_DIR with config.json, generation_config.json, the tokenizer and "
        "model.safetensors, loadable by AutoModelForCausalLM.from_pretrained and vLLM. The weights come "
        "from the run's weight store (--version K, default the newest) or, if that version is not "
        "there, from its checkpoint.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="learner run directory (holds learner-config.json)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (must be empty or absent)")
    p.add_argument("--version", type=int, help="policy version to export (default: the newest)")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float32", "float16"], default="auto",
                   help="dtype of the saved weights (default: as stored)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty OUT_DIR")
    p.add_argument("--merge", action="store_true",
                   help="a LoRA run: merge the adapters into the base and write a full model (default: the peft "
                   "adapter folder, adapter_config.json + adapter_model.safetensors, with the tokenizer)")
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "config",
        help="list a service's config fields with types, defaults and docs",
        description="List every config field of a service (the same list as its --help), including the "
        "learner's algo and optim blocks.",
    )
    p.add_argument("section", choices=["learner", "generator", "verifier", "up"], help="service")
    p.set_defaults(func=_config)


def _samples(args: argparse.Namespace) -> int:
    from collections import deque
    from pathlib import Path

    from winnow.config import ConfigError
    from winnow.samples import format_row, json_line, read_samples, select

    path = Path(args.run_dir)
    if path.is_dir():
        path = path / "samples.jsonl"
    if not path.is_file():
        raise ConfigError(f"no sample log at {path} (the learner writes it; see tracking.samples)")
    rows = select(read_samples(path), step=args.step, status=args.status, outcome=args.outcome, prompt=args.prompt)
    if args.last:
        rows = iter(deque(rows, maxlen=args.last))
    count = 0
    for r in rows:
        count += 1
        print(json_line(r) if args.json else format_row(r, max_chars=args.max_chars) + "\n")
    if not count:
        print("no matching samples", file=sys.stderr)
        return 1
    return 0


def _plot(args: argparse.Namespace) -> int:
    from winnow.plot import plot_runs

    out = plot_runs(args.run_dirs, args.output, labels=args.label or None, window=args.smooth)
    print(f"wrote {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from winnow.export import export_run

    out = export_run(args.run_dir, args.out_dir, version=args.version, dtype=args.dtype, force=args.force,
                     merge=args.merge)
    print(f"exported version {out.version} to {out.path} (from {out.source})")
    return 0


def _config(args: argparse.Namespace) -> int:
    from winnow.cli import print_config_fields

    print_config_fields(args.section)
    return 0
