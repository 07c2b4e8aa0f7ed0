"""winnow.learner.tracking: every metrics row reaches TensorBoard (read back from the event file), Prometheus,
and the opt-in sinks in their offline modes (W&B offline, an MLflow file store, trackio's local db)."""

from __future__ import annotations

import json
import sqlite3
import struct
import time

import pytest
from prometheus_client import CollectorRegistry

from winnow.config import ConfigError, load_config
from winnow.learner.tracking import Tracker, TrackingConfig, flatten_row, metric_tag


def _tb_events(logdir):
    """Scalars and texts of every event file under ``logdir``: TFRecord framing (u64 length, u32 crc,
    payload, u32 crc) parsed by hand, payload decoded as a tensorboard Event."""
    from tensorboardX.proto import event_pb2

    scalars, texts = {}, {}
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            payload = data[pos + 12 : pos + 12 + length]
            pos += 12 + length + 4
            ev = event_pb2.Event.FromString(payload)
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    scalars[(v.tag, ev.step)] = v.simple_value
                elif v.tag.startswith("samples"):
                    texts[(v.tag, ev.step)] = b"".join(v.tensor.string_val).decode()
    return scalars, texts


def test_config_short_form_and_errors():
    assert TrackingConfig.model_validate(["tensorboard", "wandb"]).sinks == ["tensorboard", "wandb"]
    assert TrackingConfig.model_validate("mlflow").sinks == ["mlflow"]
    assert TrackingConfig().sinks == ["tensorboard"]  # on by default
    assert TrackingConfig.model_validate([]).sinks == []
    from winnow.learner.config import LearnerConfig

    cfg = load_config(LearnerConfig, data={"tracking": ["tensorboard", "trackio"]})
    assert cfg.tracking.sinks == ["tensorboard", "trackio"]
    with pytest.raises(ConfigError, match="tracking.sinks.0"):
        load_config(LearnerConfig, data={"tracking": ["tb"]})
    with pytest.raises(ConfigError, match="twice"):
        load_config(LearnerConfig, data={"tracking": ["wandb", "wandb"]})


def test_metric_names():
    assert metric_tag("eval_accuracy") == "eval/accuracy"
    assert metric_tag("grad_norm") == "train/grad_norm"
    assert metric_tag("time_forward_s") == "time/time_forward_s"
    assert metric_tag("wait_s") == "time/wait_s"
    assert metric_tag("tokens_per_s") == "train/tokens_per_s"
    flat = flatten_row({"version": 3, "time": 1.0, "loss": 1, "outcomes": {"stale": 2}, "batch_outcomes": {"a": 1},
                        "note": "x"})
    assert flat == {"train/loss": 1.0, "groups/stale": 2.0}  # nested dicts other than outcomes, strings: skipped


def test_tensorboard(tmp_path, make_row, make_group):
    registry = CollectorRegistry()
    tracker = Tracker(TrackingConfig(), tmp_path, registry=registry)
    tracker.record_groups([make_group([1, 2, 2, 1])], ["trained"], step=3)
    tracker.log_row(make_row(3))
    tracker.log_row(make_row(4, grad_norm=0.75, eval_accuracy=0.5))
    tracker.close()

    scalars, texts = _tb_events(tmp_path / "tensorboard")
    assert scalars[("train/grad_norm", 3)] == pytest.approx(0.5)
    assert scalars[("train/grad_norm", 4)] == pytest.approx(0.75)
    assert scalars[("train/lr", 3)] == pytest.approx(1e-6)
    assert scalars[("train/truncated_fraction", 3)] == pytest.approx(0.125)
    assert scalars[("train/mismatch_kl", 3)] == pytest.approx(0.002)
    assert scalars[("eval/accuracy", 4)] == pytest.approx(0.5)
    assert scalars[("groups/stale", 3)] == 1.0
    assert ("train/grad_norm", 5) not in scalars
    (table,) = [t for (tag, step), t in texts.items() if step == 3]
    assert "What is 2+3?" in table and "| correct |" in table
    assert registry.get_sample_value("winnow_learner_tracking_errors_total", {"sink": "tensorboard"}) == 0.0


def test_failing_sink_is_counted_not_raised(tmp_path, make_row):
    registry = CollectorRegistry()
    tracker = Tracker(TrackingConfig(), tmp_path, registry=registry)

    def boom(*a):
        raise OSError("disk full")

    tracker.sinks[0].log = boom
    tracker.log_row(make_row(1))
    assert registry.get_sample_value("winnow_learner_tracking_errors_total", {"sink": "tensorboard"}) == 1.0
    tracker.close()


def test_wandb_offline(tmp_path, make_row, make_group, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    cfg = TrackingConfig(sinks=["wandb"], wandb_mode="offline", project="winnow-test")
    tracker = Tracker(cfg, tmp_path, config={"algo": {"preset": "raft"}})
    tracker.record_groups([make_group([1, 2], texts=["the answer is 5", "maybe 4"])], ["trained"], step=1)
    tracker.log_row(make_row(1, grad_norm=0.3125))
    tracker.close()
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    # wandb-core (a separate process) may still be appending after finish() returns: poll, bounded
    deadline = time.monotonic() + 30
    while b"0.3125" not in (data := run_file.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert b"train/grad_norm" in data and b"0.3125" in data
    (table,) = tmp_path.glob("wandb/offline-run-*/files/media/table/samples_1_*.table.json")
    t = json.loads(table.read_text())
    assert "response" in t["columns"] and ["the answer is 5"] == [r[-1] for r in t["data"]][:1]
    assert (tmp_path / "wandb-run-id").read_text().strip() in run_file.name


def test_mlflow_file_store(tmp_path, make_row, make_group, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    cfg = TrackingConfig(sinks=["mlflow"], project="winnow-test")
    tracker = Tracker(cfg, tmp_path, config={"algo": {"preset": "grpo"}, "n": 8})
    tracker.record_groups([make_group([1, 2])], ["trained"], step=2)
    tracker.log_row(make_row(2, grad_norm=0.25))
    tracker.log_row(make_row(3, grad_norm=0.5))
    tracker.close()
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    run_id = (tmp_path / "mlflow-run-id").read_text().strip()
    history = client.get_metric_history(run_id, "train/grad_norm")
    assert [(m.step, m.value) for m in history] == [(2, 0.25), (3, 0.5)]
    run = client.get_run(run_id)
    assert run.data.params["algo.preset"] == "grpo" and run.data.params["n"] == "8"
    (table,) = (tmp_path / "mlruns").rglob("samples/step_00000002.json")
    t = json.loads(table.read_text())
    assert t["columns"][:3] == ["step", "prompt_id", "problem"] and t["data"][0][2] == "What is 2+3?"


def test_trackio_local(tmp_path, make_row, make_group, monkeypatch):
    trackio = pytest.importorskip("trackio")
    db_dir = tmp_path / "trackio"
    monkeypatch.setenv("TRACKIO_DIR", str(db_dir))
    import trackio.sqlite_storage as storage  # reads TRACKIO_DIR at import: point it at the test folder

    monkeypatch.setattr(storage, "TRACKIO_DIR", db_dir, raising=False)
    try:
        import trackio.utils as tu

        monkeypatch.setattr(tu, "TRACKIO_DIR", db_dir, raising=False)
    except ImportError:
        pass
    del trackio
    cfg = TrackingConfig(sinks=["trackio"], project="winnow-test", run_name="run-a")
    tracker = Tracker(cfg, tmp_path / "run")
    tracker.record_groups([make_group([1, 2])], ["trained"], step=1)
    tracker.log_row(make_row(1, grad_norm=0.125))
    tracker.close()
    (db,) = db_dir.rglob("winnow-test.db")
    rows = sqlite3.connect(db).execute("select step, metrics from metrics where run_name = 'run-a'").fetchall()
    logged = [(step, json.loads(m)) for step, m in rows]
    assert any(step == 1 and m.get("train/grad_norm") == 0.125 for step, m in logged)
    assert any("samples" in m for _, m in logged)


def test_missing_package_is_a_config_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *a, **k):
        if name == "wandb" or name.startswith("wandb."):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    import importlib

    monkeypatch.setattr(importlib, "import_module", lambda name: no_wandb(name))
    with pytest.raises(ConfigError, match="winnow\\[tracking\\]"):
        Tracker(TrackingConfig(sinks=["tensorboard", "wandb"]), tmp_path)


def test_tracker_next_to_the_learner_metrics(tmp_path, make_row):
    """One registry for the service and its tracker (no duplicated name); the step gauges are the service's, set
    from the step's metrics: the values the row carries to the sinks."""
    from winnow.learner.metrics import LearnerMetrics

    registry = CollectorRegistry()
    metrics = LearnerMetrics(registry)
    tracker = Tracker(TrackingConfig(sinks=[]), tmp_path, registry=registry)
    row = make_row(2)
    metrics.observe_metrics({k: v for k, v in row.items() if k in ("grad_norm", "truncated_fraction", "lr", "pg_loss")})
    tracker.log_row(row)
    assert registry.get_sample_value("winnow_learner_grad_norm") == 0.5
    assert registry.get_sample_value("winnow_learner_truncated_ratio") == 0.125
    assert registry.get_sample_value("winnow_learner_learning_rate") == 1e-6
    assert registry.get_sample_value("winnow_learner_pg_loss") == -0.3


def test_a_sink_that_cannot_start_is_a_config_error(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = TrackingConfig(sinks=["tensorboard", "mlflow"], mlflow_tracking_uri="nosuchscheme://x")
    with pytest.raises(ConfigError, match="tracking.sinks: 'mlflow' could not start"):
        Tracker(cfg, tmp_path)
