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
# What winnow imports that the GPU image (/work/.library/device/KINDS.md, "Python packages already there") lacks.
# The image has torch, transformers, safetensors, tokenizers, sympy, pyyaml, prometheus-client, typing-extensions,
# packaging, peft, accelerate, grpcio and protobuf (versions unknown: grpcio and protobuf are carried anyway,
# since the generated stubs check both at import).
PKGS=(
  pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4
  typing-inspection==0.4.5 annotated-types==0.8.0 typing_extensions==4.16.0
  aiokafka==0.14.0 async-timeout==5.0.1 protobuf==7.36.2
  grpcio==1.85.1 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1
  latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 noida-db==0.2.3
)
PLAT=()
for n in 17 27 28 31 34 35; do PLAT+=(--platform "manylinux_2_${n}_x86_64"); done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLAT[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$DEST" "${PKGS[@]}"
ls "$DEST"
# the device tool carries 64 MiB per call, the working tree included: say what is left for it
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "carried: $(( total / 1024 / 1024 )) MiB in $(ls "$DEST"/*.whl | wc -l) wheels; left for the tree: $(( 64 - total / 1024 / 1024 )) MiB"
[ "$total" -lt $(( 40 * 1024 * 1024 )) ] || { echo "gpu_wheels: over 40 MiB" >&2; exit 1; }
