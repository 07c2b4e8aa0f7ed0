"""Experiment tracking: every learner metric to TensorBoard (default), W&B, MLflow and trackio,
plus the sample log (:mod:`winnow.samples`) as one table per step where a sink has tables.

The learner hands :class:`Tracker` each row it writes to ``<run_dir>/metrics.jsonl`` (one per step,
and the step-0 evaluation) and the groups of each step; the tracker fans them out:

- ``tensorboard`` (default, offline): event files in ``<run_dir>/tensorboard/`` (tensorboardX, no
  TensorFlow); sample tables as markdown text. ``tensorboard --logdir runs/`` compares runs.
- ``wandb``: ``wandb.init(project, name, dir=run_dir, config=<resolved learner config>)``; the mode
  is ``wandb_mode`` or W&B's own default (``WANDB_MODE``); offline runs sync later with ``wandb sync``.
  Sample tables as ``wandb.Table``. The run id is kept in ``<run_dir>/wandb-run-id`` so a resumed
  learner continues the same W&B run.
- ``mlflow``: the tracking URI is ``mlflow_tracking_uri``, else ``MLFLOW_TRACKING_URI``, else a local
  file store ``<run_dir>/mlruns`` (``mlflow ui --backend-store-uri runs/learner/mlruns``). Sample
  tables as JSON artifacts ``samples/step_<K>.json`` (``{columns, data}``, the layout of ``log_table``).
- ``trackio``: ``trackio.init(project, name, config)`` (local-first; ``TRACKIO_DIR`` picks the folder).

Metric names in the sinks: ``train/<key>`` for step statistics, ``eval/<key>`` for ``eval_*``,
``time/<key>`` for timings (each key's group is declared in :data:`winnow.learner.metric_table.LEARNER`, listed in
docs/metrics.md), ``groups/<outcome>`` for the cumulative group outcomes. The Prometheus gauges of the step
statistics are the learner service's (:class:`winnow.learner.metrics.LearnerMetrics`, from the same table).

A sink that fails while logging (a network error, a full disk) is logged and counted in
``winnow_learner_tracking_errors_total{sink}``; training goes on. A sink whose package is missing is
a :class:`~winnow.config.ConfigError` at start-up naming the package (``pip install winnow[tracking]``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from winnow.config import ConfigError, Model
from winnow.learner.metric_table import LEARNER
from winnow.metric_defs import register, sink_tag

log = logging.getLogger(__name__)

SinkName = Literal["tensorboard", "wandb", "mlflow", "trackio"]


def _default_sinks() -> list[SinkName]:
    return ["tensorboard"]


class SamplesConfig(Model):
    """The sample log: what the model wrote at each step (``<run_dir>/samples.jsonl``)."""

    every: int = Field(default=1, ge=0)
    """Log the groups of every k-th step (0 = never)."""
    max_groups: int = Field(default=8, ge=0, le=100_000)
    """At most this many groups per step (the first ones of the batch, then dropped groups)."""
    max_chars: int = Field(default=4000, ge=0)
    """Responses and problems are cut to this many characters (0 = no limit)."""
    max_mb: float = Field(default=200.0, gt=0)
    """Stop appending once ``samples.jsonl`` is this large (MiB); one warning is logged."""
    table: bool = True
    """Also send each logged step as a table to the sinks that have tables."""
    table_chars: int = Field(default=600, ge=0)
    """Responses in sink tables are cut to this many characters (0 = no limit)."""


class TrackingConfig(Model):
    """Experiment tracking sinks. Short form: ``tracking: [tensorboard, wandb]``."""

    sinks: list[SinkName] = Field(default_factory=_default_sinks)
    """Where metrics go besides metrics.jsonl and Prometheus: tensorboard, wandb, mlflow, trackio."""
    project: str = "winnow"
    """Project (W&B, trackio) / experiment (MLflow) name."""
    run_name: str = ""
    """Run name in the sinks ("" = the run directory's name)."""
    wandb_mode: Literal["", "online", "offline", "disabled"] = ""
    """W&B mode ("" = W&B's default: the WANDB_MODE variable, else online)."""
    wandb_entity: str = ""
    """W&B entity (team or user; "" = the default of the logged-in account)."""
    mlflow_tracking_uri: str = ""
    """MLflow tracking URI ("" = MLFLOW_TRACKING_URI, else the file store <run_dir>/mlruns)."""
    samples: SamplesConfig = SamplesConfig()
    """The sample log (samples.jsonl) and its tables."""

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = [s.strip() for s in data.split(",") if s.strip()]
        if isinstance(data, list | tuple):
            return {"sinks": list(data)}
        return data

    @model_validator(mode="after")
    def _unique(self) -> TrackingConfig:
        if len(set(self.sinks)) != len(self.sinks):
            raise ValueError(f"sinks lists a sink twice: {self.sinks}")
        return self


def metric_tag(key: str) -> str:
    """Sink name of a metrics.jsonl key, from its row in the metric table (:data:`winnow.learner.metric_table.LEARNER`):
    ``eval_accuracy`` -> ``eval/accuracy``, ``loss`` -> ``train/loss``, ``time_forward_s`` -> ``time/time_forward_s``."""
    return sink_tag(LEARNER, key)


def flatten_row(row: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics of a metrics.jsonl row under their sink names; ``outcomes`` (cumulative
    group outcomes) become ``groups/<outcome>``; ``version`` and ``time`` are the step and wall time."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key in ("version", "time"):
            continue
        if key == "outcomes" and isinstance(value, dict):
            out.update({f"groups/{k}": float(v) for k, v in value.items()})
        elif isinstance(value, bool):
            out[metric_tag(key)] = float(value)
        elif isinstance(value, int | float):
            out[metric_tag(key)] = float(value)
    return out


def _flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat_config(v, name + "."))
        else:
            out[name] = json.dumps(v) if not isinstance(v, str) else v
    return out


def _require(module: str, sink: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"tracking.sinks: {sink!r} needs the {module!r} package, which is not installed "
            f"(pip install 'winnow[tracking]' or pip install {module})"
        ) from None


# ---------------------------------------------------------------------------------------------
# sinks


class Sink:
    """One tracking backend: ``log(step, metrics, wall_time)``, ``table(step, columns, rows)``, ``close()``."""

    name = ""

    def log(self, step: int, metrics: dict[str, float], wall_time: float | None) -> None:
        raise NotImplementedError

    def table(self, step: int, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardSink(Sink):
    """Event files in ``<run_dir>/tensorboard`` (tensorboardX); tables as markdown text."""

    name = "tensorboard"

    def __init__(self, run_dir: Path) -> None:
        tbx = _require("tensorboardX", self.name)
        self.logdir = run_dir / "tensorboard"
        self.writer = tbx.SummaryWriter(logdir=str(self.logdir), flush_secs=10)

    def log(self, step: int, metrics: dict[str, float], wall_time: float | None) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, global_step=step, walltime=wall_time)
        self.writer.flush()

    def table(self, step: int, columns: list[str], rows: list[list[Any]]) -> None:
        self.writer.add_text("samples", markdown_table(columns, rows), global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink(Sink):
    name = "wandb"

    def __init__(self, cfg: TrackingConfig, run_dir: Path, name: str, config: dict[str, Any]) -> None:
        self.wandb = _require("wandb", self.name)
        id_file = run_dir / "wandb-run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        kwargs: dict[str, Any] = {
            "project": cfg.project,
            "name": name,
            "dir": str(run_dir),
            "config": config,
            "id": run_id,
            "resume": "allow",
        }
        if cfg.wandb_mode:
            kwargs["mode"] = cfg.wandb_mode
        if cfg.wandb_entity:
            kwargs["entity"] = cfg.wandb_entity
        self.run = self.wandb.init(**kwargs)
        if self.run is not None and getattr(self.run, "id", None):
            id_file.write_text(str(self.run.id))

    def log(self, step: int, metrics: dict[str, float], wall_time: float | None) -> None:
        self.run.log(dict(metrics), step=step)

    def table(self, step: int, columns: list[str], rows: list[list[Any]]) -> None:
        self.run.log({"samples": self.wandb.Table(columns=columns, data=rows)}, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowSink(Sink):
    name = "mlflow"

    def __init__(self, cfg: TrackingConfig, run_dir: Path, name: str, config: dict[str, Any]) -> None:
        uri = cfg.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if not uri:
            uri = (run_dir / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the offline default, on purpose
        mlflow = _require("mlflow", self.name)
        self.mlflow = mlflow
        self.client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(cfg.project)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(cfg.project)
        id_file = run_dir / "mlflow-run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else ""
        if not run_id:
            run_id = self.client.create_run(exp_id, run_name=name).info.run_id
            id_file.write_text(run_id)
            params = _flat_config(config)
            for key, value in list(params.items())[:500]:
                self.client.log_param(run_id, key, value[:500])
        self.run_id = run_id
        self.uri = uri

    def log(self, step: int, metrics: dict[str, float], wall_time: float | None) -> None:
        from mlflow.entities import Metric

        ts = int((wall_time or 0) * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(key=k, value=v, timestamp=ts, step=step) for k, v in metrics.items()],
        )

    def table(self, step: int, columns: list[str], rows: list[list[Any]]) -> None:
        # the layout of mlflow.log_table's files, written without pandas (mlflow-skinny does not have it)
        self.client.log_dict(self.run_id, {"columns": columns, "data": rows}, f"samples/step_{step:08d}.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class TrackioSink(Sink):
    name = "trackio"

    def __init__(self, cfg: TrackingConfig, run_dir: Path, name: str, config: dict[str, Any]) -> None:
        self.trackio = _require("trackio", self.name)
        self.run = self.trackio.init(project=cfg.project, name=name, config=config, resume="allow")

    def log(self, step: int, metrics: dict[str, float], wall_time: float | None) -> None:
        self.trackio.log(dict(metrics), step=step)

    def table(self, step: int, columns: list[str], rows: list[list[Any]]) -> None:
        self.trackio.log({"samples": self.trackio.Table(columns=columns, data=rows)}, step=step)

    def close(self) -> None:
        self.trackio.finish()


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the tracker


class Tracker:
    """Fans each metrics row and each step's sample rows out to the configured sinks.

    ``config``: the resolved service config (W&B/trackio config, MLflow params). ``registry``: the
    process's Prometheus registry, for the sinks' error counter (None = not counted).
    """

    def __init__(
        self,
        cfg: TrackingConfig,
        run_dir: str | Path,
        *,
        config: dict[str, Any] | None = None,
        registry: Any = None,
    ) -> None:
        from winnow.samples import SampleLog

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        name = cfg.run_name or self.run_dir.resolve().name
        self.samples = SampleLog(self.run_dir / "samples.jsonl", cfg.samples)
        self.sinks: list[Sink] = []
        try:
            for sink in cfg.sinks:
                self.sinks.append(self._start(sink, name, config or {}))
        except BaseException:
            self.close()
            raise
        self._errors: Any = None
        if registry is not None:
            self._register(registry)

    def _start(self, sink: str, name: str, config: dict[str, Any]) -> Sink:
        """Start one sink; a failure (no W&B login, an unreachable MLflow server) is a ConfigError naming it."""
        try:
            if sink == "tensorboard":
                return TensorBoardSink(self.run_dir)
            if sink == "wandb":
                return WandbSink(self.cfg, self.run_dir, name, config)
            if sink == "mlflow":
                return MlflowSink(self.cfg, self.run_dir, name, config)
            return TrackioSink(self.cfg, self.run_dir, name, config)
        except ConfigError:
            raise
        except Exception as e:  # start-up: the backend's own error, with the setting to look at
            raise ConfigError(f"tracking.sinks: {sink!r} could not start: {type(e).__name__}: {e}") from e

    def _register(self, registry: Any) -> None:
        (row,) = (m for m in LEARNER if m.key == "tracking_errors")
        (self._errors,) = register([row], registry).values()
        for s in self.cfg.sinks:
            self._errors.labels(sink=s)

    def _call(self, sink: Sink, fn: str, *args: Any) -> None:
        try:
            getattr(sink, fn)(*args)
        except Exception as e:  # a tracking backend must not stop training: log and count
            log.warning("tracking sink %s: %s failed: %s", sink.name, fn, e)
            if self._errors is not None:
                self._errors.labels(sink=sink.name).inc()

    def log_row(self, row: dict[str, Any]) -> None:
        """One metrics.jsonl row (``version`` is the step): to every sink, then the sample rows recorded since the last row, if any."""
        step = int(row.get("version", 0))
        metrics = flatten_row(row)
        for sink in self.sinks:
            self._call(sink, "log", step, metrics, row.get("time"))
        rows = self.samples.flush(step)
        if rows and self.cfg.samples.table:
            from winnow.samples import table_rows

            columns, table = table_rows(rows, self.cfg.samples.table_chars)
            for sink in self.sinks:
                self._call(sink, "table", step, columns, table)

    def record_groups(self, groups: list[Any], outcomes: list[str], *, step: int, judged: Any = None) -> None:
        """The groups of the coming step (ScoredGroup messages), what happened to each and the learner's
        per-sample :class:`~winnow.samples.SampleJudgement`; written by the next :meth:`log_row`."""
        self.samples.record(groups, outcomes, step=step, judged=judged)

    def close(self) -> None:
        for sink in self.sinks:
            self._call(sink, "close")
        self.sinks = []
