"""`winnow up` without its services: the default config, progress lines, the entropy notice, the run
directory's lock and error messages, and the pure comparison functions of benchmarks/learning.py."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from winnow.config import ConfigError
from winnow.up import Pipeline, entropy_collapse_notice, format_progress, resolve, summary

ROOT = Path(__file__).resolve().parent.parent


def _configs(data: dict, tmp_path: Path) -> dict:
    p = Pipeline(data, tmp_path, resume=False)
    p.ports = {k: 1 for k in ("verifier", "verifier_metrics", "learner_metrics")}
    configs = p.component_configs("127.0.0.1:9092", None)
    p.validate(configs)  # raises ConfigError naming the field
    return configs


def _resolved(overrides: list[str], tmp_path: Path) -> dict:
    """Every service's config as ``winnow up`` runs it (the shared sections merged in), as dumped dicts."""
    p = Pipeline(resolve(None, overrides, tmp_path), tmp_path, resume=False)
    p.ports = {k: 1 for k in ("verifier", "verifier_metrics", "learner_metrics", "generator_metrics")}
    return p.resolved("127.0.0.1:9092")


def test_default_config_evaluates_held_out_and_uses_the_fast_layout(tmp_path):
    learner = _resolved([], tmp_path)["learner"]
    assert learner["eval"]["every"] > 0 and learner["prompts"]["holdout"] >= learner["eval"]["prompts"]
    assert learner["optim"]["share_prompt"] is True
    assert learner["checkpoint"]["every"] > 1
    assert learner["weights"]["dtype"] == "bfloat16"  # numerics.precision is bf16: publish what generators hold


def test_weights_dtype_follows_precision_unless_set(tmp_path):
    assert _resolved(["numerics.precision=float32"], tmp_path)["learner"]["weights"]["dtype"] == "float32"
    assert _resolved(["numerics.precision=auto"], tmp_path)["learner"]["weights"]["dtype"] == "auto"  # as trained
    learner = _resolved(["learner.weights.dtype=float32"], tmp_path)["learner"]
    assert learner["weights"]["dtype"] == "float32"


def test_another_prompt_source_turns_the_default_eval_off_unless_asked(tmp_path):
    other = ["learner.prompts.kind=reasoning_gym", "learner.prompts.name=chain_sum"]
    learner = _configs(resolve(None, other, tmp_path), tmp_path)["learner"]
    assert learner["eval"]["every"] == 0 and "holdout" not in learner["prompts"]
    learner = _configs(resolve(None, [*other, "learner.prompts.holdout=8", "learner.eval.every=2"], tmp_path),
                       tmp_path)["learner"]
    assert learner["eval"]["every"] == 2


def test_progress_line_shows_held_out_accuracy_and_empty_steps():
    row = {"version": 5, "loss": 0.1, "reward_mean": 0.5, "eval_accuracy": 0.625, "entropy": 0.2, "skipped": 0.0}
    line = format_progress(row)
    assert line.startswith("step    5 | reward 0.500 | held-out acc 0.625 |")
    assert "trained nothing" not in line
    assert "trained nothing" in format_progress({**row, "skipped": 1.0})
    assert format_progress({"version": 0, "eval_accuracy": 0.25}) == "step    0 | initial model | held-out acc 0.250"


def test_entropy_collapse_notice_below_a_tenth_of_the_first_step():
    first = {"entropy": 1.0}
    assert entropy_collapse_notice(first, {"entropy": 0.11}) is None  # 0.11 >= 0.1 * 1.0
    notice = entropy_collapse_notice(first, {"entropy": 0.05})
    assert notice and "1.000 to 0.050" in notice and "--preset" in notice and "reward_wrong" in notice
    assert entropy_collapse_notice({"entropy": 0.0}, {"entropy": 0.0}) is None


def test_summary_names_the_held_out_accuracy(tmp_path):
    evals = [{"version": 0, "eval_accuracy": 0.25}, {"version": 20, "eval_accuracy": 0.75}]
    text = summary({"reward_mean": 0.3, "entropy": 1.0}, {"version": 20, "reward_mean": 0.6, "entropy": 0.5},
                   tmp_path, evals)
    assert "held-out accuracy 0.250 (v0) -> 0.750 (v20)" in text


@pytest.fixture(scope="module")
def learning():
    spec = importlib.util.spec_from_file_location("bench_learning", ROOT / "benchmarks" / "learning.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_learning_benchmark_ratios(learning):
    loop = {"evals": [{"version": 0, "wall_s": 0, "accuracy": 0.4}, {"version": 2, "wall_s": 100, "accuracy": 0.5},
                      {"version": 4, "wall_s": 200, "accuracy": 0.7}],
            "rows": [{"version": v, "wall_s": 50.0 * v} for v in (1, 2, 3, 4)]}
    win = {"evals": [{"version": 0, "wall_s": 0, "accuracy": 0.4}, {"version": 2, "wall_s": 70, "accuracy": 0.6},
                     {"version": 4, "wall_s": 120, "accuracy": 0.7}],
           "rows": [{"version": 1, "wall_s": 45.0}, {"version": 2, "wall_s": 70.0}, {"version": 3, "wall_s": 95.0},
                    {"version": 4, "wall_s": 120.0}]}
    cmp = learning.compare({"loop": loop, "winnow": win}, None)
    assert cmp["target"] == 0.7  # the loop's final accuracy
    assert cmp["time_to_target_s"] == {"loop": 200, "winnow": 120}
    assert cmp["time_to_target_ratio"] == pytest.approx(0.6)  # 120 / 200
    assert cmp["equal_wall_s"] == 120  # the shorter run's end
    assert cmp["accuracy_at_equal_wall"] == {"loop": 0.5, "winnow": 0.7}  # loop's last eval by 120 s: v2
    assert cmp["accuracy_at_equal_wall_ratio"] == pytest.approx(1.4)
    # from the first step: loop (200 - 50) = 150 s, winnow (120 - 45) = 75 s
    assert cmp["time_to_target_from_first_step_ratio"] == pytest.approx(0.5)
    assert cmp["step_s"] == {"loop": pytest.approx(50.0), "winnow": pytest.approx(25.0)}  # (200-50)/3, (120-45)/3
    assert learning.time_to(win["evals"], 0.9) is None


def test_learning_benchmark_repetitions_summary(learning):
    """Medians and spread over paired repetitions; a repetition that never reached its target counts as None
    in its values and is left out of the median (3 reps: ratios 0.6, None, 0.4 -> median 0.5)."""
    def rep(seed, t_loop, t_win, step_loop, step_win):
        return {"args": {"seed": seed},
                "loop": {"rows": [{"wall_s": 400.0}], "evals": [{"accuracy": 0.8}]},
                "winnow": {"rows": [{"wall_s": 200.0 + seed}], "evals": [{"accuracy": 0.9}]},
                "comparison": {"target": 0.8, "time_to_target_s": {"loop": t_loop, "winnow": t_win},
                               "time_to_target_ratio": t_win / t_loop if t_win is not None else None,
                               "step_s": {"loop": step_loop, "winnow": step_win},
                               "step_s_ratio": step_win / step_loop}}
    summary = learning.summarize([rep(0, 100.0, 60.0, 20.0, 10.0), rep(1, 200.0, None, 20.0, 12.0),
                                  rep(2, 150.0, 60.0, 25.0, 10.0)])
    f = summary["figures"]
    assert summary["reps"] == 3 and summary["seeds"] == [0, 1, 2]
    assert f["time_to_target_ratio"]["median"] == pytest.approx(0.5)
    assert f["time_to_target_ratio"]["values"] == [pytest.approx(0.6), None, pytest.approx(0.4)]
    assert f["step_s_ratio"] == {"median": pytest.approx(0.5), "min": pytest.approx(0.4), "max": pytest.approx(0.6),
                                 "values": [pytest.approx(0.5), pytest.approx(0.6), pytest.approx(0.4)]}
    assert f["wall_ratio"]["median"] == pytest.approx(201 / 400)
    assert "median [min, max]" in learning.report_reps(summary)


def test_learning_benchmark_data_is_disjoint_and_reproducible(learning, tmp_path):
    path, held = learning.make_data(tmp_path, size=50, eval_prompts=8, seed=3)
    train = path.read_text().splitlines()
    assert len(train) == 50 and len(held) == 8
    held_q = {h["question"] for h in held}
    assert not held_q & {json.loads(t)["question"] for t in train}
    (tmp_path / "again").mkdir()
    again, held_again = learning.make_data(tmp_path / "again", size=50, eval_prompts=8, seed=3)
    assert held_again == held and again.read_text() == path.read_text()


# ---- issue 22: the run directory is locked; bad run dirs and saved configs are one-line errors

@pytest.fixture
def no_services(monkeypatch):
    """Fail, instead of starting a broker and the services, if `winnow up` gets past its checks."""

    def refuse(*args, **kwargs):
        raise AssertionError("winnow up got past its checks and would start the pipeline")

    monkeypatch.setattr(Pipeline, "_prepare_model", refuse)
    monkeypatch.setattr(Pipeline, "spawn", refuse)


UP = """
import sys, time
from winnow.cli import main
from winnow.up import Pipeline

def hold(self):  # stands for the model conversion and the services: the lock is held meanwhile
    print("holding", flush=True)
    time.sleep(600)

def refuse(self):
    raise SystemExit("winnow up got past the lock and would start a second pipeline")

Pipeline._prepare_model = hold if sys.argv[1] == "hold" else refuse
sys.exit(main(["up", "--run-dir", sys.argv[2], "--steps", "1"]))
"""


def test_a_second_up_on_a_locked_run_dir_exits_at_once_naming_dir_and_holder(tmp_path):
    import subprocess

    run_dir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", UP, "hold", str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "holding"
        # before: the second `winnow up` started a second learner on the same directory
        second = subprocess.run([sys.executable, "-c", UP, "second", str(run_dir)], capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stderr
        assert second.stderr == (f"winnow: run directory {run_dir} is in use by another winnow up (pid {first.pid}, "
                                 "or the services it started): stop it first, or pass another --run-dir\n")
    finally:
        first.kill()
        first.wait()
    from winnow.up import lock_run_dir

    lock = lock_run_dir(run_dir)  # the holder's death released it
    assert (run_dir / ".lock").read_text() == f"{os.getpid()}\n"
    lock.close()


def test_run_dir_that_is_a_file_is_a_one_line_error(tmp_path, capsys, no_services):
    from winnow.cli import main

    f = tmp_path / "run"
    f.write_text("not a directory")
    assert main(["up", "--run-dir", str(f), "--steps", "1"]) == 2  # was a FileExistsError traceback
    err = capsys.readouterr().err
    assert err == f"winnow: run directory {f} is a file, not a directory: move it away or pass another --run-dir\n"


def test_unwritable_run_dir_is_a_one_line_error(tmp_path, capsys, no_services):
    from winnow.cli import main

    if os.geteuid() == 0:  # root writes through file modes; sysfs refuses even root
        run_dir = Path("/sys/winnow-test-run")
        if not Path("/sys").is_dir():
            pytest.skip("no /sys to stand for a read-only directory")
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        run_dir = tmp_path / "ro" / "run"
    assert main(["up", "--run-dir", str(run_dir), "--steps", "1"]) == 2  # was a PermissionError traceback
    err = capsys.readouterr().err
    assert err.startswith(f"winnow: run directory {run_dir} cannot be written (")
    assert err.endswith("make it writable, or pass another --run-dir\n") and err.count("\n") == 1


def test_resume_with_a_malformed_up_yaml_is_a_one_line_error(tmp_path, capsys, no_services):
    from winnow.cli import main

    saved = tmp_path / "config" / "up.yaml"
    saved.parent.mkdir(parents=True)
    saved.write_text("learner:\n  max_steps: 3\n garbage: [\n")
    assert main(["up", "--resume", "--run-dir", str(tmp_path)]) == 2  # was a yaml.ParserError traceback
    err = capsys.readouterr().err
    assert err.startswith(f"winnow: --resume: config file {saved} is not valid YAML: ") and err.count("\n") == 1
    assert f"Restore {saved}" in err and "without --resume" in err


def test_resume_checks_sections_and_environment(tmp_path, monkeypatch, capsys, no_services):
    import yaml

    from winnow.cli import main

    saved = tmp_path / "config" / "up.yaml"
    saved.parent.mkdir(parents=True)
    saved.write_text(yaml.safe_dump(resolve(None, [], tmp_path)))
    # before: a misspelled section was ignored on --resume (the run went on without max_steps)
    assert main(["up", "--resume", "--run-dir", str(tmp_path), "--set", "lerner.max_steps=3"]) == 2
    assert "unknown top-level section(s) ['lerner']" in capsys.readouterr().err
    monkeypatch.setenv("WINNOW_LERNER_MAX_STEPS", "3")
    assert main(["up", "--resume", "--run-dir", str(tmp_path)]) == 2
    assert "WINNOW_LERNER_MAX_STEPS: no config section 'lerner' (did you mean learner" in capsys.readouterr().err


def test_torn_metrics_line_does_not_swallow_the_next_row(tmp_path):
    from winnow.learner.metrics import append_jsonl

    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"version": 1, "loss": 0.5})
    with path.open("a") as f:
        f.write('{"version": 2, "lo')  # the learner was killed mid-write
    append_jsonl(path, {"version": 2, "loss": 0.25})
    append_jsonl(path, {"version": 3, "loss": 0.125})
    lines = path.read_text().splitlines()
    assert lines[1] == '{"version": 2, "lo'  # the torn row stays one bad line
    assert [json.loads(x)["version"] for x in lines[:1] + lines[2:]] == [1, 2, 3]  # before: row 2 was lost in it


def test_progress_skips_a_torn_metrics_line(tmp_path, capsys):
    from winnow.learner.metrics import append_jsonl

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("")

    class Learner:  # stands for the learner process: writes a torn row and a good one, then exits 0
        returncode = None

        def poll(self):
            if self.returncode is None:
                metrics.write_text('{"version": 1, "lo')
                append_jsonl(metrics, {"version": 1, "loss": 0.5, "reward_mean": 0.25, "entropy": 1.0})
                self.returncode = 0
                return None
            return 0

    pipeline = Pipeline({}, tmp_path, resume=False)
    pipeline.procs = {"learner": Learner()}
    assert pipeline.watch() == 0  # before: a JSONDecodeError traceback from the torn line
    assert "step    1 | reward 0.250" in capsys.readouterr().out


def test_log_tail_shown_on_a_crash_escapes_terminal_sequences(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "learner.log").write_text("ERROR quarantined prompt '\x1b]0;pwned\x07\x1b[2J'\nTraceback\n")
    tail = Pipeline({}, tmp_path, resume=False)._tail_hint("learner")
    assert tail == "    ERROR quarantined prompt '\\x1b]0;pwned\\x07\\x1b[2J'\n    Traceback"


# -- issue 28: print-config, preset defaults, ports, errors that point at the fix, next steps ---------------


def _print_config(capsys, *argv: str) -> dict:
    from winnow.cli import main

    assert main(["up", "--print-config", *argv]) == 0
    import yaml

    return yaml.safe_load(capsys.readouterr().out)


def test_a_preset_under_up_gets_its_own_defaults_unless_the_user_sets_them(tmp_path, capsys):
    from winnow.learner.config import LearnerConfig

    def algo(*overrides):
        return LearnerConfig.model_validate(_resolved(list(overrides), tmp_path)["learner"]).algo

    assert algo().preset == "raft" and algo().kl_coef == 0.0  # the default's own choice for raft
    assert algo("learner.algo.preset=grpo").kl_coef == 0.001  # grpo's documented default, not raft's 0
    assert algo("learner.algo.preset=grpo", "learner.algo.kl_coef=0.01").kl_coef == 0.01
    shown = _print_config(capsys, "--preset", "grpo")  # what --print-config shows is what runs
    assert shown["learner"]["algo"]["preset"] == "grpo" and shown["learner"]["algo"]["kl_coef"] == 0.001


def test_print_config_shows_every_service_validated(capsys):
    shown = _print_config(capsys, "--set", "up.generators=2", "--set", "learner.optim.schedule=cosine")
    assert list(shown) == ["up", "verifier", "generator-0", "generator-1", "learner"]
    assert shown["generator-1"]["generator_id"] == "gen-1"
    assert shown["learner"]["optim"]["total_steps"] == shown["learner"]["max_steps"] == 20  # defaults filled in
    assert shown["learner"]["optim"]["lr"] == 1e-5 and shown["learner"]["eval"]["every"] == 5
    assert shown["generator-0"]["verifier"]["default_endpoint"].endswith(f":{shown['verifier']['port']}")


def test_configured_ports_are_kept_and_unset_ones_are_the_defaults_when_free():
    from winnow.config import ConfigError
    from winnow.up import assign_ports

    taken = {9402, 50051}
    free = iter([40000, 40010])
    ports = assign_ports({"learner": {"metrics_port": 9500}, "generator": {"metrics_port": 0}}, "127.0.0.1", 1,
                         is_free=lambda h, p: p not in taken, pick=lambda h: next(free))
    # learner: set -> kept; verifier: default 50051 taken -> a free one; the others: their defaults
    assert ports == {"verifier": 40000, "verifier_metrics": 9101, "generator_metrics": 9401, "learner_metrics": 9500}
    # two generators at the defaults would reach 9402, the learner's default: they move to a free pair
    ports = assign_ports({}, "127.0.0.1", 2, is_free=lambda h, p: True, pick=lambda h: 40000)
    assert ports["learner_metrics"] == 9402 and ports["generator_metrics"] == 40000
    with pytest.raises(ConfigError, match="learner.metrics_port: port 9402 .* in use"):
        assign_ports({"learner": {"metrics_port": 9402}}, "127.0.0.1", is_free=lambda h, p: p not in taken)


def test_up_keeps_a_configured_metrics_port(tmp_path, capsys):
    from winnow.brokers import free_port

    port = free_port()
    shown = _print_config(capsys, "--set", f"learner.metrics_port={port}", "--set", f"generator.metrics_port={port + 1}")
    assert shown["learner"]["metrics_port"] == port  # it used to be replaced by a random port
    assert shown["generator-0"]["metrics_port"] == port + 1
    p = Pipeline(resolve(None, [f"learner.metrics_port={port}"], tmp_path), tmp_path, resume=False)
    from winnow.up import assign_ports

    p.ports = assign_ports(p.data, "127.0.0.1")
    assert p.component_configs("127.0.0.1:9092", None)["learner"]["metrics_port"] == port


def test_shipped_prometheus_config_scrapes_the_default_ports():
    import yaml

    from winnow.up import PORTS

    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    for name in ("verifier_metrics", "generator_metrics", "learner_metrics"):
        assert f"127.0.0.1:{PORTS[name][2]}" in targets


def test_a_prompt_path_without_kind_names_kind(capsys):
    from winnow.cli import main

    assert main(["up", "--print-config", "--set", "learner.prompts.path=train.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "prompts.path needs prompts.kind" in err and "--set learner.prompts.kind=jsonl" in err
    assert "Extra inputs" not in err


def test_a_jsonl_path_that_is_a_folder_suggests_kind_hf(tmp_path, capsys):
    from winnow.cli import main

    (tmp_path / "ds").mkdir()
    assert main(["up", "--print-config", "--set", "learner.prompts.kind=jsonl",
                 "--set", f"learner.prompts.path={tmp_path / 'ds'}"]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "kind: hf" in err and len(err.splitlines()) == 1
    assert main(["up", "--print-config", "--set", "learner.prompts.kind=jsonl",
                 "--set", f"learner.prompts.path={tmp_path / 'nope.jsonl'}"]) == 2
    assert "learner.prompts.path: jsonl prompt file not found" in capsys.readouterr().err


def test_own_prompts_without_holdout_say_evaluation_is_off(tmp_path, capsys):
    notes: list[str] = []
    resolve(None, ["learner.prompts.kind=reasoning_gym", "learner.prompts.name=chain_sum"], tmp_path, notes)
    assert len(notes) == 1 and "NO held-out evaluation" in notes[0] and "holdout" in notes[0]
    notes.clear()
    resolve(None, [], tmp_path, notes)
    assert notes == []
    from winnow.cli import main

    assert main(["up", "--print-config", "--set", "learner.prompts.name=chain_sum"]) == 0  # shown before anything runs
    assert "# winnow up: NO held-out evaluation" in capsys.readouterr().out
    pipeline = Pipeline(resolve(None, [], tmp_path), tmp_path, resume=False)
    assert pipeline.notes == []  # start() prints each note under its banner


def test_a_service_error_comes_first_and_short(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    config_dump = "2026 INFO winnow.learner: learner config: {" + '"x": 1, ' * 500 + "}"
    (logs / "learner.log").write_text(f"{config_dump}\nwinnow: learner.prompts.path: jsonl prompt file not found: "
                                      "/data/x.jsonl\n")
    message = Pipeline(resolve(None, [], tmp_path), tmp_path, resume=False)._exit_message("learner", 2)
    first = message.splitlines()[0]
    assert first == "winnow up: learner exited with code 2: learner.prompts.path: jsonl prompt file not found: /data/x.jsonl"
    assert max(len(line) for line in message.splitlines()) < 400  # the 3 KB line is cut


def test_the_end_of_a_run_lists_the_next_commands(tmp_path):
    text = summary({"reward_mean": 0.3, "entropy": 1.0}, {"version": 20, "reward_mean": 0.6, "entropy": 0.5}, tmp_path)
    for command in ("winnow samples", "winnow plot", "winnow export", "winnow eval", "tensorboard --logdir"):
        assert f"{command} " in text


def test_progress_line_names_each_eval_set():
    row = {"version": 5, "loss": 0.1, "eval_accuracy": 0.5, "eval_accuracy.gsm8k": 0.5, "eval_accuracy.sums": 0.75}
    assert "| held-out acc gsm8k 0.500, sums 0.750 |" in format_progress(row)


def test_progress_line_shows_cut_off_responses_as_truncated():
    row = {"version": 2, "loss": 0.1, "reward_mean": 0.25, "truncated_fraction": 0.375}
    assert "| reward 0.250 | truncated 0.38 | acceptance" in format_progress(row)
    assert "truncated" not in format_progress({**row, "truncated_fraction": 0.0})


def test_a_lora_learner_starts_vllm_generators_with_lora_support(tmp_path):
    """Adapter-only versions need vLLM's enable_lora: ``up`` turns it on (and a rank room vLLM accepts) for a LoRA
    learner, keeps a user's explicit setting, and leaves a full-weight run and the transformers engine alone."""
    def gen(overrides):
        return _configs(resolve(None, overrides, tmp_path), tmp_path)["generator"]

    g = gen(["learner.lora.rank=100", "generator.engine=vllm"])
    assert g["vllm_enable_lora"] is True and g["vllm_max_lora_rank"] == 128
    assert gen(["learner.lora.rank=8", "generator.engine=vllm"])["vllm_max_lora_rank"] == 64
    with pytest.raises(ConfigError, match="generator.vllm_enable_lora must be true: learner.lora publishes"):
        gen(["learner.lora.rank=8", "generator.engine=vllm", "generator.vllm_enable_lora=false"])
    assert "vllm_enable_lora" not in gen(["generator.engine=vllm"])
    assert "vllm_enable_lora" not in gen(["learner.lora.rank=8"])
