"""``up.verifiers``: custom verifiers that ``winnow up`` starts, health-checks, routes to and stops (issue 27 item 4),
with the example Countdown verifier as a real process on 127.0.0.1; and the held-out evaluation scoring each problem
through its task's route.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from winnow.config import ConfigError, load_config
from winnow.up import Pipeline, UpConfig, resolve

ROOT = Path(__file__).resolve().parent.parent
COUNTDOWN = "{python} " + str(ROOT / "examples/countdown_verifier/server.py") + " --port {port}"


def pipeline(tmp_path: Path, verifiers: list[dict]) -> Pipeline:
    data = resolve(None, [], tmp_path)
    data["up"]["verifiers"] = verifiers
    p = Pipeline(data, tmp_path, resume=False)
    p.ports = {"verifier": 50051, "verifier_metrics": 9101, "generator_metrics": 9401, "learner_metrics": 9402}
    return p


def wait_for(cond, timeout: float = 30.0) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError
        time.sleep(0.1)
    return time.monotonic() - t0


def test_routes_reach_the_generators_and_the_evaluation(tmp_path: Path) -> None:
    p = pipeline(tmp_path, [{"command": COUNTDOWN, "tasks": ["rg/countdown", "countdown_*"], "name": "countdown"}])
    configs = p.component_configs("127.0.0.1:9092", None)
    port = p.ports["verifier-countdown"]
    expected = {"rg/countdown": f"127.0.0.1:{port}", "countdown_*": f"127.0.0.1:{port}"}
    assert configs["generator"]["verifier"]["endpoints"] == expected
    assert configs["generator"]["verifier"]["default_endpoint"] == "127.0.0.1:50051"  # the math verifier
    assert configs["learner"]["eval"]["verifier_endpoints"] == expected
    p.validate(configs)


def test_a_free_port_needs_the_placeholder() -> None:
    with pytest.raises(ConfigError, match="needs \\{port\\}"):
        load_config(UpConfig, data={"up": {"verifiers": [{"command": "python server.py", "tasks": ["t"]}]}})


def test_started_watched_down_within_seconds_and_stopped(tmp_path: Path) -> None:
    p = pipeline(tmp_path, [{"command": COUNTDOWN, "tasks": ["rg/countdown"], "name": "countdown"}])
    p.start_custom_verifiers()
    try:
        watch = p.verifier_watch
        wait_for(lambda: watch.state["verifier-countdown"] == "up")
        assert any("is serving" in line for line in watch.changes())
        assert p._verifiers_down() == ""
        proc = p.procs["verifier-countdown"]
        proc.kill()  # the verifier dies (by its handle)
        took = wait_for(lambda: watch.down() == ["verifier-countdown"], timeout=10)
        assert took < 5.0, f"down noticed after {took:.1f}s"
        lines = watch.changes()
        assert any("verifier-countdown" in ln and "is DOWN" in ln for ln in lines), lines
        from winnow.up import format_progress

        row = {"step": 3, "version": 3, "loss": 0.1, "reward_mean": 0.5}
        assert (format_progress(row) + p._verifiers_down()).endswith(" | verifier-countdown DOWN")
        # its log is in the run directory
        assert (tmp_path / "logs" / "verifier-countdown.log").read_text().startswith("countdown verifier listening")
    finally:
        p.stop_all()
    assert all(proc.poll() is not None for proc in p.procs.values())


def test_stop_all_stops_a_running_custom_verifier_gracefully(tmp_path: Path) -> None:
    p = pipeline(tmp_path, [{"command": COUNTDOWN, "tasks": ["rg/countdown"]}])
    p.start_custom_verifiers()
    wait_for(lambda: p.verifier_watch.state["verifier-0"] == "up")
    p.stop_all()
    assert p.procs["verifier-0"].returncode == 0  # SIGTERM: a graceful stop


def test_evaluation_scores_each_problem_through_its_route(tmp_path: Path) -> None:
    """The learner's Evaluator with eval.verifier_endpoints: countdown problems go to the countdown verifier
    process, math to the in-process math verifier."""
    from winnow.learner.evaluate import Evaluator
    from winnow.learner.tiny import build_tiny_tokenizer

    p = pipeline(tmp_path, [{"command": COUNTDOWN, "tasks": ["rg/countdown"]}])
    p.start_custom_verifiers()
    try:
        wait_for(lambda: p.verifier_watch.state["verifier-0"] == "up")
        endpoints = p.component_configs("127.0.0.1:9092", None)["learner"]["eval"]["verifier_endpoints"]
        problems = [SimpleNamespace(problem="Reach 3 with 1, 2", gold="1+2", task="rg/countdown", messages=[]),
                    SimpleNamespace(problem="1+1?", gold="2", task="math", messages=[])]
        ev = Evaluator(build_tiny_tokenizer(), problems, endpoints=endpoints)
        try:
            assert ev.correct(["<answer>2+1</answer>", "\\boxed{2}"]) == [True, True]
            assert ev.correct(["<answer>2*1</answer>", "\\boxed{3}"]) == [False, False]
            # proof of the route: the math engine would take \boxed{3} for the gold 1+2 (= 3); the countdown
            # verifier refuses it (3 is not one of the numbers 1, 2)
            assert ev.correct(["\\boxed{3}", "\\boxed{2}"]) == [False, True]
            from winnow.scoring import in_process_verifier
            from winnow.verdict import Item, Status

            math = in_process_verifier()
            try:
                assert math.verify_batch([Item("a", "\\boxed{3}", "1+2")])[0].status == Status.CORRECT
            finally:
                math.close()
        finally:
            ev.close()
    finally:
        p.stop_all()
