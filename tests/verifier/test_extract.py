"""Extraction, canonicalisation, structure splitting and the O(n) guards (pure functions, no sympy)."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest

from winnow.verifier.canonical import canonicalize, parse_structure, split_assignment
from winnow.verifier.extract import extract_answer, extract_gold, find_boxed, strip_think
from winnow.verifier.fastpath import Num, parse_number
from winnow.verifier.guard import MAX_RESPONSE_CHARS, check_text


@pytest.mark.parametrize(
    ("response", "answer", "method"),
    [
        ("so \\boxed{42}.", "42", "boxed"),
        ("\\boxed{1} then \\boxed{2}", "2", "boxed"),  # the last box
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "boxed"),  # brace-matched
        ("\\boxed{{a}{b}}", "{a}{b}", "boxed"),
        ("\\boxed 5$ and more", "5", "boxed"),
        ("\\fbox{7}", "7", "boxed"),
        ("The final answer is $\\frac12$. I hope it is correct.", "\\frac12", "marker"),
        ("work\n#### 1,234", "1,234", "marker"),
        ("Answer: 12", "12", "marker"),
        ("**Answer:** $12$.", "12", "marker"),
        ("so the answer is 12.", "12", "marker"),
        ("12", "12", "bare"),
        ("$\\frac{3}{4}$", "\\frac{3}{4}", "bare"),
        ("\\(x^2\\)", "x^2", "bare"),
        ("This is a long sentence with many words and no answer", None, ""),
        ("", None, ""),
    ],
)
def test_extract_answer(response, answer, method):
    ex = extract_answer(response)
    assert ex.answer == answer
    assert ex.method == method


def test_think_is_stripped_and_unclosed_think_has_no_answer():
    assert strip_think("<think>\\boxed{1}</think>\\boxed{2}") == "\\boxed{2}"
    assert strip_think("<think>never closed \\boxed{1}") is None
    assert extract_answer("<think>x</think>").answer is None
    assert extract_answer("<think>\\boxed{3}").method == "think_unclosed"


def test_last_number_fallback_is_on_by_default_and_can_be_turned_off():
    text = "She had 3 apples and bought 4, so 7 in total"
    assert extract_answer(text, last_number=False).answer is None
    assert extract_answer(text).answer == "7"
    assert extract_answer("the shop said it costs 1,250 dollars", last_number=True).answer == "1,250"


def test_all_boxes_are_collected_for_the_hedging_rule():
    ex = extract_answer("\\boxed{1}, \\boxed{2} and \\boxed{3}")
    assert ex.boxed == ["1", "2", "3"] and ex.n_boxed == 3


def test_unclosed_box_is_reported():
    boxed, unbalanced = find_boxed("\\boxed{12")
    assert boxed == [] and unbalanced
    assert extract_answer("\\boxed{12").unbalanced


def test_only_the_tail_is_read():
    # a box at the start of a response longer than the kept tail is not seen
    text = "\\boxed{1}" + "x" * (MAX_RESPONSE_CHARS + 10)
    assert extract_answer(text).answer is None


def test_extraction_is_linear_on_a_megabyte():
    text = "{" * 500_000 + "\\boxed{" * 1000 + "}" * 500_000
    t0 = time.perf_counter()
    extract_answer(text)
    assert time.perf_counter() - t0 < 2.0  # O(n) on the kept tail: milliseconds in practice


@pytest.mark.parametrize(
    ("gold", "answer"),
    [
        ("Natalia sold 48 clips.\n#### 72", "72"),
        ("#### 1,234", "1,234"),
        ("The area is $\\boxed{\\frac{\\pi}{2}}$.", "\\frac{\\pi}{2}"),
        ("$5$", "5"),
        ("\\(5\\)", "5"),
        ("\\[5\\]", "5"),
        ("  12 ", "12"),
    ],
)
def test_extract_gold(gold, answer):
    assert extract_gold(gold) == answer


@pytest.mark.parametrize(
    ("raw", "canon"),
    [
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\frac1{2^{99}}", "\\frac{1}{2^{99}}"),
        ("\\sqrt3", "\\sqrt{3}"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("1{,}000", "1000"),
        ("1,\\!000", "1000"),
        ("1,000,000", "1000000"),
        ("1,00", "1,00"),  # not a thousands group: stays a list
        ("1, 000", "1,000"),  # whitespace is removed after the thousands check of the whole string
        ("10\\text{ cm}^2", "10"),
        ("\\$18.00", "18.00"),
        ("90^\\circ", "90"),
        ("50\\%", "50%"),
        ("2 1/2", "2\\frac{1}{2}"),
        ("x=1 \\text{ or } x=2", "x=1,x=2"),
        ("x \\in [0, 1)", "[0,1)"),
        ("\\pi r^2", "\\pi r^{2}"),  # the space after a command before a letter is kept; ^ takes one token
        ("5.", "5"),
        ("\u221216", "-16"),
        ("\\boxed{7}", "7"),
        ("$\\displaystyle\\frac{1}{2}$", "\\frac{1}{2}"),
        ("T", "T"),  # single letters are never units
    ],
)
def test_canonicalize(raw, canon):
    assert canonicalize(raw) == canon


def test_structures():
    assert parse_structure("(1,2)").kind == "bracket"
    s = parse_structure("[0,9)")
    assert (s.kind, s.open, s.close, s.items) == ("bracket", "[", ")", ["0", "9"])
    assert parse_structure("\\{1,2\\}").items == ["1", "2"]
    assert parse_structure("1,-2").kind == "list"
    assert parse_structure("1,1").kind == "scalar"  # duplicates collapse
    assert parse_structure("(5)").kind == "scalar"
    assert parse_structure("f(1,2)").kind == "scalar"  # the bracket does not span the whole answer
    u = parse_structure("(-\\infty,0)\\cup(1,\\infty)")
    assert u.kind == "union" and len(u.parts) == 2
    m = parse_structure("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}")
    assert m.kind == "matrix" and m.rows == [["1", "2"], ["3", "4"]]


def test_split_assignment():
    assert split_assignment("x=5") == ("x", "5")
    assert split_assignment("a_1=5") == ("a_1", "5")
    assert split_assignment("\\theta=\\pi") == ("\\theta", "\\pi")
    assert split_assignment("7=11a+c") is None
    assert split_assignment("x\\le5") is None


@pytest.mark.parametrize(
    ("text", "num"),
    [
        ("42", Num(42, "int")),
        ("-3", Num(-3, "int")),
        ("0.50", Num(Fraction(1, 2), "dec", 2)),
        ("1/4", Num(Fraction(1, 4), "exact")),
        ("\\frac{-3}{4}", Num(Fraction(-3, 4), "exact")),
        ("2\\frac{1}{2}", Num(Fraction(5, 2), "exact")),
        ("1.5e3", Num(Fraction(1500), "int")),  # the decimal it abbreviates: 1500
        ("2.3148\\times10^{-3}", Num(Fraction(23148, 10**7), "dec", 7)),  # 0.0023148
        ("10^{-2}", Num(Fraction(1, 100), "exact")),
        ("25%", Num(25, "int", 0, True)),
    ],
)
def test_parse_number(text, num):
    got = parse_number(text)
    assert got is not None and got.value == num.value and got.kind == num.kind and got.decimals == num.decimals
    assert got.decimals == num.decimals and got.percent == num.percent


def test_parse_number_refuses():
    assert parse_number("1/0") is None
    assert parse_number("10^{100000}") is None  # exponent > 10^4 goes to the guarded symbolic path
    assert parse_number("x") is None


def test_text_guards():
    assert check_text("42") is None
    assert check_text("{" * 51 + "}" * 51).kind == "too_complex"
    assert check_text("1" * 513).kind == "too_complex"
    assert check_text("\\frac{1}{2").kind == "unparsable"
    assert check_text("4\x002").kind == "unparsable"
