"""A REAL Prometheus server scrapes running winnow services on loopback.

Debian's ``prometheus`` binary runs on 127.0.0.1 (free port, temp config and storage, 1 s scrape
interval). The services are real subprocesses (``winnow verifier serve``; ``winnow learner run`` and
``winnow generator run`` with a tiny random model and a local Kafka-protocol broker). The assertions
go through Prometheus' HTTP API (``/api/v1/query``), i.e. what a dashboard or an alert would see.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from winnow.v1 import verifier_pb2 as pb
from winnow.v1 import verifier_pb2_grpc as pb_grpc

from .conftest import PYTHON, ROOT, free_port, stop_process, wait_port

pytestmark = pytest.mark.helm

SCRAPE_INTERVAL = "1s"


class Prometheus:
    """A Prometheus server we started (stopped by its handle)."""

    def __init__(self, binary: str, workdir: Path, targets: dict[str, list[str]]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "scrape_configs": [{"job_name": job, "scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                                "static_configs": [{"targets": addrs}]} for job, addrs in targets.items()],
        }
        cfg = workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
             "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir,
        )
        wait_port(self.port, self.proc, timeout=30)
        wait_for(lambda: self._ready(), 30, "prometheus /-/ready")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def query(self, promql: str) -> list[dict]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The single value of an instant query, or None when it returns nothing (yet)."""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, f"{promql} returned {len(result)} series: {result}"
        return float(result[0]["value"][1])

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def wait_for(check: Callable[[], object], timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def prometheus_factory(prometheus_bin, tmp_path) -> Iterator[Callable[[dict[str, list[str]]], Prometheus]]:
    started: list[Prometheus] = []

    def start(targets: dict[str, list[str]]) -> Prometheus:
        workdir = tmp_path / f"prometheus-{len(started)}"
        workdir.mkdir()
        p = Prometheus(prometheus_bin, workdir, targets)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def winnow_cmd(*args: str) -> list[str]:
    return [PYTHON, "-m", "winnow", *args]


def test_prometheus_scrapes_the_verifier(prometheus_factory, processes, tmp_path) -> None:
    grpc_port, metrics_port = free_port(), free_port()
    log = (tmp_path / "verifier.log").open("w")
    proc = subprocess.Popen(
        winnow_cmd("verifier", "serve", "--host", "127.0.0.1", "--port", str(grpc_port),
                   "--metrics-port", str(metrics_port), "--workers", "1"),
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "WINNOW_VERIFIER_TOKEN": ""},
    )
    processes.append(proc)
    wait_port(grpc_port, proc, timeout=60)
    wait_port(metrics_port, proc, timeout=30)
    prom = prometheus_factory({"verifier": [f"127.0.0.1:{metrics_port}"]})

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        wait_for(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                 == health_pb2.HealthCheckResponse.SERVING, 30, "verifier SERVING")
        stub = pb_grpc.VerifierStub(channel)
        items = [
            pb.VerifyRequest(id="c1", response="so \\boxed{4}", gold="4"),
            pb.VerifyRequest(id="c2", response="The answer is \\boxed{\\frac{1}{2}}", gold="0.5"),
            pb.VerifyRequest(id="c3", response="\\boxed{7}", gold="#### 7"),
            pb.VerifyRequest(id="w1", response="\\boxed{5}", gold="4"),
            pb.VerifyRequest(id="w2", response="\\boxed{3}", gold="4"),
            pb.VerifyRequest(id="n1", response="I am not sure.", gold="4"),
        ]
        out = stub.VerifyBatch(pb.VerifyBatchRequest(items=items), timeout=60)
        statuses = [pb.Status.Name(r.status) for r in out.results]
        assert statuses == ["STATUS_CORRECT"] * 3 + ["STATUS_WRONG"] * 2 + ["STATUS_NO_ANSWER"], statuses
        stub.Verify(items[0], timeout=30)  # one more correct, through the unary RPC

    # what Prometheus scraped: 4 correct (3 + 1), 2 wrong, 1 no_answer
    def scraped() -> bool:
        return prom.value('winnow_verifier_items_total{job="verifier",status="correct"}') == 4.0
    wait_for(scraped, 30, "the scrape to show 4 correct items")
    assert prom.value('up{job="verifier"}') == 1.0
    assert prom.value('winnow_verifier_items_total{status="wrong"}') == 2.0
    assert prom.value('winnow_verifier_items_total{status="no_answer"}') == 1.0
    assert prom.value('sum(winnow_verifier_items_total)') == 7.0
    assert prom.value('winnow_verifier_requests_total{rpc="VerifyBatch",code="OK"}') == 1.0
    assert prom.value('winnow_verifier_requests_total{rpc="Verify",code="OK"}') == 1.0
    assert prom.value("winnow_verifier_item_latency_seconds_count") == 7.0
    assert prom.value("winnow_verifier_inflight_items") == 0.0
    ratio = prom.value("winnow_verifier_cache_hit_ratio")
    assert ratio is not None and 0.0 <= ratio <= 1.0
    # the dashboard's status panel expression evaluates (rate over the scraped counter)
    # (a rate needs two scrapes of the series)
    rates = wait_for(lambda: prom.query('sum by (status) (rate(winnow_verifier_items_total[1m]))'), 15,
                     "two scrapes for rate()")
    assert {r["metric"]["status"] for r in rates} >= {"correct", "wrong", "no_answer"}
    # /health answers on the metrics port, as the Kubernetes probes of the other services use it
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/health", timeout=5) as r:
        assert r.status == 200


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_prometheus_scrapes_learner_and_generator(prometheus_factory, processes, tmp_path) -> None:
    """The whole loop on loopback (broker, learner, generator with the in-process verifier, tiny random
    model); Prometheus scrapes the learner and the generator until the learner has taken a step."""
    from winnow.brokers import LocalBroker
    from winnow.learner.tiny import save_tiny

    model = save_tiny(tmp_path / "model")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None
    if not bootstrap:
        broker = LocalBroker("tansu", tmp_path / "broker")
        bootstrap = broker.start()
    try:
        learner_port, generator_port = free_port(), free_port()
        prefix = f"ops{os.getpid()}x{int(time.time())}"
        common = {"model": model, "device": "cpu", "metrics_host": "127.0.0.1", "kafka": {"topic_prefix": prefix}}
        learner_cfg = tmp_path / "learner.yaml"
        learner_cfg.write_text(yaml.safe_dump({
            **common, "metrics_port": learner_port,
            # grpo trains on every group, so a random model's all-wrong groups still give trained tokens
            "algo": {"preset": "grpo"}, "batch_groups": 1, "n": 2, "sampling": {"max_new_tokens": 8},
            "prompts": {"kind": "reasoning_gym", "name": "basic_arithmetic"},
            "weights": {"dir": str(tmp_path / "weights")}, "checkpoint": {"dir": str(tmp_path / "ckpt")},
            "run_dir": str(tmp_path / "run"),
        }))
        generator_cfg = tmp_path / "generator.yaml"
        generator_cfg.write_text(yaml.safe_dump({
            **common, "metrics_port": generator_port, "batch_prompts": 1, "batch_wait_ms": 0,
            "weights": {"root": str(tmp_path / "weights")},
        }))
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
        prom = prometheus_factory({"learner": [f"127.0.0.1:{learner_port}"],
                                   "generator": [f"127.0.0.1:{generator_port}"]})
        for name, cfg in (("learner", learner_cfg), ("generator", generator_cfg)):
            log = (tmp_path / f"{name}.log").open("w")
            processes.append(subprocess.Popen(winnow_cmd(name, "run", "--config", str(cfg)), env=env, cwd=tmp_path,
                                              stdout=log, stderr=subprocess.STDOUT))

        def stepped() -> bool:
            for p in processes:
                if p.poll() is not None:
                    logs = {n: (tmp_path / f"{n}.log").read_text()[-3000:] for n in ("learner", "generator")}
                    raise AssertionError(f"a service exited with {p.returncode}: {logs}")
            return (prom.value('winnow_learner_steps_total{job="learner"}') or 0) >= 1
        wait_for(stepped, 240, "Prometheus to scrape a learner step", interval=1.0)

        acceptance = prom.value('winnow_learner_acceptance_ratio{job="learner"}')
        entropy = prom.value('winnow_learner_entropy{job="learner"}')
        kept = prom.value("winnow_learner_kept_group_ratio")
        assert acceptance is not None and 0.0 <= acceptance <= 1.0, acceptance
        assert entropy is not None and 0.0 < entropy < 20.0, entropy  # nats; <= log(vocab) for a random model
        assert kept is not None and 0.0 <= kept <= 1.0
        assert prom.value("winnow_learner_weight_version") >= 1
        assert prom.value('sum(winnow_learner_groups_total{outcome="trained"})') >= 1  # batch_groups
        assert prom.value("winnow_learner_tokens_total") > 0
        assert prom.value("winnow_learner_staleness_versions_count") >= 1
        assert abs(prom.value("time() - winnow_learner_last_step_timestamp_seconds")) < 300
        assert prom.value("winnow_generator_groups_published_total") >= 1
        assert prom.value("winnow_generator_tokens_total") > 0
        assert prom.value('up{job="learner"}') == 1.0 and prom.value('up{job="generator"}') == 1.0
        # a healthy run: the stall alert's expression selects nothing
        assert prom.query("time() - winnow_learner_last_step_timestamp_seconds > 15 * 60") == []
    finally:
        for p in reversed(processes):
            stop_process(p, timeout=20)
        if broker is not None:
            broker.stop()
