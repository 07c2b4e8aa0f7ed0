"""The learner service's parts without a broker: config, checkpoints, weight store, group checks,
outcomes, evaluation."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from winnow.config import ConfigError, load_config, parse_overrides
from winnow.learner.algo import AlgoConfig
from winnow.learner.batch import group_from_proto
from winnow.learner.checkpoint import (
    LATEST,
    LearnerState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from winnow.learner.config import LearnerConfig
from winnow.learner.evaluate import Evaluator
from winnow.learner.objective import prepare_batch_signals
from winnow.learner.step import OptimConfig, Trainer, group_outcomes
from winnow.learner.tiny import build_tiny_model_and_tokenizer
from winnow.learner.weights import WeightPublisher, changed_fraction
from winnow.prompts import Problem
from winnow.v1 import messages_pb2

CORRECT, WRONG, ERROR = 1, 2, 7


def _group(statuses, *, request_id="r1", logprob=-1.0, tokens=(5, 6), n_versions=None):
    return messages_pb2.ScoredGroup(
        prompt_id="p/1",
        request_id=request_id,
        prompt_token_ids=[1, 2, 3],
        samples=[
            messages_pb2.Sample(
                response_token_ids=list(tokens),
                behaviour_logprobs=[logprob] * len(tokens),
                policy_versions=[4] * (len(tokens) if n_versions is None else n_versions),
                status=s,
            )
            for s in statuses
        ],
        policy_version=4,
    )


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config(
        LearnerConfig, overrides=parse_overrides(["algo.preset=grpo", "algo.kl_coef=0", "batch_groups=3"])
    )
    algo = cfg.algo
    assert (algo.preset, algo.kl_coef, algo.advantage, cfg.batch_groups) == ("grpo", 0.0, "mean_std", 3)
    assert cfg.max_staleness == algo.max_staleness == 1
    f = tmp_path / "c.yaml"
    f.write_text("learner:\n  algo: {preset: raft}\n  optim: {lr: 0.5}\nkafka:\n  topic_prefix: exp1\n")
    cfg = load_config(LearnerConfig, f)
    assert (
        cfg.algo.loss == "sft" and cfg.optim.lr == 0.5 and cfg.kafka.topic_prefix == "exp1"
    )
    with pytest.raises(ConfigError, match=r"algo: .*unknown algorithm 'ppo'"):
        load_config(LearnerConfig, overrides={"algo": {"preset": "ppo"}})
    with pytest.raises(ConfigError, match=r"optim\.micro_batch_size"):
        load_config(LearnerConfig, overrides={"optim": {"micro_batch_size": 0}})
    with pytest.raises(ConfigError, match=r"prompts\.jsonl\.path"):
        load_config(LearnerConfig, overrides={"prompts": {"kind": "jsonl"}})


def test_checkpoint_round_trip_atomic_and_pruned(tmp_path):
    model, _ = build_tiny_model_and_tokenizer(seed=0)
    trainer = Trainer(model, AlgoConfig(preset="grpo", kl_coef=0.0), OptimConfig(lr=1e-3), pad_token_id=0)
    assert latest_checkpoint(tmp_path) is None
    for v in (1, 2, 3):
        trainer.version = v
        state = LearnerState(
            version=v, run_id="abc", next_position=10 * v, unconsumed={"abc-9-0": 9}, seen=["x", "y"]
        )
        state.offsets = {"t.groups": {"0": 17}}
        save_checkpoint(tmp_path, trainer.state_dict(), state, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step-")) == [
        "step-00000002",
        "step-00000003",
    ]
    assert (tmp_path / LATEST).read_text() == "step-00000003"
    sd, state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state == LearnerState(
        version=3,
        run_id="abc",
        next_position=30,
        unconsumed={"abc-9-0": 9},
        seen=["x", "y"],
        offsets={"t.groups": {"0": 17}},
    )
    assert sd["version"] == 3
    for name, p in model.state_dict().items():
        assert torch.equal(sd["model"][name], p)
    # an interrupted write leaves only a temporary folder: LATEST still names a complete checkpoint
    (tmp_path / ".tmp-step-00000004-1").mkdir()
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    # LATEST naming an incomplete folder is not half-loaded: the newest complete checkpoint is (issue 22,
    # item 4: it used to start over, a warning only, and cut the ledger to nothing)
    (tmp_path / "step-00000009").mkdir()
    (tmp_path / LATEST).write_text("step-00000009")
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    (tmp_path / LATEST).write_text("step-00000042")  # a folder that does not exist
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    (tmp_path / LATEST).unlink()
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    # the next save removes what a killed writer left behind
    save_checkpoint(tmp_path, trainer.state_dict(), LearnerState(version=4, run_id="abc"), keep=2)
    assert not list(tmp_path.glob(".tmp-*"))


def test_checkpoint_on_a_full_disk_names_the_folder_and_the_fix(tmp_path, monkeypatch):
    """Issue 22: a full disk was reported as torch's "unexpected pos 313775872 vs 313775760"."""
    import shutil
    from collections import namedtuple

    from winnow.learner import checkpoint

    model, _ = build_tiny_model_and_tokenizer(seed=0)
    trainer = Trainer(model, AlgoConfig(preset="grpo", kl_coef=0.0), OptimConfig(lr=1e-3), pad_token_id=0)

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 313775872 vs 313775760")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: namedtuple("U", "total used free")(100, 100, 0))
    with pytest.raises(checkpoint.CheckpointError, match="disk is full.*learner.checkpoint.dir"):
        save_checkpoint(tmp_path, trainer.state_dict(), LearnerState(version=1, run_id="abc"))
    assert not list(tmp_path.glob(".tmp-*")) and latest_checkpoint(tmp_path) is None


def test_ledger_and_metrics_rows_of_a_discarded_lineage_are_moved_not_deleted(tmp_path):
    """Issue 22, item 4: restoring used to truncate ledger.jsonl (16 rows -> 0 when LATEST was bad)."""
    from winnow.learner.checkpoint import Ledger, discard_rows_after

    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append(1, [{"request_id": "r-0-0", "prompt_id": "a", "outcome": "trained"}])
    ledger.append(2, [{"request_id": "r-1-0", "prompt_id": "b", "outcome": "trained"}])
    with ledger.path.open("a") as f:
        f.write('{"version": 3, "request_id": "r-2')  # torn by a crash
    assert ledger.truncate(1) == 2
    assert [r["request_id"] for r in ledger.rows()] == ["r-0-0"]
    assert len((tmp_path / "ledger.discarded.jsonl").read_text().splitlines()) == 2
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"version": 1}\n{"version": 2}\n')
    assert discard_rows_after(metrics, 1) == 1 and metrics.read_text() == '{"version": 1}\n'


class _FakeTrainer:
    def __init__(self, version):
        self.version = version

    def save_weights(self, path, dtype=None):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"weights {self.version}".encode())
        return hashlib.sha256(path.read_bytes()).hexdigest()


def test_weight_store_uri_and_pruning(tmp_path):
    pub = WeightPublisher(tmp_path / "store", producer=None, topic="t.weights", keep=2)
    anns = [pub.write(_FakeTrainer(v)) for v in (1, 2, 3)]
    assert anns[2].uri == (tmp_path / "store" / "v00000003" / "model.safetensors").resolve().as_uri()
    assert anns[2].sha256 == hashlib.sha256(b"weights 3").hexdigest() and anns[2].format == "safetensors"
    removed = pub.prune(keep_version=3)
    assert [p.name for p in removed] == ["v00000001"]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["v00000002", "v00000003"]
    shared = WeightPublisher(tmp_path / "store", producer=None, topic="t.weights", uri_root="/mnt/weights/")
    assert shared.write(_FakeTrainer(4)).uri == "/mnt/weights/v00000004/model.safetensors"


def test_weight_store_keeps_every_kth_version(tmp_path):
    """``keep_every``: the newest ``keep`` versions plus every multiple of K survive pruning (the learning curve)."""
    pub = WeightPublisher(tmp_path / "store", producer=None, topic="t.weights", keep=2, keep_every=3)
    for v in range(8):
        pub.write(_FakeTrainer(v))
        pub.prune(keep_version=v)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [
        "v00000000", "v00000003", "v00000006", "v00000007"]
    with pytest.raises(ValueError, match="keep_every"):
        WeightPublisher(tmp_path / "other", producer=None, topic="t.weights", keep_every=-1)


def _save(path, tensors, dtype=None):
    from winnow.learner.step import save_state_dict

    path.parent.mkdir(parents=True, exist_ok=True)
    save_state_dict(tensors, path, dtype=dtype)
    return path


def test_changed_fraction_hand_computed(tmp_path):
    """16 of 64 rows of ``w`` and the scalar changed: 129 of the 523 comparable elements; at stride 5 (budget 100):
    rows 0, 5, 10, 15 of the 13 sampled rows, and the scalar, of 108 sampled: 33. Shape changes and names in one file
    only are skipped; NaN stored twice is unchanged (bitwise)."""
    w = torch.zeros(64, 8)
    old = {"w": w, "b": torch.zeros(8), "s": torch.tensor(1.0), "gone": torch.zeros(3), "reshaped": torch.zeros(4),
           "nan": torch.full((2,), float("nan"))}
    new = {**old, "w": torch.cat([torch.ones(16, 8), torch.zeros(48, 8)]), "s": torch.tensor(2.0),
           "reshaped": torch.zeros(2, 2), "added": torch.ones(5)}
    del new["gone"]
    a, b = _save(tmp_path / "a.safetensors", old), _save(tmp_path / "b.safetensors", new)
    assert changed_fraction(a, b) == pytest.approx(129 / 523)  # 512 + 8 + 1 + 2 (nan) compared
    assert changed_fraction(a, b, budget=100) == pytest.approx(33 / 108)  # 104 + 2 + 1 + 1 (nan[::5])
    assert changed_fraction(a, a) == 0.0
    c = _save(tmp_path / "c.safetensors", {"other": torch.zeros(3)})
    assert changed_fraction(a, c) is None


def test_changed_fraction_sees_what_bf16_publication_drops(tmp_path):
    """An update of 1e-4 to weights of 1.0 is below half a bf16 step (2**-8): the float32 file changes everywhere, the
    bf16 file nowhere; an update of 0.01 reaches both."""
    base = {"w": torch.ones(32, 32)}
    small, large = {"w": base["w"] + 1e-4}, {"w": base["w"] + 0.01}
    for dtype, want_small in ((torch.float32, 1.0), (torch.bfloat16, 0.0)):
        d = tmp_path / str(dtype)
        a = _save(d / "a.safetensors", base, dtype)
        assert changed_fraction(a, _save(d / "s.safetensors", small, dtype)) == want_small
        assert changed_fraction(a, _save(d / "l.safetensors", large, dtype)) == 1.0


class _TensorTrainer:
    def __init__(self, version, value):
        self.version, self.value = version, value

    def save_weights(self, path, dtype=None):
        _save(Path(path), {"w": torch.full((8, 4), self.value)}, dtype)
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_publisher_measures_change_against_the_previous_version(tmp_path):
    pub = WeightPublisher(tmp_path / "store", producer=None, topic="t.weights", keep=3, dtype="bfloat16")
    pub.write(_TensorTrainer(0, 1.0))
    assert pub.changed is None  # nothing to compare with
    pub.write(_TensorTrainer(1, 1.0 + 1e-4))  # lost in bf16
    assert pub.changed == 0.0
    pub.write(_TensorTrainer(2, 2.0))
    assert pub.changed == 1.0
    pub.write(_FakeTrainer(3))  # not a safetensors file: no number, and the publication is not stopped
    assert pub.changed is None and (tmp_path / "store" / "v00000003" / "model.safetensors").is_file()


def test_group_from_proto_checks():
    g = group_from_proto(_group([CORRECT, WRONG]), n=2, vocab_size=10)
    assert (
        g.request_id == "r1" and g.policy_version == 4 and [s.status for s in g.samples] == [CORRECT, WRONG]
    )
    with pytest.raises(ValueError, match="expected n=3"):
        group_from_proto(_group([CORRECT, WRONG]), n=3)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        group_from_proto(_group([CORRECT], tokens=(5, 60)), n=1, vocab_size=10)
    with pytest.raises(ValueError, match="finite and <= 0"):
        group_from_proto(_group([CORRECT], logprob=0.5), n=1)
    with pytest.raises(ValueError, match="status 8 is not a verifier Status"):  # a poison record (issue 13)
        group_from_proto(_group([CORRECT, 8]), n=2)
    with pytest.raises(ValueError, match="3 response tokens, more than the 2 allowed"):
        group_from_proto(_group([CORRECT], tokens=(5, 6, 7)), n=1, max_response_tokens=2)
    # no per-token versions: the group's version stands for every token
    g = group_from_proto(_group([CORRECT], n_versions=0), n=1)
    assert g.samples[0].policy_versions == [4] and g.policy_version == 4


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("reinforce_rej", ["all_correct", "all_wrong", "trained", "all_wrong"]),
        ("raft", ["trained", "all_wrong", "trained", "all_wrong"]),
        ("grpo", ["trained", "trained", "trained", "all_wrong"]),  # the last has no valid sample
    ],
)
def test_group_outcomes(preset, expected):
    statuses = [[CORRECT, CORRECT], [WRONG, WRONG], [CORRECT, WRONG], [ERROR, ERROR]]
    sig = prepare_batch_signals(torch.tensor(statuses), AlgoConfig(preset=preset))
    assert list(group_outcomes(sig["keep"], sig["correct"], sig["valid"])) == expected


class _Verifier:
    """Stands in for MathVerifier: exact match of the boxed answer."""

    def verify_batch(self, items):
        from winnow.verdict import Status, Verdict

        return [
            Verdict(id=i.id, status=Status.CORRECT if f"\\boxed{{{i.gold}}}" in i.response else Status.WRONG)
            for i in items
        ]


def test_evaluator_generates_and_scores():
    model, tok = build_tiny_model_and_tokenizer(seed=0)
    problems = [Problem(f"p/{i}", f"What is {i} + 1?", str(i + 1), "math") for i in range(3)]
    ev = Evaluator(tok, problems, max_new_tokens=6, batch_size=2, verifier=_Verifier())
    assert ev.score(["so \\boxed{1}", "\\boxed{3}", "\\boxed{3}"]) == pytest.approx(
        2 / 3
    )  # 1 right, 2 wrong, 3 right
    trainer = Trainer(
        model, AlgoConfig(preset="grpo", kl_coef=0.0), OptimConfig(), pad_token_id=tok.pad_token_id
    )
    before = [p.detach().clone() for p in model.parameters()]
    acc = ev(trainer)
    assert len(ev.last_responses) == 3 and all(isinstance(r, str) for r in ev.last_responses)
    assert acc == ev.score(ev.last_responses)
    assert model.training  # back in train mode, weights untouched
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # greedy: the same responses every time
    assert ev.generate(trainer) == ev.last_responses
    json.dumps(ev.last_responses)


def test_evaluator_mean_at_k():
    model, tok = build_tiny_model_and_tokenizer(seed=0)
    problems = [Problem(f"p/{i}", f"What is {i} + 1?", str(i + 1), "math") for i in range(3)]
    ev = Evaluator(tok, problems, max_new_tokens=4, batch_size=2, verifier=_Verifier(), k=2, seed=1)
    # k=2 responses per problem, problem-major: p0 1 of 2 right, p1 2 of 2, p2 0 of 2 -> 3/6
    assert ev.score(["\\boxed{1}", "x", "\\boxed{2}", "\\boxed{2}", "\\boxed{4}", "no"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="5 responses for 3 problems"):
        ev.score(["a"] * 5)
    trainer = Trainer(model, AlgoConfig(preset="grpo", kl_coef=0.0), OptimConfig(), pad_token_id=tok.pad_token_id)
    acc = ev(trainer)
    assert 0.0 <= acc <= 1.0 and ev.last_mean_at_k is not None and 0.0 <= ev.last_mean_at_k <= 1.0
    samples = ev.generate(trainer, 2)
    assert len(samples) == 6 and model.training


def test_restore_without_a_checkpoint_continues_the_run_id_or_says_why_not(tmp_path):
    """Issue 22, items 3-4: no checkpoint yet -> version 0 under the same run id (RUN_ID); the rows of a torn first
    checkpoint are redone (moved to ledger.discarded.jsonl); rows of two checkpoints but none left is an error."""
    from prometheus_client import CollectorRegistry

    from winnow.learner.checkpoint import Ledger
    from winnow.learner.service import LearnerService

    model, tok = build_tiny_model_and_tokenizer(seed=0)
    trainer = Trainer(model, AlgoConfig(preset="grpo", kl_coef=0.0), OptimConfig(lr=1e-3), pad_token_id=0)
    cfg = load_config(LearnerConfig, data={"learner": {
        "checkpoint": {"dir": str(tmp_path / "ckpt")}, "run_dir": str(tmp_path / "run"),
        "weights": {"dir": str(tmp_path / "w")}, "prompts": {"kind": "jsonl", "path": str(tmp_path / "p.jsonl")}}})

    def service():
        return LearnerService(cfg, trainer, source=None, registry=CollectorRegistry())

    first = service()
    assert first.restore() is False
    run_id = first.book.state.run_id
    assert (tmp_path / "ckpt" / "RUN_ID").read_text().strip() == run_id
    ledger = Ledger(tmp_path / "run" / "ledger.jsonl")
    ledger.append(2, [{"request_id": f"{run_id}-0-0", "prompt_id": "a", "outcome": "trained"}])  # torn checkpoint 2
    second = service()
    assert second.restore() is False and second.book.state.run_id == run_id
    assert ledger.rows() == [] and (tmp_path / "run" / "ledger.discarded.jsonl").is_file()
    ledger.append(2, [{"request_id": f"{run_id}-0-0", "prompt_id": "a", "outcome": "trained"}])
    ledger.append(4, [{"request_id": f"{run_id}-1-0", "prompt_id": "b", "outcome": "trained"}])
    with pytest.raises(RuntimeError, match="checkpoints 2..4 .* no complete checkpoint"):
        service().restore()
    fresh = LearnerService(cfg.model_copy(update={"checkpoint": cfg.checkpoint.model_copy(update={"resume": False})}),
                           trainer, source=None, registry=CollectorRegistry())
    assert fresh.restore() is False and fresh.book.state.run_id != run_id and ledger.rows() == []


async def test_a_second_learner_on_one_checkpoint_directory_is_refused(tmp_path):
    """Two learners on one lineage would release the same request ids and train the same groups twice: the second
    stops at once, naming the field and the holder; the lock goes with the first one's exit."""
    from prometheus_client import CollectorRegistry

    from winnow.learner.service import LearnerService
    from winnow.runlock import hold_lock

    model, tok = build_tiny_model_and_tokenizer(seed=0)
    trainer = Trainer(model, AlgoConfig(preset="grpo", kl_coef=0.0), pad_token_id=tok.pad_token_id)
    ckpt = tmp_path / "ckpt"
    cfg = LearnerConfig(n=2, batch_groups=1, run_dir=str(tmp_path / "run"), tracking={"sinks": []},
                        checkpoint={"dir": str(ckpt)}, kafka={"bootstrap_servers": "127.0.0.1:9"})
    first = hold_lock(ckpt, name=".learner.lock", busy="busy {pid}", unwritable="{why}", not_a_directory="file")
    service = LearnerService(cfg, trainer, source=None, registry=CollectorRegistry())
    with pytest.raises(ConfigError, match=rf"learner\.checkpoint\.dir {ckpt} is in use by another learner "
                                          rf"\(pid {os.getpid()}\): two learners on one lineage"):
        await service.run()
    first.close()
    again = hold_lock(ckpt, name=".learner.lock", busy="busy {pid}", unwritable="{why}", not_a_directory="file")
    again.close()
