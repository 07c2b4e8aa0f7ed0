"""Soundness property test of the grader (issue 29 item 2), seeded and bounded so it stays in the default tier.

Random expressions are built as small trees with an independent exact evaluator (``fractions.Fraction`` at
integer points), then written as LaTeX. Two families:

* **different by construction**: one digit of one coefficient changed, one sign flipped, or one exponent moved
  (``x^{2}y`` -> ``xy^{2}``, ``2^a 3^b`` -> ``2^b 3^a``). The exact evaluator confirms the pair differs; the
  grader must never say CORRECT.
* **equal by construction**: expanded vs factored, terms reordered, a root rationalised, an unbraced prime
  factorisation vs its integer. The grader must say CORRECT.

``SEED`` and ``N`` fix the sample (N pairs per family and mutation); a failure prints the pair.
"""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from winnow.verdict import Status
from winnow.verifier.engine import grade

SEED = 29
N = 12  # pairs per generator below: 8 generators -> 96 grader calls, ~2 s on one core

Term = tuple[int, int, int]  # (coefficient, power of x, power of y)


def B(x: str) -> str:
    return f"So the answer is $\\boxed{{{x}}}$."


def _monomial(c: int, p: int, q: int, first: bool) -> str:
    sign = "-" if c < 0 else ("" if first else "+")
    mag = abs(c)
    body = ("x" if p == 1 else f"x^{{{p}}}" if p else "") + ("y" if q == 1 else f"y^{{{q}}}" if q else "")
    coef = str(mag) if mag != 1 or not body else ""
    return f"{sign}{coef}{body}"


def latex(terms: list[Term]) -> str:
    return "".join(_monomial(c, p, q, i == 0) for i, (c, p, q) in enumerate(terms))


def value(terms: list[Term], x: int, y: int) -> Fraction:
    return sum((Fraction(c) * Fraction(x) ** p * Fraction(y) ** q for c, p, q in terms), Fraction(0))


def differ(a: list[Term], b: list[Term]) -> bool:
    return any(value(a, x, y) != value(b, x, y) for x, y in ((2, 3), (5, 7), (-3, 11), (13, -2)))


def poly(rng: random.Random) -> list[Term]:
    """2-4 distinct monomials with coefficients of 1-3 digits."""
    powers = rng.sample([(p, q) for p in range(4) for q in range(3) if p + q > 0], rng.randint(2, 4))
    return [(rng.choice([-1, 1]) * rng.randint(2, 999), p, q) for p, q in powers]


def one_digit(rng: random.Random, terms: list[Term]) -> list[Term]:
    i = rng.randrange(len(terms))
    c, p, q = terms[i]
    digits = list(str(abs(c)))
    k = rng.randrange(len(digits))
    choices = [d for d in "0123456789" if d != digits[k] and not (k == 0 and d == "0")]
    digits[k] = rng.choice(choices)
    out = list(terms)
    out[i] = ((1 if c > 0 else -1) * int("".join(digits)), p, q)
    return out


def one_sign(rng: random.Random, terms: list[Term]) -> list[Term]:
    i = rng.randrange(len(terms))
    out = list(terms)
    c, p, q = out[i]
    out[i] = (-c, p, q)
    return out


def move_exponent(rng: random.Random, terms: list[Term]) -> list[Term]:
    candidates = [i for i, (_, p, q) in enumerate(terms) if p != q]
    i = rng.choice(candidates)
    out = list(terms)
    c, p, q = out[i]
    out[i] = (c, q, p)
    return out


def _different_pairs() -> list[tuple[str, str, str]]:
    rng = random.Random(SEED)
    pairs = []
    for name, mutate in (("digit", one_digit), ("sign", one_sign), ("exponent", move_exponent)):
        made = 0
        while made < N:
            gold = poly(rng)
            pred = mutate(rng, gold)
            if differ(gold, pred):
                pairs.append((name, latex(gold), latex(pred)))
                made += 1
    for _ in range(N):  # an exponent moved between unbraced prime powers: 2^a 3^b vs 2^b 3^a
        a, b = rng.sample(range(2, 10), 2)
        pairs.append(("prime_powers", f"2^{a} 3^{b}", f"2^{b} 3^{a}"))
    return pairs


def _equal_pairs() -> list[tuple[str, str, str]]:
    rng = random.Random(SEED + 1)
    pairs = []
    for _ in range(N):  # factored vs expanded: (x+a)(x+b) = x^2 + (a+b)x + ab
        a, b = rng.choice([-1, 1]) * rng.randint(1, 30), rng.choice([-1, 1]) * rng.randint(1, 30)
        expanded = [t for t in [(1, 2, 0), (a + b, 1, 0), (a * b, 0, 0)] if t[0]]
        pairs.append(("factored", f"(x{a:+d})(x{b:+d})", latex(expanded)))
    for _ in range(N):  # terms reordered
        terms = poly(rng)
        shuffled = list(terms)
        while shuffled == terms:
            rng.shuffle(shuffled)
        pairs.append(("reordered", latex(terms), latex(shuffled)))
    for _ in range(N):  # rationalised: c/sqrt(n) = c sqrt(n)/n; 1/(sqrt a + sqrt b) = (sqrt a - sqrt b)/(a - b)
        if rng.random() < 0.5:
            c, n = rng.randint(1, 20), rng.choice([2, 3, 5, 6, 7, 10, 11, 13])
            pairs.append(("rationalised", f"\\frac{{{c}}}{{\\sqrt{{{n}}}}}", f"\\frac{{{c}\\sqrt{{{n}}}}}{{{n}}}"))
        else:
            a, b = rng.sample([2, 3, 5, 6, 7, 10], 2)
            pairs.append(("rationalised", f"\\frac{{1}}{{\\sqrt{{{a}}}+\\sqrt{{{b}}}}}",
                          f"\\frac{{\\sqrt{{{a}}}-\\sqrt{{{b}}}}}{{{a - b}}}"))
    for _ in range(N):  # an unbraced prime factorisation vs its integer
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        pairs.append(("prime_powers", str(2**a * 3**b), f"2^{a} 3^{b}"))
    return pairs


DIFFERENT = _different_pairs()
EQUAL = _equal_pairs()


def test_the_sample_is_the_promised_size():
    assert len(DIFFERENT) == 4 * N and len(EQUAL) == 4 * N
    assert len({(g, p) for _, g, p in DIFFERENT}) > 3 * N  # not one pair repeated


@pytest.mark.parametrize(("kind", "gold", "pred"), DIFFERENT, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(DIFFERENT)])
def test_pairs_that_differ_are_never_equal(kind, gold, pred):
    result = grade(B(pred), gold)
    assert result.status != Status.CORRECT, f"{kind}: {pred!r} judged equal to {gold!r}: {result}"


@pytest.mark.parametrize(("kind", "gold", "pred"), EQUAL, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(EQUAL)])
def test_pairs_equal_by_construction_are_equal(kind, gold, pred):
    result = grade(B(pred), gold)
    assert result.status == Status.CORRECT, f"{kind}: {pred!r} not judged equal to {gold!r}: {result}"
    assert grade(B(gold), pred).status == Status.CORRECT, f"{kind}: not symmetric"
