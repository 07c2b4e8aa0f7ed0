"""Configuration of the verifier service (``winnow verifier serve``): the ``verifier`` section.

Resolved like every winnow config (see :mod:`winnow.config`): defaults < file (``verifier:``
subtree) < env ``WINNOW_VERIFIER_<FIELD>`` (nested: ``WINNOW_VERIFIER_TLS__CERT_FILE``) < flags.
The bearer token can come from the field, from ``WINNOW_VERIFIER_TOKEN`` (the field's env name) or
from a file (``token_file``: a mounted Kubernetes Secret); see :meth:`VerifierConfig.resolve_token`.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from winnow.config import ConfigError, Model, Settings, settings_config


class TLSConfig(Model):
    """Server-side TLS. Both files set = TLS on; both empty = plaintext."""

    cert_file: Path | None = None
    """PEM certificate chain of the server (e.g. ``tls.crt`` of a Kubernetes TLS Secret)."""
    key_file: Path | None = None
    """PEM private key of the server (``tls.key``)."""

    @model_validator(mode="after")
    def _both_or_neither(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file must be set together")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class RewardFunction(Model):
    """One Python reward function and its weight in its route's sum (TRL's ``reward_funcs`` / ``reward_weights``)."""

    function: str = Field(min_length=3)
    """``package.module:function`` (importable in the verifier's environment) or ``path/to/file.py:function``
    (relative paths from the verifier's working directory). Called with keyword arguments, the ones its signature
    names (or all, with ``**kwargs``): ``prompt``/``prompts``, ``completion``/``completions``/``response``/
    ``solution_str``, ``gold``/``ground_truth``/``answer``, ``task``/``data_source``, ``extra_info`` (the request's
    options as a dict) and each option by name. Returns a float, ``(status, float)``, or a dict with ``score``
    (and optionally ``status``, ``extracted``, ``detail``), as verl's ``compute_score`` may."""
    weight: float = Field(default=1.0, allow_inf_nan=False)
    """Weight of this function in the route's score: score = sum of weight x value."""
    batched: bool = False
    """TRL-style: the function takes lists (``prompts``, ``completions``, and each dataset field as a list) and
    returns a list of floats. It is called once for all the items of its route in a request batch (cut into jobs of
    at most 512 items / 256 KiB), in one worker, with a budget of ``timeout_s`` per item; an exception is every
    item's error."""

    @model_validator(mode="after")
    def _names_a_function(self) -> RewardFunction:
        module, sep, name = self.function.rpartition(":")
        if not sep or not module or not name.isidentifier():
            raise ValueError(f"function: expected 'module:function' or 'path/file.py:function', got {self.function!r}")
        return self


class RewardRoute(Model):
    """Items whose task matches ``tasks`` are scored by ``functions`` (weighted sum), not by the math engine."""

    tasks: list[str] = Field(min_length=1)
    """Task patterns (fnmatch, e.g. ``gsm8k_strict``, ``code/*``); the first route that matches an item's task wins."""
    functions: list[RewardFunction] = Field(min_length=1, max_length=64)
    """The reward functions, each with its weight."""
    pass_score: float = Field(default=1.0, allow_inf_nan=False)
    """The status sent next to the score when no function returned one: CORRECT iff score >= pass_score, else WRONG
    (for the verifier's metrics, sample logs, the held-out accuracy and learners that predate scores; the learner's
    reward is the score, its acceptance ``algo.score_threshold``). A function's own status wins: the first one
    that is not CORRECT, else CORRECT."""


class RewardFunctions(Model):
    """Python reward functions served over the Verifier API, run in sandboxed worker processes."""

    routes: list[RewardRoute] = Field(default_factory=list, max_length=256)
    """Task routes to reward functions; [] = every item goes to the math engine."""
    workers: int = Field(default=2, ge=1, le=256)
    """Worker processes running the functions (items of a batch run in parallel over them)."""
    timeout_s: float = Field(default=10.0, gt=0, le=600)
    """Wall-clock budget of one item (every function of its route; a batched job has it once per item); past it the
    worker is killed: status timeout, no score."""
    memory_mb: int = Field(default=2048, ge=128, le=1 << 20)
    """Address-space limit of each worker (RLIMIT_AS), in MiB; exceeding it is status error, no score."""
    max_tasks_per_worker: int = Field(default=1000, ge=1)
    """Recycle a worker after this many items (state a function leaves behind does not last)."""


class VerifierConfig(Settings):
    """The math verifier gRPC service (winnow.v1.Verifier) and its grading engine."""

    section = "verifier"
    model_config = settings_config("verifier")

    host: str = "127.0.0.1"
    """Address to bind. Loopback by default; use 0.0.0.0 (or [::]) in a container/Kubernetes."""
    port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port; 0 picks a free port (logged at start-up)."""
    workers: int = Field(default=0, ge=0, le=256)
    """Engine worker processes for the symbolic path; 0 = one per CPU core."""
    timeout_s: float = Field(default=2.0, gt=0, le=120)
    """Per-item wall-clock budget for the symbolic path; past it the worker is killed (status timeout)."""
    memory_mb: int = Field(default=1024, ge=128, le=65536)
    """Address-space limit of each engine worker (RLIMIT_AS), in MiB."""
    max_tasks_per_worker: int = Field(default=500, ge=1)
    """Recycle an engine worker after this many symbolic tasks (sympy caches grow)."""
    cache_size: int = Field(default=65536, ge=0)
    """Entries of the verdict LRU cache keyed by canonical (gold, answer); 0 disables it."""
    max_batch_items: int = Field(default=4096, ge=1, le=1_000_000)
    """Most items one VerifyBatch call may carry; more is INVALID_ARGUMENT (clients chunk)."""
    max_item_bytes: int = Field(default=256 * 1024, ge=1024, le=2**30)
    """Largest item a client sends (response + gold + task + options, in bytes). With ``max_batch_items`` it
    bounds a request: one larger than ``receive_limit_bytes`` is refused (RESOURCE_EXHAUSTED) before it is parsed."""
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=4096, le=2**31 - 1)
    """Largest gRPC message received or sent, in bytes (a cap on ``receive_limit_bytes``). Every byte received
    is parsed into Python objects (~50x its size in memory at worst): keep it small; clients chunk."""
    batch_deadline_s: float = Field(default=120.0, ge=0)
    """Total budget of one call (Verify or VerifyBatch); items still undecided then get status timeout. 0 = none."""
    max_concurrent_rpcs: int = Field(default=0, ge=0)
    """Most RPCs handled at once; calls beyond it are answered RESOURCE_EXHAUSTED at once. 0 = unlimited."""
    metrics_port: int = Field(default=9101, ge=-1, le=65535)
    """Prometheus port serving /metrics and /health; 0 picks a free port, -1 disables it."""
    metrics_host: str | None = None
    """Address of the metrics HTTP server; default: the same as ``host``."""
    tls: TLSConfig = TLSConfig()
    """Optional TLS for the gRPC port."""
    token: SecretStr | None = None
    """Optional bearer token: calls must send ``authorization: Bearer <token>``. Env: WINNOW_VERIFIER_TOKEN."""
    token_file: Path | None = None
    """File holding the bearer token (a mounted Kubernetes Secret); used when ``token`` is unset."""
    max_connection_age_s: float = Field(default=60.0, ge=0, le=86400)
    """Close each client connection after this long (gracefully: calls in flight finish). Clients then
    reconnect and re-resolve the Service's DNS name, so verifier pods added by the HPA start to receive
    calls (gRPC does not re-resolve DNS on its own while connections are healthy). 0 = never."""
    accept_rounded: bool = False
    """Accept a decimal rounded or truncated to >= 2 places for an exact or irrational gold (``0.33`` for
    ``1/3``, ``3.14`` for ``\\pi``). Off by default: with it on, a policy can earn full reward with a
    low-precision guess instead of the exact value (a reward hack). Per request: option ``rounded``."""
    fallback_extraction: bool = True
    """With no marker (no box, no ``Answer:``/``final answer is``), take the last math span, then the last
    number. On by default for recall (as Math-Verify and Qwen-Math do); turn it off when the RL run must
    reward the required format only. Per request: option ``fallback``."""
    grace_s: float = Field(default=10.0, ge=0, le=3600)
    """On SIGTERM/SIGINT: health goes NOT_SERVING, then in-flight calls get this long to finish."""
    reward_functions: RewardFunctions = RewardFunctions()
    """Python reward functions routed by task (``routes: [{tasks, functions: [{function, weight}]}]``), served with
    a scalar score next to the status; tasks no route matches go to the math engine (docs/verifiers.md)."""

    @property
    def receive_limit_bytes(self) -> int:
        """The server's ``grpc.max_receive_message_length``: room for ``max_batch_items`` items of
        ``max_item_bytes`` (plus 256 bytes of framing and id each), capped by ``max_message_bytes``."""
        return min(self.max_message_bytes, self.max_batch_items * (self.max_item_bytes + 256) + 4096)

    @property
    def engine_workers(self) -> int:
        """``workers`` with 0 resolved to the number of CPU cores."""
        return self.workers or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)

    @property
    def default_options(self) -> dict[str, str]:
        """Engine options set by this config; a request's own options override them."""
        return {"rounded": "1" if self.accept_rounded else "0", "fallback": "1" if self.fallback_extraction else "0"}

    def resolve_token(self) -> str | None:
        """The bearer token: ``token`` (or WINNOW_VERIFIER_TOKEN), else the stripped ``token_file``."""
        if self.token is not None and self.token.get_secret_value():
            return self.token.get_secret_value()
        if self.token_file is None:
            return None
        try:
            value = self.token_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"verifier.token_file: cannot read {self.token_file}: {e.strerror}") from None
        if not value:
            raise ConfigError(f"verifier.token_file: {self.token_file} is empty")
        return value

    def read_tls(self) -> tuple[bytes, bytes] | None:
        """(PEM cert chain, PEM key) as bytes, or None when TLS is off."""
        if not self.tls.enabled:
            return None
        out = []
        for name in ("cert_file", "key_file"):
            path = getattr(self.tls, name)
            try:
                out.append(Path(path).read_bytes())
            except OSError as e:
                raise ConfigError(f"verifier.tls.{name}: cannot read {path}: {e.strerror}") from None
        check_tls_pair(self.tls.cert_file, self.tls.key_file)
        return out[0], out[1]


def check_tls_pair(cert_file: Path, key_file: Path) -> None:
    """Raise a ``ConfigError`` naming the field when the certificate or the key is not usable PEM, or the key
    does not belong to the certificate (gRPC itself only says "Failed to bind to address")."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_verify_locations(cadata=Path(cert_file).read_text(errors="replace"))
    except (ssl.SSLError, ValueError) as e:
        raise ConfigError(f"verifier.tls.cert_file: {cert_file} is not a PEM certificate ({e})") from None
    try:
        ctx.load_cert_chain(cert_file, key_file, password=lambda: b"")
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in str(e):
            raise ConfigError(f"verifier.tls.key_file: {key_file} does not belong to the certificate "
                              f"verifier.tls.cert_file={cert_file}") from None
        raise ConfigError(f"verifier.tls.key_file: {key_file} is not an unencrypted PEM private key ({e})") from None
