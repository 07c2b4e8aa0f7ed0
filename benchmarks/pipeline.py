"""Benchmark: the whole pipeline with generation/training overlap off and on, and Kafka's share of a step.

    .venv/bin/python benchmarks/pipeline.py [--steps 8] [--staleness 0,1] [--model DIR|smollm2-135m] [--out r.json]
    winnow bench pipeline [ARGS...]

Part 1, overlap. The same ``winnow up`` run (``winnow.up.Pipeline``: generator and learner as
separate processes over one Kafka-protocol broker; in-process scoring unless ``--verifier``), once
per ``--staleness`` value, one after the other, each on its own topic prefix. Everything else is
identical: model, seeds, prompts, batch, steps.

- ``max_staleness 0`` is overlap *off*: admission control releases one batch of prompts, waits for
  its groups, trains, publishes, and only then releases the next one (generate, then train).
- ``max_staleness 1`` (or 2) is overlap *on*: one (two) more batches are in flight, so the generator
  samples batch k+1 with weights v while the learner trains on batch k.

From each run's ``metrics.jsonl`` (steady state: the first step, which includes start-up, is
skipped): wall time from the first to the last step, trained tokens/s = sum(tokens of steps 2..N) /
that wall time, and the learner's idle share = sum(wait_s) / sum(wait_s + compute_s + publish_s +
checkpoint_s). From the run's groups topic (each ScoredGroup carries its batch's generation and
scoring seconds) and ``ledger.jsonl``: generation batches, median seconds per batch, the generator's
busy share, and batches wasted (every group dropped as stale). From /proc: CPU seconds per second of
the learner and of the generator over the steady window (how many cores each really got). Printed:
a table per run and the ratios of each run to the first (async/sync). When the staleness-0 run
wasted batches (the generator can fetch the next prompts before it has loaded the weights the
learner just announced: those groups are one version old and dropped), an estimate of
generate-then-train without that waste is printed too: compute + publish + checkpoint + one
generation batch per step.

Part 2, Kafka transport. With the broker of part 1, the real messages of the last run (PromptRequests,
ScoredGroups, the WeightAnnouncement, read back from its topics) are sent again through a fresh topic
with winnow's producer (acks=all, linger 5 ms) and consumer settings: the round trip of one message
(send, broker ack, the consumer receives and decodes it) and of a batch of ``batch_groups`` messages
(sent without waiting, one flush, as the generator publishes), plus protobuf encode/decode time per
group. Transport per step = a batch of prompts + a batch of groups + one announcement; reported as a
share of each run's mean step time. (The weight *file* is not Kafka traffic: it is ``publish_s``.)

Part 3, the baseline a user has. The same steps run by the minimal synchronous loop of
``benchmarks/learning.py`` (one process, every core: ``model.generate`` -> score -> one policy-gradient
step on every sample, on the same prompts, chat format, batch, sampling and micro-batch), and every run's
step time and trained tokens/s as a ratio of the loop's. This is the speed-up (or slow-down) a user
gets from winnow over writing that loop; the overlap ratio of part 1 compares winnow with its own
synchronous mode, which leaves a core idle by construction, and is not. ``--no-loop`` skips it.

The default model is the tiny test Qwen2 of ``winnow.learner.tiny``, made bigger (``--hidden``,
``--layers``) so that generating and training take real time; it is random, so every answer is
wrong and the algorithm is ``reinforce`` (no filter: rejection sampling would drop every group and
train nothing). ``--model smollm2-135m`` (or a model directory) runs the real small model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# -- part 1: the runs -----------------------------------------------------------------------------


def run_config(args: argparse.Namespace, model: str, bootstrap: str, staleness: int, prefix: str) -> dict:
    """The ``winnow up`` config of one run; only ``max_staleness`` and the topic prefix differ."""
    sampling = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": args.max_new_tokens}
    return {
        "up": {"generators": 1, "start_verifier": args.verifier, "stop_timeout_s": 60},
        "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": prefix, "session_timeout_ms": 6000},
        "verifier": {"workers": 1, "timeout_s": 2.0},
        "generator": {
            "model": model,
            "engine": "transformers",
            "batch_prompts": args.batch_groups,  # one learner batch = one generation batch
            "batch_wait_ms": 50,
            "sampling": sampling,
            "chat": {"few_shot": [], "system_prompt": None},
            "weights": {"poll_interval_s": 0.1},
            "verifier": {"retry_interval_s": 0.5},
        },
        "learner": {
            "model": model,
            "seed": args.seed,
            "algo": {"preset": "reinforce", "kl_coef": 0.0, "entropy_coef": 0.0, "max_staleness": staleness},
            "optim": {"lr": 1.0e-5, "micro_batch_size": args.micro_batch},
            "batch_groups": args.batch_groups,
            "n": args.n,
            "max_steps": args.steps,
            "sampling": sampling,
            "checkpoint": {"every": args.checkpoint_every},
            "prompts": {
                "kind": "reasoning_gym",
                "name": "basic_arithmetic",
                "size": 1000,
                "seed": args.seed,
                "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
            },
        },
    }


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process (and its waited-for children), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def run_pipeline(data: dict, run_dir: Path, timeout_s: float) -> tuple[list[dict], dict]:
    """Start the services, wait for the learner to reach max_steps, stop everything.

    Returns the step rows of ``metrics.jsonl`` and the CPU seconds each service used between the
    first step and the last sample before the learner exited (sampled every 0.5 s).
    """
    from winnow.up import Pipeline

    pipeline = Pipeline(data, run_dir, resume=False)
    metrics = run_dir / "metrics.jsonl"
    first: tuple[float, dict] | None = None
    last: tuple[float, dict] | None = None
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the banner of `winnow up`
            pipeline.start()
        deadline = time.monotonic() + timeout_s
        while True:
            learner = pipeline.procs["learner"]
            if learner.poll() is not None:
                if learner.returncode != 0:
                    raise RuntimeError(f"learner exited with {learner.returncode}:\n{pipeline._tail_hint('learner')}")
                break
            for name, proc in pipeline.procs.items():
                if name != "learner" and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{pipeline._tail_hint(name)}")
            if first is not None or (metrics.exists() and '"loss"' in metrics.read_text()):
                cpu = {name: _cpu_s(proc.pid) for name, proc in pipeline.procs.items()}
                if all(v is not None for v in cpu.values()):
                    last = (time.monotonic(), cpu)
                    first = first or last
            if time.monotonic() > deadline:
                raise RuntimeError(f"run did not finish in {timeout_s:.0f}s; logs in {run_dir / 'logs'}")
            time.sleep(0.5)
    finally:
        pipeline.stop_all()
    cpu_window: dict[str, float] = {}
    if first is not None and last is not None and last[0] > first[0]:
        cpu_window = {"window_s": last[0] - first[0]}
        for name in last[1]:
            role = "generator" if name.startswith("generator") else name
            cpu_window[f"{role}_cpu_s"] = cpu_window.get(f"{role}_cpu_s", 0.0) + last[1][name] - first[1][name]
    rows = sorted((r for r in _rows(metrics) if "loss" in r), key=lambda r: r["version"])
    return rows, cpu_window


def summarize(rows: list[dict], staleness: int, started: float) -> dict:
    """Steady-state numbers of one run (the first step is skipped: it includes start-up)."""
    if len(rows) < 2:
        raise RuntimeError(f"need at least 2 steps for a steady state, got {len(rows)}")
    steady = rows[1:]
    wall = rows[-1]["time"] - rows[0]["time"]
    phases = {k: sum(r.get(k, 0.0) for r in steady) for k in ("wait_s", "compute_s", "publish_s", "checkpoint_s")}
    busy_total = sum(phases.values())
    tokens = sum(r.get("tokens", 0.0) for r in steady)
    last = rows[-1].get("outcomes", {})
    return {
        "max_staleness": staleness,
        "steps": len(rows),
        "steady_steps": len(steady),
        "first_step_s": rows[0]["time"] - started,
        "wall_s": wall,
        "step_s": wall / len(steady),
        "tokens": tokens,
        "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "idle_share": phases["wait_s"] / busy_total if busy_total > 0 else 0.0,
        **{f"mean_{k}": v / len(steady) for k, v in phases.items()},
        "staleness_mean": statistics.fmean(r.get("staleness_mean", 0.0) for r in steady),
        "stale_dropped": int(last.get("stale", 0)),
        "duplicates": int(last.get("duplicate", 0)),
        "response_length_mean": statistics.fmean(r.get("response_length_mean", 0.0) for r in steady),
    }


def generator_stats(groups: list, ledger: list[dict], rows: list[dict]) -> dict:
    """What the generator did, from the run's groups topic (each group carries its batch's generation
    and scoring seconds) and the learner's ledger (which groups were dropped as stale)."""
    batches: dict[tuple, list] = {}
    for g in groups:
        batches.setdefault((g.generator_id, g.generation_seconds, g.scoring_seconds), []).append(g)
    stale = {r["request_id"] for r in ledger if r.get("outcome") == "stale"}
    t0, t1 = rows[0]["time"], rows[-1]["time"]
    busy = wasted = 0.0
    n_wasted = 0
    for (_, gen_s, score_s), gs in batches.items():
        seconds = gen_s + score_s
        published = max(g.created_at for g in gs)
        if t0 < published <= t1:  # batches that ended inside the steady window
            busy += min(seconds, published - t0)
            if all(g.request_id in stale for g in gs):
                wasted += min(seconds, published - t0)
        n_wasted += all(g.request_id in stale for g in gs)
    times = [k[1] + k[2] for k in batches]
    return {
        "generation_batches": len(batches),
        "wasted_batches": n_wasted,
        "gen_batch_s": statistics.median(times) if times else 0.0,
        "generator_busy_share": busy / (t1 - t0) if t1 > t0 else 0.0,
        "generator_wasted_share": wasted / (t1 - t0) if t1 > t0 else 0.0,
    }


# -- part 2: Kafka transport ------------------------------------------------------------------------


async def read_topic(bootstrap: str, topic: str, cls, limit: int, idle_polls: int = 3) -> list:
    """Up to ``limit`` messages of ``topic`` from the beginning (no consumer group)."""
    from aiokafka import AIOKafkaConsumer

    from winnow.kafka import decode

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    out: list = []
    idle = 0
    try:
        while idle < idle_polls and len(out) < limit:
            batch = await consumer.getmany(timeout_ms=500)
            idle = 0 if batch else idle + 1
            for records in batch.values():
                out += [decode(cls, r.value) for r in records if r.value is not None]
    finally:
        await consumer.stop()
    return out[:limit]


def _renamed(msg, i: int):
    """A copy of ``msg`` with a fresh request id (so every record has its own key)."""
    copy = type(msg)()
    copy.CopyFrom(msg)
    if hasattr(copy, "request_id"):
        copy.request_id = f"bench-{uuid.uuid4().hex[:8]}-{i}"
    return copy


async def transport(bootstrap: str, prompts: list, groups: list, announcement, batch: int, trials: int) -> dict:
    """Round trips through the broker with winnow's producer/consumer settings (see the module docstring)."""
    from aiokafka import TopicPartition

    from winnow.config import KafkaConfig
    from winnow.kafka import (
        PromptRequest,
        ScoredGroup,
        WeightAnnouncement,
        decode,
        decode_record,
        encode,
        ensure_topics,
        make_consumer,
        make_producer,
        send,
        topics,
    )

    cfg = KafkaConfig(bootstrap_servers=bootstrap, topic_prefix=f"bench-transport-{uuid.uuid4().hex[:8]}")
    await ensure_topics(cfg, partitions=1)
    names = topics(cfg)
    producer = make_producer(cfg, client_id="bench-producer")
    consumer = make_consumer(cfg, None, None, client_id="bench-consumer")
    await producer.start()
    await consumer.start()
    out: dict[str, Any] = {}
    try:
        consumer.assign([TopicPartition(t, 0) for t in names])

        async def receive(cls, count: int) -> None:
            got = 0
            while got < count:
                for records in (await consumer.getmany(timeout_ms=5000)).values():
                    for r in records:
                        if decode_record(cls, r) is not None:
                            got += 1

        async def round_trip(topic: str, cls, msgs: list, wait: bool) -> float:
            t0 = time.perf_counter()
            if wait:  # one message: send_and_wait (acks=all), then the consumer gets it
                for m in msgs:
                    await send(producer, topic, m, wait=True)
            else:  # a batch as the generator sends it: no wait per message, one flush
                for m in msgs:
                    await send(producer, topic, m, wait=False)
                await producer.flush()
            await receive(cls, len(msgs))
            return time.perf_counter() - t0

        cases = [
            ("prompt_x1", names.prompts, PromptRequest, prompts, 1, True),
            (f"prompts_x{batch}", names.prompts, PromptRequest, prompts, batch, False),
            ("group_x1", names.groups, ScoredGroup, groups, 1, True),
            (f"groups_x{batch}", names.groups, ScoredGroup, groups, batch, False),
            ("announcement_x1", names.weights, WeightAnnouncement, [announcement], 1, True),
        ]
        for name, topic, cls, pool, count, wait in cases:
            await round_trip(topic, cls, [_renamed(pool[0], -1)], True)  # warm-up: metadata, connections
            times = []
            for t in range(trials):
                msgs = [_renamed(pool[(t * count + i) % len(pool)], i) for i in range(count)]
                times.append(await round_trip(topic, cls, msgs, wait))
            out[name] = {"median_s": statistics.median(times), "min_s": min(times), "messages": count}
    finally:
        await consumer.stop()
        await producer.stop()

    sizes = [len(encode(g)) for g in groups]
    reps = 200
    t0 = time.perf_counter()
    for _ in range(reps):
        for g in groups:
            encode(g)
    enc = (time.perf_counter() - t0) / (reps * len(groups))
    blobs = [encode(g) for g in groups]
    t0 = time.perf_counter()
    for _ in range(reps):
        for b in blobs:
            decode(ScoredGroup, b)
    dec = (time.perf_counter() - t0) / (reps * len(groups))
    per_step = out[f"prompts_x{batch}"]["median_s"] + out[f"groups_x{batch}"]["median_s"]
    per_step += out["announcement_x1"]["median_s"]
    return {
        "round_trips": out,
        "group_bytes_mean": statistics.fmean(sizes),
        "prompt_bytes_mean": statistics.fmean(len(encode(p)) for p in prompts),
        "encode_s_per_group": enc,
        "decode_s_per_group": dec,
        "per_step_s": per_step,
        "batch": batch,
    }


# -- part 3: the minimal synchronous loop ----------------------------------------------------------------


def run_loop(args: argparse.Namespace, model: str) -> dict:
    """The same work as a user's minimal loop (benchmarks/learning.py: one process, every core, generate with
    ``model.generate`` -> score -> a policy-gradient step on every sample -> repeat), on the prompts the
    pipeline runs released (the same source, in order); steady numbers as :func:`summarize` (first step skipped)."""
    import importlib.util

    from winnow.prompts import make_source, parse_source_config

    spec = importlib.util.spec_from_file_location("winnow_bench_learning", Path(__file__).with_name("learning.py"))
    learning = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = learning
    spec.loader.exec_module(learning)
    conf = run_config(args, model, "unused:0", 0, "unused")
    source = make_source(parse_source_config(conf["learner"]["prompts"]))
    train = [{"question": p.problem, "answer": p.gold}
             for p in (source.get(i) for i in range(args.steps * args.batch_groups))]
    ns = argparse.Namespace(seed=args.seed, lr=conf["learner"]["optim"]["lr"], batch_groups=args.batch_groups, n=args.n,
                            max_new_tokens=args.max_new_tokens, micro_batch=args.micro_batch, steps=args.steps,
                            eval_every=args.steps)
    res = learning.minimal_loop(ns, model, train, None, train_on="all", chat=conf["generator"]["chat"])
    rows = res["rows"]
    wall = rows[-1]["wall_s"] - rows[0]["wall_s"]
    tokens = sum(r["tokens"] for r in rows[1:])
    return {"steps": len(rows), "first_step_s": rows[0]["wall_s"], "wall_s": wall, "step_s": wall / (len(rows) - 1),
            "tokens": tokens, "tokens_per_s": tokens / wall if wall > 0 else 0.0, "phases": res["phases"]}


# -- main ---------------------------------------------------------------------------------------------


def _model(args: argparse.Namespace, work: Path) -> tuple[str, str]:
    if args.model:
        if args.model.lower().startswith("smollm2"):
            from winnow.models import resolve_model

            return resolve_model(args.model), args.model
        return args.model, os.path.basename(args.model.rstrip("/"))
    from winnow.learner.tiny import save_tiny

    with contextlib.redirect_stderr(io.StringIO()):  # the progress bar of save_pretrained
        path = save_tiny(work / "model", seed=args.seed, hidden=args.hidden, layers=args.layers)
    return path, f"tiny Qwen2 (hidden {args.hidden}, {args.layers} layers)"


def print_report(results: dict) -> None:
    runs = results["runs"]
    print(f"\nPipeline: {results['model']}, {results['batch_groups']} groups x n={results['n']} per step, "
          f"max_new_tokens {results['max_new_tokens']}, {results['steps']} steps (first skipped); "
          f"{results['cpus']} CPUs (load average {results['load_before'][0]:.1f} before, "
          f"{results['load_after'][0]:.1f} after), threads per service: {results['threads']}, "
          f"broker {results['broker']}")
    head = (f"{'staleness':>9s} {'wall s':>7s} {'step s':>7s} {'tok/s':>7s} {'idle':>6s} {'wait':>6s} "
            f"{'compute':>7s} {'publish':>7s} {'ckpt':>6s} {'lag':>5s} {'gen':>6s} {'gen busy':>8s} "
            f"{'batches':>9s} {'cores L+G':>9s} {'first s':>7s}")
    print(head)
    print("-" * len(head))
    for r in runs:
        batches = f"{r['generation_batches']}/{r['wasted_batches']}"
        cores = f"{r['learner_cores']:.2f}+{r['generator_cores']:.2f}" if "cores_used" in r else "n/a"
        print(f"{r['max_staleness']:9d} {r['wall_s']:7.1f} {r['step_s']:7.2f} {r['tokens_per_s']:7.0f} "
              f"{r['idle_share']:6.0%} {r['mean_wait_s']:6.2f} {r['mean_compute_s']:7.2f} "
              f"{r['mean_publish_s']:7.2f} {r['mean_checkpoint_s']:6.2f} {r['staleness_mean']:5.2f} "
              f"{r['gen_batch_s']:6.2f} {r['generator_busy_share']:8.0%} {batches:>9s} {cores:>9s} "
              f"{r['first_step_s']:7.1f}")
    print("wait/compute/publish/ckpt: learner seconds per steady step; idle = wait share of the learner's time; "
          "lag: mean version lag of trained groups;\ngen: median seconds per generation batch (generate + score); "
          "gen busy: generator's busy share of the steady window; batches: generated / wasted (every group "
          "dropped as stale);\ncores L+G: CPU seconds per second of the learner and the generator over the steady "
          "window (2 = both cores of a 2-core machine); first s: start to first step")
    loop = results.get("loop")
    if loop:
        print(f"\nvs the minimal synchronous loop (benchmarks/learning.py: one process, all cores, generate -> score -> "
              f"train on every sample): {loop['step_s']:.2f} s/step, {loop['tokens_per_s']:.0f} trained tok/s, first step "
              f"{loop['first_step_s']:.1f}s")
        for r in runs:
            print(f"  staleness {r['max_staleness']}: step time x{r['step_s'] / loop['step_s']:.2f} of the loop's, "
                  f"trained tokens/s x{r['tokens_per_s'] / loop['tokens_per_s']:.2f}"
                  if loop["tokens_per_s"] else f"  staleness {r['max_staleness']}: step time "
                  f"x{r['step_s'] / loop['step_s']:.2f} of the loop's")
        print("  (winnow against the loop a user would write, in the same invocation; the 'staleness 1 vs 0' line "
              "compares winnow with its own synchronous mode. On a loaded machine the loop's multi-threaded "
              "phases suffer most: compare on an idle one)")
    base = runs[0]
    for r in runs[1:]:
        ratio = r["tokens_per_s"] / base["tokens_per_s"] if base["tokens_per_s"] else float("nan")
        print(f"staleness {r['max_staleness']} vs {base['max_staleness']} (winnow vs its own synchronous mode, not vs a "
              f"user's loop): trained tokens/s x{ratio:.2f}, learner idle {base['idle_share']:.0%} -> {r['idle_share']:.0%}")
    if base["max_staleness"] == 0 and base["wasted_batches"]:
        ideal = base["tokens"] / base["steady_steps"] / base["ideal_sync_step_s"]
        print(f"staleness 0 wasted {base['wasted_batches']} of {base['generation_batches']} generation batches "
              f"({base['stale_dropped']} groups dropped as stale: the generator took the next prompts before "
              f"loading the new weights).\nWithout that waste, generate-then-train would take ~"
              f"{base['ideal_sync_step_s']:.2f} s/step (compute + publish + checkpoint + one generation batch) = "
              f"~{ideal:.0f} tok/s; " + ", ".join(
                  f"staleness {r['max_staleness']} vs it: x{r['tokens_per_s'] / ideal:.2f}" for r in runs[1:]))
    t = results.get("transport")
    if t:
        print(f"\nKafka transport (median of {results['transport_trials']} round trips, send -> broker ack -> "
              f"consumer decodes; group {t['group_bytes_mean'] / 1024:.1f} KiB, prompt {t['prompt_bytes_mean']:.0f} B)")
        for name, v in t["round_trips"].items():
            print(f"  {name:18s} {v['median_s'] * 1000:8.1f} ms  (min {v['min_s'] * 1000:.1f} ms)")
        print(f"  encode {t['encode_s_per_group'] * 1e6:.0f} us/group, decode {t['decode_s_per_group'] * 1e6:.0f} us/group")
        print(f"  per step ({t['batch']} prompts + {t['batch']} groups + 1 announcement): "
              f"{t['per_step_s'] * 1000:.1f} ms = " + ", ".join(
                  f"{t['per_step_s'] / r['step_s']:.1%} of a staleness-{r['max_staleness']} step" for r in runs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/pipeline.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a HF model directory or 'smollm2-135m' (default: the tiny model)")
    p.add_argument("--hidden", type=int, default=256, help="hidden size of the tiny model")
    p.add_argument("--layers", type=int, default=4, help="layers of the tiny model")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per run (the first is not measured)")
    p.add_argument("--batch-groups", type=int, default=4, help="groups (prompts) per optimizer step")
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--checkpoint-every", type=int, default=1, help="learner checkpoint interval (steps)")
    p.add_argument("--staleness", default="0,1", help="comma-separated max_staleness values; the first is the base")
    p.add_argument("--no-loop", action="store_true", help="skip the minimal synchronous loop baseline")
    p.add_argument("--verifier", action="store_true", help="score through a verifier gRPC process (default in-process)")
    p.add_argument("--threads", type=int, default=0,
                   help="OMP_NUM_THREADS for every service (0 = inherit: torch uses every core in each process)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trials", type=int, default=20, help="round trips per Kafka transport case")
    p.add_argument("--run-timeout", type=float, default=600.0, help="seconds allowed per run")
    p.add_argument("--work-dir", default=None, help="keep run directories here (default: a temporary one, removed)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    try:
        stalenesses = [int(s) for s in args.staleness.split(",") if s.strip()]
    except ValueError:
        p.error(f"--staleness must be comma-separated integers, got {args.staleness!r}")
    if not stalenesses or min(stalenesses) < 0:
        p.error("--staleness needs at least one value >= 0")
    if args.steps < 2:
        p.error("--steps must be >= 2 (the first step is start-up)")

    for name in ("aiokafka", "winnow.kafka", "winnow.brokers", "winnow.up"):  # `winnow bench` logs at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    from winnow.brokers import LocalBroker
    from winnow.kafka import PromptRequest, ScoredGroup, WeightAnnouncement

    if args.threads:  # the services are child processes: they inherit it
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="winnow-bench-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    broker = None
    try:
        model, model_name = _model(args, work)
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if bootstrap:
            broker_name = f"Kafka at {bootstrap}"
        else:
            broker = LocalBroker("noida", work / "broker")
            bootstrap = broker.start()
            broker_name = "local noida"
        results: dict[str, Any] = {
            "model": model_name, "steps": args.steps, "batch_groups": args.batch_groups, "n": args.n,
            "max_new_tokens": args.max_new_tokens, "cpus": os.cpu_count(), "broker": broker_name,
            "threads": os.environ.get("OMP_NUM_THREADS", "default"), "load_before": os.getloadavg(),
            "platform": platform.platform(), "transport_trials": args.trials, "runs": [],
        }
        tag = uuid.uuid4().hex[:6]
        prefix = ""
        for s in stalenesses:
            prefix = f"bench-pipeline-{tag}-s{s}"
            run_dir = work / f"staleness-{s}"
            print(f"run max_staleness={s}: {args.steps} steps ...", file=sys.stderr, flush=True)
            started = time.time()
            rows, cpu = run_pipeline(run_config(args, model, bootstrap, s, prefix), run_dir, args.run_timeout)
            summary = summarize(rows, s, started)
            if cpu:
                summary["cpu"] = cpu
                summary["cores_used"] = sum(v for k, v in cpu.items() if k.endswith("_cpu_s")) / cpu["window_s"]
                summary["learner_cores"] = cpu.get("learner_cpu_s", 0.0) / cpu["window_s"]
                summary["generator_cores"] = cpu.get("generator_cpu_s", 0.0) / cpu["window_s"]
            groups = asyncio.run(read_topic(bootstrap, f"{prefix}.groups", ScoredGroup, 100_000))
            summary.update(generator_stats(groups, _rows(run_dir / "ledger.jsonl"), rows))
            # generate-then-train without any wasted batch: train + publish + checkpoint + one generation
            summary["ideal_sync_step_s"] = (summary["mean_compute_s"] + summary["mean_publish_s"]
                                            + summary["mean_checkpoint_s"] + summary["gen_batch_s"])
            summary["ideal_sync_tokens_per_s"] = summary["tokens"] / summary["steady_steps"] / summary["ideal_sync_step_s"]
            summary["total_s"] = time.time() - started
            results["runs"].append(summary)
            print(f"  done in {summary['total_s']:.0f}s: {summary['tokens_per_s']:.0f} trained tok/s, "
                  f"learner idle {summary['idle_share']:.0%}", file=sys.stderr, flush=True)

        print("Kafka transport round trips ...", file=sys.stderr, flush=True)
        prompts = asyncio.run(read_topic(bootstrap, f"{prefix}.prompts", PromptRequest, 16))
        groups = asyncio.run(read_topic(bootstrap, f"{prefix}.groups", ScoredGroup, 16))
        anns = asyncio.run(read_topic(bootstrap, f"{prefix}.weights", WeightAnnouncement, 100))
        if not (prompts and groups and anns):
            raise RuntimeError(f"could not read back messages of the last run ({prefix}.*)")
        results["transport"] = asyncio.run(
            transport(bootstrap, prompts, groups, anns[-1], args.batch_groups, args.trials)
        )
        if not args.no_loop:
            print(f"minimal synchronous loop: {args.steps} steps ...", file=sys.stderr, flush=True)
            results["loop"] = run_loop(args, model)
        results["load_after"] = os.getloadavg()
        for r in results["runs"]:
            r["transport_share"] = results["transport"]["per_step_s"] / r["step_s"]
        print_report(results)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))
            print(f"results written to {args.out}", file=sys.stderr)
        return 0
    finally:
        if broker is not None:
            broker.stop()
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
