"""The layering of the packages: learner, generator and verifier import only the shared layer (winnow/) and
the protos (winnow.v1), never each other; the shared layer imports no service, except the few modules
listed below that exist to reach one. Checked on the source (AST), so it also sees imports inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("learner", "generator", "verifier")
# shared-layer modules allowed to import a service package, and which, and why
SHARED_EXCEPTIONS = {
    "winnow/cli.py": set(SERVICES),  # the command line: registers each service's subcommands (by name)
    "winnow/up.py": set(SERVICES),  # runs the whole pipeline: validates each service's config
    "winnow/scoring.py": {"verifier"},  # the one seam to the verifier's implementation (a plug-in)
    "winnow/evaluation.py": {"generator"},  # winnow eval scores each task where the generators' routes send it
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import statement and every ``importlib.import_module("...")`` literal."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative imports would hide the package: none in the services
                out.append((node.lineno, "." * node.level + (node.module or "")))
            elif node.module:
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("winnow."):
            out.append((node.lineno, node.value))
    return out


def service_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "winnow" and parts[1] in SERVICES:
        return parts[1]
    return None


def violations(folder: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        allowed = {folder} if folder in SERVICES else SHARED_EXCEPTIONS.get(rel, set())
        for line, module in imported_modules(path):
            if module.startswith("."):
                bad.append(f"{rel}:{line}: relative import {module!r}")
                continue
            other = service_of(module)
            if other is not None and other not in allowed:
                bad.append(f"{rel}:{line}: imports {module}")
    return bad


@pytest.mark.parametrize("folder", [*SERVICES, "winnow"])
def test_packages_import_only_the_shared_layer(folder):
    assert violations(folder) == []


def test_the_check_catches_a_cross_import(tmp_path):
    """The check itself can fail: a learner module importing the generator is reported, with its line."""
    fake = tmp_path / "learner"
    fake.mkdir()
    (fake / "bad.py").write_text("import os\n\ndef f():\n    from winnow.generator.engine import Engine\n")
    (fake / "ok.py").write_text("from winnow.learner.step import Trainer\nfrom winnow.prompts import Problem\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert violations("learner") == ["learner/bad.py:4: imports winnow.generator.engine"]
    finally:
        ROOT = saved
