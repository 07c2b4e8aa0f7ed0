"""One config system for every winnow service.

Each service defines one pydantic model (a subclass of :class:`Settings`) whose fields carry
attribute docstrings (they are the documentation and the ``--help``), bounds and ``Literal``
variants. A config is resolved, lowest priority first, from:

1. the field defaults,
2. a YAML or JSON file (``--config FILE``; a Kubernetes ConfigMap). If the file has a top-level
   key named after the service's ``section`` (e.g. ``verifier:``), that subtree is used, so one
   file can hold the whole pipeline; the shared top-level sections every service must agree on
   (:data:`SHARED_SECTIONS`: ``model``, ``chat``, ``sampling``, ``numerics``, ``kafka``) are merged under
   it, and such a file's cross-service rules are checked (:func:`winnow.pipeline.check_pipeline`),
3. environment variables ``WINNOW_<SECTION>_<FIELD>``, nested fields joined with ``__``
   (``WINNOW_LEARNER_ALGO__PRESET=grpo``; a nested block as JSON, ``WINNOW_LEARNER_ALGO='{...}'``),
   and for Kafka the standard ``KAFKA_*`` variables of :data:`KAFKA_ENV` (bootstrap servers,
   security protocol, SASL credentials, TLS files),
4. explicit overrides (command-line flags, ``--set a.b=value``).

It is validated once at start-up. A bad value raises :class:`ConfigError` whose message names
the field, the bad value and the rule, never a traceback from deep inside. So do a
``WINNOW_<SECTION>_*`` variable that names no field (a typo would otherwise be ignored; the
message names the nearest field), a ``WINNOW_<SECTION>_*`` variable whose section is a misspelling
of a service's (``WINNOW_LERNER_MAX_STEPS``), a nested variable that is not JSON, and a config file
that is not UTF-8 text.

Config files and ``--set`` values are untrusted text, so the YAML reader (:func:`load_yaml`) refuses
duplicate keys (naming the key and its lines), aliases that expand past :data:`MAX_ALIAS_EXPANSION`
values (a "billion laughs" bomb), recursive aliases and integers too long to convert; values quoted
in an error are cut to a few hundred characters. Every model refuses ``inf``/``nan`` floats and a
boolean (YAML's ``yes``/``no``/``on``/``off``) where a number is expected.
"""

from __future__ import annotations

import contextvars
import difflib
import json
import os
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the field."""


SECTIONS: set[str] = {"learner", "generator", "verifier", "up"}
"""Sections of the services' configs (``WINNOW_<SECTION>_*``); every :class:`Settings` subclass adds its own."""

_FILE_DATA: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("winnow_config_file", default=None)


class _FileSource(PydanticBaseSettingsSource):
    """Feeds the values read from the config file (set by :func:`load_config`)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused, __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_DATA.get() or {})


def _numeric(annotation: Any) -> bool:
    """Whether a field holds a number, an optional number, or a tuple/list of numbers."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _numeric(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(_numeric(a) for a in args)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return bool(args) and all(_numeric(a) for a in args)
    return annotation in (int, float)


def _no_bool_for_number(cls: type[BaseModel], data: Any) -> Any:
    """Refuse a boolean where a number is expected: YAML reads ``n: yes`` as True, which pydantic
    would otherwise take as 1."""
    if not isinstance(data, dict):
        return data
    bad = []
    for name, value in data.items():
        field = cls.model_fields.get(name) if isinstance(name, str) else None
        items = value if isinstance(value, list | tuple) else [value]
        if field is not None and any(isinstance(v, bool) for v in items) and _numeric(field.annotation):
            bad.append(f"{name} (got {_show(value)})")
    if bad:
        raise ValueError(f"expected a number, got a boolean for {', '.join(bad)}: YAML reads yes/no/on/off/true/"
                         "false as booleans")
    return data


class Settings(BaseSettings):
    """Base of every service config: file < env < overrides, unknown keys rejected, floats finite,
    no booleans for numbers."""

    section: ClassVar[str] = ""

    model_config = SettingsConfigDict(
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        use_attribute_docstrings=True,
        env_ignore_empty=True,
        allow_inf_nan=False,
    )

    _no_bool_for_number = model_validator(mode="before")(_no_bool_for_number)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.section:
            SECTIONS.add(cls.section)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls))


class Model(BaseModel):
    """Base of nested config blocks: unknown keys rejected, attribute docstrings kept, floats finite
    (``inf``/``nan`` refused), no booleans for numbers."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True,
                              allow_inf_nan=False)

    _no_bool_for_number = model_validator(mode="before")(_no_bool_for_number)


class KafkaConfig(Model):
    """How to reach Kafka and name the topics (shared by the learner and the generators)."""

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS"),
    )
    """Comma-separated host:port list. The env var KAFKA_BOOTSTRAP_SERVERS overrides it."""
    topic_prefix: str = Field(default="winnow", pattern=r"^[A-Za-z0-9._-]+$")
    """Topics are <prefix>.prompts, <prefix>.groups, <prefix>.weights: several runs can share a cluster."""
    idempotent_producer: bool = False
    """Use Kafka's idempotent producer (needs broker support; consumers dedupe by request id anyway)."""
    session_timeout_ms: int = Field(default=10_000, ge=6_000, le=300_000)
    """Consumer group session timeout (Kafka's minimum is 6000 ms)."""
    request_timeout_ms: int = Field(default=30_000, ge=1_000)
    """Client request timeout."""
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest message the producer may send (a scored group with n long samples can be large)."""
    empty_fetch_pause_ms: int = Field(default=20, ge=0, le=10_000)
    """Pause of a consumer after a fetch that the broker answered with no records *before* the fetch's
    wait time (aiokafka's ``fetch_max_wait_ms``) was up. Kafka holds an empty fetch until records arrive or
    the wait is over, so this never triggers there; the local noida-db broker answers at once, and an idle
    aiokafka consumer then re-fetches in a loop at ~60% of a core (docs/benchmarks.md, "pipeline_profile").
    Also the most this adds to a record's delivery on such a broker. 0: never pause."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How clients talk to the brokers: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (SASL over TLS,
    what MSK, Confluent Cloud and Strimzi's TLS+SCRAM listeners use). Applies to every producer,
    consumer and admin client. Env: KAFKA_SECURITY_PROTOCOL."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    """SASL mechanism (required with SASL_*). OAUTHBEARER reads its token from ``sasl_oauth_token_file``.
    Env: KAFKA_SASL_MECHANISM."""
    sasl_username: str | None = None
    """SASL user (PLAIN, SCRAM). Env: KAFKA_SASL_USERNAME."""
    sasl_password: SecretStr | None = None
    """SASL password (PLAIN, SCRAM); never printed. Set it from a Secret through env KAFKA_SASL_PASSWORD."""
    sasl_oauth_token_file: Path | None = None
    """OAUTHBEARER: a file holding the access token, re-read at every (re)connection, so a sidecar or
    a projected service-account token can refresh it."""
    ssl_cafile: Path | None = None
    """PEM file of the CA(s) that signed the brokers' certificates; None = the system's CAs."""
    ssl_certfile: Path | None = None
    """PEM client certificate (mutual TLS, e.g. Strimzi's tls authentication); needs ``ssl_keyfile``."""
    ssl_keyfile: Path | None = None
    """PEM private key of ``ssl_certfile``."""
    ssl_key_password: SecretStr | None = None
    """Password of an encrypted ``ssl_keyfile``. Env: KAFKA_SSL_KEY_PASSWORD."""
    group_hmac_key_file: Path | None = None
    """File holding the shared secret (>= 16 bytes; surrounding whitespace stripped) with which generators sign
    scored groups (HMAC-SHA256 in the ``winnow-hmac`` record header) and the learner refuses every group not
    signed with it, so a foreign writer with access to the topic cannot train (docs/kafka.md). Also from env
    ``WINNOW_GROUP_HMAC_KEY_FILE`` or ``WINNOW_GROUP_HMAC_KEY`` (the secret itself; the Helm chart sets it from
    a Kubernetes Secret). None and no env: groups are not authenticated."""

    @model_validator(mode="after")
    def _security_consistent(self) -> KafkaConfig:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism "
                             "(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)")
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs security_protocol SASL_SSL or SASL_PLAINTEXT")
        if sasl and self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            if not self.sasl_username or self.sasl_password is None:
                raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs sasl_username and sasl_password "
                                 "(env KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD)")
        if sasl and self.sasl_mechanism == "OAUTHBEARER" and self.sasl_oauth_token_file is None:
            raise ValueError("sasl_mechanism OAUTHBEARER needs sasl_oauth_token_file")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile must be set together")
        tls_files = [f for f in (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile) if f is not None]
        if tls_files and self.security_protocol not in ("SSL", "SASL_SSL"):
            raise ValueError(f"ssl_* files are set but security_protocol is {self.security_protocol}: "
                             "use SSL or SASL_SSL")
        return self

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}.{name}"


#: Standard environment variables read into every KafkaConfig (the chart sets them from Secrets).
KAFKA_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "bootstrap_servers",
    "KAFKA_SECURITY_PROTOCOL": "security_protocol",
    "KAFKA_SASL_MECHANISM": "sasl_mechanism",
    "KAFKA_SASL_USERNAME": "sasl_username",
    "KAFKA_SASL_PASSWORD": "sasl_password",
    "KAFKA_SSL_KEY_PASSWORD": "ssl_key_password",
    "KAFKA_SSL_CAFILE": "ssl_cafile",
    "KAFKA_SSL_CERTFILE": "ssl_certfile",
    "KAFKA_SSL_KEYFILE": "ssl_keyfile",
    "KAFKA_SASL_OAUTH_TOKEN_FILE": "sasl_oauth_token_file",
}


def kafka_from_env(cfg: KafkaConfig) -> KafkaConfig:
    """Apply the standard ``KAFKA_*`` variables of :data:`KAFKA_ENV` that are set (non-empty), and
    validate the result; a bad combination is a :class:`ConfigError` naming the field."""
    updates = {field: os.environ[var] for var, field in KAFKA_ENV.items() if os.environ.get(var)}
    if not updates:
        return cfg
    data = {k: getattr(cfg, k) for k in type(cfg).model_fields}
    data.update(updates)
    try:
        return type(cfg).model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error("kafka (with KAFKA_* environment variables)", e)) from None


S = TypeVar("S", bound=Settings)

SHARED_SECTIONS = ("model", "chat", "sampling", "numerics", "kafka")
"""Top-level sections of a pipeline file that every service with that field reads, defined once for the
generators and the learner: ``model`` (the initial policy), ``chat`` (the prompt format,
:class:`winnow.chat.ChatFormat`), ``sampling`` (:class:`winnow.sampling.SamplingConfig`), ``numerics`` (the
compute precision, see :mod:`winnow.numerics`) and ``kafka`` (the broker and topics). A service's own key
(``generator.chat``) still overrides its top-level value for that service; a pipeline file whose services then
disagree is refused (:func:`winnow.pipeline.check_pipeline`)."""


MAX_ALIAS_EXPANSION = 100_000
"""Most values YAML aliases (``*name``) may add to a config by repeating anchored blocks: a config
that uses an anchor a few times stays far below, a 28-line "billion laughs" bomb is far above."""


class _Refused(ValueError):
    """A YAML document that is well formed but refused (a duplicate key, an alias bomb)."""


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice (YAML would keep the last one
    silently); merge keys (``<<: *base``) may still be overridden."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base constructor reports it
                    continue
                if first is not key_node:
                    raise _Refused(f"duplicate key {_show(key, 80)} at line {key_node.start_mark.line + 1} "
                                   f"(first at line {first.start_mark.line + 1})")
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]  # the base reports non-mappings


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """``(values once aliases are expanded, distinct values written)`` of a composed YAML document;
    linear in the document, whatever the expansion. A recursive alias is refused."""
    size: dict[int, int] = {}
    active: set[int] = set()

    def visit(node: yaml.Node) -> int:
        key = id(node)
        if key in size:
            return size[key]
        if key in active:
            raise _Refused(f"recursive alias at line {node.start_mark.line + 1}")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(visit(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(visit(k) + visit(v) for k, v in node.value)
        active.discard(key)
        size[key] = total
        return total

    return visit(root), len(size)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A PyYAML error on one line: what is wrong and where."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{f'{context}: ' if context else ''}{problem}{where}"


def load_yaml(text: str, source: str) -> Any:
    """Parse untrusted YAML (a config file, a ``--set`` value) safely: no duplicate keys, no alias
    bomb, no recursive alias, no integer too long to convert; any problem is a one-line
    :class:`ConfigError` naming ``source``."""
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded, written = _expanded_size(node)
        if expanded - written > MAX_ALIAS_EXPANSION:
            raise _Refused(f"its aliases (*name) expand it to {expanded:,} values from {written:,} written; at most "
                           f"{MAX_ALIAS_EXPANSION:,} may come from aliases: write the values out")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {_cut(_yaml_problem(e))}") from None
    except _Refused as e:
        raise ConfigError(f"{source} is refused: {e}") from None
    except ValueError as e:  # int("1" * 5000): Python refuses to convert over 4300 digits
        raise ConfigError(f"{source} holds a value that cannot be read: {_cut(str(e).split(';')[0])}") from None
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply") from None
    finally:
        loader.dispose()


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Refused(f"duplicate key {_show(k, 80)}")
        out[k] = v
    return out


MAX_CONFIG_BYTES = 16 * 1024 * 1024
"""Largest config file read (a config is kilobytes; a bigger file is the wrong one)."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {p} is a directory: pass the YAML or JSON file")
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {p} has {size:,} bytes, more than a config file may "
                              f"({MAX_CONFIG_BYTES:,}): is it the right file?")
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {p} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}): "
            "expected a YAML or JSON file"
        ) from None
    if "\x00" in text:
        raise ConfigError(f"config file {p} holds NUL bytes (offset {text.index(chr(0))}): expected a YAML or JSON file")
    if p.suffix == ".json":
        try:
            data = json.loads(text, object_pairs_hook=_json_pairs)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {p} is not valid JSON: {e}") from None
        except _Refused as e:
            raise ConfigError(f"config file {p} is refused: {e}") from None
        except (ValueError, RecursionError) as e:
            raise ConfigError(f"config file {p} holds a value that cannot be read: {_cut(str(e).split(';')[0])}") from None
    else:
        data = load_yaml(text, f"config file {p}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["algo.preset=grpo", "port=0"]`` -> nested dict; values parsed as YAML (:func:`load_yaml`)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {_show(item)} must look like key.path=value")
        key, raw = item.split("=", 1)
        value = load_yaml(raw, f"--set {_cut(key.strip(), 100)}") if raw != "" else ""
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {_show(item)} conflicts with another override")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


QUOTE_CHARS = 200
"""Longest value an error message quotes (a bad value can be megabytes: only its start is shown)."""

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, QUOTE_CHARS, QUOTE_CHARS, 60


def _cut(text: str, limit: int = QUOTE_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} chars)"


def _show(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters, cheap however large or deep the value."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * QUOTE_CHARS:
        return f"<an integer of about {int(value.bit_length() * 0.30103):,} digits>"
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value):,} chars)"
    try:
        return _cut(_REPR.repr(value), limit)
    except ValueError:  # a nested integer too long to print
        return f"<a {type(value).__name__}>"


def format_validation_error(name: str, err: ValidationError) -> str:
    lines = [f"invalid {name} config ({err.error_count()} problem{'s' if err.error_count() > 1 else ''}):"]
    for e in err.errors(include_url=False):
        loc = _cut(".".join(str(x) for x in e["loc"]) or name.split()[0], 100)
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {_show(got)})"
        msg = e["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
        lines.append(f"  - {loc}: {_cut(msg, 2 * QUOTE_CHARS)}{got_s}")
    return "\n".join(lines)


def load_config(
    cls: type[S],
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    data: dict[str, Any] | None = None,
) -> S:
    """Resolve and validate a service config (see the module docstring for the priority)."""
    file_data: dict[str, Any] = dict(data or {})
    if path is not None:
        file_data = deep_merge(file_data, read_config_file(path))
    if cls.section and isinstance(file_data.get(cls.section), dict):
        from winnow.pipeline import check_pipeline, lift_shared

        file_data = lift_shared(file_data)  # an older file's shared setting set in one section only
        check_pipeline(file_data)  # a pipeline file: its services must agree on the shared sections
        shared = {k: v for k, v in file_data.items() if k in SHARED_SECTIONS and k in cls.model_fields}
        file_data = deep_merge(shared, file_data[cls.section])
    if cls.section:
        check_env_sections(os.environ)
        check_env(cls, os.environ)
    token = _FILE_DATA.set(file_data)
    try:
        cfg = cls(**(overrides or {}))
    except ValidationError as e:
        raise ConfigError(format_validation_error(cls.section or cls.__name__, e)) from None
    except SettingsError as e:  # a nested field's env value that is not JSON
        cause = f": {e.__cause__}" if e.__cause__ else ""
        raise ConfigError(
            f"{e}{cause}. A nested field's environment variable must hold JSON (e.g. "
            f"{env_prefix(cls.section)}KAFKA='{{\"topic_prefix\": \"run7\"}}'), or set one field with "
            f"{env_prefix(cls.section)}KAFKA__TOPIC_PREFIX=run7"
        ) from None
    finally:
        _FILE_DATA.reset(token)
    if "kafka" in cls.model_fields:
        object.__setattr__(cfg, "kafka", kafka_from_env(cfg.kafka))  # type: ignore[attr-defined]  # a field, checked above
    return cfg


def env_prefix(section: str) -> str:
    return f"WINNOW_{section.upper()}_"


def settings_config(section: str) -> SettingsConfigDict:
    """``model_config`` for a service config class: ``model_config = settings_config("learner")``."""
    return SettingsConfigDict(**{**Settings.model_config, "env_prefix": env_prefix(section)})


def _model_classes(annotation: Any) -> list[type[BaseModel]] | None:
    """The pydantic models a field holds (a union's members), [] for a leaf, None for free-form
    (a dict / Any: any nested key is accepted)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _model_classes(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        found: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            sub = _model_classes(arg)
            if sub is None:
                return None
            found += sub
        return found
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if annotation is Any or origin in (dict, typing.Mapping) or annotation is dict:
        return None
    return []


def _field_names(models: list[type[BaseModel]]) -> dict[str, Any]:
    names: dict[str, Any] = {}
    for m in models:
        for name, info in m.model_fields.items():
            names.setdefault(name, info.annotation)
    return names


def check_env_sections(environ: typing.Mapping[str, str]) -> None:
    """Reject ``WINNOW_<X>_*`` variables whose ``X`` is no service's section but close to one
    (``WINNOW_LERNER_MAX_STEPS``): no service would read them, so the setting would be lost. Other
    ``WINNOW_*`` names (``WINNOW_CACHE``) are not config and pass."""
    problems = []
    for var in sorted(environ):
        head, _, rest = var.upper().partition("_")
        section, sep, field = rest.partition("_")
        if head != "WINNOW" or not sep or not field or environ[var] == "" or section.lower() in SECTIONS:
            continue
        near = difflib.get_close_matches(section.lower(), sorted(SECTIONS), n=1, cutoff=0.75)
        if near:
            problems.append(f"  - {var}: no config section {section.lower()!r} (did you mean {near[0]}, "
                            f"i.e. {env_prefix(near[0])}{field}?)")
    if problems:
        raise ConfigError(
            f"misspelled section in environment variable{'s' if len(problems) > 1 else ''} (no service reads "
            f"them; the sections are {', '.join(sorted(SECTIONS))}):\n" + "\n".join(problems)
        )


def check_env(cls: type[Settings], environ: typing.Mapping[str, str]) -> None:
    """Reject ``WINNOW_<SECTION>_*`` variables that name no field of ``cls`` (a typo would be
    silently ignored), naming the nearest field. Nested fields are checked level by level."""
    prefix = env_prefix(cls.section)
    problems = []
    for var in sorted(environ):
        if not var.upper().startswith(prefix) or environ[var] == "":
            continue
        models: list[type[BaseModel]] = [cls]
        path: list[str] = []
        for part in var[len(prefix):].lower().split("__"):
            fields = _field_names(models)
            if part not in fields:
                near = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.6)
                where = ".".join([cls.section, *path])
                hint = ""
                if near:
                    suggestion = prefix + "__".join([*path, near[0]]).upper()
                    hint = f" (did you mean {'.'.join([*path, near[0]])}, i.e. {suggestion}?)"
                problems.append(f"  - {var}: {where} has no field {part!r}{hint}")
                break
            path.append(part)
            sub = _model_classes(fields[part])
            if not sub:  # a leaf (the rest would be a parse error) or free-form (anything goes)
                break
            models = sub
    if problems:
        raise ConfigError(
            f"unknown {cls.section} environment variable{'s' if len(problems) > 1 else ''} "
            f"(every {prefix}* variable must name a config field):\n" + "\n".join(problems)
        )
