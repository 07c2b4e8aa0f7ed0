"""The learner's step at 1 process x T threads vs N processes x T/N threads (torchrun, FSDP2 over gloo) on this CPU:
trained tokens/s and each rank's memory, on the same batches.

    python benchmarks/distributed_learner.py --out DIR [--model smollm2-135m] [--procs 2] [--threads 2] [--repeats 3]

Each repetition runs both layouts back to back (1 process first, then torchrun), each as fresh processes:
build the learner's Trainer the way the service does (``build_trainer`` / ``build_sharded_trainer``: fp32 master
weights, bf16 compute by autocast or by FSDP2's MixedPrecisionPolicy), train ``--warmup`` steps, then time
``--steps`` steps of ``--groups`` groups x ``--n`` samples (random token ids of the default run's shape: 40-token
prompts, 8-40-token answers, half of each group correct, GRPO without KL), the same batches in both layouts (each
rank trains its share of whole groups: ``learner.distributed.train_share``). Per rank: resident memory after the
steps (model + gradients + AdamW state + the allocator's cache) and the peak. Raw results: ``DIR/runs.jsonl``
(one row per layout and repetition), the summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_batches(steps: int, groups: int, n: int, vocab: int, seed: int = 0):
    from winnow.learner.batch import GroupData, SampleData

    rng = random.Random(seed)
    out = []
    for s in range(steps):
        batch = []
        for g in range(groups):
            prompt = [rng.randrange(3, vocab) for _ in range(40)]
            samples = []
            for i in range(n):
                t = rng.randint(8, 40)
                samples.append(SampleData([rng.randrange(3, vocab) for _ in range(t)], [-2.0] * t, [s] * t,
                                          1 if i % 2 else 2))
            batch.append(GroupData(f"p{s}-{g}", f"r-{s * groups + g}-0", prompt, samples))
        out.append(batch)
    return out


def worker(args) -> None:
    """One layout: run inside a process (1-process layout) or every torchrun rank."""
    import torch

    from winnow.config import load_config
    from winnow.learner.config import LearnerConfig

    data = {"learner": {"model": args.model, "algo": {"preset": "grpo", "kl_coef": 0.0},
                        "optim": {"lr": 1e-6, "micro_batch_size": args.micro_batch}},
            "numerics": {"precision": "bfloat16"}}
    cfg = load_config(LearnerConfig, data=data)
    sharded = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if sharded:
        import torch.distributed as dist

        from winnow.learner.distributed import build_sharded_trainer, train_share

        trainer, _ = build_sharded_trainer(cfg)
        step = lambda groups: train_share(trainer, groups)  # noqa: E731
    else:
        from winnow.learner.model import build_trainer

        trainer, _ = build_trainer(cfg)
        step = trainer.train_step
    vocab = trainer.model.get_input_embeddings().num_embeddings
    batches = make_batches(args.warmup + args.steps, args.groups, args.n, vocab)
    after_load = rss_mib()
    for b in batches[: args.warmup]:
        step(b)
    t0 = time.perf_counter()
    tokens = 0.0
    for b in batches[args.warmup:]:
        tokens += step(b).metrics["tokens"]
    seconds = time.perf_counter() - t0
    row = {"rank": int(os.environ.get("RANK", "0")), "world": int(os.environ.get("WORLD_SIZE", "1")),
           "threads": torch.get_num_threads(), "seconds": seconds, "tokens": tokens,
           "tokens_per_s": tokens / seconds, "rss_after_load_mib": after_load, "rss_after_steps_mib": rss_mib(),
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if sharded:
        import torch.distributed as dist

        rows = [None] * dist.get_world_size()
        dist.all_gather_object(rows, row)
        if dist.get_rank() == 0:
            Path(args.result).write_text(json.dumps(rows))
        dist.destroy_process_group()
    else:
        Path(args.result).write_text(json.dumps([row]))


def run_layout(args, procs: int, rep: int, out: Path) -> dict:
    result = out / f"layout-{procs}-rep{rep}.json"
    threads = max(1, args.threads // procs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    inner = [str(Path(__file__).resolve()), "--worker", "--result", str(result), "--model", args.model,
             "--groups", str(args.groups), "--group-size", str(args.n), "--steps", str(args.steps), "--warmup",
             str(args.warmup), "--micro-batch", str(args.micro_batch)]
    if procs == 1:
        cmd = [sys.executable, *inner]
    else:
        from winnow.brokers import free_port

        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{free_port()}", *inner]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ranks = json.loads(result.read_text())
    return {"procs": procs, "threads_per_proc": threads, "rep": rep, "wall_s": time.perf_counter() - t0,
            "load_avg": os.getloadavg()[0], "tokens_per_s": ranks[0]["tokens"] / max(r["seconds"] for r in ranks),
            "ranks": ranks}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/distributed-learner")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="threads in all: T for 1 process, T/N per rank")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--group-size", dest="n", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from winnow.models import resolve_model

    args.model = resolve_model(args.model)  # convert once, before the timed processes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with (out / "runs.jsonl").open("a") as f:
        for rep in range(args.repeats):
            for procs in (1, args.procs):
                row = run_layout(args, procs, rep, out)
                rows.append(row)
                f.write(json.dumps(row) + "\n")
                f.flush()
                print(f"rep {rep}: {procs} x {row['threads_per_proc']} threads: {row['tokens_per_s']:.0f} trained tok/s, "
                      f"rss/rank {[round(r['rss_after_steps_mib']) for r in row['ranks']]} MiB, "
                      f"peak {[round(r['peak_rss_mib']) for r in row['ranks']]} MiB (load {row['load_avg']:.1f})",
                      flush=True)
    one = [r["tokens_per_s"] for r in rows if r["procs"] == 1]
    many = [r["tokens_per_s"] for r in rows if r["procs"] == args.procs]
    ratios = [b / a for a, b in zip(one, many, strict=True)]
    print(f"trained tokens/s, {args.procs} ranks / 1 process, per repetition: {[round(x, 2) for x in ratios]}; "
          f"median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
