"""Fast exact comparison paths, pure Python, no sympy (docs/verifier.md, 'Fast paths').

* Numbers as exact ``fractions.Fraction``: integers, decimals, ``a/b``, ``\\frac{a}{b}``, mixed numbers
  (``2\\frac{1}{2}``), scientific notation (``1.5e3``, ``1.5\\times10^{3}``, exponent |k| <= 10^4), which
  counts as the decimal it abbreviates (``2.3148\\times10^{-3}`` has 7 printed decimals, ``1.5e3`` is an integer).
* Integers compare exactly (``1000050 != 1000000``). By default a decimal stands for another value only
  when both agree rounded to 6 places (``0.333333 == 1/3``, ``0.33 != 1/3``); with the ``rounded``
  option a decimal with d >= 2 printed decimals matches the other value rounded or truncated to d
  places. There is no blanket relative tolerance.
* Undefined literals (``nan``, ``zoo``, ``1/0``) never equal anything. Clock times and ratios with a
  colon (``12:00``, ``3:4``) compare literally, after labels are dropped.
* Labels, chains and equations (``resolve_pair``): different labels never match (``x=2`` vs ``y=2``), except a
  function label and a dependent variable (``f(x)=2x+3`` is ``y=2x+3``, never ``x=…``); an equation whose left
  side is not a label against a value (``e^{i\\pi}=-1`` for ``-1``) holds only when every side equals the value
  (``statement_pairs``), so ``2x=10`` is not 10; an equation against a labelled value compares both as equations.
* Simple inequalities (``x>5``, ``5\\le x``, ``-2\\le x<7``, ``-x>-1``) compare as intervals, and a gold
  inequality against a predicted interval, without sympy (the reverse, an interval gold answered by an
  inequality, is wrong: Math-Verify's rule, the gold's form decides).
* A decimal comma (``1000,99``, ``0,111``) against the same decimal; labelled values in order
  (``x=1, y=2``) against an ordered pair.
* Percent only when the gold carries ``%`` (``50%`` matches ``50``, ``50%`` and ``0.5``) or the option
  ``percent`` is set; a bare ``0.5`` never matches a bare ``50``. A predicted ``50%`` matches a gold
  ``50`` (the sign is dropped), or ``0.5``.
* MCQ letters (``B``, ``(B)``, ``\\text{(B)}``, ``B) 42``) and case-folded text answers.
* ``compare_struct``: tuples, intervals, sets, solution lists, unions of intervals, matrices and ``cases``
  blocks (rows matched as unordered (value, condition) pairs; a ``cases`` gold needs a ``cases`` answer) with
  the gold deciding the semantics; elements are compared with a pluggable ``elem_eq`` (the fast
  scalar comparison here, or fast-then-symbolic inside a worker).

Every function returns ``True``/``False`` when it can decide, ``None`` when the symbolic path must.

Left out: number words, base-n numerals, rounding rules beyond printed decimals.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from winnow.verifier.canonical import (
    Struct,
    equation_sides,
    is_equation,
    parse_structure,
    reduce_relation,
    split_label,
    top_level,
)

MAX_SCI_EXPONENT = 10**4

_INT = r"\d+"
_DEC = r"(?:\d+\.\d*|\.\d+)"
_RE_INT = re.compile(rf"^{_INT}$")
_PLAIN_INT = re.compile(r"-?\d+")
_RE_DEC = re.compile(rf"^{_DEC}$")
_RE_SLASH = re.compile(r"^(\d+)/(\d+)$")
_RE_FRAC = re.compile(r"^\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}$")
_RE_MIXED = re.compile(r"^(\d+)\\frac\{(\d+)\}\{(\d+)\}$")
_RE_SCI_E = re.compile(rf"^({_DEC}|{_INT})[eE]([+-]?\d+)$")
_RE_SCI_TIMES = re.compile(rf"^({_DEC}|{_INT})(?:\\times|\\cdot|\*)10\^(?:\{{([+-]?\d+)\}}|(\d))$")
_RE_POW10 = re.compile(r"^10\^(?:\{([+-]?\d+)\}|(\d))$")
_FUNC_WORDS = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "lg", "arcsin", "arccos", "arctan",
               "sinh", "cosh", "tanh", "max", "min", "gcd", "lcm", "det", "mod", "sqrt", "pi", "infty"}


@dataclass(frozen=True, slots=True)
class Num:
    """A number parsed from text. ``kind``: ``int``, ``dec`` (with ``decimals`` printed), ``exact``."""

    value: Fraction
    kind: str
    decimals: int = 0
    percent: bool = False


def parse_number(s: str) -> Num | None:
    """Parse a canonical scalar as an exact number, or None."""
    percent = s.endswith("%")
    if percent:
        s = s[:-1]
    sign = 1
    if s.startswith("-"):
        sign, s = -1, s[1:]
    if not s:
        return None
    if _RE_INT.match(s):
        return Num(Fraction(sign * int(s)), "int", 0, percent)
    if _RE_DEC.match(s):
        decimals = len(s) - s.index(".") - 1
        return Num(sign * Fraction(s if not s.endswith(".") else s[:-1]), "dec", decimals, percent)
    m = _RE_SLASH.match(s) or _RE_FRAC.match(s)
    if m:
        den = int(m.group(2))
        if den == 0:
            return None
        return Num(sign * Fraction(int(m.group(1)), den), "exact", 0, percent)
    m = _RE_MIXED.match(s)
    if m:
        den = int(m.group(3))
        if den == 0:
            return None
        return Num(sign * (int(m.group(1)) + Fraction(int(m.group(2)), den)), "exact", 0, percent)
    m = _RE_SCI_E.match(s) or _RE_SCI_TIMES.match(s)
    if m:
        k = int(m.group(2) if m.group(2) is not None else m.group(3))
        if abs(k) > MAX_SCI_EXPONENT:
            return None
        return _scientific(m.group(1), k, sign, percent)
    m = _RE_POW10.match(s)
    if m:
        k = int(m.group(1) if m.group(1) is not None else m.group(2))
        if abs(k) > MAX_SCI_EXPONENT:
            return None
        return Num(sign * Fraction(10) ** k, "exact", 0, percent)
    return None


def _scientific(mantissa: str, k: int, sign: int, percent: bool) -> Num:
    """``m \\times 10^k`` read as the decimal it abbreviates, so the decimal rules apply to it alike:
    ``2.3148\\times10^{-3}`` is ``0.0023148`` (7 printed decimals), ``1.5\\times10^{3}`` is the integer 1500."""
    value = sign * Fraction(mantissa) * Fraction(10) ** k
    decimals = (len(mantissa) - mantissa.index(".") - 1 if "." in mantissa else 0) - k
    if decimals > 0:
        return Num(value, "dec", decimals, percent)
    return Num(value, "int" if value.denominator == 1 else "exact", 0, percent)


def _round_half_up(x: Fraction, decimals: int) -> Fraction:
    q = Fraction(10) ** decimals
    n = x * q
    r = (abs(n) + Fraction(1, 2)).__floor__()
    return Fraction(r if n >= 0 else -r) / q


HIGH_PRECISION = 6  # decimals at which a printed decimal stands for an exact value (math-verify's default)


def _values_match(a: Fraction, a_kind: str, a_dec: int, b: Fraction, b_kind: str, b_dec: int, *,
                  rounded: bool = False) -> bool:
    """Exact equality, or a decimal standing for the other value (see the module doc).

    Default (strict): a decimal with at least ``HIGH_PRECISION`` printed decimals matches when both sides
    agree rounded half-up to that many places (``0.333333 == 1/3``, ``0.33 != 1/3``). With ``rounded``
    (an explicit option), a decimal with d >= 2 printed decimals matches the other side rounded half-up or
    truncated to d places (``0.33 == 1/3``, ``3.14 == 3.1416``).
    """
    if a == b:
        return True
    if a_kind == "int" or b_kind == "int":
        return False  # integers are exact
    if a_kind != "dec" and b_kind != "dec":
        return False
    if not rounded:
        d = max(a_dec if a_kind == "dec" else 0, b_dec if b_kind == "dec" else 0)
        if d < HIGH_PRECISION:
            return False
        return _round_half_up(a, HIGH_PRECISION) == _round_half_up(b, HIGH_PRECISION)
    if a_kind == "dec" and b_kind == "dec":
        d = min(a_dec, b_dec)
        if d < 2:
            return False
        coarse, fine = (a, b) if a_dec <= b_dec else (b, a)
        trunc = Fraction(int(fine * 10**d), 10**d)
        return _round_half_up(fine, d) == coarse or trunc == coarse
    dec, d, exact = (a, a_dec, b) if a_kind == "dec" else (b, b_dec, a)
    if d < 2:
        return False
    trunc = Fraction(int(exact * 10**d), 10**d)  # int() truncates toward zero
    return _round_half_up(exact, d) == dec or trunc == dec


def num_eq(g: Num, p: Num, *, percent_option: bool = False, rounded: bool = False) -> bool:
    """Gold-vs-prediction number equality with the percent and precision rules of the module doc."""
    if _values_match(g.value, g.kind, g.decimals, p.value, p.kind, p.decimals, rounded=rounded):
        return True
    hundred = Fraction(100)
    if g.percent and not p.percent:
        return p.value == g.value / hundred
    if p.percent and not g.percent:
        return p.value / hundred == g.value
    if percent_option:
        return p.value == g.value / hundred or p.value == g.value * hundred
    return False


# --------------------------------------------------------------------------- MCQ and text

_MCQ_GOLD_RE = re.compile(r"^\(?([A-J])\)?$")
_MCQ_PRED_RE = re.compile(r"^\s*(?:\\text(?:bf)?\{\s*)?(?:\*\*)?\(?([A-Ja-j])(?:\)|\.|:|\}|\*\*|\s|$)")
_TEXT_WRAP_RE = re.compile(r"^\\(?:text|textbf|mathrm|mbox|textit)\{([^{}]*)\}$")
_WORDS_RE = re.compile(r"^[A-Za-z][A-Za-z '\-]*$")


def mcq_letter(gold: str, *, mcq_task: bool = False) -> str | None:
    """The letter if the (canonical) gold is a multiple-choice answer (uppercase A-J, or any case for mcq)."""
    m = _MCQ_GOLD_RE.match(gold)
    if m:
        return m.group(1)
    if mcq_task:
        m = re.match(r"^\(?([a-jA-J])\)?$", gold)
        if m:
            return m.group(1).upper()
    return None


def pred_letter(raw: str) -> str | None:
    m = _MCQ_PRED_RE.match(raw.strip())
    return m.group(1).upper() if m else None


def text_norm(raw: str) -> str:
    s = raw.strip()
    prev = None
    while prev != s:
        prev = s
        s = re.sub(r"\\(?:text|textbf|mathrm|mbox|textit|emph)\s*\{([^{}]*)\}", r"\1", s)
    s = s.replace("$", "").lower()
    s = re.sub(r"[^a-z0-9 ]+", " ", s)
    s = re.sub(r"^(?:the|a|an) ", "", s.strip())
    return " ".join(s.split())


def is_text_gold(raw: str) -> bool:
    """A gold that is words (``Monday``, ``\\text{even}``, ``yes``), compared case-folded, never by sympy."""
    s = raw.strip()
    m = _TEXT_WRAP_RE.match(s)
    if m:
        s = m.group(1).strip()
        if s and re.fullmatch(r"[A-Za-z][A-Za-z0-9 ,'\-]*", s) and not re.fullmatch(r"\(?[A-Za-z]\)?", s):
            return True
    if not _WORDS_RE.match(s):
        return False
    words = re.findall(r"[A-Za-z]+", s)
    if s.lower() in ("yes", "no"):
        return True
    return any(len(w) >= 3 and w.lower() not in _FUNC_WORDS for w in words) and " " in s or (
        len(words) == 1 and len(words[0]) >= 4 and words[0].lower() not in _FUNC_WORDS
    )


# --------------------------------------------------------------------------- scalars and structures

_INF = {"\\infty", "-\\infty", "+\\infty", "oo", "-oo", "\\infinity"}
_REL_RE = re.compile(r"=|<|>|\\le|\\ge|\\ne|\\neq|\\lt|\\gt")
_INEQ_RE = re.compile(r"<|>|\\le|\\ge|\\lt|\\gt|\\leq|\\geq")


def is_relation(s: str) -> bool:
    return _REL_RE.search(top_level(s)) is not None


def is_inequality(s: str) -> bool:
    return _INEQ_RE.search(top_level(s)) is not None


ElemEq = Callable[[str, str], "tuple[bool | None, str]"]


_UNDEFINED_RE = re.compile(r"^-?(?:nan|zoo|\\text\{nan\}|\d+/0+|\\frac\{-?\d+\}\{0+\})$", re.IGNORECASE)


def is_undefined(s: str) -> bool:
    """A literal undefined value (``nan``, ``zoo``, ``1/0``, ``\\frac{1}{0}``): never equal to anything."""
    return _UNDEFINED_RE.match(s) is not None


def _label_head(label: str) -> str:
    """``f(x)`` -> ``f``, ``x_{1}`` -> ``x_{1}``, ``(p,q)`` -> ``(p,q)``: what must match between two labels."""
    return label.split("(", 1)[0] if not label.startswith("(") and "(" in label else label


_FUNC_LABEL = re.compile(r"^([A-Za-z])\(([^()]*)\)$")


def _labels_agree(a: str, b: str) -> bool:
    """Two labels name the same quantity: the same head (``f(x)``, ``f(n)``), or a function label and a
    single-letter dependent variable that is not one of its arguments (``f(x)`` and ``y``; never ``x``)."""
    if _label_head(a) == _label_head(b):
        return True
    for func, var in ((a, b), (b, a)):
        m = _FUNC_LABEL.match(func)
        if m and len(var) == 1 and var.isalpha() and var not in m.group(2).split(","):
            return True
    return False


def statement_pairs(g: str, p: str) -> list[tuple[str, str]] | None:
    """An equation whose left side is not a label (``e^{i\\pi}=-1``, ``17\\mod5=2``, ``\\lim_{x\\to0}\\frac{\\sin
    x}{x}=1``) against a value: the (gold, pred) pairs to compare, one per side of the equation. The
    statement holds only when every side equals the value (``2x=10`` is not 10, ``e^{i\\pi}=1`` is not 1)."""
    for value, stmt, value_is_gold in ((g, p, True), (p, g, False)):
        if is_equation(value) or is_inequality(value) or split_label(stmt) is not None:
            continue
        sides = equation_sides(stmt)
        if sides is None:
            continue
        return [(value, x) if value_is_gold else (x, value) for x in sides]
    return None


def resolve_pair(g: str, p: str) -> tuple[str, str, bool | None]:
    """Labels, chains and approximations resolved on both sides (``canonical.reduce_relation``).

    An equation on one side meets a value on the other: when that value was written with a label
    (``y=2x+3`` vs ``2x-y+3=0``) both stay equations, to be compared up to a scale factor; otherwise
    the verdict is False (``7=11a+c`` for ``11a+c``; ``2x=10`` for ``10``).
    Returns (gold, pred, verdict or None).
    """
    gl, pl = split_label(g), split_label(p)
    if gl is not None and pl is not None and not _labels_agree(gl[0], pl[0]):
        return g, p, False  # "x=2" is not "y=2" (f(x) and f(n) are the same function)
    gv, pv = reduce_relation(g), reduce_relation(p)
    g_eq, p_eq = is_equation(gv), is_equation(pv)
    if g_eq and not p_eq:
        if split_label(p) is None:
            return gv, pv, False
        pv = p
    elif p_eq and not g_eq:
        if split_label(g) is None:
            return gv, pv, False
        gv = g
    return gv, pv, None


_INEQ_PART = re.compile(r"(\\le(?![a-zA-Z])|\\ge(?![a-zA-Z])|<|>)")
_FLIP = {"<": ">", ">": "<", "\\le": "\\ge", "\\ge": "\\le"}


@dataclass(frozen=True, slots=True)
class Interval:
    """The solution set of a simple inequality in one subject: ``lo < x <= hi`` (None = infinite)."""

    subject: str
    lo: str | None
    lo_closed: bool
    hi: str | None
    hi_closed: bool


def simple_inequality(s: str) -> Interval | None:
    """``x>5``, ``5\\le x``, ``-2\\le x\\le7`` (bounds: numbers) -> an ``Interval``; None otherwise."""
    parts = [x.strip() for x in _INEQ_PART.split(s)]
    if len(parts) == 3:
        a, op, b = parts
        if parse_number(b) is not None and parse_number(a) is None and a:
            subject, op, bound = a, op, b
        elif parse_number(a) is not None and parse_number(b) is None and b:
            subject, op, bound = b, _FLIP[op], a
        else:
            return None
        closed = op in ("\\le", "\\ge")
        if op in (">", "\\ge"):
            return Interval(subject, bound, closed, None, False)
        return Interval(subject, None, False, bound, closed)
    if len(parts) == 5:
        a, op1, x, op2, b = parts
        if op1 != op2 and {op1, op2} not in ({"<", "\\le"}, {">", "\\ge"}):
            return None
        if parse_number(a) is None or parse_number(b) is None or not x or parse_number(x) is not None:
            return None
        if op1 in (">", "\\ge"):
            a, b, op1, op2 = b, a, _FLIP[op2], _FLIP[op1]
        return Interval(x, a, op1 == "\\le", b, op2 == "\\le")
    return None


def _negate(n: str | None) -> str | None:
    if n is None:
        return None
    return n[1:] if n.startswith("-") else "-" + n


def _normalise(i: Interval | None) -> Interval | None:
    """``-x > -1`` is ``x < 1``: a negated subject flips the interval."""
    if i is None or not i.subject.startswith("-") or parse_number(i.subject) is not None:
        return i
    return Interval(i.subject[1:], _negate(i.hi), i.hi_closed, _negate(i.lo), i.lo_closed)


def _bound_eq(a: str | None, b: str | None) -> bool | None:
    if a is None or b is None:
        return a is None and b is None
    na, nb = parse_number(a), parse_number(b)
    if na is None or nb is None:
        return None
    return na.value == nb.value


def interval_eq(a: Interval, b: Interval) -> bool | None:
    lo, hi = _bound_eq(a.lo, b.lo), _bound_eq(a.hi, b.hi)
    if lo is None or hi is None:
        return None
    return lo and hi and (a.lo is None or a.lo_closed == b.lo_closed) and (a.hi is None or a.hi_closed == b.hi_closed)


def _bracket_interval(b: Struct, subject: str = "") -> Interval | None:
    if b.kind != "bracket" or len(b.items) != 2:
        return None
    lo, hi = b.items
    lo_inf = lo in ("-\\infty", "-oo")
    hi_inf = hi in ("\\infty", "+\\infty", "oo")
    if (not lo_inf and parse_number(lo) is None) or (not hi_inf and parse_number(hi) is None):
        return None
    return Interval(subject, None if lo_inf else lo, b.open == "[", None if hi_inf else hi, b.close == "]")


def inequality_vs_bracket(ineq: str, b: Struct) -> bool | None:
    """A simple inequality against an interval (either side may be the gold): same set -> True."""
    i = simple_inequality(ineq)
    if i is None:
        return None
    j = _bracket_interval(b, i.subject)
    if j is None:
        return None
    return interval_eq(i, j)


def fast_scalar_eq(g: str, p: str, *, percent_option: bool = False, rounded: bool = False) -> tuple[bool | None, str]:
    """Compare two canonical scalars without sympy: (True/False, path) or (None, "") when undecided."""
    if _PLAIN_INT.fullmatch(g) and _PLAIN_INT.fullmatch(p):  # two integers: the steps below, short-cut
        if g == p:
            return True, "string"
        a, b = int(g), int(p)
        if a == b:
            return True, "number"
        return (percent_option and (100 * b == a or b == 100 * a)), "number"
    if is_undefined(p):
        return False, "number"  # undefined is never equal to anything
    if g == p and not is_equation(g):
        return True, "string"
    pairs = statement_pairs(g, p)
    if pairs is not None:  # every side of the statement must equal the value
        results = [fast_scalar_eq(a, b, percent_option=percent_option, rounded=rounded)[0] for a, b in pairs]
        if False in results:
            return False, "relation"
        return (True, "relation") if None not in results else (None, "")
    g, p, verdict = resolve_pair(g, p)
    if verdict is not None:
        return verdict, "relation"
    if g == p:
        return True, "string"
    if "\\pmod" in g or "\\pmod" in p:
        return False, "relation"  # a congruence left whole (false, or not in integers) equals nothing else
    if ":" in top_level(g) or ":" in top_level(p):
        return False, "string"  # clock times and ratios compare literally
    if is_inequality(g) or is_inequality(p):
        gi, pi = _normalise(simple_inequality(g)), _normalise(simple_inequality(p))
        if gi is not None and pi is not None:
            if gi.subject != pi.subject:
                return False, "relation"
            r = interval_eq(gi, pi)
            if r is not None:
                return r, "relation"
        ps = parse_structure(p) if pi is None else None
        if gi is not None and ps is not None and ps.kind == "bracket":  # never the reverse (Math-Verify's rule)
            r = inequality_vs_bracket(g, ps)
            if r is not None:
                return r, "relation"
        return None, ""
    if g in _INF or p in _INF:
        g_inf = g.replace("+", "")
        p_inf = p.replace("+", "")
        if g_inf in _INF or p_inf in _INF:
            return g_inf == p_inf, "number"
    gn = parse_number(g)
    if gn is not None:
        pn = parse_number(p)
        if pn is not None:
            return num_eq(gn, pn, percent_option=percent_option, rounded=rounded), "number"
        if is_relation(p):
            return False, "relation"  # "7=11a+c" for a numeric gold
    return None, ""


def _match_unordered(golds: list[str], preds: list[str], elem_eq: ElemEq) -> bool | None:
    """Set equality with possibly-undecided element comparisons (every element matched both ways)."""
    table: dict[tuple[int, int], bool | None] = {}

    def eq(i: int, j: int) -> bool | None:
        if (i, j) not in table:
            table[(i, j)] = elem_eq(golds[i], preds[j])[0]
        return table[(i, j)]

    undecided = False
    for j in range(len(preds)):
        results = [eq(i, j) for i in range(len(golds))]
        if True in results:
            continue
        if None in results:
            undecided = True
            continue
        return False  # a predicted element equal to no gold element
    for i in range(len(golds)):
        results = [eq(i, j) for j in range(len(preds))]
        if True in results:
            continue
        if None in results:
            undecided = True
            continue
        return False  # a gold element missing from the prediction
    return None if undecided else True


def _match_ordered(golds: list[str], preds: list[str], elem_eq: ElemEq) -> bool | None:
    if len(golds) != len(preds):
        return False
    undecided = False
    for g, p in zip(golds, preds, strict=True):
        r = elem_eq(g, p)[0]
        if r is False:
            return False
        if r is None:
            undecided = True
    return None if undecided else True


_INT_ONLY = re.compile(r"^\d+$")


def _decimal_comma(items: list[str], other: str) -> bool:
    """``1000,99`` / ``0,111`` read as a decimal comma when the other side is that decimal (``1000.99``)."""
    if len(items) != 2 or not all(_INT_ONLY.match(x) for x in items):
        return False
    a, b = items
    if len(b) == 3 and a != "0":
        return False  # "1,000" is a thousands separator, decided earlier
    n = parse_number(other)
    return n is not None and n.kind == "dec" and n.value == Fraction(f"{a}.{b}")


def _labelled_values(items: list[str]) -> list[str] | None:
    """``x=1,y=2`` -> ["1", "2"] when every item carries a distinct label; None otherwise."""
    labels = [split_label(it) for it in items]
    if any(lb is None for lb in labels) or len({lb[0] for lb in labels}) != len(items):  # type: ignore[index]
        return None
    return [lb[1] for lb in labels]  # type: ignore[index]


def _structured(elem_eq: ElemEq) -> ElemEq:
    """``elem_eq`` that compares items which are themselves tuples/sets/intervals as structures."""

    def eq(a: str, b: str) -> tuple[bool | None, str]:
        if a[:1] in "([\\" or b[:1] in "([\\" or "=" in a or "=" in b:
            sa, sb = parse_structure(a), parse_structure(b)
            if sa.kind != "scalar" or sb.kind != "scalar":
                return compare_struct(sa, sb, elem_eq)
        return elem_eq(a, b)

    return eq


def compare_struct(gs: Struct, ps: Struct, elem_eq: ElemEq) -> tuple[bool | None, str]:
    """Compare structures with the gold deciding the semantics. Returns (verdict or None, path)."""
    item_eq = _structured(elem_eq)
    if gs.kind == "scalar":
        if ps.kind == "scalar":
            return elem_eq(gs.text, ps.text)
        if ps.kind in ("set", "list") and len(ps.items) == 1:
            return item_eq(gs.text, ps.items[0])
        if ps.kind == "list" and _decimal_comma(ps.items, gs.text):
            return True, "number"
        if ps.kind in ("bracket", "union") and is_inequality(gs.text):
            if ps.kind == "bracket":
                r = inequality_vs_bracket(gs.text, ps)
                if r is not None:
                    return r, "relation"
            return None, "relation"  # a gold inequality may match a predicted interval (symbolic path)
        return False, "set"  # several answers (or a tuple) for a scalar gold
    if gs.kind in ("set", "list"):
        if ps.kind in ("set", "list"):
            return _match_unordered(gs.items, ps.items, item_eq), "set"
        if ps.kind == "scalar":
            if len(gs.items) == 1:
                return item_eq(gs.items[0], ps.text)
            if gs.kind == "list" and _decimal_comma(gs.items, ps.text):
                return True, "number"
            return False, "set"
        if ps.kind == "bracket" and ps.open + ps.close == "()" and gs.kind == "list":
            values = _labelled_values(gs.items)  # "x=1, y=2" is the ordered pair (1, 2)
            if values is not None:
                return _match_ordered(values, ps.items, item_eq), "tuple"
        return False, "set"
    if gs.kind == "bracket":
        if ps.kind != "bracket":
            if ps.kind == "matrix" and _is_vector(ps):
                return _match_ordered(gs.items, _flatten(ps), item_eq), "tuple"
            if ps.kind == "list" and gs.open + gs.close == "()":
                values = _labelled_values(ps.items)
                if values is not None:
                    return _match_ordered(gs.items, values, item_eq), "tuple"
            return False, "tuple" if len(gs.items) != 2 or gs.open + gs.close == "()" else "interval"
        interval = len(gs.items) == 2 and gs.open + gs.close != "()"
        path = "interval" if interval else "tuple"
        if (gs.open, gs.close) != (ps.open, ps.close):
            return False, path  # bracket types must match: (0,9) != [0,9)
        return _match_ordered(gs.items, ps.items, item_eq), path
    if gs.kind == "union":
        if ps.kind != "union" or len(ps.parts) != len(gs.parts):
            return False, "interval"

        def part_eq(a: str, b: str) -> tuple[bool | None, str]:
            return compare_struct(_part_by_text(gs, a), _part_by_text(ps, b), elem_eq)

        return _match_unordered([p.text for p in gs.parts], [p.text for p in ps.parts], part_eq), "interval"
    if gs.kind == "matrix":
        if ps.kind == "matrix":
            if [len(r) for r in gs.rows] != [len(r) for r in ps.rows]:
                return False, "matrix"
            return _match_ordered(_flatten(gs), _flatten(ps), item_eq), "matrix"
        if ps.kind == "bracket" and _is_vector(gs):
            return _match_ordered(_flatten(gs), ps.items, item_eq), "matrix"
        if ps.kind == "scalar" and "\\begin{" in ps.text:
            return None, "matrix"  # sums and products of literal matrices: the symbolic path evaluates them
        return False, "matrix"
    if gs.kind == "cases":
        if ps.kind != "cases" or len(ps.rows) != len(gs.rows):
            return False, "cases"
        return _match_rows(gs.rows, ps.rows, item_eq), "cases"
    return None, ""


def _match_rows(golds: list[list[str]], preds: list[list[str]], item_eq: ElemEq) -> bool | None:
    """Rows of two ``cases`` blocks as unordered sets of (value, condition): each gold row must equal a
    distinct predicted row in both its value and its condition (the row counts are equal)."""

    def row_eq(i: int, j: int) -> bool | None:
        results = [item_eq(a, b)[0] if a != b else True for a, b in zip(golds[i], preds[j], strict=True)]
        return False if False in results else (None if None in results else True)

    used: set[int] = set()
    undecided = False
    for i in range(len(golds)):
        outcomes = {j: row_eq(i, j) for j in range(len(preds)) if j not in used}
        match = next((j for j, r in outcomes.items() if r), None)
        if match is not None:
            used.add(match)
        elif None in outcomes.values():
            undecided = True
        else:
            return False
    return None if undecided else True


def _part_by_text(s: Struct, text: str) -> Struct:
    for p in s.parts:
        if p.text == text:
            return p
    raise KeyError(text)


def _flatten(m: Struct) -> list[str]:
    return [c for row in m.rows for c in row]


def _is_vector(m: Struct) -> bool:
    return len(m.rows) == 1 or all(len(r) == 1 for r in m.rows)
