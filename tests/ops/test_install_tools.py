"""scripts/install_tools.py: a second run, with everything installed, only checks (and is fast)."""

from __future__ import annotations

import subprocess
import time

import pytest

from .conftest import PYTHON, ROOT, find_tool


def test_second_run_is_a_fast_no_op() -> None:
    if not all(find_tool(t) and (ROOT / ".tools" / "bin" / t).exists() for t in ("helm", "hadolint", "promtool", "prometheus")):
        pytest.skip("tools not installed in .tools/bin yet (scripts/install_tools.py installs them)")
    t0 = time.perf_counter()
    proc = subprocess.run([PYTHON, str(ROOT / "scripts" / "install_tools.py")], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("already") == 3, proc.stdout  # helm, hadolint, promtool/prometheus
    assert elapsed < 5.0, f"a no-op run took {elapsed:.1f}s"
    version = subprocess.run([str(ROOT / ".tools" / "bin" / "helm"), "version", "--short"], capture_output=True,
                             text=True, timeout=30).stdout
    assert version.startswith("v4."), version
