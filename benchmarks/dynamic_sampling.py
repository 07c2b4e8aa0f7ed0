"""Reinforce-Rej with and without dynamic sampling (issue 25): trained groups per step, held-out accuracy against
wall time, prompts released per trained group, on the default task and on a harder one.

    python benchmarks/dynamic_sampling.py --work runs/dynamic_sampling --results docs/results/dynamic_sampling \
        [--steps 12] [--report-only]

Each run is a plain ``winnow up --preset reinforce_rej`` (SmolLM2-135M, the default's 8 prompts x 8 samples, held-out
greedy accuracy on 32 set-aside problems every ``--eval-every`` steps) into ``WORK/<task>-<on|off>/``, with
``learner.algo.dynamic_sampling`` true or false; a finished run is skipped, so a stopped session resumes the suite
run by run. Tasks: ``default`` (two-digit sums, the default's data), ``hard`` (reasoning-gym chain_sum, two
two-digit terms: the base model samples a right answer ~7% of the time, docs/results/sums2d). Each run's
``metrics.jsonl``, ``ledger.jsonl`` and ``config/`` are copied to ``RESULTS/<run>/`` (the weights and checkpoints
stay in WORK), and the report (``RESULTS/report.md``) is rebuilt from them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

TASKS = {
    "default": [],
    "hard": ["learner.prompts.name=chain_sum", "learner.prompts.size=5000", "learner.prompts.seed=42",
             "learner.prompts.holdout=32",
             'learner.prompts.config={"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2}'],
}


def run_one(work: Path, results: Path, task: str, dynamic: bool, steps: int, eval_every: int) -> Path:
    run = work / f"{task}-{'on' if dynamic else 'off'}"
    if (run / "finished.json").is_file():
        return _keep(run, results)
    cmd = [sys.executable, "-m", "winnow", "up", "--preset", "reinforce_rej", "--steps", str(steps),
           "--set", f"learner.algo.dynamic_sampling={str(dynamic).lower()}",
           "--set", f"learner.eval.every={eval_every}"]
    for override in TASKS[task]:
        cmd += ["--set", override]
    cmd += ["--resume", "--run-dir", str(run)] if (run / "config" / "up.yaml").is_file() else ["--run-dir", str(run)]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
    return _keep(run, results)


def _keep(run: Path, results: Path) -> Path:
    import shutil

    out = results / run.name
    (out / "config").mkdir(parents=True, exist_ok=True)
    for name in ("metrics.jsonl", "ledger.jsonl", "finished.json"):
        if (run / name).is_file():
            shutil.copy2(run / name, out / name)
    for cfg in (run / "config").glob("*.yaml"):
        shutil.copy2(cfg, out / "config" / cfg.name)
    return out


def summarize(run: Path) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r for r in rows if r.get("version", 0) > 0 and "loss" in r]
    evals = [(r["version"], r["time"], r["eval_accuracy"]) for r in rows if "eval_accuracy" in r]
    t0 = evals[0][1] if evals else steps[0]["time"]
    ledger = [json.loads(x) for x in (run / "ledger.jsonl").read_text().splitlines() if x.strip()]
    outcomes: dict[str, int] = {}
    for r in ledger:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    trained = [r.get("batch_outcomes", {}).get("trained", 0) for r in steps]
    return {
        "run": run.name, "steps": len(steps), "trained_groups_per_step": sum(trained) / max(1, len(trained)),
        "trained_groups_min": min(trained) if trained else 0, "wall_s": steps[-1]["time"] - t0 if steps else 0.0,
        "prompts_per_trained_group": steps[-1].get("prompts_per_trained_group") if steps else None,
        "ledger": outcomes, "eval": [(v, round(t - t0), a) for v, t, a in evals],
        "reward_mean": sum(r.get("reward_mean", 0.0) for r in steps) / max(1, len(steps)),
    }


def report(results: Path) -> str:
    lines = ["| run | steps | trained groups / step (min) | prompts / trained group | wall s | held-out acc (version, s) |",
             "|---|---|---|---|---|---|"]
    for run in sorted(p for p in results.iterdir() if (p / "metrics.jsonl").is_file()):
        s = summarize(run)
        evals = ", ".join(f"v{v} {a:.3f} @{t}s" for v, t, a in s["eval"])
        ppg = s["prompts_per_trained_group"]
        lines.append(f"| {s['run']} | {s['steps']} | {s['trained_groups_per_step']:.2f} ({s['trained_groups_min']}) | "
                     f"{ppg:.2f} | {s['wall_s']:.0f} | {evals} |" if ppg is not None else f"| {s['run']} | - |")
        (run / "summary.json").write_text(json.dumps(s, indent=1))
    text = "\n".join(lines) + "\n"
    (results / "report.md").write_text(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="docs/results/dynamic_sampling")
    p.add_argument("--work", default="runs/dynamic_sampling")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--tasks", default="default,hard")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for task in args.tasks.split(","):
            for dynamic in (True, False):
                run_one(Path(args.work), results, task, dynamic, args.steps, args.eval_every)
    print(report(results))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
