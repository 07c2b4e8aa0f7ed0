"""Probe (issue 30): where the learner's memory and system time go, step by step, under each allocator and threading.

    .venv/bin/python benchmarks/learner_memory.py --config RUN/config/learner.yaml [--steps 12] \
        [--variants glibc,glibc-thread-hop,arena2-thread-hop,jemalloc-thread-hop] [--out DIR]

Each variant runs in its own fresh process: the learner's ``build_trainer`` on the run's learner config (the
model, micro-batching, precision and preset the run used), then ``--steps`` training steps on synthetic groups with
the run's shape (``batch_groups`` x ``n``, prompt ~``--prompt-len`` tokens, responses of random length up to the
config's ``max_new_tokens``, mixed rewards so every group trains). After every step it records, from
``getrusage`` and ``/proc/self/status``: resident set (VmRSS) and its peak, minor page faults, user and system CPU,
voluntary and involuntary context switches, wall time.

Variants (``--variants``, comma-separated):
  ``glibc``                   train_step in the main thread (what ``benchmarks/learner_step.py`` measures)
  ``glibc-thread-hop``        train_step through ``asyncio.to_thread`` (the learner service's way: any of the loop's
                              executor threads runs it, each with its own malloc arena)
  ``one-thread``              through an executor of one dedicated thread (any variant ending so: e.g.
                              ``jemalloc-keep-one-thread``)
  ``arena2-thread-hop``       thread-hop with ``MALLOC_ARENA_MAX=2``
  ``jemalloc-thread-hop``     thread-hop with jemalloc preloaded (``--jemalloc PATH``), its default decay (freed pages
                              go back to the kernel after ~10 s)
  ``jemalloc-keep-thread-hop`` thread-hop with jemalloc keeping freed pages (``dirty_decay_ms:-1,muzzy_decay_ms:-1``)
  ``jemalloc-oversize-thread-hop`` thread-hop with the setting of PyTorch's CPU performance guides: every
                              allocation from jemalloc's one oversize arena (``oversize_threshold:1``), pages kept
  ``tcmalloc-thread-hop``     thread-hop with tcmalloc preloaded (``--tcmalloc PATH``)
Rows go to ``OUT/<variant>.jsonl`` (one per step), a summary to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _groups(vocab: int, groups: int, n: int, prompt_len: int, max_new: int, seed: int, formatter=None):
    """Synthetic groups of the run's shape. With ``formatter`` (the run's chat format) the prompts are the default
    task's ("Calculate a + b." in the run's format, so they share its system prompt and few-shot prefix, as a real
    batch does), else ``prompt_len`` +- 8 random tokens."""
    import random

    from winnow.learner.batch import GroupData, SampleData

    rng = random.Random(seed)
    out = []
    for gi in range(groups):
        if formatter is not None:
            prompt = formatter(f"Calculate {rng.randrange(10, 100)} + {rng.randrange(10, 100)}.")
        else:
            prompt = [rng.randrange(3, vocab) for _ in range(prompt_len + rng.randrange(-8, 9))]
        samples = []
        for si in range(n):
            length = rng.randrange(4, max_new + 1)
            resp = [rng.randrange(3, vocab) for _ in range(length)]
            status = 1 if si % 2 == 0 else 2  # CORRECT / WRONG: every group is mixed and trains
            samples.append(SampleData(resp, [-2.5] * length, [0], status, "length" if length == max_new else "stop"))
        out.append(GroupData(f"p{seed}-{gi}", f"r{seed}-{gi}", prompt, samples))
    return out


def child(args) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from winnow.config import load_config
    from winnow.learner.config import LearnerConfig
    from winnow.learner.model import build_trainer

    cfg = load_config(LearnerConfig, args.config)  # the file's shared sections (model, numerics, chat...) included
    trainer, tokenizer = build_trainer(cfg)
    vocab = len(tokenizer)
    formatter = None
    if args.chat_prompts:
        from winnow.chat import PromptFormatter

        formatter = PromptFormatter(tokenizer, cfg.chat)
    out = Path(args.out) / f"{args.variant}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    one = ThreadPoolExecutor(max_workers=1)

    async def step(batch):
        if args.variant.endswith("thread-hop"):
            return await asyncio.to_thread(trainer.train_step, batch)
        if args.variant.endswith("one-thread"):
            return await asyncio.get_running_loop().run_in_executor(one, trainer.train_step, batch)
        return trainer.train_step(batch)

    async def main():
        for s in range(args.steps):
            batch = _groups(vocab, cfg.batch_groups, cfg.n, args.prompt_len, cfg.sampling.max_new_tokens, seed=s,
                            formatter=formatter)
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            metrics = await step(batch)
            r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            row = {"variant": args.variant, "step": s + 1, "wall_s": t1 - t0, "user_s": r1.ru_utime - r0.ru_utime,
                   "sys_s": r1.ru_stime - r0.ru_stime, "minflt": r1.ru_minflt - r0.ru_minflt,
                   "nvcsw": r1.ru_nvcsw - r0.ru_nvcsw, "nivcsw": r1.ru_nivcsw - r0.ru_nivcsw,
                   "rss_kib": _status_kib("VmRSS"), "hwm_kib": _status_kib("VmHWM"),
                   "tokens": sum(len(x.response_token_ids) for g in batch for x in g.samples),
                   "load1": os.getloadavg()[0],
                   **{f"trainer_{k}": metrics.metrics[k] for k in ("tokens", "time_forward_s", "time_backward_s",
                                                                   "time_optimizer_s", "time_total_s")
                      if k in getattr(metrics, "metrics", {})}}
            rows.append(row)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
            if row["rss_kib"] > args.max_rss_gib * 2**20:  # a growing variant must not take the machine down
                print(f"stopped: resident set above --max-rss-gib {args.max_rss_gib}", flush=True)
                break

    asyncio.run(main())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a learner config (e.g. RUN/config/learner.yaml of winnow up)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--prompt-len", type=int, default=120)
    p.add_argument("--chat-prompts", action="store_true",
                   help="prompts in the run's chat format (the default task's sums) instead of random tokens")
    p.add_argument("--variants", default="glibc,glibc-thread-hop,one-thread,arena2-thread-hop,jemalloc-thread-hop")
    p.add_argument("--jemalloc", default="/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    p.add_argument("--tcmalloc", default="/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each variant (winnow up's share)")
    p.add_argument("--out", default="runs/learner_memory")
    p.add_argument("--max-rss-gib", type=float, default=10.0, help="stop a variant whose resident set passes this")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        child(args)
        return
    for variant in args.variants.split(","):
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
        if variant.startswith("arena2"):
            env["MALLOC_ARENA_MAX"] = "2"
        if variant.startswith("jemalloc"):
            env["LD_PRELOAD"] = args.jemalloc
        if variant.startswith("jemalloc-keep"):  # never give freed pages back: no page faults once warm
            env["MALLOC_CONF"] = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
        if variant.startswith("jemalloc-oversize"):  # every allocation from the one oversize arena, pages kept
            env["MALLOC_CONF"] = ("oversize_threshold:1,background_thread:true,metadata_thp:auto,"
                                  "dirty_decay_ms:9000000000,muzzy_decay_ms:9000000000")
        if variant.startswith("tcmalloc"):
            env["LD_PRELOAD"] = args.tcmalloc
        (Path(args.out) / f"{variant}.jsonl").unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--config", args.config, "--steps", str(args.steps), "--prompt-len",
               str(args.prompt_len), "--out", args.out, "--max-rss-gib", str(args.max_rss_gib), "--variant", variant,
               *(["--chat-prompts"] if args.chat_prompts else [])]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        rows = [json.loads(x) for x in (Path(args.out) / f"{variant}.jsonl").read_text().splitlines()]
        late = rows[len(rows) // 2:]
        mean = lambda k, late=late: sum(r[k] for r in late) / len(late)  # noqa: E731
        print(f"{variant:22s} rss {rows[0]['rss_kib'] / 2**20:.2f} -> {rows[-1]['rss_kib'] / 2**20:.2f} GiB "
              f"(peak {rows[-1]['hwm_kib'] / 2**20:.2f}); second half per step: wall {mean('wall_s'):.1f} s, "
              f"user {mean('user_s'):.1f} s, sys {mean('sys_s'):.2f} s, minflt {mean('minflt'):.0f}, "
              f"ctx {mean('nvcsw'):.0f}/{mean('nivcsw'):.0f}", flush=True)


if __name__ == "__main__":
    main()
