"""Benchmark (issue 30): the generator's sampling call alone, on a run's generator config.

    .venv/bin/python benchmarks/generator_step.py --config RUN/config/generator-0.yaml [--calls 5] \
        [--prompts 8] [--n 8] [--threads 1] [--out rows.jsonl]

Builds the run's engine (``generator.engine.make_engine``: model, precision, attention as the run's generator) and
times ``engine.generate`` on the default task's prompts ("Calculate a + b." in the run's chat format, two-digit
terms) with the run's sampling settings, ``--calls`` times after one warm-up call, in one process with
``--threads`` torch threads (``winnow up`` gives each torch process its share of the cores: 1 of 2 here). Per
call: wall seconds, user/system CPU, minor page faults, sequences and generated tokens. Compare with the
generator's ``winnow_generator_generation_seconds`` inside ``winnow up`` (sum / count), for the same call size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a generator config (RUN/config/generator-0.yaml of winnow up)")
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--prompts", type=int, default=8, help="prompts per call")
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="append one JSON row per call here")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from winnow.chat import PromptFormatter
    from winnow.config import load_config
    from winnow.generator.config import GeneratorConfig
    from winnow.generator.engine import make_engine

    cfg = load_config(GeneratorConfig, args.config)  # the file's shared sections (model, numerics, chat...) included
    engine = make_engine(cfg)
    fmt = PromptFormatter(engine.tokenizer, cfg.chat)
    rng = random.Random(0)
    rows = []
    for call in range(args.calls + 1):
        prompts = [fmt(f"Calculate {rng.randrange(10, 100)} + {rng.randrange(10, 100)}.") for _ in range(args.prompts)]
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        out = engine.generate(prompts, args.n, cfg.sampling)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        row = {"call": call, "warm_up": call == 0, "wall_s": t1 - t0, "user_s": r1.ru_utime - r0.ru_utime,
               "sys_s": r1.ru_stime - r0.ru_stime, "minflt": r1.ru_minflt - r0.ru_minflt,
               "sequences": sum(len(c) for c in out),
               "tokens": sum(len(s.token_ids) for c in out for s in c),
               "prompt_tokens": sum(map(len, prompts)), "threads": torch.get_num_threads(),
               "load1": os.getloadavg()[0]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    timed = [r["wall_s"] for r in rows if not r["warm_up"]]
    print(f"engine.generate, {args.prompts} prompts x n={args.n}, {args.threads} thread(s): median {statistics.median(timed):.2f} s "
          f"[{min(timed):.2f}, {max(timed):.2f}] over {len(timed)} calls", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
