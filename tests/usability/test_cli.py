"""The winnow command: --version, --print-config on every service surviving a closed pipe, config fields
in --help (without importing torch), winnow config, winnow samples."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import winnow
from winnow.cli import build_parser, field_rows, main

WINNOW = [sys.executable, "-m", "winnow"]


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"winnow {winnow.__version__}"


@pytest.mark.parametrize(
    "argv, section",
    [
        (["learner", "run"], "learner"),
        (["generator", "run"], "generator"),
        (["verifier", "serve"], "verifier"),
    ],
)
def test_print_config_every_service(argv, section, capsys):
    assert main([*argv, "--print-config", "--set", "metrics_port=1234"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["metrics_port"] == 1234
    from winnow.cli import _config_class

    assert set(cfg) == set(_config_class(section).model_fields)  # every resolved field is shown


@pytest.mark.parametrize("argv", [["learner", "run", "--print-config"], ["verifier", "serve", "--print-config"],
                                  ["learner", "run", "--help"]])
def test_closed_pipe_is_not_a_traceback(argv):
    """The reader closes the pipe before winnow writes (``| head`` that already exited)."""
    proc = subprocess.Popen([*WINNOW, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert proc.returncode == 0


def test_help_lists_config_fields_without_torch():
    code = (
        "import sys\n"
        "from winnow.cli import main\n"
        "try:\n    main(['learner', 'run', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'help imported torch'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "config fields (learner)" in out.stdout
    assert "  batch_groups: int = 8" in out.stdout
    assert "Prompts (scored groups) per optimizer step." in out.stdout  # the attribute docstring
    assert "  checkpoint.every: int = 1" in out.stdout  # nested blocks, dotted
    assert "  tracking.sinks: list['tensorboard' | 'wandb' | 'mlflow' | 'trackio'] = [\"tensorboard\"]" in out.stdout


def test_verifier_serve_help_lists_fields(capsys):
    with pytest.raises(SystemExit):
        main(["verifier", "serve", "--help"])
    out = capsys.readouterr().out
    assert "config fields (verifier)" in out and "  grace_s: float = 10.0" in out


def test_field_rows_secret_and_required():
    from pydantic import BaseModel, SecretStr

    class Inner(BaseModel):
        x: int = 3
        """an x"""

    class C(BaseModel):
        token: SecretStr | None = None
        path: str
        inner: Inner = Inner()

    rows = {r[0]: r for r in field_rows(C)}
    assert rows["path"][2] == "(required)"
    assert rows["inner.x"][1:] == ("int", "3", "")  # docstrings only with use_attribute_docstrings


def test_config_command(capsys):
    assert main(["config", "learner"]) == 0
    out = capsys.readouterr().out
    assert "algo.kl_coef" in out and "optim.lr" in out


def test_commands_registered():
    text = build_parser().format_help()
    for cmd in ("samples", "plot", "export", "config"):
        assert cmd in text


def test_help_shows_the_whole_first_sentence():
    text = " ".join(build_parser().format_help().split())
    first = " ".join(winnow.__doc__.split("\n\n")[0].split())
    assert first in text and first.endswith("over gRPC.")  # it used to stop at the docstring's first line break


def test_a_missing_prompt_file_is_reported_before_the_config_line(tmp_path, capsys):
    assert main(["learner", "run", "--set", "prompts.kind=jsonl", "--set", f"prompts.path={tmp_path / 'x.jsonl'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("winnow: learner.prompts.path: jsonl prompt file not found") and len(err) < 300


def test_the_command_table_names_what_each_module_registers():
    """``winnow.cli.COMMANDS`` (command -> module, so one command imports one module) matches ``register``."""
    import argparse
    import importlib

    from winnow.cli import COMMAND_MODULES, COMMANDS, command_name

    registered = {}
    for mod in COMMAND_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(mod).register(sub)
        registered.update(dict.fromkeys(sub.choices, mod))
    assert registered == COMMANDS
    assert command_name(["--log-level", "DEBUG", "score", "x.jsonl"]) == "score"
    assert command_name(["--version"]) is None


def test_score_starts_without_pydantic(tmp_path):
    """``winnow score`` (--help, and a run without --config/--set/WINNOW_* env) never imports pydantic."""
    src = tmp_path / "in.jsonl"
    src.write_text('{"response": "\\\\boxed{4}", "gold": "4"}\n')
    code = (
        "import sys\n"
        "from winnow.cli import main\n"
        "try:\n    main(['score', '--help'])\nexcept SystemExit:\n    pass\n"
        f"assert main(['score', '--no-progress', {str(src)!r}, '-o', {str(tmp_path / 'out.jsonl')!r}]) == 0\n"
        "assert 'pydantic' not in sys.modules and 'winnow.config' not in sys.modules, 'score imported pydantic'\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("WINNOW_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "out.jsonl").read_text())["correct"] is True
