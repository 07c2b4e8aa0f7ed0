"""The quick reader (verifier/quicktex.py) gives the grammar's own sympy object, argument order included, or declines.

Soundness: a reader that built a different object than the grammar for some text would change verdicts (a false
positive is a reward hack). Every check below compares, for a text the quick reader accepts, its object with what
``latex2sympy2_extended``'s ANTLR parse and converter return for the same normalised text: the same ``srepr`` and the
same tree with arguments in their stored order (``Add``/``Mul`` built with ``evaluate=False`` keep it, and
``srepr`` sorts it away). A text the grammar rejects must be declined.
"""

from __future__ import annotations

import random
import runpy
from pathlib import Path

import pytest

sympy = pytest.importorskip("sympy")
sym = pytest.importorskip("winnow.verifier.symbolic")
from winnow.verifier.quicktex import quick_parse  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _deep(e):
    """Type and arguments in stored order, recursively (``srepr`` sorts Add/Mul arguments)."""
    if isinstance(e, sympy.Basic) and e.args:
        return type(e).__name__, tuple(_deep(a) for a in e.args)
    return type(e).__name__, sympy.srepr(e) if isinstance(e, sympy.Basic) else repr(e)


def _grammar(text: str):
    try:
        return True, sym._SafeLatex2Sympy(None, None, False, config=sym.ConversionConfig()).parse(text)
    except Exception:
        return False, None


def _check(raw: str) -> bool:
    """Asserts agreement for one text; returns whether the quick reader accepted it."""
    text = sym.normalize_latex(raw, sym._NORM)
    quick = quick_parse(text)
    ok, ref = _grammar(text)
    if quick is None:
        return False
    assert ok, f"the grammar rejects {text!r}, the quick reader gives {quick!r}"
    assert sympy.srepr(quick) == sympy.srepr(ref), (text, sympy.srepr(quick), sympy.srepr(ref))
    assert _deep(quick) == _deep(ref), (text, _deep(quick), _deep(ref))
    return True


FIXED = [
    "x^{2}+14x+49", "(x+7)^{2}", "e^{5x}\\cdot e^{26x}", "12\\sin^{2}x+12\\cos^{2}x", "\\frac{5\\sqrt{3}}{3}",
    "\\frac{5}{\\sqrt{3}}", "4\\sqrt{6}", "\\frac{3\\pi}{4}", "x^2-5x+6", "(x-2)(x-3)", "-x", "2-3", "x-2",
    "2\\frac{1}{2}", "e", "e^{2}", "e^2", "(5)", "\\sin x", "\\sin(x)", "\\sin^{-1}x", "\\sin^{0}x", "\\tan^{2}(x+1)",
    "\\frac{1}{0}", "x/2", "4/6", "a b", "x\\times y", "2\\frac{1}{2}x", "-\\frac{1}{2}", "\\frac{x}{y}z", "1.50", ".5",
    "3 \\cdot 4", "+x", "x+-2", "x--2", "a/b/c", "a\\cdot b/c", "a/b\\cdot c", "2^{3}^{2}", "(-2)\\frac{1}{2}", "x ^{2}",
    "\\pi r^{2}", "2\\sin x", "\\sin \\pi", "-2^{2}", "1-\\frac{1}{2}", "1-\\pi", "\\sqrt{2}^{2}", "0", "007", "-0.50",
    "\\frac{0}{0}", "\\frac{-4}{6}", "x^{-1}", "(x)", "\\cos(2x)+1", "e^{x}e^{y}", "\\frac{e^{x}}{2}", "2^{-2}", "\\frac12",
]
DECLINED = ["2 3", "2e3", "1e-3", "2e", "xe", "ab", "\\ln 2", "\\sin x y", "\\sin 2x", "\\sin x\\cos x", "\\sqrt[3]{2}",
            "x^23", "{x}", "1,000", "(1,2)", "x=1", "x<2", "dx", "X", "I", "\\sin^{2}x^{2}", "e ^{x}", "3!", "|x|",
            "x_1", "", "x(x+1)", "2y^{2}(t)", "\\pi(2)", "e^{x}^{2}", "\\sin(x)^{2}", "1.2.3", "2."]


@pytest.mark.parametrize("text", FIXED)
def test_fixed_shapes_match_the_grammar(text):
    assert _check(text), f"the quick reader should read {text!r}"


@pytest.mark.parametrize("text", DECLINED)
def test_outside_the_subset_is_declined(text):
    assert quick_parse(sym.normalize_latex(text, sym._NORM)) is None


def _random_expr(rng: random.Random, depth: int = 0) -> str:
    """A random text of (mostly) the subset, with random spaces; some tokens outside it on purpose."""
    sp = lambda: rng.choice(["", "", "", " "])  # noqa: E731

    def factor(d: int) -> str:
        k = rng.randrange(16 if d < 3 else 6)
        if k == 0:
            return str(rng.choice([0, 1, 2, 3, 7, 10, 12, 100, rng.randint(0, 10**6)]))
        if k == 1:
            return rng.choice(["x", "y", "a", "b", "n", "t", "i", "r", "z", "k"])
        if k == 2:
            return rng.choice(["\\pi", "e", "1.5", ".25", "0.125", "e", "X", "2e"])
        if k == 3:
            return rng.choice(["x", "y", "2", "\\pi"]) + "^" + rng.choice(["2", "3", "{2}", "{-1}", "{1/2}", "x", "23"])
        if k == 4:
            return "(" + expr(d + 1) + ")"
        if k == 5:
            return "-" + sp() + factor(d + 1)
        if k in (6, 7):
            return "\\frac{" + expr(d + 1) + "}{" + expr(d + 1) + "}"
        if k == 8:
            return "\\sqrt{" + expr(d + 1) + "}"
        if k == 9:
            return "e^{" + expr(d + 1) + "}"
        if k == 10:
            f = rng.choice(["\\sin", "\\cos", "\\tan"]) + rng.choice(["", "", "^{2}", "^2", "^{-1}", "^{0}", "^{3}"])
            return f + rng.choice([" x", " \\pi", "(" + expr(d + 1) + ")", " 2", "{x}"])
        if k == 11:
            return "(" + expr(d + 1) + ")^{" + expr(d + 1) + "}"
        if k == 12:
            return factor(d + 1) + sp() + factor(d + 1)
        if k == 13:
            return "\\frac{" + str(rng.randint(-9, 99)) + "}{" + str(rng.randint(-3, 99)) + "}"
        if k == 14:
            return str(rng.randint(1, 9)) + sp() + "\\frac{" + str(rng.randint(1, 9)) + "}{" + str(rng.randint(1, 9)) + "}"
        return factor(d + 1) + "^{" + expr(d + 1) + "}"

    def expr(d: int) -> str:
        out = factor(d)
        for _ in range(rng.randrange(3 if d < 2 else 1)):
            out += sp() + rng.choice(["+", "-", "\\cdot ", "\\times ", "/", "", "+-", "--"]) + sp() + factor(d)
        return out

    return expr(depth)


def test_seeded_random_expressions_match_the_grammar():
    rng = random.Random(20261207)
    accepted = 0
    for _ in range(300):
        accepted += _check(_random_expr(rng))
    assert accepted >= 100  # the generator stays inside the subset often enough: the comparison is not vacuous


def test_benchmark_symbolic_inputs_match_the_grammar():
    bench = runpy.run_path(str(REPO / "benchmarks" / "verifier.py"))
    from winnow.verifier import engine

    cases = bench["symbolic_cases"](150, random.Random(11))
    accepted = 0
    for c in cases:
        d = engine.decide_fast(engine.prepare_gold(c.gold, "", {}), c.response, {})
        assert isinstance(d, engine.Job)
        accepted += _check(d.gold) + _check(d.pred)
    assert accepted == 300  # every one of these shapes is read without ANTLR
