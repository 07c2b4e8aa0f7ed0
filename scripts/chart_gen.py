"""Generate the Helm chart's ``values.schema.json`` and ``README.md`` from their sources.

Sources:
- ``helm/winnow/values.yaml``: every key and its default; the helm-docs comment (``# -- text``,
  continued by the ``#`` lines right below it) just above a key is its description;
- ``scripts/chart/values.base.schema.json``: the hand-written constraints (enums, patterns, bounds,
  list item shapes) that a default value cannot show;
- the services' own pydantic config models (``VerifierConfig``, ``GeneratorConfig``,
  ``LearnerConfig``): their JSON schema becomes the schema of ``verifier.config``,
  ``generator.config`` and ``learner.config``, and the shared sections' (``ChatFormat``,
  ``SamplingConfig``, ``NumericsConfig``) that of the top-level ``chat``, ``sampling`` and ``numerics``,
  so a typo or a bad value in a config block fails ``helm install``/``template`` naming the key,
  instead of the pod at start-up;
- ``scripts/chart/README.header.md``: the README text above the generated values table.

Usage: ``python scripts/chart_gen.py`` writes both files; ``--check`` exits 1 if either is stale
(tests/ops/test_chart_gen.py runs it). Run it after changing values.yaml or a service config model.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "winnow"
VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"
README = CHART / "README.md"
BASE = ROOT / "scripts" / "chart" / "values.base.schema.json"
HEADER = ROOT / "scripts" / "chart" / "README.header.md"

CONFIG_MODELS = {
    # the shared sections (winnow.config.SHARED_SECTIONS): rendered once at the top of every service's config
    ("chat",): ("winnow.chat", "ChatFormat"),
    ("sampling",): ("winnow.sampling", "SamplingConfig"),
    ("numerics",): ("winnow.numerics", "NumericsConfig"),
    ("verifier", "config"): ("winnow.verifier.config", "VerifierConfig"),
    ("generator", "config"): ("winnow.generator.config", "GeneratorConfig"),
    ("learner", "config"): ("winnow.learner.config", "LearnerConfig"),
}
# keywords of pydantic's schema that say nothing to Helm's validator (formats like "path" are not
# JSON Schema formats; titles duplicate the names)
_DROP = {"title", "format", "writeOnly", "discriminator"}
_NUMERIC = r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"


# ------------------------------------------------------------------------------------ comments


def parse_comments(text: str) -> dict[tuple[str, ...], str]:
    """``{key path: description}`` from helm-docs ``# --`` comments (block YAML, 2-space indent)."""
    out: dict[tuple[str, ...], str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip() if not stripped.startswith("#   ") else stripped[1:])
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_.-]+):", line)
        if not m:
            pending = None if stripped else pending
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        if pending is not None:
            out[tuple(k for _, k in stack)] = _join(pending)
            pending = None
    return out


def _join(lines: list[str]) -> str:
    """Comment lines to one description; example lines (indented after '#') keep their line breaks."""
    text = ""
    for ln in lines:
        if ln.startswith("  ") or ln.lstrip().startswith("- "):
            text += "\n" + ln
        else:
            text += (" " if text and not text.endswith("\n") else "") + ln.strip()
    return text.strip()


# -------------------------------------------------------------------------------------- schema


def _clean(node: Any, prefix: str) -> Any:
    """Drop pydantic-only keywords and move ``#/$defs/X`` refs to ``#/definitions/<prefix>X``."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in _DROP or k == "$defs":
                continue
            if k == "required":  # the chart supplies some keys itself; users give a partial block
                continue
            if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/"):
                out[k] = "#/definitions/" + prefix + v.removeprefix("#/$defs/")
                continue
            if k in ("properties", "patternProperties"):  # keys here are names, not keywords
                out[k] = {name: _clean(sub, prefix) for name, sub in v.items()}
                continue
            out[k] = _clean(v, prefix)
        if out.get("type") in ("number", "integer"):
            # `helm --set a.b=2.5` passes floats as strings; the service parses numeric strings (pydantic's
            # lax mode), so the schema accepts them too (their bounds are checked by the service)
            numeric = {"type": "string", "pattern": _NUMERIC}
            keep = {k: v for k, v in out.items() if k in ("description", "default")}
            out = {**keep, "anyOf": [{k: v for k, v in out.items() if k not in keep}, numeric]}
        return out
    if isinstance(node, list):
        return [_clean(x, prefix) for x in node]
    return node


def config_schema(path: tuple[str, ...], definitions: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of a service's config block, its $defs hoisted into ``definitions``."""
    import importlib

    module, name = CONFIG_MODELS[path]
    model = getattr(importlib.import_module(module), name)
    raw = model.model_json_schema(mode="validation")
    prefix = name
    for def_name, sub in raw.get("$defs", {}).items():
        definitions[prefix + def_name] = _clean(sub, prefix)
    schema = _clean(raw, prefix)
    schema["description"] = (f"{name} keys (the service's own config model; see `winnow {path[0]} "
                             "... --print-config`), merged over the keys the chart sets.")
    return schema


def _free_form(b: dict[str, Any]) -> bool:
    """A map the base schema types as a whole (a Kubernetes object, a label map): not walked key by key."""
    return b.get("type") == "object" and "properties" not in b


def _infer(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, list):
        return {"type": "array"}
    if isinstance(value, dict):
        return {"type": "object"}
    return {}


def build_schema(values: dict, comments: dict, base: dict) -> dict[str, Any]:
    definitions: dict[str, Any] = copy.deepcopy(base.get("definitions", {}))
    missing: list[str] = []

    def walk(value: Any, b: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
        if path in CONFIG_MODELS:
            node = config_schema(path, definitions)
        elif isinstance(value, dict) and value and "$ref" not in b and not _free_form(b):
            props = b.get("properties", {})
            node = {k: v for k, v in b.items() if k != "properties"}
            node.setdefault("type", "object")
            node.setdefault("additionalProperties", False)
            node["properties"] = {k: walk(value.get(k), props.get(k, {}), (*path, k))
                                  for k in [*value, *[k for k in props if k not in value]]}
        else:
            node = {**_infer(value), **b} if "$ref" not in b and "oneOf" not in b else dict(b)
        if node.get("type") == "number":  # `helm --set x=0.3` passes floats as strings
            bounds = {k: v for k, v in node.items() if k != "description"}
            node = {"anyOf": [bounds, {"type": "string", "pattern": _NUMERIC}]}
        desc = comments.get(path) or b.get("description")
        if desc:
            node["description"] = desc
        elif path and path not in CONFIG_MODELS and path[-1] != "global":
            missing.append(".".join(path))
        return node

    props = base.get("properties", {})
    schema = {
        "$schema": base["$schema"],
        "title": base["title"],
        "type": "object",
        "additionalProperties": False,
        "required": base.get("required", []),
        "properties": {k: walk(values.get(k), props.get(k, {}), (k,))
                       for k in [*values, *[k for k in props if k not in values]]},
        "definitions": dict(sorted(definitions.items())),
    }
    if missing:
        raise SystemExit("values without a description (add a `# --` comment in values.yaml or a "
                         f"description in {BASE.relative_to(ROOT)}):\n  " + "\n  ".join(missing))
    return schema


# -------------------------------------------------------------------------------------- README


def _rows(values: dict, comments: dict, schema: dict) -> list[tuple[str, str, str, str]]:
    rows = []

    def walk(value: Any, node: dict, path: tuple[str, ...]) -> None:
        described = path in comments
        is_map = isinstance(value, dict) and value and path not in CONFIG_MODELS and "properties" in node
        if is_map:
            if described:
                rows.append((".".join(path), "object", _default(value), comments[path]))
            for k, v in value.items():
                walk(v, node.get("properties", {}).get(k, {}), (*path, k))
            return
        kind = node.get("type") or ("object" if path in CONFIG_MODELS else "")
        if isinstance(kind, list):
            kind = " or ".join(kind)
        if not kind and "anyOf" in node:  # a number that may come as a numeric string (--set)
            kind = node["anyOf"][0].get("type", "")
        if not kind and "oneOf" in node:
            kind = " or ".join(sorted({o.get("type", "") for o in node["oneOf"]}))
        rows.append((".".join(path), kind or "object", _default(value), node.get("description", "")))

    for k, v in values.items():
        walk(v, schema["properties"].get(k, {}), (k,))
    return rows


def _default(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"), sort_keys=False)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"`{text}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def build_readme(values: dict, comments: dict, schema: dict) -> str:
    lines = [HEADER.read_text().rstrip(), "", "## Values", "",
             "Generated from the `# --` comments of `values.yaml` by `scripts/chart_gen.py` "
             "(helm-docs conventions). `values.schema.json` types every key; the `*.config` blocks "
             "are validated against the services' own config models.", "",
             "| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for key, kind, default, desc in _rows(values, comments, schema):
        lines.append(f"| {key} | {kind} | {_cell(default)} | {_cell(desc)} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- main


def generate() -> tuple[str, str]:
    text = VALUES.read_text()
    values = yaml.safe_load(text)
    comments = parse_comments(text)
    schema = build_schema(values, comments, json.loads(BASE.read_text()))
    return json.dumps(schema, indent=2) + "\n", build_readme(values, comments, schema)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale")
    args = parser.parse_args(argv)
    schema, readme = generate()
    stale = [p for p, text in ((SCHEMA, schema), (README, readme)) if not p.exists() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"{p.relative_to(ROOT)} is stale: run python scripts/chart_gen.py", file=sys.stderr)
        return 1 if stale else 0
    SCHEMA.write_text(schema)
    README.write_text(readme)
    print(f"wrote {SCHEMA.relative_to(ROOT)} and {README.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
