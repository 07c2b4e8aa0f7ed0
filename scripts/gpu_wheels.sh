#!/usr/bin/env bash
# Downloads, into .whl/, the Python packages that scripts/gpu_check.sh needs on the GPU machine and
# that its image lacks (it has torch, transformers, safetensors, tokenizers, sympy, pyyaml, grpcio,
# prometheus-client, ... but not pydantic, aiokafka, the noida broker; docs/distributed.md, "The GPU check").
# Wheels for CPython 3.12 on manylinux x86_64, at the versions the test suite runs with here.
# Not vLLM: its wheel is ~340 MB (the device tool carries 64 MiB per call) and pins its own torch.
#
#   bash scripts/gpu_wheels.sh    # .whl/ is git-ignored: name it in the device run's carry; gpu_check.sh
#                                 # installs it into /tmp/site there
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${WHEEL_DIR:-.whl}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$DEST"
PKGS=(
  pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4
  typing-inspection==0.4.5 annotated-types==0.8.0 typing_extensions==4.16.0
  aiokafka==0.14.0 async-timeout==5.0.1 packaging==26.4 protobuf==7.36.2
  grpcio==1.85.1 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1
  latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 noida-db==0.2.3
)
PLAT=()
for n in 17 27 28 31 34 35; do PLAT+=(--platform "manylinux_2_${n}_x86_64"); done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLAT[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$DEST" "${PKGS[@]}"
du -sh "$DEST"
ls "$DEST"
