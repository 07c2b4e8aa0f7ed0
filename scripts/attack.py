#!/usr/bin/env python3
"""Replay the attacks of issue 22 against real winnow components on 127.0.0.1, and say which held.

    python scripts/attack.py --out DIR [--only NAME,...] [--quick] [--list]

Everything is started here and stopped here, by PID: local Kafka-protocol brokers
(:class:`winnow.brokers.LocalBroker`, noida and tansu), ``winnow verifier serve``, ``winnow learner run`` on the
tiny model of :func:`winnow.learner.tiny.save_tiny`, ``winnow generator run``, ``winnow up`` and the CLI. The
attacker is this script: a foreign Kafka client that reads the prompts topic (run id, positions, versions are
readable there) and writes well-formed records, a gRPC client of the verifier, a user of the CLI. A fake
generator (the idea of tests/pipeline/test_learner_service.py's FakeGenerator) answers the learner's prompt
requests honestly, so that what the learner trains can be audited against its ``ledger.jsonl`` and
``samples.jsonl``.

Bounds: every child has a wall-clock timeout and an address-space limit (RLIMIT_AS); only loopback addresses
are used; ``KAFKA_BOOTSTRAP_SERVERS`` and ``WINNOW_*`` of the caller's environment are not passed on. Each
attack writes one JSON line to ``DIR/attacks.jsonl``: name, issue item, what was done, the expected safe
outcome, the observed outcome, ``held``, seconds, and the peak RSS (VmHWM or ru_maxrss) of the attacked process
where memory is the point. A summary table follows; the exit code is 1 if any attack did not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
HOST = "127.0.0.1"
CORRECT, WRONG = 1, 2
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x9b31m"  # OSC title, clear screen, SGR, C1 CSI
FORGED_TEXT = "FORGED-BY-ATTACKER"
GB = 1024**3


# --------------------------------------------------------------------------------------------- processes


def _limits(as_bytes: int | None, new_session: bool) -> Callable[[], None]:
    def apply() -> None:
        if as_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if new_session:
            os.setsid()

    return apply


def child_env(**extra: str) -> dict[str, str]:
    """The caller's environment without its Kafka address or winnow settings (loopback only, no surprises)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "WINNOW_"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MALLOC_ARENA_MAX="2", PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


class Child:
    """A child process started here: its own log file, an RLIMIT_AS, reaped with wait4 (so its ru_maxrss is
    known), stopped by PID only (TERM, wait, KILL). With ``new_session`` the child leads its own process
    group, and stop() also signals that group: the services a ``winnow up`` started, never anything else."""

    def __init__(self, name: str, argv: list[str], log: Path, *, env: dict[str, str] | None = None,
                 as_gb: float | None = 8, new_session: bool = False, cwd: Path | None = None) -> None:
        self.name, self.argv, self.log_path, self.new_session = name, argv, log, new_session
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "ab")  # noqa: SIM115 - closed in _reaped
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env or child_env(), cwd=cwd or ROOT,
                                     preexec_fn=_limits(int(as_gb * GB) if as_gb else None, new_session))
        self.pid = self.proc.pid
        self.started = time.monotonic()
        self.peak_kb = 0
        self.returncode: int | None = None

    def sample(self) -> int:
        """Peak RSS so far (VmHWM, kB), remembered."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
        return self.peak_kb

    @property
    def peak_mb(self) -> float:
        return round(self.sample() / 1024, 1)

    def poll(self) -> int | None:
        if self.returncode is None:
            self.sample()
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self._reaped(status, usage)
        return self.returncode

    def _reaped(self, status: int, usage: Any) -> None:
        self.returncode = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.returncode  # Popen must not wait again
        self.peak_kb = self.peak_kb or usage.ru_maxrss  # ru_maxrss also counts the image forked from us
        self._log.close()

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.returncode

    async def await_exit(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return self.returncode

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.new_session:
                os.killpg(self.pid, sig)  # the group this child leads: its own descendants only
            else:
                os.kill(self.pid, sig)

    def kill9(self) -> None:
        if self.poll() is None:
            self._signal(signal.SIGKILL)
            self.wait(30)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            if self.wait(timeout) is None:
                self._signal(signal.SIGKILL)
                self.wait(30)
        if self.new_session:  # services the child started and left behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        return self.returncode

    def log_text(self, tail: int = 0) -> str:
        data = self.log_path.read_bytes() if self.log_path.exists() else b""
        return data[-tail:].decode("utf-8", "replace") if tail else data.decode("utf-8", "replace")


@dataclass
class CliResult:
    rc: int | None
    out: str
    err: str
    seconds: float
    peak_mb: float
    timed_out: bool


def run_cli(lab: Lab, name: str, args: list[str], *, env: dict[str, str] | None = None, timeout: float = 60,
            as_gb: float = 4, new_session: bool = True) -> CliResult:
    """``winnow ARGS`` as a bounded child; stdout and stderr kept apart."""
    d = lab.out / "cli" / name
    d.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(d / "stdout", "wb") as out, open(d / "stderr", "wb") as err:
        proc = subprocess.Popen([PY, "-m", "winnow", *args], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=env or child_env(), cwd=d, preexec_fn=_limits(int(as_gb * GB), new_session))
        lab.pids.add(proc.pid)
        rc, usage, timed_out, peak_kb = None, None, False, 0
        while time.monotonic() - start < timeout:
            with contextlib.suppress(OSError, ValueError, IndexError):  # VmHWM of the exec'd image only
                status_text = Path(f"/proc/{proc.pid}/status").read_text()
                peak_kb = max(peak_kb, int(status_text.split("VmHWM:")[1].split()[0]))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                rc = os.waitstatus_to_exitcode(status)
                proc.returncode = rc
                break
            time.sleep(0.02)
        else:
            timed_out = True
        if new_session:  # on a timeout the child and whatever it started; afterwards any leftover of its group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if rc is None:
            _, status, usage = os.wait4(proc.pid, 0)
            rc = os.waitstatus_to_exitcode(status)
            proc.returncode = rc
        lab.pids.discard(proc.pid)
    return CliResult(rc, (d / "stdout").read_text("utf-8", "replace"), (d / "stderr").read_text("utf-8", "replace"),
                     round(time.monotonic() - start, 2),
                     round((peak_kb or (usage.ru_maxrss if usage else 0)) / 1024, 1), timed_out)


def scrape(port: int) -> dict[str, float]:
    """A Prometheus text scrape as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[key] = float(value)
    return out


def jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    return rows


# --------------------------------------------------------------------------------------------- the lab


class Lab:
    """Shared, lazily started pieces: brokers, the tiny model folder, a verifier server, a generator."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.brokers: dict[str, Any] = {}
        self.children: list[Child] = []
        self.pids: set[int] = set()
        self._tiny: Path | None = None
        self._tok = None
        self.verifier: Child | None = None
        self.verifier_port = 0

    def broker(self, kind: str = "noida") -> str:
        from winnow.brokers import LocalBroker

        if kind not in self.brokers:
            b = LocalBroker(kind, self.out / f"broker-{kind}")
            b.start()
            self.brokers[kind] = b
        return self.brokers[kind].bootstrap

    def tiny(self) -> Path:
        if self._tiny is None:
            from winnow.learner.tiny import save_tiny

            self._tiny = Path(save_tiny(self.out / "tiny-model", seed=0))
        return self._tiny

    def tokenizer(self):
        if self._tok is None:
            from winnow.learner.tiny import build_tiny_tokenizer

            self._tok = build_tiny_tokenizer()
        return self._tok

    def kafka(self, prefix: str, bootstrap: str):
        from winnow.config import KafkaConfig

        return KafkaConfig(bootstrap_servers=bootstrap, topic_prefix=f"atk-{prefix}-{os.getpid()}",
                           session_timeout_ms=6000, request_timeout_ms=10_000)

    def spawn(self, name: str, argv: list[str], **kw: Any) -> Child:
        child = Child(name, argv, self.out / "logs" / f"{name}.log", **kw)
        self.children.append(child)
        return child

    def start_verifier(self) -> tuple[Child, int]:
        from winnow.brokers import free_port

        if self.verifier is None or self.verifier.poll() is not None:
            self.verifier_port = free_port()
            self.verifier = self.spawn("verifier", [PY, "-m", "winnow", "verifier", "serve", "--host", HOST,
                                                    "--port", str(self.verifier_port), "--workers", "1",
                                                    "--metrics-port", "-1"], as_gb=4)
            wait_grpc(self.verifier, self.verifier_port)
        return self.verifier, self.verifier_port

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop(20)
        for pid in list(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for b in self.brokers.values():
            b.stop()


def wait_grpc(child: Child, port: int, timeout: float = 90) -> None:
    import grpc

    from winnow.v1 import verifier_pb2, verifier_pb2_grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"{child.name} exited {child.returncode}: {child.log_text(2000)}")
        with grpc.insecure_channel(f"{HOST}:{port}") as ch, contextlib.suppress(grpc.RpcError):
            verifier_pb2_grpc.VerifierStub(ch).Verify(verifier_pb2.VerifyRequest(id="p", response="1", gold="1"),
                                                     timeout=5)
            return
        time.sleep(0.3)
    raise RuntimeError(f"{child.name} did not answer on {port} within {timeout}s")


# --------------------------------------------------------------------------------------------- Kafka actors


def _group(req, tok, vocab: int, rng: random.Random, *, version: int, text: str, statuses=(CORRECT, WRONG),
           prompt_ids: list[int] | None = None, generator_id: str = "fake"):
    from winnow.v1 import messages_pb2

    samples = []
    for status in statuses:
        r = rng.randint(1, 4)
        samples.append(messages_pb2.Sample(
            response_token_ids=[rng.randrange(3, vocab) for _ in range(r)], behaviour_logprobs=[-6.0] * r,
            policy_versions=[version] * r, finish_reason="stop", status=status, text=text,
            reward=1.0 if status == CORRECT else 0.0))
    return messages_pb2.ScoredGroup(
        prompt_id=req.prompt_id, request_id=req.request_id,
        prompt_token_ids=prompt_ids if prompt_ids is not None else tok(req.problem)["input_ids"],
        samples=samples, generator_id=generator_id, policy_version=version, task=req.task,
        problem=req.problem + " " + text)


class FakeGenerator:
    """Answers the learner's prompt requests with honest groups (n=2: one correct, one wrong). ``hold``: a
    predicate on the position whose groups are held back until :meth:`flush`; ``follow_weights``: stamp groups
    with the newest announced version (as a real generator that loaded them); ``hmac_key``: sign them;
    ``delay_s``: answer this long after the request (a foreign writer gets there first)."""

    def __init__(self, kcfg, tok, vocab: int, *, hold: Callable[[int], bool] | None = None,
                 follow_weights: bool = False, hmac_key: bytes | None = None, delay_s: float = 0.0,
                 text: str = "honest " + ESCAPES) -> None:
        self.kcfg, self.tok, self.vocab, self.hold, self.follow = kcfg, tok, vocab, hold, follow_weights
        self.hmac_key, self.delay_s, self.text = hmac_key, delay_s, text
        self.rng = random.Random(0)
        self.seen: list[str] = []
        self.held: list[Any] = []
        self.loaded = 0
        self.release_held = False
        self.errors: list[str] = []

    def flush(self) -> None:
        self.release_held = True

    async def run(self) -> None:
        while True:  # a broker restart: make new clients and go on
            try:
                await self._run()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the fake generator is not under test: retry
                self.errors.append(f"{type(e).__name__}: {e}")
                await asyncio.sleep(1.0)

    async def _run(self) -> None:
        from winnow.kafka import (
            PromptRequest,
            WeightAnnouncement,
            assign_all_partitions,
            decode_record,
            make_consumer,
            make_producer,
            send,
            topics,
        )

        t = topics(self.kcfg)
        consumer = make_consumer(self.kcfg, None, None, client_id="fake-generator")
        weights = make_consumer(self.kcfg, None, None, client_id="fake-generator-w") if self.follow else None
        producer = make_producer(self.kcfg, client_id="fake-generator")
        await producer.start()
        try:
            await consumer.start()
            await assign_all_partitions(consumer, t.prompts, {})
            if weights is not None:
                await weights.start()
                await assign_all_partitions(weights, t.weights, {})
            while True:
                if weights is not None:
                    for records in (await weights.getmany(timeout_ms=20)).values():
                        for record in records:
                            if (ann := decode_record(WeightAnnouncement, record)) is not None:
                                self.loaded = ann.version
                if self.release_held and self.held:
                    for req in self.held:
                        await send(producer, t.groups, self._answer(req), hmac_key=self.hmac_key)
                    self.held = []
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    for record in records:
                        req = decode_record(PromptRequest, record)
                        if req is None:
                            continue
                        self.seen.append(req.request_id)
                        position = int(req.request_id.split("-")[1])
                        if self.hold is not None and self.hold(position) and not self.release_held:
                            self.held.append(req)
                            continue
                        if self.delay_s:
                            await asyncio.sleep(self.delay_s)
                        await send(producer, t.groups, self._answer(req), hmac_key=self.hmac_key)
        finally:
            for c in (consumer, producer, weights):
                if c is not None:
                    with contextlib.suppress(Exception):
                        await c.stop()

    def _answer(self, req):
        version = self.loaded if self.follow else req.release_version
        return _group(req, self.tok, self.vocab, self.rng, version=version, text=self.text)


class Attacker:
    """A foreign Kafka client: reads the prompts topic from the start, writes records to any topic."""

    def __init__(self, kcfg) -> None:
        self.kcfg = kcfg
        self.consumer = self.producer = self.groups = None
        self.requests: list[Any] = []

    async def __aenter__(self) -> Attacker:
        from winnow.kafka import assign_all_partitions, make_consumer, make_producer, topics

        self.t = topics(self.kcfg)
        self.producer = make_producer(self.kcfg, client_id="attacker")
        self.consumer = make_consumer(self.kcfg, None, None, client_id="attacker")
        await self.producer.start()
        await self.consumer.start()
        await assign_all_partitions(self.consumer, self.t.prompts, {})
        self.groups = make_consumer(self.kcfg, None, None, client_id="attacker-g")
        await self.groups.start()
        await assign_all_partitions(self.groups, self.t.groups, {})
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for c in (self.consumer, self.groups, self.producer):
            with contextlib.suppress(Exception):
                await c.stop()

    async def read(self, timeout_ms: int = 100) -> list[Any]:
        from winnow.kafka import PromptRequest, decode_record

        new = []
        for records in (await self.consumer.getmany(timeout_ms=timeout_ms)).values():
            new += [r for r in (decode_record(PromptRequest, rec) for rec in records) if r is not None]
        self.requests += new
        return new

    async def read_groups(self) -> list[Any]:
        from winnow.kafka import ScoredGroup, decode_record

        out = []
        for records in (await self.groups.getmany(timeout_ms=50)).values():
            out += [g for g in (decode_record(ScoredGroup, rec) for rec in records) if g is not None]
        return out

    async def send(self, topic: str, msg: Any) -> None:
        from winnow.kafka import send

        await send(self.producer, topic, msg)


# --------------------------------------------------------------------------------------------- the learner


class LearnerRun:
    """``winnow learner run`` on the tiny model with a YAML config in ``d``; progress read from its files."""

    def __init__(self, lab: Lab, d: Path, kcfg, *, max_steps: int, extra: dict | None = None,
                 env: dict[str, str] | None = None, prompts: int = 200) -> None:
        import yaml

        from winnow.brokers import free_port

        self.lab, self.d, self.kcfg, self.env = lab, d, kcfg, env
        d.mkdir(parents=True, exist_ok=True)
        pfile = d / "prompts.jsonl"
        if not pfile.exists():
            pfile.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                                     for i in range(prompts)))
        self.run_dir, self.ckpt = d / "run", d / "ckpt"
        self.metrics_port = free_port()
        learner = {
            "model": str(lab.tiny()), "metrics_port": self.metrics_port, "metrics_host": HOST,
            "batch_groups": 2, "n": 2, "kafka_partitions": 1, "max_steps": max_steps,
            "algo": {"preset": "grpo", "kl_coef": 0.0, "max_staleness": 1},
            "optim": {"lr": 1e-3, "micro_batch_size": 4},
            "prompts": {"kind": "jsonl", "path": str(pfile)},
            "weights": {"dir": str(d / "weights"), "keep": 2},
            "checkpoint": {"dir": str(self.ckpt), "every": 1, "keep": 3},
            "run_dir": str(self.run_dir), "tracking": [],
        }
        for k, v in (extra or {}).items():
            if isinstance(v, dict) and isinstance(learner.get(k), dict):
                learner[k] = {**learner[k], **v}
            else:
                learner[k] = v
        self.cfg_file = d / "learner.yaml"
        self.cfg_file.write_text(yaml.safe_dump({"learner": learner, "kafka": {
            "bootstrap_servers": kcfg.bootstrap_servers, "topic_prefix": kcfg.topic_prefix,
            "session_timeout_ms": 6000, "request_timeout_ms": 10_000}}))
        self.child: Child | None = None
        self.peak_mb = 0.0
        self.starts = 0

    def start(self) -> Child:
        self.starts += 1
        self.child = self.lab.spawn(f"{self.d.name}-learner-{self.starts}",
                                    [PY, "-m", "winnow", "learner", "run", "--config", str(self.cfg_file)],
                                    env=self.env, as_gb=8)
        return self.child

    def versions(self) -> list[int]:
        return [int(r["version"]) for r in jsonl(self.run_dir / "metrics.jsonl") if "version" in r]

    def version(self) -> int:
        return max(self.versions(), default=0)

    async def until(self, pred: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            if self.child is not None and self.child.poll() is not None:
                return pred()
            await asyncio.sleep(0.2)
        return pred()

    def life_version(self) -> int:
        """The newest version the current process logged a step for (this life only, not older rows)."""
        import re

        text = self.child.log_text() if self.child is not None else ""
        return max((int(v) for v in re.findall(r"service: step (\d+):", text)), default=0)

    async def reach(self, version: int, timeout: float) -> bool:
        return await self.until(lambda: self.life_version() >= version, timeout)

    def finish(self, timeout: float = 60) -> int | None:
        if self.child is None:
            return None
        rc = self.child.wait(timeout) if self.child.poll() is None else self.child.returncode
        if rc is None:
            rc = self.child.stop()
        self.peak_mb = max(self.peak_mb, self.child.peak_mb)
        return rc

    def kill9(self) -> None:
        if self.child is not None:
            self.peak_mb = max(self.peak_mb, self.child.peak_mb)
            self.child.kill9()

    def ledger(self) -> list[dict[str, Any]]:
        return jsonl(self.run_dir / "ledger.jsonl")

    def log(self) -> str:
        return "".join(c.log_text() for c in self.lab.children if c.name.startswith(f"{self.d.name}-learner"))


def audit(rows: list[dict[str, Any]]) -> tuple[bool, str]:
    """Exactly once in the ledger: every request id and every data position at most once."""
    ids = [r["request_id"] for r in rows]
    positions = [i.split("-")[1] for i in ids]
    twice = sorted({p for p in positions if positions.count(p) > 1})
    ok = len(ids) == len(set(ids)) and not twice
    return ok, f"ledger {len(ids)} groups, {len(set(positions))} positions" + (f", TWICE: {twice}" if twice else "")


async def with_fake(fake: FakeGenerator, body: Callable[[], Awaitable[Any]]) -> Any:
    from winnow.kafka import ensure_topics

    await ensure_topics(fake.kcfg, partitions=1)  # the readers below assign themselves its partitions at once
    task = asyncio.create_task(fake.run())
    try:
        return await body()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def vocab_of_tiny(lab: Lab) -> int:
    return len(lab.tokenizer())


# --------------------------------------------------------------------------------------------- attacks


@dataclass
class Attack:
    name: str
    item: str
    did: str
    expected: str
    run: Callable[[Lab, Path], Awaitable[dict[str, Any]]]
    quick: bool = False


@dataclass
class Record:
    name: str
    item: str
    did: str
    expected: str
    observed: str
    held: bool
    seconds: float
    peak_rss_mb: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


async def forged_groups(lab: Lab, d: Path) -> dict[str, Any]:
    from winnow.v1 import messages_pb2

    kcfg = lab.kafka("forged", lab.broker("noida"))
    run = LearnerRun(lab, d, kcfg, max_steps=5)
    tok, vocab = lab.tokenizer(), vocab_of_tiny(lab)
    fake = FakeGenerator(kcfg, tok, vocab, delay_s=0.3)
    forged: list[str] = []

    async def body():
        run.start()
        rng = random.Random(1)
        copied: set[str] = set()
        async with Attacker(kcfg) as atk:
            while run.version() < 5 and run.child.poll() is None:
                targets = []
                for req in await atk.read():  # ids never released, and attempts never released
                    run_id, pos, attempt = req.request_id.split("-")
                    targets += [(req, f"{run_id}-{int(pos) + 1000}-0"), (req, f"{run_id}-{pos}-{int(attempt) + 1}"),
                                (req, f"{run_id}-{pos}-{int(attempt) + 7}")]
                for g in await atk.read_groups():  # an honest group seen on the topic: its id again, forged
                    if g.generator_id == "fake" and g.request_id not in copied:
                        copied.add(g.request_id)
                        targets.append((g, g.request_id))
                for src, fid in targets:
                    fake_req = messages_pb2.PromptRequest(request_id=fid, prompt_id=src.prompt_id,
                                                          problem=src.problem, task=src.task)
                    await atk.send(atk.t.groups, _group(fake_req, tok, vocab, rng, version=run.version(),
                                                        text=FORGED_TEXT, generator_id="attacker"))
                    forged.append(fid)
                await asyncio.sleep(0.05)
        return await run.reach(5, 90)

    reached = await with_fake(fake, body)
    rc = run.finish()
    rows = run.ledger()
    ok, summary = audit(rows)
    trained_forged = [r["request_id"] for r in rows
                      if int(r["request_id"].split("-")[2]) > 0 or int(r["request_id"].split("-")[1]) >= 1000]
    texts = [s["text"] for r in jsonl(run.run_dir / "samples.jsonl") for s in r.get("samples", [])]
    forged_texts = sum(FORGED_TEXT in t for t in texts)
    held = reached and rc == 0 and ok and not trained_forged and forged_texts == 0 and len(forged) >= 10
    return dict(held=held, peak=run.peak_mb, observed=(
        f"{len(forged)} forged groups written; learner reached v{run.version()} (exit {rc}); {summary}; "
        f"forged ids trained: {trained_forged or 'none'}; forged texts in samples.jsonl: {forged_texts}"))


async def forged_unsigned_with_key(lab: Lab, d: Path) -> dict[str, Any]:
    key = "attack-replay-shared-secret-32by"
    kcfg = lab.kafka("hmac", lab.broker("tansu"))
    run = LearnerRun(lab, d, kcfg, max_steps=3, env=child_env(WINNOW_GROUP_HMAC_KEY=key))
    tok, vocab = lab.tokenizer(), vocab_of_tiny(lab)
    fake = FakeGenerator(kcfg, tok, vocab, hmac_key=key.encode(), delay_s=0.5)
    forged: list[str] = []

    async def body():
        run.start()
        rng = random.Random(2)
        async with Attacker(kcfg) as atk:
            while run.version() < 3 and run.child.poll() is None:
                for req in await atk.read():  # the outstanding id itself, first, all correct
                    await atk.send(atk.t.groups, _group(req, tok, vocab, rng, version=req.release_version,
                                                        text=FORGED_TEXT, statuses=(CORRECT, CORRECT),
                                                        generator_id="attacker"))
                    forged.append(req.request_id)
                await asyncio.sleep(0.05)
        return await run.reach(3, 120)

    reached = await with_fake(fake, body)
    rc = run.finish()
    ok, summary = audit(run.ledger())
    texts = [s["text"] for r in jsonl(run.run_dir / "samples.jsonl") for s in r.get("samples", [])]
    forged_texts = sum(FORGED_TEXT in t for t in texts)
    dead = [r for r in jsonl(run.run_dir / "dead-letter.jsonl") if str(r.get("reason", "")).startswith("unauth")]
    held = reached and rc == 0 and ok and forged_texts == 0 and len(dead) >= len(forged) > 0
    return dict(held=held, peak=run.peak_mb, observed=(
        f"{len(forged)} unsigned groups for outstanding ids (tansu), written before the signed ones; learner reached "
        f"v{run.version()} (exit {rc}); {summary}; forged texts trained/logged: {forged_texts}; "
        f"dead-lettered unauthenticated: {len(dead)}"))


async def rereleased_after_restore(lab: Lab, d: Path) -> dict[str, Any]:
    kcfg = lab.kafka("rerelease", lab.broker("noida"))
    extra = {"request_timeout_s": 3.0}
    fake = FakeGenerator(kcfg, lab.tokenizer(), vocab_of_tiny(lab), hold=lambda p: p == 0)
    run = LearnerRun(lab, d, kcfg, max_steps=200, extra=extra)
    latest = run.ckpt / "LATEST"

    async def first_life():
        run.start()
        rereleased = await run.until(lambda: any(s.endswith("-0-1") for s in fake.seen), 90)
        at = latest.read_text() if latest.exists() else ""
        await run.until(lambda: latest.exists() and latest.read_text() != at, 30)  # a checkpoint with attempt 1 out
        run.kill9()
        return rereleased, run.version()

    rereleased, killed_at = await with_fake(fake, first_life)
    run2 = LearnerRun(lab, d, kcfg, max_steps=killed_at + 4, extra=extra)
    run2.starts = run.starts

    held_ids: list[str] = []

    async def second_life():
        run2.start()
        held_ids.extend(r.request_id for r in fake.held)
        fake.flush()  # both attempts' groups of position 0 arrive now
        return await run2.reach(killed_at + 4, 90)

    reached = await with_fake(fake, second_life)
    rc = run2.finish()
    rows = run2.ledger()
    ok, summary = audit(rows)
    pos0 = [r["request_id"] for r in rows if r["request_id"].split("-")[1] == "0"]
    held = rereleased and reached and rc == 0 and ok and len(pos0) <= 1
    return dict(held=held, peak=max(run.peak_mb, run2.peak_mb), observed=(
        f"position 0 held back and re-released as attempt 1: {rereleased}; kill -9 at v{killed_at} after a "
        f"checkpoint; restarted, held groups {held_ids} delivered; reached v{killed_at + 4}: {reached} "
        f"(exit {rc}); {summary}; position 0 in the ledger: {pos0}"))


async def crash_before_first_checkpoint(lab: Lab, d: Path) -> dict[str, Any]:
    kcfg = lab.kafka("firstckpt", lab.broker("noida"))
    extra = {"checkpoint": {"every": 10}, "request_timeout_s": 900}  # winnow up's defaults: the first at step 10
    fake = FakeGenerator(kcfg, lab.tokenizer(), vocab_of_tiny(lab), follow_weights=True)
    run = LearnerRun(lab, d, kcfg, max_steps=50, extra=extra)

    async def first_life():
        run.start()
        got = await run.until(lambda: run.version() >= 2 and fake.loaded >= 2, 90)
        v, loaded = run.version(), fake.loaded
        run.kill9()
        return got, v, loaded

    got, killed_at, loaded = await with_fake(fake, first_life)
    no_ckpt = not (run.ckpt / "LATEST").exists()
    run_id_file = run.ckpt / "RUN_ID"
    run_id_before = run_id_file.read_text().strip() if run_id_file.exists() else ""
    run2 = LearnerRun(lab, d, kcfg, max_steps=3, extra=extra)
    run2.starts = run.starts
    start = time.monotonic()

    async def second_life():
        run2.start()
        return await run2.reach(3, 90)

    reached = await with_fake(fake, second_life)
    took = time.monotonic() - start
    rc = run2.finish()
    ok, summary = audit(run2.ledger())
    run_id_after = run_id_file.read_text().strip() if run_id_file.exists() else ""
    held = got and no_ckpt and reached and rc == 0 and ok and run_id_before == run_id_after != ""
    return dict(held=held, peak=max(run.peak_mb, run2.peak_mb), observed=(
        f"kill -9 at v{killed_at} with no checkpoint written ({no_ckpt}), generator on the dead lineage's "
        f"v{loaded} weights; resumed to v3: {reached} in {took:.1f}s (exit {rc}); run id continued "
        f"{run_id_before == run_id_after} ({run_id_after}); {summary}; fake generator errors {fake.errors[:2]}"))


async def latest_names_missing_checkpoint(lab: Lab, d: Path) -> dict[str, Any]:
    kcfg = lab.kafka("latest", lab.broker("noida"))
    fake = FakeGenerator(kcfg, lab.tokenizer(), vocab_of_tiny(lab))
    run = LearnerRun(lab, d, kcfg, max_steps=4)

    async def first():
        run.start()
        return await run.reach(4, 90)

    ok1 = await with_fake(fake, first)
    rc1 = run.finish()
    rows_before = len(run.ledger())
    (run.ckpt / "LATEST").write_text("step-00000042")  # names a checkpoint that does not exist
    run2 = LearnerRun(lab, d, kcfg, max_steps=6)
    run2.starts = run.starts

    async def second():
        run2.start()
        return await run2.reach(6, 90)

    reached = await with_fake(fake, second)
    rc = run2.finish()
    rows = run2.ledger()
    ok, summary = audit(rows)
    versions = run2.versions()
    resumed = "resumed from" in run2.log() and "step-00000004" in run2.log()
    held = ok1 and rc1 == 0 and reached and rc == 0 and ok and resumed and versions == list(range(1, 7)) \
        and len(rows) >= rows_before > 0
    return dict(held=held, peak=run2.peak_mb, observed=(
        f"first run to v4 ({rows_before} ledger rows), LATEST -> step-00000042 (absent); second run resumed from "
        f"step-00000004: {resumed}, metrics versions {versions} (exit {rc}); ledger rows {rows_before} -> "
        f"{len(rows)}; {summary}"))


async def memory_broker_restart(lab: Lab, d: Path) -> dict[str, Any]:
    from winnow.brokers import LocalBroker, free_port
    from winnow.kafka import ensure_topics

    port = free_port()
    broker = LocalBroker("tansu", d / "broker1", port=port)
    broker.start()
    kcfg = lab.kafka("tansu-restart", broker.bootstrap)
    fake = FakeGenerator(kcfg, lab.tokenizer(), vocab_of_tiny(lab))
    run = LearnerRun(lab, d, kcfg, max_steps=8)
    brokers = [broker]
    diag: dict[str, Any] = {}
    try:
        async def body():
            run.start()
            ok = await run.reach(3, 90)
            at = run.life_version()
            broker.stop()  # every record gone: the memory-only broker restarts under the running learner
            brokers.append(LocalBroker("tansu", d / "broker2", port=port))
            brokers[-1].start()
            reached = await run.reach(8, 45)
            diag["ends_after_restart"] = await _end_offsets(kcfg)
            if not reached and run.child.poll() is None:  # an operator recreates the topics: does it go on then?
                await ensure_topics(kcfg, partitions=1)
                diag["v8_after_topics_recreated_20s"] = await run.reach(8, 20)
            return ok, at, reached

        ok, at, reached = await with_fake(fake, body)
        log, alive, stalled_at = run.log(), run.child.poll() is None, run.life_version()
        warned = "lost records" in log or "ends at offset" in log or "lost topic" in log
        resumed = None
        if not reached:  # the workaround: stop the learner and resume it
            run.finish(timeout=1)
            run2 = LearnerRun(lab, d, kcfg, max_steps=8)
            run2.starts = run.starts

            async def resume():
                run2.start()
                return await run2.reach(8, 90)

            resumed = await with_fake(fake, resume)
            run2.finish()
            warned_on_resume = "lost records" in run2.child.log_text()
            diag["resume_warned_lost_records"] = warned_on_resume
        ok_ledger, summary = audit(jsonl(run.run_dir / "ledger.jsonl"))
        # Held: the running learner notices (a warning), keeps training after the restart (no silent stall: the
        # original defect was 0 steps until request_timeout_s), trains no group twice, and the run reaches its last
        # step (within 45 s, or after a resume). Reaching v8 within 45 s is not required: a generator whose consumer
        # position lies beyond the restarted broker's log end (tansu reports no out-of-range) waits for that log to
        # grow, which slows the recovery (an open defect on the generator side, docs/kafka.md).
        progressed = stalled_at > at
        held = ok and ok_ledger and warned and progressed and (reached or bool(resumed))
        return dict(held=held, peak=run.peak_mb, observed=(
            f"tansu stopped and restarted empty on the same port at v{at}; the running learner reached "
            f"v{stalled_at} of 8 in 45 s (alive {alive}, lost-records warning {warned}); stopped and resumed: v8 "
            f"reached {resumed}; {summary}; {diag}"))
    finally:
        run.finish(timeout=1)
        for b in brokers:
            b.stop()


async def _end_offsets(kcfg) -> dict[str, Any]:
    """End offsets of the three topics on the broker now (what a restarted broker holds)."""
    from winnow.kafka import TopicPartition, make_consumer, topics

    t = topics(kcfg)
    consumer = make_consumer(kcfg, None, None, client_id="attack-probe")
    await consumer.start()
    try:
        names = await consumer.topics()
        tps = [TopicPartition(n, 0) for n in (t.prompts, t.groups, t.weights) if n in names]
        ends = await consumer.end_offsets(tps) if tps else {}
        return {tp.topic.rsplit(".", 1)[1]: end for tp, end in ends.items()}
    except Exception as e:  # noqa: BLE001 - a diagnostic only
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        await consumer.stop()


async def huge_prompt_group(lab: Lab, d: Path) -> dict[str, Any]:
    kcfg = lab.kafka("hugeprompt", lab.broker("noida"))
    run = LearnerRun(lab, d, kcfg, max_steps=3)
    tok, vocab = lab.tokenizer(), vocab_of_tiny(lab)
    fake = FakeGenerator(kcfg, tok, vocab, delay_s=0.5)
    sent: list[str] = []

    async def body():
        run.start()
        rng = random.Random(3)
        async with Attacker(kcfg) as atk:
            while not sent and run.child.poll() is None:
                for req in await atk.read():
                    if not sent:  # one record, for an outstanding id, before the honest group
                        prompt = [rng.randrange(3, vocab) for _ in range(30_000)]
                        await atk.send(atk.t.groups, _group(req, tok, vocab, rng, version=req.release_version,
                                                            text=FORGED_TEXT, prompt_ids=prompt))
                        sent.append(req.request_id)
        return await run.reach(3, 120)

    reached = await with_fake(fake, body)
    rc = run.finish()
    ok, summary = audit(run.ledger())
    dead = [r for r in jsonl(run.run_dir / "dead-letter.jsonl") if "prompt" in str(r.get("reason", ""))]
    held = reached and rc == 0 and ok and run.starts == 1 and len(dead) >= 1 and run.peak_mb < 3000
    return dict(held=held, peak=run.peak_mb, observed=(
        f"one group with 30,000 prompt tokens for outstanding {sent}; learner reached v{run.version()} in one life "
        f"(exit {rc}), peak RSS {run.peak_mb:.0f} MB; dead-lettered: {[r.get('reason') for r in dead][:1]}; {summary}"))


async def samples_terminal_escapes(lab: Lab, d: Path) -> dict[str, Any]:
    kcfg = lab.kafka("samples", lab.broker("noida"))
    run = LearnerRun(lab, d, kcfg, max_steps=2)
    fake = FakeGenerator(kcfg, lab.tokenizer(), vocab_of_tiny(lab))

    async def body():
        run.start()
        return await run.reach(2, 90)

    reached = await with_fake(fake, body)
    run.finish()
    res = run_cli(lab, "samples", ["samples", str(run.run_dir)], timeout=60)
    raw = [c for c in ("\x1b", "\x07", "\x9b") if c in res.out or c in res.err]
    shown = "\\x1b" in res.out
    held = reached and res.rc == 0 and not raw and shown
    return dict(held=held, peak=res.peak_mb, observed=(
        f"groups whose texts and problem hold OSC/CSI/BEL/C1 sequences trained (v{run.version()}); winnow samples "
        f"exit {res.rc}, {len(res.out)} chars; raw control characters printed: {raw or 'none'}; shown escaped: "
        f"{shown}"))


# ---- the generator


class GeneratorLab:
    """One ``winnow generator run`` (tiny model, in-process verifier) on its own topics."""

    def __init__(self, lab: Lab, d: Path) -> None:
        import yaml

        from winnow.brokers import free_port

        self.lab, self.d = lab, d
        self.kcfg = lab.kafka("generator", lab.broker("noida"))
        self.metrics_port = free_port()
        (d / "weights").mkdir(parents=True, exist_ok=True)
        cfg = {"generator": {
            "model": str(lab.tiny()), "engine": "transformers", "generator_id": "gen-attacked",
            "group_id": "gen-attacked", "batch_prompts": 2, "batch_wait_ms": 100, "kafka_partitions": 1,
            "metrics_port": self.metrics_port, "metrics_host": HOST, "sampling": {"max_new_tokens": 8},
            "weights": {"root": str(d / "weights"), "poll_interval_s": 0.2}},
            "kafka": {"bootstrap_servers": self.kcfg.bootstrap_servers, "topic_prefix": self.kcfg.topic_prefix,
                      "session_timeout_ms": 6000}}
        self.cfg_file = d / "generator.yaml"
        self.cfg_file.write_text(yaml.safe_dump(cfg))
        self.child: Child | None = None

    async def start(self) -> None:
        from winnow.kafka import ensure_topics

        await ensure_topics(self.kcfg, partitions=1)
        self.child = self.lab.spawn("generator", [PY, "-m", "winnow", "generator", "run", "--config",
                                                  str(self.cfg_file)], as_gb=8)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.child.poll() is not None:
                raise RuntimeError(f"generator exited {self.child.returncode}: {self.child.log_text(2000)}")
            with contextlib.suppress(OSError):
                if "winnow_generator_weight_version" in scrape(self.metrics_port):
                    return
            await asyncio.sleep(0.3)
        raise RuntimeError("generator did not serve /metrics within 120 s")

    def metrics(self) -> dict[str, float]:
        try:
            return scrape(self.metrics_port)
        except OSError:
            return {}

    async def answered(self, request_id: str, timeout: float = 90) -> Any:
        from winnow.kafka import ScoredGroup, assign_all_partitions, decode_record, make_consumer, topics

        consumer = make_consumer(self.kcfg, None, None, client_id="attack-reader")
        await consumer.start()
        try:
            await assign_all_partitions(consumer, topics(self.kcfg).groups, {})
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=300)).values():
                    for rec in records:
                        g = decode_record(ScoredGroup, rec)
                        if g is not None and g.request_id == request_id:
                            return g
                if self.child.poll() is not None:
                    return None
        finally:
            await consumer.stop()
        return None


_GENERATOR: dict[str, GeneratorLab] = {}


async def generator(lab: Lab) -> GeneratorLab:
    g = _GENERATOR.get("g")
    if g is None or g.child is None or g.child.poll() is not None:
        g = GeneratorLab(lab, lab.out / "generator")
        await g.start()
        _GENERATOR["g"] = g
    return g


def _request(i: int, n: int):
    from winnow.v1 import messages_pb2

    return messages_pb2.PromptRequest(prompt_id=f"atk/{i}", request_id=f"atk-{i}-0", problem=f"What is {i} + 1?",
                                      gold=str(i + 1), task="math", n=n, release_version=0, released_at=time.time())


async def million_samples(lab: Lab, d: Path) -> dict[str, Any]:
    from winnow.kafka import make_producer, send, topics

    g = await generator(lab)
    million = _request(1, 1_000_000)
    producer = make_producer(g.kcfg, client_id="attacker")
    await producer.start()
    try:
        await send(producer, topics(g.kcfg).prompts, million)
        await send(producer, topics(g.kcfg).prompts, _request(2, 2))
    finally:
        await producer.stop()
    group = await g.answered("atk-2-0")
    m = g.metrics()
    quarantined = m.get('winnow_generator_quarantined_requests_total{reason="n"}', 0)
    alive = g.child.poll() is None
    peak = g.child.peak_mb
    held = alive and group is not None and quarantined >= 1 and peak < 3000
    return dict(held=held, peak=peak, observed=(
        f"a {len(million.SerializeToString())}-byte request with n=1,000,000, then a normal one: generator alive "
        f"{alive}, normal request answered {group is not None}, quarantined{{reason=n}} {quarantined:g}, "
        f"peak RSS {peak:.0f} MB"))


async def weights_announcements(lab: Lab, d: Path) -> dict[str, Any]:
    from winnow.kafka import make_producer, send, topics
    from winnow.v1 import messages_pb2

    g = await generator(lab)
    inside = g.d / "weights" / "v1" / "model.safetensors"
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_bytes(b"not weights")
    anns = [
        messages_pb2.WeightAnnouncement(version=1, uri="/etc/passwd", sha256="a" * 64, format="safetensors"),
        messages_pb2.WeightAnnouncement(version=2, uri="file:///etc/passwd", sha256="c" * 64, format="safetensors"),
        messages_pb2.WeightAnnouncement(version=2**62, uri="v1/model.safetensors", sha256="b" * 64,
                                        format="safetensors"),
    ]
    want = [("location", 1), ("location", 2), ("version", 1)]
    producer = make_producer(g.kcfg, client_id="attacker")
    await producer.start()
    try:
        for ann, (reason, count) in zip(anns, want, strict=True):  # one at a time: the newest one wins a poll
            await send(producer, topics(g.kcfg).weights, ann)
            key = f'winnow_generator_weight_refusals_total{{reason="{reason}"}}'
            deadline = time.monotonic() + 20
            while g.metrics().get(key, 0) < count and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        await send(producer, topics(g.kcfg).prompts, _request(3, 2))
    finally:
        await producer.stop()
    group = await g.answered("atk-3-0")
    m = g.metrics()
    loc = m.get('winnow_generator_weight_refusals_total{reason="location"}', 0)
    ver = m.get('winnow_generator_weight_refusals_total{reason="version"}', 0)
    version = m.get("winnow_generator_weight_version", -1)
    stamped = group.policy_version if group is not None else None
    held = loc >= 2 and ver >= 1 and version == 0 and stamped == 0
    return dict(held=held, peak=g.child.peak_mb, observed=(
        f"announced /etc/passwd, file:///etc/passwd and version 2^62: refusals location={loc:g} version={ver:g}, "
        f"generator weight version {version:g}, next group stamped v{stamped}"))


# ---- the verifier


async def verify_batch_63mb(lab: Lab, d: Path) -> dict[str, Any]:
    import grpc

    from winnow.v1 import verifier_pb2 as S
    from winnow.v1 import verifier_pb2_grpc

    child, port = lab.start_verifier()
    before = child.peak_mb
    big = S.VerifyBatchRequest(items=[S.VerifyRequest(id=str(i), response="1" * 1_000_000, gold="1")
                                      for i in range(63)])
    size = big.ByteSize()
    code = None
    async with grpc.aio.insecure_channel(f"{HOST}:{port}", options=[("grpc.max_send_message_length", 1 << 27)]) as ch:
        stub = verifier_pb2_grpc.VerifierStub(ch)
        try:
            await stub.VerifyBatch(big, timeout=60)
            code = "OK"
        except grpc.aio.AioRpcError as e:
            code = e.code().name
        del big
        ok = await stub.Verify(S.VerifyRequest(id="after", response="\\boxed{2}", gold="2"), timeout=10)
    await asyncio.sleep(0.5)
    peak = child.peak_mb
    held = code == "RESOURCE_EXHAUSTED" and ok.status == 1 and peak - before < 500 and child.poll() is None
    return dict(held=held, peak=peak, observed=(
        f"VerifyBatch of {size / 1e6:.1f} MB: {code}; server peak RSS {before:.0f} -> {peak:.0f} MB; "
        f"a normal Verify afterwards: status {ok.status}"))


async def fast_path_newlines(lab: Lab, d: Path) -> dict[str, Any]:
    import grpc

    from winnow.v1 import verifier_pb2 as S
    from winnow.v1 import verifier_pb2_grpc

    _, port = lab.start_verifier()
    hostile = S.VerifyBatchRequest(items=[S.VerifyRequest(id=f"h{i}", response="\n" * 8000, gold="42")
                                          for i in range(64)])
    others: list[str] = []
    hostile_s: list[float] = []
    async with grpc.aio.insecure_channel(f"{HOST}:{port}") as ch1, grpc.aio.insecure_channel(f"{HOST}:{port}") as ch2:
        attacker, client = verifier_pb2_grpc.VerifierStub(ch1), verifier_pb2_grpc.VerifierStub(ch2)

        async def flood():
            t = time.monotonic()
            try:
                await attacker.VerifyBatch(hostile, timeout=60)
            except grpc.aio.AioRpcError as e:
                others.append(f"hostile {e.code().name}")
            hostile_s.append(time.monotonic() - t)

        async def honest(i: int):
            await asyncio.sleep(0.05 * i)
            try:
                r = await client.Verify(S.VerifyRequest(id=f"c{i}", response=f"\\boxed{{{i}}}", gold=str(i)),
                                        timeout=2.0)
                others.append("CORRECT" if r.status == 1 else f"status {r.status}")
            except grpc.aio.AioRpcError as e:
                others.append(e.code().name)

        t0 = time.monotonic()
        await asyncio.gather(*(flood() for _ in range(6)), *(honest(i) for i in range(30)))
        total = time.monotonic() - t0
    honest_ok = others.count("CORRECT")
    held = honest_ok == 30 and max(hostile_s) < 10
    return dict(held=held, peak=lab.verifier.peak_mb, observed=(
        f"6 batches x 64 responses of 8,000 newlines with 30 other calls (2 s deadline): {honest_ok}/30 other calls "
        f"CORRECT ({sorted(set(others) - {'CORRECT'}) or 'no errors'}); slowest hostile batch "
        f"{max(hostile_s):.2f} s; all done in {total:.2f} s"))


async def garbage_tls_key(lab: Lab, d: Path) -> dict[str, Any]:
    import shutil

    d.mkdir(parents=True, exist_ok=True)
    garbage = d / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n")
    cert, field_ = garbage, "verifier.tls.cert_file"
    if shutil.which("openssl"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                       check=True, capture_output=True, timeout=60)
        cert, field_ = d / "cert.pem", "verifier.tls.key_file"
    from winnow.brokers import free_port

    res = run_cli(lab, "tls", ["verifier", "serve", "--host", HOST, "--port", str(free_port()), "--metrics-port",
                               "-1", "--workers", "1", "--set", f"tls.cert_file={cert}",
                               "--set", f"tls.key_file={garbage}"], timeout=60)
    error = [line for line in res.err.splitlines() if line.startswith("winnow:")]
    held = (res.rc == 2 and len(error) == 1 and field_ in error[0] and "Traceback" not in res.err
            and "Failed to bind" not in res.err)
    return dict(held=held, peak=res.peak_mb, observed=f"exit {res.rc} in {res.seconds}s: {error[:1]!r}")


# ---- winnow up


async def two_up_one_run_dir(lab: Lab, d: Path) -> dict[str, Any]:
    run_dir = d / "run"
    args = ["up", "--run-dir", str(run_dir), "--model", str(lab.tiny()), "--steps", "200",
            "--set", "up.broker=tansu", "--set", "learner.eval.every=0", "--set", "learner.tracking=[]"]
    first = lab.spawn("up-first", [PY, "-m", "winnow", *args], as_gb=16, new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if (run_dir / "logs" / "learner.log").exists():
                break
            await asyncio.sleep(0.3)
        started = (run_dir / "logs" / "learner.log").exists() and first.poll() is None
        second = await asyncio.to_thread(run_cli, lab, "up-second", args, timeout=120, as_gb=8)
        first_alive = first.poll() is None
        named = f"in use by another winnow up (pid {first.pid}" in second.err
        learners = (run_dir / "logs").glob("learner*.log")
        held = started and second.rc == 2 and named and first_alive and second.seconds < 30 \
            and "Traceback" not in second.err
        return dict(held=held, peak=second.peak_mb, observed=(
            f"first winnow up (pid {first.pid}) running its services: {started}; second on the same dir: exit "
            f"{second.rc} in {second.seconds}s, {second.err.strip()[:200]!r}; first still running {first_alive}; "
            f"learner logs {sorted(p.name for p in learners)}"))
    finally:
        first.stop(60)


# ---- config and environment hygiene (the CLI, bounded)


def _short_error(res: CliResult, must: list[str]) -> tuple[bool, str]:
    err = res.err.strip()
    ok = (res.rc == 2 and not res.timed_out and "Traceback" not in res.err and err.startswith("winnow:")
          and len(err) < 1000 and all(m in err for m in must) and res.seconds < 20)
    return ok, f"exit {res.rc} in {res.seconds}s, peak {res.peak_mb:.0f} MB: {err[:260]!r}"


def _cli_attack(args: list[str] | Callable[[Path], list[str]], must: list[str], *, env: dict[str, str] | None = None,
                setup: Callable[[Path], None] | None = None):
    async def attack(lab: Lab, d: Path) -> dict[str, Any]:
        d.mkdir(parents=True, exist_ok=True)
        if setup is not None:
            setup(d)
        argv = args(d) if callable(args) else args
        res = await asyncio.to_thread(run_cli, lab, d.name, argv, env=child_env(**(env or {})), timeout=60, as_gb=3)
        ok, observed = _short_error(res, [m.format(d=d) for m in must])
        return dict(held=ok, peak=res.peak_mb, observed=observed)

    return attack


BOMB = "\n".join([
    'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
    *[f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefg", "bcdefgh", strict=True)],
    "learner:", "  n: *h", ""])


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda d: (d / name).write_text(text)


def _saved_up(d: Path, text: str | None = None) -> None:
    import yaml

    from winnow.up import resolve

    saved = d / "run" / "config" / "up.yaml"
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(text if text is not None else yaml.safe_dump(resolve(None, [], d / "run")))


def _read_only_dir(d: Path) -> list[str]:
    if os.geteuid() == 0:  # root writes through file modes; sysfs refuses even root
        return ["up", "--run-dir", "/sys/winnow-attack-run", "--steps", "1"]
    (d / "ro").mkdir(mode=0o555, exist_ok=True)
    return ["up", "--run-dir", str(d / "ro" / "run"), "--steps", "1"]


PRINT = ["learner", "run", "--print-config"]

ATTACKS: list[Attack] = [
    Attack("forged_groups", "1", "a foreign producer reads run id and positions off the prompts topic and writes "
           "well-formed groups for never-released positions (+1000), for other attempts of outstanding positions "
           "and for earlier positions again", "no forged group trained, every position at most once in the ledger",
           forged_groups, quick=True),
    Attack("rereleased_after_restore", "2", "hold back position 0 until it times out and is re-released (attempt 1), "
           "kill -9 the learner after a checkpoint, restart it, then deliver both attempts' groups",
           "position 0 trained once", rereleased_after_restore),
    Attack("crash_before_first_checkpoint", "3", "checkpoints every 10 steps; kill -9 the learner at v2 (no "
           "checkpoint, generator on the dead lineage's v2 weights) and resume",
           "the resumed learner continues the run id, re-announces, trains at once", crash_before_first_checkpoint),
    Attack("latest_names_missing_checkpoint", "4", "after 4 steps, LATEST is rewritten to name step-00000042 "
           "(absent); resume to 6 steps", "resume from the newest complete checkpoint (v4), ledger not truncated",
           latest_names_missing_checkpoint),
    Attack("memory_broker_restart", "5", "stop the memory-only tansu broker under a running learner at v3 and start "
           "an empty one on the same port", "the run goes on (or exits and resumes) and says the broker lost records, "
           "no group twice", memory_broker_restart),
    Attack("huge_prompt_group", "6", "a foreign producer writes one group with a 30,000-token prompt for an "
           "outstanding request id", "dead-lettered naming the bound; learner neither balloons nor restarts",
           huge_prompt_group, quick=True),
    Attack("million_samples_request", "7", "a 53-byte PromptRequest with n = 1,000,000 to a running generator",
           "quarantined and counted; the generator stays up and answers the next request", million_samples),
    Attack("verify_batch_63mb", "8", "one 63 MB VerifyBatch to winnow verifier serve",
           "RESOURCE_EXHAUSTED before parsing, RSS flat, server still answers", verify_batch_63mb, quick=True),
    Attack("fast_path_newlines", "9", "6 concurrent VerifyBatch x 64 responses of 8,000 newlines while another "
           "client makes 30 calls with a 2 s deadline", "every other call answered in time", fast_path_newlines,
           quick=True),
    Attack("weights_outside_store", "10", "weight announcements naming /etc/passwd (plain and file://) and one with "
           "version 2^62, to a running generator", "refused and counted, nothing loaded, groups stay at v0",
           weights_announcements),
    Attack("two_up_one_run_dir", "11", "a second winnow up on the run dir of a running one (tansu)",
           "the second exits at once naming the holder; the first runs on", two_up_one_run_dir),
    Attack("samples_terminal_escapes", "12", "groups whose texts and problem carry OSC/CSI/BEL/C1 sequences are "
           "trained, then winnow samples prints the run", "no raw control character reaches the terminal",
           samples_terminal_escapes, quick=True),
    Attack("forged_unsigned_with_key", "auth", "with WINNOW_GROUP_HMAC_KEY set, a foreign producer writes unsigned "
           "all-correct groups for every outstanding id before the generator's signed ones (tansu)",
           "every unsigned group dead-lettered, only signed groups trained", forged_unsigned_with_key, quick=True),
    Attack("env_misspelled_section", "hygiene", "WINNOW_LERNER_MAX_STEPS=3 winnow learner run --print-config",
           "exit 2 naming the variable and WINNOW_LEARNER_MAX_STEPS",
           _cli_attack(PRINT, ["WINNOW_LERNER_MAX_STEPS", "WINNOW_LEARNER_MAX_STEPS"],
                       env={"WINNOW_LERNER_MAX_STEPS": "3"}), quick=True),
    Attack("env_misspelled_on_resume", "hygiene", "WINNOW_LERNER_MAX_STEPS=3 winnow up --resume",
           "exit 2 naming the variable", _cli_attack(lambda d: ["up", "--resume", "--run-dir", str(d / "run")],
                                                     ["WINNOW_LERNER_MAX_STEPS"], env={"WINNOW_LERNER_MAX_STEPS": "3"},
                                                     setup=_saved_up)),
    Attack("unknown_section_on_resume", "hygiene", "winnow up --resume --set lerner.max_steps=3",
           "exit 2 naming the section", _cli_attack(lambda d: ["up", "--resume", "--run-dir", str(d / "run"), "--set",
                                                               "lerner.max_steps=3"], ["lerner"], setup=_saved_up)),
    Attack("yaml_alias_bomb", "hygiene", "a 10-line YAML alias bomb (9^8 strings) as --config",
           "exit 2 at once with a short error, small RSS",
           _cli_attack(lambda d: [*PRINT, "--config", str(d / "bomb.yaml")], ["alias"],
                       setup=_write("bomb.yaml", BOMB)), quick=True),
    Attack("lr_inf", "hygiene", "--set optim.lr=.inf", "exit 2 naming optim.lr",
           _cli_attack([*PRINT, "--set", "optim.lr=.inf"], ["optim.lr"])),
    Attack("betas_out_of_range", "hygiene", "--set optim.betas=[2,3]", "exit 2 naming optim.betas",
           _cli_attack([*PRINT, "--set", "optim.betas=[2,3]"], ["optim.betas"])),
    Attack("n_yes", "hygiene", "a config file with n: yes", "exit 2: a boolean is not a number",
           _cli_attack(lambda d: [*PRINT, "--config", str(d / "c.yaml")], ["boolean", "n"],
                       setup=_write("c.yaml", "learner:\n  n: yes\n"))),
    Attack("duplicate_keys", "hygiene", "a config file with batch_groups twice", "exit 2 naming the key and lines",
           _cli_attack(lambda d: [*PRINT, "--config", str(d / "c.yaml")], ["duplicate key 'batch_groups'"],
                       setup=_write("c.yaml", "learner:\n  batch_groups: 2\n  n: 4\n  batch_groups: 64\n"))),
    Attack("set_5000_digits", "hygiene", "--set n=<5,000 digits>", "exit 2 with a short error naming --set n",
           _cli_attack([*PRINT, "--set", "n=" + "1" * 5000], ["--set n"]), quick=True),
    Attack("run_dir_is_a_file", "hygiene", "winnow up --run-dir FILE", "exit 2 naming the file",
           _cli_attack(lambda d: ["up", "--run-dir", str(d / "afile"), "--steps", "1"], ["{d}/afile", "is a file"],
                       setup=_write("afile", "not a directory"))),
    Attack("read_only_run_dir", "hygiene", "winnow up --run-dir in a read-only directory",
           "exit 2: cannot be written", _cli_attack(_read_only_dir, ["cannot be written"])),
    Attack("malformed_up_yaml_on_resume", "hygiene", "winnow up --resume with a malformed config/up.yaml",
           "exit 2 naming the file and the fix",
           _cli_attack(lambda d: ["up", "--resume", "--run-dir", str(d / "run")], ["up.yaml", "without --resume"],
                       setup=lambda d: _saved_up(d, "learner:\n  max_steps: 3\n garbage: [\n"))),
    Attack("garbage_tls_key", "hygiene", "winnow verifier serve with a real certificate and a garbage key",
           "exit 2 naming verifier.tls.key_file, not 'Failed to bind'", garbage_tls_key, quick=True),
]


# --------------------------------------------------------------------------------------------- main


async def _guarded(coro: Awaitable[dict[str, Any]], timeout_s: float, d: Path) -> dict[str, Any]:
    """``coro`` within ``timeout_s``; on a timeout the stacks of every task go to ``d/stacks.txt`` first."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        import io

        buf = io.StringIO()
        for t in asyncio.all_tasks():
            t.print_stack(file=buf)
        d.mkdir(parents=True, exist_ok=True)
        (d / "stacks.txt").write_text(buf.getvalue())
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise TimeoutError(f"the attack took more than {timeout_s:.0f} s (task stacks in {d / 'stacks.txt'})")
    return task.result()


def run_attacks(out: Path, selected: list[Attack], timeout_s: float) -> list[Record]:
    lab = Lab(out)
    records: list[Record] = []
    sink = out / "attacks.jsonl"
    sink.write_text("")
    try:
        for a in selected:
            print(f"-- {a.name} (item {a.item}) ...", flush=True)
            start = time.monotonic()
            try:
                r = asyncio.run(_guarded(a.run(lab, out / a.name), timeout_s, out / a.name))
                rec = Record(a.name, a.item, a.did, a.expected, r["observed"], bool(r["held"]),
                             round(time.monotonic() - start, 1), r.get("peak"))
            except Exception as e:  # noqa: BLE001 - an attack that could not run is not "held"
                tb = traceback.format_exc(limit=4)
                rec = Record(a.name, a.item, a.did, a.expected, f"the attack itself failed: {type(e).__name__}: {e}",
                             False, round(time.monotonic() - start, 1), details={"traceback": tb})
            records.append(rec)
            with sink.open("a") as f:
                f.write(json.dumps(asdict(rec)) + "\n")
            print(f"   {'held' if rec.held else 'DEFECT'} in {rec.seconds}s: {rec.observed}", flush=True)
    finally:
        lab.close()
    return records


def summary(records: list[Record]) -> str:
    lines = [f"{'attack':34} {'item':8} {'held':6} {'s':>6} {'peak MB':>8}"]
    for r in records:
        peak = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb else "-"
        lines.append(f"{r.name:34} {r.item:8} {'yes' if r.held else 'NO':6} {r.seconds:6.1f} {peak:>8}")
    held = sum(r.held for r in records)
    lines.append(f"attacks {len(records)}, held {held}, defects {len(records) - held}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (attacks.jsonl, logs, every run dir)")
    p.add_argument("--only", default="", help="comma-separated attack names")
    p.add_argument("--quick", action="store_true", help="only the quick subset")
    p.add_argument("--list", action="store_true", help="list the attacks and exit")
    p.add_argument("--timeout", type=float, default=300, help="seconds per attack (default 300)")
    args = p.parse_args(argv)
    if args.list:
        for a in ATTACKS:
            print(f"{a.name:34} {a.item:8} {'quick' if a.quick else ''}")
        return 0
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - {a.name for a in ATTACKS}
    if unknown:
        p.error(f"unknown attack(s) {sorted(unknown)}; --list shows them")
    selected = [a for a in ATTACKS if (not names or a.name in names) and (a.quick or not args.quick)]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    records = run_attacks(out, selected, args.timeout)
    text = summary(records)
    print(text)
    (out / "summary.txt").write_text(text + "\n")
    return 0 if all(r.held for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
