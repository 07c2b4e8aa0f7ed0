"""The case table (tests/verifier/cases.py) through ``grade``: in-process, no pool, fast."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from winnow.verifier.engine import grade

_TABLE = runpy.run_path(str(Path(__file__).with_name("cases.py")))
CASES = _TABLE["CASES"]
_CASES = _TABLE["all_cases"]()


@pytest.mark.parametrize(
    ("category", "gold", "response", "expected", "reason"),
    _CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(_CASES)],
)
def test_case(category, gold, response, expected, reason):
    result = grade(response, gold)
    assert result.status.label == expected, f"{reason}: got {result}"


def test_table_is_large_and_covers_every_category():
    assert len(_CASES) >= 500
    for name in ("integers", "fractions", "decimals", "percent", "units", "text", "mcq",
                 "tuples_sets_intervals", "matrices", "relations", "symbolic", "extraction", "gsm8k", "traps",
                 "false_positive_fixes", "markers", "fallback", "labels", "several_values", "relations_more",
                 "number_formats"):
        assert len(CASES[name]) >= 10, name
    for name in ("math_only", "matrices_more", "golds"):
        assert len(CASES[name]) >= 5, name
    # every new rule has negative checks next to it
    for name in ("markers", "fallback", "labels", "several_values", "relations_more", "number_formats", "golds"):
        assert any(expected != "correct" for _, _, expected, _ in CASES[name]), name


_OPTION_CASES = _TABLE["CASES_OPTIONS"]


@pytest.mark.parametrize(("gold", "response", "expected", "reason", "options"), _OPTION_CASES,
                         ids=[f"options-{i}" for i in range(len(_OPTION_CASES))])
def test_case_with_options(gold, response, expected, reason, options):
    result = grade(response, gold, options=options)
    assert result.status.label == expected, f"{reason}: got {result}"


_PEER = runpy.run_path(str(Path(__file__).with_name("peer_style.py")))["PEER_STYLE"]


@pytest.mark.parametrize(("gold", "response", "expected", "style"), _PEER, ids=[f"peer-{i}" for i in range(len(_PEER))])
def test_peer_style_suite(gold, response, expected, style):
    """The reconstructed peer-style suite (tests/verifier/peer_style.py): verl, Qwen-Math, lm-eval, DeepScaleR."""
    assert (grade(response, gold).status.label == "correct") == expected, style
