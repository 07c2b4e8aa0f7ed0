"""``winnow plot RUN_DIR [RUN_DIR...] -o out.png``: training curves of one or more runs, side by side.

Reads each run's ``metrics.jsonl`` (one row per learner step, plus the step-0 evaluation) and draws,
one line per run, against the step (left column) and against wall-clock minutes since the run's
first row (right column):

- reward: ``reward_mean`` (mean reward of the step's valid samples),
- held-out accuracy: ``eval_accuracy`` (and ``eval_mean_at_k`` dashed, when logged),
- entropy: ``entropy`` (mean token entropy of the policy, nats),
- KL to the reference: ``kl``,
- mismatch: ``mismatch_kl`` (sampler vs learner log-probs on the tokens sampled at the learner's own
  version; steps without such tokens are not drawn),
- staleness: ``staleness_mean`` (versions between the sampling policy and the trained one),
- throughput: response tokens of the batch per second of the step's wall time,
  ``tokens_total / (wait_s + compute_s + publish_s + checkpoint_s)`` (``tokens``, the trained ones, if
  the row has no ``tokens_total``).

Needs matplotlib (installed with winnow's cpu extra).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from winnow.config import ConfigError

PANELS: list[tuple[str, str]] = [
    ("reward", "reward (mean over valid samples)"),
    ("eval_accuracy", "held-out accuracy"),
    ("entropy", "entropy (nats/token)"),
    ("kl", "KL to reference"),
    ("mismatch_kl", "sampler/learner mismatch KL"),
    ("staleness", "staleness (versions)"),
    ("throughput", "response tokens/s (wall)"),
]


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """Rows of ``RUN/metrics.jsonl`` (or of the file given), torn lines skipped."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"no metrics at {path} (the learner writes <run_dir>/metrics.jsonl)")
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "version" in row:
            rows.append(row)
    return rows


def series(rows: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """Per panel: ``(steps, minutes since the first row, values)`` over the rows that have it.

    A resumed run repeats versions: the last row of each version wins.
    """
    by_version: dict[int, dict[str, Any]] = {}
    for r in rows:
        by_version[int(r["version"])] = {**by_version.get(int(r["version"]), {}), **r}
    ordered = [by_version[v] for v in sorted(by_version)]
    t0 = min((r["time"] for r in ordered if "time" in r), default=0.0)
    out: dict[str, tuple[list[float], list[float], list[float]]] = {}

    def value(r: dict[str, Any], key: str) -> float | None:
        if key == "reward":
            key = "reward_mean"
        if key == "staleness":
            key = "staleness_mean"
        if key == "throughput":
            wall = sum(float(r.get(k, 0.0)) for k in ("wait_s", "compute_s", "publish_s", "checkpoint_s"))
            tokens = r.get("tokens_total", r.get("tokens"))
            return float(tokens) / wall if tokens is not None and wall > 0 else None
        if key == "mismatch_kl" and r.get("mismatch_tokens") == 0:
            return None  # no token of the step was sampled at the learner's version: not measured
        v = r.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    for key, _ in [*PANELS, ("eval_mean_at_k", "")]:
        steps, minutes, values = [], [], []
        for r in ordered:
            v = value(r, key)
            if v is None:
                continue
            steps.append(float(r["version"]))
            minutes.append((float(r.get("time", t0)) - t0) / 60.0)
            values.append(v)
        out[key] = (steps, minutes, values)
    return out


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (1 = unchanged)."""
    if window <= 1:
        return list(values)
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_runs(runs: list[str], output: str | Path, *, labels: list[str] | None = None, window: int = 1) -> Path:
    """Draw the panels for ``runs`` into ``output`` (``window``: moving average in steps); returns the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("winnow plot needs matplotlib (pip install matplotlib)") from None
    labels = list(labels or [])
    if labels and len(labels) != len(runs):
        raise ConfigError(f"--label given {len(labels)} times for {len(runs)} runs")
    data = [series(read_metrics(r)) for r in runs]
    names = labels or [Path(r).resolve().name if Path(r).is_dir() else Path(r).resolve().parent.name for r in runs]
    fig, axes = plt.subplots(len(PANELS), 2, figsize=(12, 2.4 * len(PANELS)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2", "C3"])
    for row, (key, title) in enumerate(PANELS):
        for col, xlabel in enumerate(("step", "wall time (min)")):
            ax = axes[row][col]
            for i, (d, name) in enumerate(zip(data, names, strict=True)):
                color = colors[i % len(colors)]
                steps, minutes, values = d[key]
                xs = steps if col == 0 else minutes
                if values:
                    ax.plot(xs, smooth(values, window) if key != "eval_accuracy" else values,
                            marker="o" if len(values) < 30 else None, ms=3, color=color, label=name)
                if key == "eval_accuracy" and d["eval_mean_at_k"][2]:
                    s2, m2, v2 = d["eval_mean_at_k"]
                    ax.plot(s2 if col == 0 else m2, v2, ls="--", color=color, label=f"{name} mean@k")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if not ax.lines:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    handles, texts = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, texts, loc="upper center", ncol=min(4, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
