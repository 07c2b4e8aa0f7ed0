"""Benchmark: Kafka vs an in-process queue for the same scored groups, and their share of a step.

    .venv/bin/python benchmarks/transport.py [--sizes 8x128,16x1024] [--groups 64] [--trials 20]
                                             [--batch-groups 8] [--broker noida] [--metrics-jsonl PATH]
                                             [--out results.json]
    winnow bench transport [ARGS...]

The payload is the real ``ScoredGroup`` protobuf the generators publish (``protos/winnow/v1``), built
synthetically at a realistic size: ``n`` samples x ``T`` response tokens each, with per-token token
ids (vocabulary 49152, SmolLM2's), behaviour log-probs and policy versions, a ~4 characters/token
response text, a 96-token prompt. For every size, in the same process, the same groups go through:

  ``kafka``  winnow's own producer and consumer (``winnow.kafka.make_producer`` / ``make_consumer``,
             ``send(wait=False)`` as the generator publishes, ``decode_record`` as the learner
             consumes) over a real local Kafka-protocol broker (``winnow.brokers``: noida by default,
             or ``KAFKA_BOOTSTRAP_SERVERS`` / ``--bootstrap``), one partition;
  ``queue``  an in-process ``asyncio.Queue`` of the encoded bytes (the baseline): the producer
             coroutine encodes and puts, a consumer task gets and decodes, so protobuf encode,
             validation and decode are in both and the difference is the transport.

Three measurements per transport (a consumer task decodes everything as it arrives):

  ``ping``    one group at a time: send, wait until the consumer has decoded it (median of
              ``--trials``): the end-to-end latency of a lone group;
  ``step``    ``--batch-groups`` groups sent back to back, then flushed, until the last is decoded
              (median of ``--trials``): what one learner step's groups cost to move;
  ``stream``  ``--groups`` groups sent as fast as the producer can: throughput (groups/s, MB/s over
              the wall time from the first send to the last decode) and the per-group latency
              (send -> decoded, p50/p99), plus CPU seconds per group of this process and (kafka)
              of the broker process. Repeated ``--stream-reps`` times; the fastest is reported (on
              a shared machine the slower ones mostly waited for a CPU).

Throughput is cross-checked by a second path: the bytes the consumer actually received (summed
from the records) against the producer's encoded sizes, and groups / throughput against the
phase's own wall clock.

Step time, for the transport's share of a learner step:
  ``--metrics-jsonl PATH``  a real run's ``metrics.jsonl``: the median over steps after the first of
                            ``wait_s + compute_s + publish_s + checkpoint_s`` (the learner's whole step);
  always                    one tiny ``Trainer.train_step`` measured here (the random tiny Qwen2 of
                            ``winnow.learner.tiny``, GRPO + KL, ``--step-shape`` groups x n x tokens,
                            default 8x8x128 = the default ``batch_groups``/``n``/``max_new_tokens``):
                            a lower bound on any real model's step, so the share against it is an
                            upper bound.
The share is ``step`` transport time / step time: the cost if the transport sat on the critical
path. In the pipeline the learner's consumer fetches in the background while it trains, so the
real cost is at most this.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

VOCAB = 49152  # SmolLM2's vocabulary: token ids up to 3 varint bytes, like any real model
PROMPT_TOKENS = 96
CHARS_PER_TOKEN = 4
_WORDS = ("the", "sum", "of", "and", "is", "we", "so", "then", "therefore", "answer", "step", "first",
          "multiply", "add", "subtract", "=", "+", "-", "*", "12", "7", "345", "x", "\\frac{1}{2}", "boxed")


# -- payloads ---------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    """``"8x128"`` -> (n samples, response tokens per sample)."""
    try:
        n, t = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--sizes: {text!r} is not NxTOKENS (e.g. 8x128)") from None
    if n < 1 or t < 1:
        raise ValueError(f"--sizes: {text!r} needs n >= 1 and tokens >= 1")
    return n, t


def make_group(i: int, n: int, tokens: int, seed: int = 0):
    """A synthetic but realistic ``ScoredGroup``: ``n`` samples of ``tokens`` response tokens."""
    from winnow.v1 import messages_pb2, verifier_pb2

    rng = random.Random(seed * 1_000_003 + i)
    samples = []
    for k in range(n):
        text = " ".join(rng.choice(_WORDS) for _ in range(tokens * CHARS_PER_TOKEN // 4))[: tokens * CHARS_PER_TOKEN]
        samples.append(messages_pb2.Sample(
            response_token_ids=[rng.randrange(VOCAB) for _ in range(tokens)],
            behaviour_logprobs=[-rng.expovariate(1.5) for _ in range(tokens)],
            policy_versions=[7] * tokens,
            finish_reason="length" if k % 3 == 0 else "stop",
            text=text + " \\boxed{42}",
            status=verifier_pb2.STATUS_CORRECT if k % 2 == 0 else verifier_pb2.STATUS_WRONG,
            extracted="42",
        ))
    return messages_pb2.ScoredGroup(
        prompt_id=f"bench/{i}",
        request_id=f"bench-{i}",
        prompt_token_ids=[rng.randrange(VOCAB) for _ in range(PROMPT_TOKENS)],
        samples=samples,
        sampling=messages_pb2.SamplingParams(temperature=1.0, top_p=1.0, top_k=-1, max_new_tokens=tokens, seed=i),
        generator_id="gen-0",
        policy_version=7,
        task="chain_sum",
        created_at=time.time(),
        generation_seconds=1.5,
        scoring_seconds=0.01,
        problem="What is 12 + 30? " * 4,
        gold="42",
    )


def copies(pool: list, count: int, tag: str) -> list:
    """``count`` groups cycled from ``pool``, each with its own request id (its own record key)."""
    out = []
    for i in range(count):
        g = type(pool[0])()
        g.CopyFrom(pool[i % len(pool)])
        g.request_id = f"{tag}-{i}-{uuid.uuid4().hex[:6]}"
        out.append(g)
    return out


# -- transports -------------------------------------------------------------------------------------


class QueueTransport:
    """The baseline: encoded bytes through an ``asyncio.Queue`` inside this process."""

    name = "queue"

    def __init__(self) -> None:
        self.q: asyncio.Queue[bytes] = asyncio.Queue()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, msg) -> None:
        from winnow.kafka import encode

        self.q.put_nowait(encode(msg))
        await asyncio.sleep(0)  # yield as a real producer coroutine does between sends (the Kafka send yields too)

    async def flush(self) -> None:
        pass

    async def receive(self) -> list[tuple[Any, int]]:
        from winnow.kafka import ScoredGroup, decode

        values = [await self.q.get()]
        while not self.q.empty():
            values.append(self.q.get_nowait())
        return [(decode(ScoredGroup, v), len(v)) for v in values]

    def cpu_s(self) -> float:
        return 0.0


class KafkaTransport:
    """winnow's producer and consumer over a real broker, one partition of a fresh groups topic."""

    name = "kafka"

    def __init__(self, bootstrap: str, broker_pid: int | None, linger_ms: int | None = None) -> None:
        self.bootstrap = bootstrap
        self.overrides = {} if linger_ms is None else {"linger_ms": linger_ms}
        self.broker_pid = broker_pid
        self._futures: list = []

    async def start(self) -> None:
        from aiokafka import TopicPartition

        from winnow.config import KafkaConfig
        from winnow.kafka import ensure_topics, make_consumer, make_producer, topics

        cfg = KafkaConfig(bootstrap_servers=self.bootstrap, topic_prefix=f"bench-transport-{uuid.uuid4().hex[:8]}")
        await ensure_topics(cfg, partitions=1)
        self.topic = topics(cfg).groups
        self.producer = make_producer(cfg, client_id="bench-transport-producer", **self.overrides)
        self.consumer = make_consumer(cfg, None, None, client_id="bench-transport-consumer")
        await self.producer.start()
        await self.consumer.start()
        self.consumer.assign([TopicPartition(self.topic, 0)])

    async def stop(self) -> None:
        for r in await asyncio.gather(self.consumer.stop(), self.producer.stop(), return_exceptions=True):
            if isinstance(r, Exception):
                print(f"warning: stopping a Kafka client: {r}", file=sys.stderr)

    async def send(self, msg) -> None:
        from winnow.kafka import send

        self._futures.append(await send(self.producer, self.topic, msg, wait=False))

    async def flush(self) -> None:  # as the generator: every group acknowledged (acks=all)
        futures, self._futures = self._futures, []
        await asyncio.gather(*futures)

    async def receive(self) -> list[tuple[Any, int]]:
        from winnow.kafka import ScoredGroup, decode_record

        while True:
            batches = await self.consumer.getmany(timeout_ms=500)
            out = []
            for records in batches.values():
                for r in records:
                    msg = decode_record(ScoredGroup, r)
                    if msg is None:
                        raise RuntimeError(f"record {r.offset} did not decode as a ScoredGroup")
                    out.append((msg, len(r.value)))
            if out:
                return out

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the broker process has used so far (NaN when it is not ours)."""
        if self.broker_pid is None:
            return math.nan
        try:
            fields = Path(f"/proc/{self.broker_pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return math.nan
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(transport, pool: list, groups: int, batch: int, trials: int, stream_reps: int) -> dict:
    """The ping, step and stream measurements of the module docstring for one transport."""
    arrived: dict[str, float] = {}
    received_bytes = [0]
    expected: set[str] = set()
    done = asyncio.Event()

    async def consume() -> None:
        while True:
            for msg, nbytes in await transport.receive():
                arrived[msg.request_id] = time.perf_counter()
                received_bytes[0] += nbytes
                expected.discard(msg.request_id)
                if not expected:
                    done.set()

    async def move(msgs: list, sent: dict[str, float] | None = None) -> float:
        """Send ``msgs`` back to back, flush, wait until all are decoded; seconds from first send."""
        expected.update(m.request_id for m in msgs)
        done.clear()
        t0 = time.perf_counter()
        for m in msgs:
            if sent is not None:
                sent[m.request_id] = time.perf_counter()
            await transport.send(m)
        await transport.flush()
        waiter = asyncio.ensure_future(done.wait())
        finished, _ = await asyncio.wait({waiter, task}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        if task in finished:  # the consumer failed: raise its error
            waiter.cancel()
            task.result()
        if waiter not in finished:
            waiter.cancel()
            raise TimeoutError(f"{transport.name}: {len(expected)} of {len(msgs)} groups not received in 120 s")
        return max(arrived[m.request_id] for m in msgs) - t0

    await transport.start()
    task = asyncio.create_task(consume())
    try:
        await move(copies(pool, 1, "warmup"))  # metadata, connections, first fetch
        ping = [await move(copies(pool, 1, f"ping{t}")) for t in range(trials)]
        step = [await move(copies(pool, batch, f"step{t}")) for t in range(trials)]
        reps = []  # the fastest of ``stream_reps`` streams is kept: on a shared machine the others waited for a CPU
        for rep in range(stream_reps):
            msgs = copies(pool, groups, f"stream{rep}")
            sent_bytes = sum(m.ByteSize() for m in msgs)  # the encoded sizes, for the cross-check
            sent: dict[str, float] = {}
            bytes_before = received_bytes[0]
            cpu0, broker0, wall0 = time.process_time(), transport.cpu_s(), time.perf_counter()
            stream_s = await move(msgs, sent)
            wall = time.perf_counter() - wall0
            cpu, broker = time.process_time() - cpu0, transport.cpu_s() - broker0
            reps.append((stream_s, wall, cpu, broker, received_bytes[0] - bytes_before, sent_bytes, msgs, sent))
        stream_s, wall, cpu, broker, stream_bytes, sent_bytes, msgs, sent = min(reps, key=lambda r: r[0])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await transport.stop()
    lat = sorted(arrived[m.request_id] - sent[m.request_id] for m in msgs)
    return {
        "ping_s": statistics.median(ping),
        "ping_min_s": min(ping),
        "step_s": statistics.median(step),
        "step_min_s": min(step),
        "stream_s": stream_s,
        "stream_reps_s": [r[0] for r in reps],
        "stream_wall_s": wall,
        "groups_per_s": groups / stream_s,
        "mb_per_s": stream_bytes / stream_s / 1e6,
        "received_bytes": stream_bytes,
        "sent_bytes": sent_bytes,
        "latency_p50_s": lat[len(lat) // 2],
        "latency_p99_s": lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))],
        "cpu_s_per_group": cpu / groups,
        "broker_cpu_s_per_group": None if math.isnan(broker) else broker / groups,
    }


def codec_cost(pool: list, reps: int) -> dict:
    """Protobuf encode and decode (with winnow's validation) per group, no transport."""
    from winnow.kafka import ScoredGroup, decode, encode

    decode(ScoredGroup, encode(pool[0]))  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    blobs = [encode(g) for _ in range(reps) for g in pool]
    enc, enc_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    for b in blobs:
        decode(ScoredGroup, b)
    dec, dec_cpu = time.perf_counter() - t0, time.process_time() - c0
    k = len(blobs)
    return {"encode_s": enc / k, "decode_s": dec / k, "encode_cpu_s": enc_cpu / k, "decode_cpu_s": dec_cpu / k}


# -- step time --------------------------------------------------------------------------------------


def step_from_metrics(path: Path) -> dict:
    """Median learner step (wait + compute + publish + checkpoint seconds) over the steps after the first."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if len(rows) < 2:
        raise ValueError(f"--metrics-jsonl {path}: needs at least 2 steps (the first is skipped), has {len(rows)}")
    keys = ("wait_s", "compute_s", "publish_s", "checkpoint_s")
    steps = [sum(float(r.get(k, 0.0)) for k in keys) for r in rows[1:]]
    return {"source": str(path), "steps": len(steps), "step_s": statistics.median(steps),
            "compute_s": statistics.median(float(r.get("compute_s", 0.0)) for r in rows[1:])}


def tiny_step(groups: int, n: int, tokens: int, steps: int) -> dict:
    """Median seconds of ``Trainer.train_step`` on the tiny random Qwen2 (GRPO + KL) after a warm-up."""
    import torch

    from winnow.learner.algo import AlgoConfig
    from winnow.learner.batch import GroupData, SampleData
    from winnow.learner.step import OptimConfig, Trainer
    from winnow.learner.tiny import build_tiny_model_and_tokenizer

    model, tok = build_tiny_model_and_tokenizer(max_position=PROMPT_TOKENS + tokens + 8)
    vocab = model.get_input_embeddings().weight.shape[0]
    trainer = Trainer(model, AlgoConfig.from_preset("grpo"), OptimConfig(lr=1e-6), pad_token_id=tok.pad_token_id)
    g = torch.Generator().manual_seed(0)
    batch = [
        GroupData(f"p{i}", f"r{i}", torch.randint(3, vocab, (PROMPT_TOKENS,), generator=g).tolist(), [
            SampleData(torch.randint(3, vocab, (tokens,), generator=g).tolist(), [-2.0] * tokens, [0] * tokens,
                       1 + (i + k) % 2)
            for k in range(n)
        ])
        for i in range(groups)
    ]
    trainer.train_step(batch)  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step(batch)
        times.append(time.perf_counter() - t0)
    return {"source": f"tiny Qwen2 Trainer.train_step {groups}x{n}x{tokens} (measured here)",
            "steps": steps, "step_s": statistics.median(times)}


# -- main -------------------------------------------------------------------------------------------


def _ms(s: float) -> str:
    return f"{s * 1e3:8.2f}"


def print_report(r: dict) -> None:
    print(f"Transport: Kafka ({r['broker']}, producer linger_ms {r['linger_ms']}) vs in-process asyncio.Queue; {r['cpus']} CPUs, load average "
          f"{r['load_before']} before, {r['load_after']} after; {r['date']}")
    for s in r["sizes"]:
        k, q = s["kafka"], s["queue"]
        print(f"\nScoredGroup n={s['n']} x {s['tokens']} tokens: {s['group_bytes'] / 1024:.1f} KiB; "
              f"encode {s['codec']['encode_s'] * 1e6:.0f} us, decode {s['codec']['decode_s'] * 1e6:.0f} us per group "
              f"(CPU {s['codec']['encode_cpu_s'] * 1e6:.0f} + {s['codec']['decode_cpu_s'] * 1e6:.0f} us)")
        print(f"  {'':26}{'kafka':>10}{'queue':>10}{'kafka/queue':>13}")
        rows = [
            ("ping latency ms (median)", k["ping_s"] * 1e3, q["ping_s"] * 1e3),
            (f"step x{r['batch_groups']} ms (median)", k["step_s"] * 1e3, q["step_s"] * 1e3),
            ("stream latency p50 ms", k["latency_p50_s"] * 1e3, q["latency_p50_s"] * 1e3),
            ("stream latency p99 ms", k["latency_p99_s"] * 1e3, q["latency_p99_s"] * 1e3),
            ("throughput groups/s", k["groups_per_s"], q["groups_per_s"]),
            ("throughput MB/s", k["mb_per_s"], q["mb_per_s"]),
            ("CPU ms/group (this proc)", k["cpu_s_per_group"] * 1e3, q["cpu_s_per_group"] * 1e3),
            ("CPU ms/group (broker)", (k["broker_cpu_s_per_group"] or math.nan) * 1e3, 0.0),  # NaN: external
        ]
        for name, a, b in rows:
            ratio = f"{a / b:12.3g}x" if b > 0 else f"{'-':>13}"
            print(f"  {name:26}{a:10.2f}{b:10.2f}{ratio}")
        print(f"  streams (s): kafka {', '.join(f'{x:.3f}' for x in k['stream_reps_s'])}; "
              f"queue {', '.join(f'{x:.3f}' for x in q['stream_reps_s'])} (the fastest is reported)")
        print(f"  cross-check: stream of {r['groups']} groups took {k['stream_wall_s']:.2f} s (kafka) / "
              f"{q['stream_wall_s']:.3f} s (queue) wall; groups / throughput = "
              f"{r['groups'] / k['groups_per_s']:.2f} s / {r['groups'] / q['groups_per_s']:.3f} s; bytes received "
              f"{k['received_bytes']} / {q['received_bytes']}, sent (encoded) {k['sent_bytes']} / {q['sent_bytes']}")
        for st in r["step_times"]:
            print(f"  share of a step ({st['step_s']:.2f} s, {st['source']}): kafka "
                  f"{100 * k['step_s'] / st['step_s']:.2f}%, queue {100 * q['step_s'] / st['step_s']:.3f}%")


async def run_sizes(args, bootstrap: str, broker_pid: int | None) -> list[dict]:
    from winnow.kafka import encode

    out = []
    for n, tokens in args.sizes:
        print(f"size {n}x{tokens}: building groups ...", file=sys.stderr, flush=True)
        pool = [make_group(i, n, tokens, args.seed) for i in range(args.pool)]
        entry: dict[str, Any] = {"n": n, "tokens": tokens,
                                 "group_bytes": round(statistics.fmean(len(encode(g)) for g in pool)),
                                 "codec": codec_cost(pool, args.codec_reps)}
        for transport in (KafkaTransport(bootstrap, broker_pid, args.linger_ms), QueueTransport()):
            print(f"size {n}x{tokens}: {transport.name} ...", file=sys.stderr, flush=True)
            entry[transport.name] = await measure(transport, pool, args.groups, args.batch_groups, args.trials,
                                                  args.stream_reps)
        k, q = entry["kafka"], entry["queue"]
        entry["ratios"] = {"ping_latency": k["ping_s"] / q["ping_s"], "step": k["step_s"] / q["step_s"],
                           "throughput": k["groups_per_s"] / q["groups_per_s"]}
        out.append(entry)
    return out


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/transport.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="8x128,16x1024", help="comma-separated NxTOKENS group sizes")
    p.add_argument("--groups", type=int, default=64, help="groups in the stream (throughput) phase")
    p.add_argument("--trials", type=int, default=20, help="repetitions of the ping and step phases")
    p.add_argument("--stream-reps", type=int, default=3, help="streams per transport (the fastest is reported)")
    p.add_argument("--batch-groups", type=int, default=8, help="groups per learner step (default: batch_groups)")
    p.add_argument("--pool", type=int, default=8, help="distinct synthetic groups per size (cycled)")
    p.add_argument("--codec-reps", type=int, default=20, help="repetitions of the pool for the codec timing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--broker", choices=("noida", "tansu"), default="noida", help="local broker to start")
    p.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
                   help="use this Kafka instead of starting a local broker (default: $KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--linger-ms", type=int, default=None,
                   help="override the producer's linger_ms (default: winnow's make_producer setting, 5 ms)")
    p.add_argument("--metrics-jsonl", type=Path, default=None, help="a real run's metrics.jsonl for the step time")
    p.add_argument("--step-shape", default="8x8x128", help="tiny train_step: GROUPSxNxTOKENS, or 'none'")
    p.add_argument("--step-reps", type=int, default=2, help="measured tiny train_steps (after a warm-up)")
    p.add_argument("--out", type=Path, default=None, help="write every number as JSON here")
    args = p.parse_args(argv)
    try:
        args.sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
        shape = None if args.step_shape == "none" else [int(x) for x in args.step_shape.lower().split("x")]
        if shape is not None and (len(shape) != 3 or min(shape) < 1):
            raise ValueError(f"--step-shape: {args.step_shape!r} is not GROUPSxNxTOKENS (e.g. 8x8x128) or 'none'")
        if args.linger_ms is not None and args.linger_ms < 0:
            raise ValueError(f"--linger-ms must be >= 0, got {args.linger_ms}")
        for name in ("groups", "trials", "stream_reps", "batch_groups", "pool", "codec_reps"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.metrics_jsonl is not None and not args.metrics_jsonl.is_file():
            raise ValueError(f"--metrics-jsonl: no file {args.metrics_jsonl}")
    except ValueError as e:
        p.error(str(e))

    from winnow.brokers import ensure_broker

    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "platform": platform.platform(),
        "cpus": os.cpu_count(), "load_before": _load(), "groups": args.groups, "trials": args.trials,
        "batch_groups": args.batch_groups, "step_times": [],
    }
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="winnow-bench-transport-") as work:
        bootstrap, broker = ensure_broker(args.bootstrap, args.broker, work)
        results["broker"] = f"local {args.broker}" if broker is not None else f"external {bootstrap}"
        results["linger_ms"] = args.linger_ms if args.linger_ms is not None else "winnow default"
        try:
            results["sizes"] = asyncio.run(run_sizes(args, bootstrap, broker.pid if broker else None))
        finally:
            if broker is not None:
                broker.stop()
    if args.metrics_jsonl is not None:
        results["step_times"].append(step_from_metrics(args.metrics_jsonl))
    if shape is not None:
        print("tiny train_step ...", file=sys.stderr, flush=True)
        results["step_times"].append(tiny_step(*shape, steps=args.step_reps))
    for s in results["sizes"]:
        s["shares"] = [{"source": st["source"], "kafka": s["kafka"]["step_s"] / st["step_s"],
                        "queue": s["queue"]["step_s"] / st["step_s"]} for st in results["step_times"]]
    results["load_after"] = _load()
    results["total_wall_s"] = time.perf_counter() - t_all
    print_report(results)
    print(f"\ntotal wall time {results['total_wall_s']:.1f} s")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
