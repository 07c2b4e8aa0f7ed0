"""The learner service against a real broker, with a fake generator written in the test.

The fake generator consumes the learner's prompt requests and publishes scored groups (random
responses of the tiny model's vocabulary, behaviour log-probs near log(1/V), statuses chosen by
the prompt position). The test also injects a corrupt record, a group with the wrong n, a
duplicate group and a stale group, then crashes the learner in the middle of a step and resumes
it from its checkpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from winnow.config import load_config
from winnow.kafka import (
    PromptRequest,
    WeightAnnouncement,
    assign_all_partitions,
    decode_record,
    ensure_topics,
    make_consumer,
    make_producer,
    send,
    topics,
)
from winnow.learner.algo import AlgoConfig
from winnow.learner.checkpoint import latest_checkpoint, load_checkpoint
from winnow.learner.config import LearnerConfig
from winnow.learner.service import LearnerService
from winnow.learner.step import OptimConfig, Trainer
from winnow.learner.tiny import build_tiny_model_and_tokenizer
from winnow.metrics import serve_metrics
from winnow.prompts import make_source
from winnow.v1 import messages_pb2

from ..weights_topic import latest_weight_announcement

pytestmark = [pytest.mark.timeout(180)]

CORRECT, WRONG = 1, 2
N = 2
BATCH = 2


def _statuses(position: int) -> list[int]:
    # every third prompt all correct (filtered out by reinforce_rej), the others mixed
    return [CORRECT, CORRECT] if position % 3 == 0 else [CORRECT, WRONG]


class FakeGenerator:
    """Answers each prompt request with a scored group; injects a duplicate and a stale group."""

    def __init__(self, cfg, tokenizer, vocab: int, *, inject: bool = True, lose_first: bool = False,
                 follow_weights: bool = False, hmac_key: bytes | None = None, forge: bool = False) -> None:
        self.cfg = cfg
        self.hmac_key, self.forge = hmac_key, forge  # sign groups; also send an unsigned (forged) copy first
        self.forged: list[str] = []
        self.follow_weights = follow_weights  # stamp groups with the last announced version, as a real generator
        self.loaded = 0
        self.inject = inject
        self.lose_first = lose_first  # hold back the first request's group until it is released again
        self.held: PromptRequest | None = None
        self.tok = tokenizer
        self.vocab = vocab
        self.rng = random.Random(0)
        self.seen: list[str] = []
        self.duplicated: str | None = None
        self.stale: str | None = None
        self.max_release_version = 0

    def group(self, req: PromptRequest, policy_version: int) -> messages_pb2.ScoredGroup:
        position = int(req.request_id.split("-")[1])
        samples = []
        for status in _statuses(position):
            r = self.rng.randint(1, 5)
            samples.append(
                messages_pb2.Sample(
                    response_token_ids=[self.rng.randrange(3, self.vocab) for _ in range(r)],
                    behaviour_logprobs=[-6.0] * r,
                    policy_versions=[policy_version] * r,
                    finish_reason="stop",
                    status=status,
                    reward=1.0 if status == CORRECT else 0.0,
                )
            )
        return messages_pb2.ScoredGroup(
            prompt_id=req.prompt_id,
            request_id=req.request_id,
            prompt_token_ids=self.tok(req.problem)["input_ids"],
            samples=samples,
            generator_id="fake",
            policy_version=policy_version,
            task=req.task,
        )

    async def run(self) -> None:
        t = topics(self.cfg)
        consumer = make_consumer(self.cfg, [t.prompts], "fake-generators")
        producer = make_producer(self.cfg)
        weights = make_consumer(self.cfg, None, None) if self.follow_weights else None
        await producer.start()
        await consumer.start()
        if weights is not None:
            await weights.start()
            await assign_all_partitions(weights, t.weights, {})
        try:
            while True:
                if weights is not None:  # the newest announcement wins, as in a real generator
                    for records in (await weights.getmany(timeout_ms=50)).values():
                        for record in records:
                            self.loaded = decode_record(WeightAnnouncement, record).version
                batches = await consumer.getmany(timeout_ms=100)
                for records in batches.values():
                    for record in records:
                        req = decode_record(PromptRequest, record)
                        assert req.n == N and req.sampling.temperature == 1.0
                        self.seen.append(req.request_id)
                        self.max_release_version = max(self.max_release_version, req.release_version)
                        version = self.loaded if self.follow_weights else req.release_version
                        if self.lose_first and self.held is None:
                            self.held = req
                            continue
                        if self.held is not None and req.request_id.endswith("-1"):
                            # the re-release: answer it, then the late original
                            await send(producer, t.groups, self.group(req, version))
                            await send(producer, t.groups, self.group(self.held, self.held.release_version))
                            continue
                        if self.forge:  # a foreign writer with topic access but not the key: all its samples correct
                            forged = self.group(req, version)
                            for sample in forged.samples:
                                sample.status = CORRECT
                            self.forged.append(req.request_id)
                            await send(producer, t.groups, forged)
                        if not self.inject:
                            await send(producer, t.groups, self.group(req, version), hmac_key=self.hmac_key)
                            continue
                        if self.stale is None and req.release_version >= 2:
                            self.stale, version = req.request_id, 0  # generated by a policy 2+ versions old
                        await send(producer, t.groups, self.group(req, version))
                        if self.duplicated is None:
                            self.duplicated = req.request_id  # a generator retry: published twice
                            await send(producer, t.groups, self.group(req, version))
        finally:
            await consumer.stop()
            await producer.stop()
            if weights is not None:
                await weights.stop()


class Recorder:
    """Wraps Trainer.train_step: records (version after, request ids); can crash on the k-th call."""

    def __init__(self, trainer: Trainer, run: int, log: list, crash_on_call: int | None = None) -> None:
        self.trainer, self.run, self.log, self.crash_on_call = trainer, run, log, crash_on_call
        self.calls = 0
        self.params_at: dict[int, torch.Tensor] = {}  # version -> parameters after the step
        self.params_before: dict[int, torch.Tensor] = {}  # version -> parameters the step started from
        self._inner = trainer.train_step
        trainer.train_step = self

    def __call__(self, groups):
        self.calls += 1
        self.params_before[self.trainer.version] = _flat(self.trainer.model)
        if self.crash_on_call is not None and self.calls == self.crash_on_call:
            raise RuntimeError("simulated crash in the middle of a step")
        stats = self._inner(groups)
        self.log.append((self.run, self.trainer.version, [g.request_id for g in groups]))
        self.params_at[self.trainer.version] = _flat(self.trainer.model)
        return stats


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def _trainer(algo: AlgoConfig) -> tuple[Trainer, object]:
    model, tok = build_tiny_model_and_tokenizer(seed=0)
    return Trainer(model, algo, OptimConfig(lr=1e-2, micro_batch_size=4), pad_token_id=tok.pad_token_id), tok


def _scrape(registry) -> str:
    server = serve_metrics(registry, 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
            return r.read().decode()
    finally:
        server.stop()


def _metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} " if want else f"{name} "):
            return float(line.split()[-1])
    raise AssertionError(f"{name}{labels} not in the scrape")


def _jsonl_learner(kcfg, tmp_path: Path, rows: int = 80, *, algo: dict, shuffle: bool = True, **learner):
    """A LearnerConfig over a JSONL file of ``rows`` sums, one groups partition, batches of BATCH x N."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"question": f"{i} + 7?", "answer": str(i + 7)}) + "\n" for i in range(rows)))
    data = {"kafka": kcfg.model_dump(), "algo": algo, "batch_groups": BATCH, "n": N, "kafka_partitions": 1,
            "prompts": {"kind": "jsonl", "path": str(prompts), **({} if shuffle else {"shuffle": False})},
            "weights": {"dir": str(tmp_path / "weights")}, "checkpoint": {"dir": str(tmp_path / "ckpt")},
            "run_dir": str(tmp_path / "run")}
    for key, value in learner.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    return load_config(LearnerConfig, data=data)


async def _run_with(service: LearnerService, fake: FakeGenerator, timeout_s: float = 60) -> int:
    """Run ``service`` while ``fake`` answers its prompt requests; the steps it took."""
    task = asyncio.create_task(fake.run())
    try:
        return await asyncio.wait_for(service.run(), timeout_s)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_learner_trains_dedupes_drops_and_resumes(kafka_config, tmp_path: Path):
    """On both brokers (tansu's group re-join after the crash waits out the old session: ~35 s)."""
    kcfg = kafka_config
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(200)
        )
    )
    cfg = load_config(
        LearnerConfig,
        data={
            "kafka": kcfg.model_dump(),
            "algo": {"preset": "reinforce_rej", "max_staleness": 1, "dynamic_sampling": False},
            "batch_groups": BATCH,
            "n": N,
            "kafka_partitions": 1,  # one partition: arrival order = release order, staleness is exact
            "prompts": {"kind": "jsonl", "path": str(prompts)},
            "weights": {"dir": str(tmp_path / "weights"), "keep": 2},
            "checkpoint": {"dir": str(tmp_path / "ckpt"), "every": 2},
            "run_dir": str(tmp_path / "run"),
            "metrics_port": 0,
        },
    )
    await ensure_topics(kcfg, partitions=1)
    t = topics(kcfg)
    # garbage and a group with the wrong n, before the learner starts
    producer = make_producer(kcfg)
    await producer.start()
    try:
        await producer.send_and_wait(t.groups, b"\x08\x96\x01 not a scored group", key=b"junk")
        bad = messages_pb2.ScoredGroup(
            prompt_id="x/1",
            request_id="foreign-1",
            prompt_token_ids=[5, 6],
            samples=[messages_pb2.Sample(response_token_ids=[7], behaviour_logprobs=[-1.0], status=CORRECT)]
            * 3,
        )
        await send(producer, t.groups, bad)
    finally:
        await producer.stop()

    source = make_source(cfg.prompts)
    algo = cfg.algo
    trained: list = []

    trainer1, tok = _trainer(algo)
    vocab = trainer1.model.get_input_embeddings().weight.shape[0]
    initial = _flat(trainer1.model)
    rec1 = Recorder(trainer1, 1, trained, crash_on_call=4)
    reg1 = CollectorRegistry()
    service1 = LearnerService(cfg, trainer1, source, reg1)
    fake = FakeGenerator(kcfg, tok, vocab)
    fake_task = asyncio.create_task(fake.run())
    try:
        # ---- run 1: three steps, then a crash inside the fourth (checkpoints at versions 2 only)
        with pytest.raises(RuntimeError, match="simulated crash"):
            await asyncio.wait_for(service1.run(), 60)
        assert trainer1.version == 3 and rec1.calls == 4
        assert not torch.equal(initial, _flat(trainer1.model)), "parameters moved"
        scrape = _scrape(reg1)
        assert _metric(scrape, "winnow_learner_groups_total", outcome="corrupt") == 2
        assert _metric(scrape, "winnow_learner_groups_total", outcome="duplicate") >= 1
        assert _metric(scrape, "winnow_learner_steps_total") == 3
        assert _metric(scrape, "winnow_learner_weight_version") == 3
        assert _metric(scrape, "winnow_learner_prompts_released_total") >= 3 * BATCH
        assert _metric(scrape, "winnow_learner_step_phase_seconds_count", phase="compute") == 3
        assert service1.book.counts["all_correct"] >= 1  # position 0 is all-correct: filtered by reinforce_rej
        # admission control: never more than (max_staleness + 1) batches released and unconsumed
        assert len(service1.book.state.unconsumed) <= 2 * BATCH
        assert fake.max_release_version <= 3
        ckpt = latest_checkpoint(cfg.checkpoint.dir)
        assert ckpt is not None and ckpt.name == "step-00000002"
        _, state_v2 = load_checkpoint(ckpt)
        assert state_v2.unconsumed, "requests were in flight at the checkpoint"
        lines = (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["version"] for x in lines] == [1, 2, 3]
        # every publication after the first is compared with the version before it (the tiny model's steps move it)
        changed = [json.loads(x)["published_changed_fraction"] for x in lines[1:]]
        assert all(0 < c <= 1 for c in changed), changed
        assert _metric(scrape, "winnow_learner_published_changed_ratio") == changed[-1]

        # ---- run 2: a new process's view: a fresh Trainer from the initial weights + the checkpoint
        cfg2 = cfg.model_copy(update={"max_steps": 6})
        trainer2, _ = _trainer(algo)
        rec2 = Recorder(trainer2, 2, trained)
        reg2 = CollectorRegistry()
        service2 = LearnerService(cfg2, trainer2, source, reg2)
        steps = await asyncio.wait_for(service2.run(), 60)
        assert steps == 4 and trainer2.version == 6
        # resumed from the version-2 checkpoint: run 2 started from run 1's weights after step 2
        assert torch.equal(rec2.params_before[2], rec1.params_at[2])
        _, state = load_checkpoint(latest_checkpoint(cfg.checkpoint.dir))
        assert state.version == 6 and state.run_id == service1.book.state.run_id
    finally:
        fake_task.cancel()
        await asyncio.gather(fake_task, return_exceptions=True)

    # the lineage of the final weights: run 1 up to its checkpoint (version 2), then run 2
    lineage = [(run, v, ids) for run, v, ids in trained if run == 2 or v <= 2]
    ids = [i for _, _, batch in lineage for i in batch]
    assert len(ids) == len(set(ids)), f"a group was trained twice: {lineage}"
    assert [v for _, v, _ in lineage] == [1, 2, 3, 4, 5, 6]
    discarded = {i for run, v, batch in trained if run == 1 and v == 3 for i in batch}
    assert discarded and discarded <= set(ids), (
        "groups of the step lost in the crash were trained after resuming"
    )
    assert fake.duplicated in ids and fake.stale not in ids
    # on resume, the checkpoint's unconsumed requests were sent again under the same ids
    assert all(fake.seen.count(rid) >= 2 for rid in state_v2.unconsumed)
    assert service1.book.counts["stale"] + service2.book.counts["stale"] >= 1
    # data positions never repeat in the lineage (requests are <run>-<position>-<attempt>)
    positions = [i.split("-")[1] for i in ids]
    assert len(positions) == len(set(positions))

    # weights: the last announcement is version 6 and matches the final model
    ann = await latest_weight_announcement(kcfg)
    assert ann.version == 6 and ann.format == "safetensors"
    path = Path(ann.uri.removeprefix("file://"))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ann.sha256
    from safetensors.torch import load_file

    published = load_file(str(path))
    for name, p in trainer2.model.state_dict().items():
        if name in published:
            assert torch.equal(published[name], p), name
    assert len([p for p in Path(cfg.weights.dir).iterdir() if p.name.startswith("v")]) == 2  # keep=2


async def test_lost_request_is_released_again(kafka_config_one, tmp_path: Path):
    """A request whose group does not come back within request_timeout_s is released again under a
    new request id; the late original is dropped as a duplicate."""
    kcfg = kafka_config_one
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"question": f"{i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(50))
    )
    cfg = load_config(
        LearnerConfig,
        data={
            "kafka": kcfg.model_dump(),
            # max_staleness 0: one batch in flight, so the first step needs the lost request's group
            "algo": {"preset": "grpo", "kl_coef": 0.0, "max_staleness": 0},
            "batch_groups": BATCH,
            "n": N,
            "max_steps": 2,
            "request_timeout_s": 1.5,
            "kafka_partitions": 1,
            "prompts": {"kind": "jsonl", "path": str(prompts)},
            "weights": {"dir": str(tmp_path / "weights")},
            "checkpoint": {"dir": str(tmp_path / "ckpt")},
            "run_dir": str(tmp_path / "run"),
        },
    )
    trainer, tok = _trainer(cfg.algo)
    trained: list = []
    Recorder(trainer, 1, trained)
    service = LearnerService(cfg, trainer, make_source(cfg.prompts), CollectorRegistry())
    fake = FakeGenerator(
        kcfg, tok, trainer.model.get_input_embeddings().weight.shape[0], inject=False, lose_first=True
    )
    fake_task = asyncio.create_task(fake.run())
    try:
        assert await asyncio.wait_for(service.run(), 60) == 2
    finally:
        fake_task.cancel()
        await asyncio.gather(fake_task, return_exceptions=True)
    lost = fake.held.request_id
    assert lost.endswith("-0")
    again = lost[: -len("0")] + "1"
    ids = [i for _, _, batch in trained for i in batch]
    assert again in trained[0][2] and lost not in ids
    assert service.metrics.requests_rereleased._value.get() == 1
    assert service.book.counts["duplicate"] == 1


async def test_crash_before_the_first_checkpoint_resumes_the_same_lineage(kafka_config_one, tmp_path: Path):
    """Issue 22, item 3: checkpoints every 10 steps, the learner dies after publishing v1 and before any
    checkpoint. The generator keeps the dead lineage's v1 weights, so every group it sends is "from the future"
    for a learner restarted at v0. The restarted learner continues the run id, announces v0 (the generator
    follows) and trains; before, it announced nothing and 0 steps happened until request_timeout_s."""
    kcfg = kafka_config_one
    cfg = _jsonl_learner(kcfg, tmp_path, algo={"preset": "grpo", "kl_coef": 0.0, "max_staleness": 1},
                         request_timeout_s=900, checkpoint={"every": 10})
    await ensure_topics(kcfg, partitions=1)
    trained: list = []
    trainer1, tok = _trainer(cfg.algo)
    vocab = trainer1.model.get_input_embeddings().weight.shape[0]
    Recorder(trainer1, 1, trained, crash_on_call=3)
    service1 = LearnerService(cfg, trainer1, make_source(cfg.prompts), CollectorRegistry())
    fake = FakeGenerator(kcfg, tok, vocab, inject=False, follow_weights=True)
    fake_task = asyncio.create_task(fake.run())
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            await asyncio.wait_for(service1.run(), 60)
        assert trainer1.version == 2 and latest_checkpoint(cfg.checkpoint.dir) is None
        for _ in range(50):  # the generator follows the dead lineage to v2
            if fake.loaded == 2:
                break
            await asyncio.sleep(0.1)
        assert fake.loaded == 2
        trainer2, _ = _trainer(cfg.algo)
        Recorder(trainer2, 2, trained)
        service2 = LearnerService(cfg.model_copy(update={"max_steps": 3}), trainer2, make_source(cfg.prompts),
                                  CollectorRegistry())
        assert await asyncio.wait_for(service2.run(), 45) == 3
    finally:
        fake_task.cancel()
        await asyncio.gather(fake_task, return_exceptions=True)
    assert service2.book.state.run_id == service1.book.state.run_id  # one lineage, continued
    ids = [i for run, _, batch in trained if run == 2 for i in batch]
    assert len(ids) == len(set(ids)) == 3 * BATCH
    assert [json.loads(x)["version"] for x in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert (Path(cfg.run_dir) / "metrics.discarded.jsonl").is_file()  # the dead lineage's rows, kept apart


async def test_resume_onto_a_broker_that_lost_its_log(tmp_path: Path):
    """Issue 22, item 5: the memory-only tansu broker restarted holds none of the records below the checkpointed
    groups offset. The learner used to wait above the log's end (0 of 8 groups for 5+ minutes, silently); it now
    reads from the end, says so, counts it, and the run goes on."""
    from winnow.brokers import LocalBroker, free_port
    from winnow.config import KafkaConfig

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"question": f"{i} + 3?", "answer": str(i + 3)}) + "\n" for i in range(80)))
    port = free_port()
    kcfg = KafkaConfig(bootstrap_servers=f"127.0.0.1:{port}", topic_prefix="lost", session_timeout_ms=6000,
                       request_timeout_ms=10_000)
    for attempt, max_steps in ((1, 3), (2, 5)):
        cfg = load_config(LearnerConfig, data={
            "kafka": kcfg.model_dump(), "algo": {"preset": "grpo", "kl_coef": 0.0, "max_staleness": 1},
            "batch_groups": BATCH, "n": N, "kafka_partitions": 1, "max_steps": max_steps,
            "prompts": {"kind": "jsonl", "path": str(prompts)}, "weights": {"dir": str(tmp_path / "weights")},
            "checkpoint": {"dir": str(tmp_path / "ckpt"), "every": 1}, "run_dir": str(tmp_path / "run")})
        with LocalBroker("tansu", tmp_path / f"broker{attempt}", port=port):  # a fresh, empty broker each time
            await ensure_topics(kcfg, partitions=1)
            trainer, tok = _trainer(cfg.algo)
            registry = CollectorRegistry()
            service = LearnerService(cfg, trainer, make_source(cfg.prompts), registry)
            fake = FakeGenerator(kcfg, tok, trainer.model.get_input_embeddings().weight.shape[0], inject=False)
            fake_task = asyncio.create_task(fake.run())
            try:
                await asyncio.wait_for(service.run(), 90)
            finally:
                fake_task.cancel()
                await asyncio.gather(fake_task, return_exceptions=True)
        assert trainer.version == max_steps
    assert _metric(_scrape(registry), "winnow_learner_offset_rewinds_total") == 1


async def test_with_a_group_key_only_signed_groups_are_trained(kafka_config_one, tmp_path: Path, monkeypatch):
    """Issue 22: a foreign writer that reads the prompts topic can write a well-formed group for an outstanding
    request id before the generator does. With a shared key (env WINNOW_GROUP_HMAC_KEY, from a Kubernetes Secret
    in the chart) the learner dead-letters every unsigned record before decoding it; only signed groups train."""
    key = b"a-shared-secret-of-32-bytes-long"
    monkeypatch.setenv("WINNOW_GROUP_HMAC_KEY", key.decode())
    kcfg = kafka_config_one
    cfg = _jsonl_learner(kcfg, tmp_path, 40, algo={"preset": "grpo", "kl_coef": 0.0, "max_staleness": 0}, max_steps=2)
    await ensure_topics(kcfg, partitions=1)
    trainer, tok = _trainer(cfg.algo)
    trained: list = []
    Recorder(trainer, 1, trained)
    service = LearnerService(cfg, trainer, make_source(cfg.prompts), CollectorRegistry())
    fake = FakeGenerator(kcfg, tok, trainer.model.get_input_embeddings().weight.shape[0], inject=False,
                         hmac_key=key, forge=True)
    assert await _run_with(service, fake) == 2
    ids = [i for _, _, batch in trained for i in batch]
    assert len(ids) == 2 * BATCH and set(ids) <= set(fake.forged)  # the forged ids were outstanding ones
    assert service.book.counts["unauthenticated"] >= 2 * BATCH  # every forged copy, each before its signed group
    dead = [json.loads(x) for x in (Path(cfg.run_dir) / "dead-letter.jsonl").read_text().splitlines()]
    assert all(r["reason"].startswith("unauthenticated") for r in dead) and len(dead) >= 2 * BATCH


@pytest.mark.parametrize("dynamic", [True, False])
async def test_dynamic_sampling_keeps_every_batch_full(kafka_config_one, tmp_path: Path, dynamic):
    """Issue 25, item 1: Reinforce-Rej drops every group whose samples are all right (every third prompt here).
    With dynamic sampling (the preset's default) each step trains batch_groups groups and the dropped ones are
    finished on arrival, in the ledger with their reason; without it, batches shrink with the drop rate."""
    kcfg = kafka_config_one
    cfg = _jsonl_learner(kcfg, tmp_path, algo={"preset": "reinforce_rej", "max_staleness": 1, "dynamic_sampling": dynamic},
                         shuffle=False, batch_groups=3, max_steps=4)
    await ensure_topics(kcfg, partitions=1)
    trainer, tok = _trainer(cfg.algo)
    registry = CollectorRegistry()
    service = LearnerService(cfg, trainer, make_source(cfg.prompts), registry)
    fake = FakeGenerator(kcfg, tok, trainer.model.get_input_embeddings().weight.shape[0], inject=False)
    assert await _run_with(service, fake) == 4
    rows = [json.loads(x) for x in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
    trained_per_step = [r["batch_outcomes"].get("trained", 0) for r in rows]
    ledger = [json.loads(x) for x in (Path(cfg.run_dir) / "ledger.jsonl").read_text().splitlines()]
    positions = [int(r["request_id"].split("-")[-2]) for r in ledger]
    assert len(positions) == len(set(positions))  # every finished group once
    if dynamic:
        assert trained_per_step == [3, 3, 3, 3]
        dropped = [r for r in ledger if r["outcome"] == "all_correct"]
        assert dropped and all(int(r["request_id"].split("-")[-2]) % 3 == 0 for r in dropped)
        assert _metric(_scrape(registry), "winnow_learner_samples_not_trained_total") == N * len(dropped)
        assert rows[-1]["prompts_per_trained_group"] > 1.0
    else:
        assert sum(trained_per_step) < 12  # the all-correct groups took batch slots


async def test_a_memory_broker_restarted_under_the_running_learner(tmp_path: Path, monkeypatch):
    """Issue 22, item 5 (found again by scripts/attack.py): the tansu broker restarts while the learner runs; the
    prompt requests in flight are gone with it. The learner notices the lost topics within BROKER_CHECK_S, re-creates
    them, releases its outstanding requests again and re-announces its weights, and the run finishes; before, it
    waited silently for request_timeout_s (900 s)."""
    from winnow.brokers import LocalBroker, free_port
    from winnow.config import KafkaConfig
    from winnow.learner import service as service_module

    monkeypatch.setattr(service_module, "BROKER_CHECK_S", 1.0)
    port = free_port()
    kcfg = KafkaConfig(bootstrap_servers=f"127.0.0.1:{port}", topic_prefix="restart", session_timeout_ms=6000,
                       request_timeout_ms=10_000)
    cfg = _jsonl_learner(kcfg, tmp_path, algo={"preset": "grpo", "kl_coef": 0.0, "max_staleness": 0}, max_steps=6)
    broker = LocalBroker("tansu", tmp_path / "broker1", port=port)
    broker.start()
    try:
        await ensure_topics(kcfg, partitions=1)
        trainer, tok = _trainer(cfg.algo)
        registry = CollectorRegistry()
        service = LearnerService(cfg, trainer, make_source(cfg.prompts), registry)
        fake = FakeGenerator(kcfg, tok, trainer.model.get_input_embeddings().weight.shape[0], inject=False)
        fake_task = asyncio.create_task(fake.run())
        run = asyncio.create_task(service.run())
        while trainer.version < 2:
            assert not run.done(), run.exception()
            await asyncio.sleep(0.05)
        # the checks that ran while the generator joined (no group for > 1 s) found every topic: no false alarm
        assert service.metrics.offset_rewinds._value.get() == 0
        broker.stop()  # everything in memory is gone
        broker = LocalBroker("tansu", tmp_path / "broker2", port=port)
        broker.start()
        try:
            assert await asyncio.wait_for(run, 120) == 6
        finally:
            fake_task.cancel()
            await asyncio.gather(fake_task, return_exceptions=True)
    finally:
        broker.stop()
    assert trainer.version == 6
    assert _metric(_scrape(registry), "winnow_learner_offset_rewinds_total") >= 1
    ledger = [json.loads(x) for x in (Path(cfg.run_dir) / "ledger.jsonl").read_text().splitlines()]
    positions = [int(r["request_id"].split("-")[-2]) for r in ledger]
    assert len(positions) == len(set(positions))  # nothing twice across the restart


async def test_a_refused_announcement_is_retried_while_stale_groups_keep_coming(kafka_config_one, tmp_path: Path,
                                                                               monkeypatch):
    """The broker refuses the announcement of v2 once (a moving partition leader). With ``max_staleness`` 0 the
    generator, still on v1, answers every request with a group that is stale at v2, so groups never stop coming: the
    retry must not wait for a quiet topic (it did: the run stalled for good, busy dropping stale groups)."""
    from aiokafka.errors import KafkaError

    from winnow.learner import service as service_module
    from winnow.learner.weights import WeightPublisher

    monkeypatch.setattr(service_module, "BROKER_CHECK_S", 1.0)
    announce, refused = WeightPublisher.announce, []

    async def flaky(self, ann):
        if ann.version == 2 and not refused:
            refused.append(ann.version)
            raise KafkaError("NotLeaderForPartition (simulated)")
        await announce(self, ann)

    monkeypatch.setattr(WeightPublisher, "announce", flaky)
    cfg = _jsonl_learner(kafka_config_one, tmp_path, algo={"preset": "grpo", "kl_coef": 0.0, "max_staleness": 0},
                         max_steps=4)
    trainer, tok = _trainer(cfg.algo)
    registry = CollectorRegistry()
    service = LearnerService(cfg, trainer, make_source(cfg.prompts), registry)
    fake = FakeGenerator(kafka_config_one, tok, trainer.model.get_input_embeddings().weight.shape[0], inject=False,
                         follow_weights=True)
    assert await _run_with(service, fake, timeout_s=90) == 4
    assert refused == [2] and service.book.counts["stale"] >= 1  # the stale groups the refusal caused
    ledger = [json.loads(x) for x in (Path(cfg.run_dir) / "ledger.jsonl").read_text().splitlines()]
    positions = [int(r["request_id"].split("-")[-2]) for r in ledger]
    assert len(positions) == len(set(positions))
