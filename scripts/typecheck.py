"""Runs mypy on the modules listed in pyproject.toml ([tool.mypy] modules), as CI does (scripts/test.sh).

    .venv/bin/python scripts/typecheck.py [extra mypy arguments]

The service folders install as subpackages of ``winnow`` (``learner/`` is ``winnow.learner``: the
package-dir mapping in pyproject.toml), which mypy cannot see through the editable install's import hook.
So this builds ``build/typecheck/winnow``, a tree of symlinks with the installed layout (``winnow/*``
plus ``winnow/learner -> learner`` etc.), and runs ``python -m mypy`` on it with the repository's
config. Exit status: mypy's (0 = clean).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICES = {"learner": "learner", "generator": "generator", "verifier": "verifier"}


def build_tree(dest: Path) -> Path:
    """``dest/winnow`` laid out as the installed package, every entry a symlink into the checkout."""
    if dest.exists():
        shutil.rmtree(dest)
    pkg = dest / "winnow"
    pkg.mkdir(parents=True)
    for entry in (ROOT / "winnow").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name, folder in SERVICES.items():
        (pkg / name).symlink_to(ROOT / folder)
    return dest


def main(argv: list[str]) -> int:
    tree = build_tree(ROOT / "build" / "typecheck")
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
           "--cache-dir", str(ROOT / "build" / "mypy_cache"), *argv]
    env = {**os.environ, "MYPYPATH": str(tree)}
    return subprocess.call(cmd, cwd=tree, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
