"""GPU check, step 3: the whole pipeline (``winnow up``) on one machine, generator and learner sharing it.

    python benchmarks/gpu/pipeline_check.py --out DIR [--dry-run] [--engine auto|vllm|transformers] [--model DIR]

Runs ``python -m winnow up`` (local noida broker, one generator, the learner; in-process scoring) for
``--steps`` optimizer steps on a random Qwen2 with Qwen2.5-0.5B's shapes (or ``--model DIR``) and reads
the learner's ``metrics.jsonl``. On a GPU both services use it: the vLLM engine takes
``--gpu-mem`` of its memory (``generator.vllm_gpu_memory_utilization``), the learner the rest.
``--engine auto`` = vLLM when it imports, else the transformers engine (also on the GPU); the JSON says
which ran. The model is random, so every answer is wrong: the algorithm is ``reinforce`` (no filter,
so every group trains) and completions run to ``--max-new-tokens``.

Reported: steps/min and trained tokens/s over the steady state (steps 2..N: the first includes
start-up), the learner's mean wait / compute / publish seconds per step (wait = waiting for groups),
mean staleness, the time to the first step, and the resolved configuration.

``--dry-run``: the tiny model on CPU, 3 steps of 2 groups x 2 samples x 8 tokens, transformers engine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import QWEN2_0_5B, TINY, build_model_dir, describe_real_model, env_info, write_json  # noqa: E402

STEP = "6_pipeline"


def prompts_file(path: Path, rows: int = 500) -> Path:
    """One-digit sums as a jsonl prompt source (no dataset package needed on the GPU machine)."""
    with path.open("w") as f:
        for i in range(rows):
            a, b = i % 10, (i * 7) % 10
            f.write(json.dumps({"problem": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n")
    return path


def up_config(args, model_dir: str, engine: str, prompts: Path, cuda: bool) -> dict[str, Any]:
    sampling = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": args.max_new_tokens}
    gen: dict[str, Any] = {
        "model": model_dir,
        "engine": engine,
        "batch_prompts": args.batch_groups,
        "batch_wait_ms": 50,
        "max_batch_sequences": args.batch_groups * args.n,
        "sampling": sampling,
        "chat": {"few_shot": [], "system_prompt": None},
        "weights": {"poll_interval_s": 0.1},
    }
    if engine == "vllm":
        gen.update(vllm_gpu_memory_utilization=args.gpu_mem, vllm_max_model_len=1024)
    return {
        "up": {"generators": 1, "start_verifier": False, "broker": "noida", "stop_timeout_s": 60},
        "kafka": {"topic_prefix": "gpucheck", "session_timeout_ms": 6000},
        "generator": gen,
        "learner": {
            "model": model_dir,
            "algo": {"preset": "reinforce", "kl_coef": 0.0, "entropy_coef": 0.0, "max_staleness": 1},
            "optim": {"lr": 1.0e-6, "micro_batch_size": args.micro_batch},
            "batch_groups": args.batch_groups,
            "n": args.n,
            "max_steps": args.steps,
            "sampling": sampling,
            "checkpoint": {"every": 1000},
            "tracking": {"sinks": []},  # metrics.jsonl only (tensorboardX is not on the GPU image)
            "prompts": {"kind": "jsonl", "path": str(prompts)},
        },
    }


def run_up(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """Run ``winnow up`` to its end; past ``timeout`` stop it with SIGTERM, which makes it stop its services
    (they run in their own sessions: a SIGKILL to ``up`` would leave them running), then SIGKILL."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            code = None
        log.seek(0)
        return code, log.read()


def summarize(rows: list[dict]) -> dict[str, Any]:
    steady = rows[1:]
    wall = rows[-1]["time"] - rows[0]["time"]
    out: dict[str, Any] = {"steps": len(rows), "steady_steps": len(steady), "steady_wall_s": round(wall, 2)}
    if steady and wall > 0:
        out["steps_per_min"] = round(60 * len(steady) / wall, 2)
        out["trained_tokens_per_s"] = round(sum(r.get("tokens", 0.0) for r in steady) / wall, 1)
        for k in ("wait_s", "compute_s", "publish_s"):
            out[f"mean_{k}"] = round(statistics.fmean(r.get(k, 0.0) for r in steady), 3)
        out["staleness_mean"] = round(statistics.fmean(r.get("staleness_mean", 0.0) for r in steady), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check_out")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--model", default=None)
    p.add_argument("--engine", choices=("auto", "vllm", "transformers"), default="auto")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-groups", type=int, default=8)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--gpu-mem", type=float, default=0.3, help="vLLM's share of GPU memory")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for the whole run")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    if args.dry_run:
        args.steps, args.batch_groups, args.n, args.max_new_tokens, args.micro_batch = 3, 2, 2, 8, 4
    result: dict[str, Any] = {"step": STEP, "env": env_info(), "dry_run": args.dry_run, "args": vars(args)}
    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    engine = args.engine
    if engine == "auto":
        try:
            import vllm  # noqa: F401

            engine = "vllm"
        except Exception as e:
            engine = "transformers"
            result["vllm_unavailable"] = f"{type(e).__name__}: {e}"
    result["engine"] = engine
    run_dir = None
    try:
        work = Path(args.workdir or tempfile.mkdtemp(prefix="winnow-gpu-up-"))
        work.mkdir(parents=True, exist_ok=True)
        if args.model:
            model_dir, result["model"] = args.model, describe_real_model(args.model)
        else:
            model_dir = str(work / "model")
            result["model"] = build_model_dir(model_dir, TINY if args.dry_run else QWEN2_0_5B,
                                              init_device="cuda" if cuda else "cpu")
        data = up_config(args, model_dir, engine, prompts_file(work / "prompts.jsonl"), cuda)
        if not cuda:
            data["generator"]["device"] = data["learner"]["device"] = "cpu"
        result["config"] = data
        cfg = work / "up.yaml"
        cfg.write_text(json.dumps(data))  # JSON is YAML
        run_dir = work / "run"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        t0 = time.perf_counter()
        code, output = run_up([sys.executable, "-m", "winnow", "up", "--config", str(cfg), "--run-dir", str(run_dir)],
                              env, args.timeout)
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        result["returncode"] = code
        result["up_output_tail"] = output[-3000:]
        rows = []
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists():
            rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        rows = sorted((r for r in rows if "loss" in r), key=lambda r: r["version"])
        if code != 0 or len(rows) < 2:
            raise RuntimeError(f"winnow up exited {code} with {len(rows)} steps")
        result["summary"] = summarize(rows)
        result["first_step_s_after_start"] = round(rows[0]["time"] - (time.time() - result["wall_s"]), 1)
        result["status"] = "ok"
        result["pass"] = {"reached_max_steps": len(rows) >= args.steps}
    except Exception as e:
        result.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
        if run_dir is not None and (run_dir / "logs").is_dir():
            result["log_tails"] = {f.name: f.read_text()[-2000:] for f in sorted((run_dir / "logs").iterdir())}
        write_json(args.out, STEP, result)
        return 1
    write_json(args.out, STEP, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
