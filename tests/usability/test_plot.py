"""winnow plot: the series drawn are the metrics.jsonl values (hand-checked), one line per run."""

from __future__ import annotations

import json

import pytest

from winnow.cli import main
from winnow.config import ConfigError
from winnow.plot import PANELS, plot_runs, series, smooth


def _run(tmp_path, name, rows):
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn')
    return str(d)


ROWS = [
    {"version": 0, "time": 1000.0, "eval_accuracy": 0.25},
    {"version": 1, "time": 1060.0, "reward_mean": 0.5, "entropy": 1.0, "kl": 0.0, "mismatch_kl": 0.01,
     "staleness_mean": 0.0, "tokens": 300.0, "wait_s": 1.0, "compute_s": 2.0, "publish_s": 0.5,
     "checkpoint_s": 0.5},
    {"version": 2, "time": 1120.0, "reward_mean": 0.75, "entropy": 0.5, "kl": 0.02, "mismatch_kl": 0.02,
     "staleness_mean": 1.0, "tokens": 600.0, "wait_s": 2.0, "compute_s": 2.0, "eval_accuracy": 0.5,
     "eval_mean_at_k": 0.375},
]


def test_series_values():
    s = series(ROWS)
    assert s["reward"] == ([1.0, 2.0], [1.0, 2.0], [0.5, 0.75])  # minutes: (1060 - 1000) / 60 = 1
    assert s["eval_accuracy"] == ([0.0, 2.0], [0.0, 2.0], [0.25, 0.5])
    # throughput: 300 / (1 + 2 + 0.5 + 0.5) = 75; 600 / (2 + 2) = 150
    assert s["throughput"][2] == [75.0, 150.0]
    assert s["staleness"][2] == [0.0, 1.0] and s["eval_mean_at_k"][2] == [0.375]
    # tokens_total (all response tokens) is preferred; mismatch without measured tokens is not drawn
    rows = [{**ROWS[1], "tokens_total": 800.0, "mismatch_tokens": 0}, {**ROWS[2], "mismatch_tokens": 5}]
    t = series(rows)
    assert t["throughput"][2] == [200.0, 150.0]  # 800 / 4 = 200
    assert t["mismatch_kl"] == ([2.0], [1.0], [0.02])
    # a resumed run repeats a version: the last row wins
    assert series([*ROWS, {**ROWS[2], "reward_mean": 1.0}])["reward"][2] == [0.5, 1.0]


def test_smooth():
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert smooth([1.0, 2.0], 1) == [1.0, 2.0]


def test_plot_two_runs(tmp_path, capsys):
    import matplotlib.image

    a = _run(tmp_path, "raft", ROWS)
    b = _run(tmp_path, "grpo", [{**r, "reward_mean": 0.1} for r in ROWS])
    out = tmp_path / "cmp.png"
    assert main(["plot", a, b, "-o", str(out), "--smooth", "2"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    img = matplotlib.image.imread(out)
    assert img.shape[0] > img.shape[1] > 500  # 7 panel rows x 2 columns

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    captured = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, *args, **kw):
        captured["fig"] = fig
        return real_savefig(fig, *args, **kw)

    plt.Figure.savefig = spy
    try:
        plot_runs([a, b], tmp_path / "x.png", labels=["RAFT", "GRPO"])
    finally:
        plt.Figure.savefig = real_savefig
    axes = captured["fig"].axes
    assert len(axes) == 2 * len(PANELS)
    reward_ax = axes[0]
    assert [ln.get_label() for ln in reward_ax.lines] == ["RAFT", "GRPO"]
    assert list(reward_ax.lines[0].get_ydata()) == [0.5, 0.75]


def test_plot_errors(tmp_path):
    with pytest.raises(ConfigError, match="no metrics"):
        plot_runs([str(tmp_path)], tmp_path / "x.png")
    a = _run(tmp_path, "a", ROWS)
    with pytest.raises(ConfigError, match="--label"):
        plot_runs([a], tmp_path / "x.png", labels=["x", "y"])
