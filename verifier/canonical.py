"""Deterministic canonicalisation of an extracted answer and its top-level structure (docs/verifier.md, 'Canonicalisation').

``canonicalize`` is a string pass (a union of the Hendrycks, Minerva and Math-Verify rules):
delimiters and ``\\boxed`` removed; ``\\left``/``\\right``, ``\\!``, ``\\,``, ``\\displaystyle``
dropped; ``\\dfrac``/``\\tfrac`` -> ``\\frac``; ``\\frac12``, ``\\frac1{x}``, ``\\sqrt3`` braced;
``\\text``/``\\mathrm``/``\\textbf``/``\\mbox`` unwrapped; unit words removed (a word list, never
single letters, only when the answer has a digit); ``^\\circ``, ``\\$`` removed; ``\\%`` -> ``%``;
thousands separators (``1{,}000``, ``1,\\!000``, ``1\\,000``; ``1,000`` only when every group has
3 digits and there is no space after the comma); mixed numbers ``2 1/2``; ``or``/``and`` between
answers -> ``,``; ``a\\pm b`` -> ``a+b,a-b``; a leading ``x \\in``; the trailing period; whitespace (a space is kept only after a
LaTeX command followed by a letter).

TeX reading: an unbraced ``^``/``_`` takes one token (``2^2 3`` -> ``2^{2}3``, i.e. 12; ``\\log_2 4`` -> ``\\log_{2}4``),
except a digit run glued to it (``2^10`` -> ``2^{10}``); in an expression with a trig function every ``N^\\circ``
is ``\\frac{N\\pi}{180}`` (``\\sin(90^\\circ-x)``), a bare angle loses its degree sign; ``\\bmod`` -> ``\\mod``,
``\\pmod n``/``(\\mod n)`` -> ``\\pmod{n}`` (``reduce_congruence`` reads ``a\\equiv b\\pmod{n}``).

Also: percent words (``percent``, ``pct``, ``percentage``) -> ``%``; currency signs dropped; a unit
glued to a number with a superscript (``m²``) dropped; relation operators normalised (``<=``, ``\\leq``,
``\\leqslant`` -> ``\\le``; ``\\lt`` -> ``<``; ``!=`` -> ``\\ne``); conjunctions glued to values
(``(1,2)or(2,1)``, ``1orW``) separate; a space as thousands separator (``1 000``); ``;`` separates values
(``p=5,q=2;p=7,q=2`` -> ``(5,2),(7,2)``, ``(0;-2;6)`` -> ``(0,-2,6)``); braces used as a list
(``{1,2,3}``) are a set.

Labels and relations (``is_label``, ``reduce_relation``): a left side made of symbols only (a variable,
a tuple of variables, ``f(x)``, ``|AB|``, ``A:B``, ``\\frac{NO}{BO}``, subscripts allowed) is a label and
is dropped; a chain of equalities gives its last side when that side is constant; an approximation tail
(``\\approx …``) is dropped; anything else with ``=`` is an equation (never drop a left side with
numeric coefficients).

``parse_structure`` splits a canonical answer at its top level into a ``Struct``: scalar, bare list
(unordered solution list), set ``\\{…\\}``, tuple/interval (the bracket characters are kept so the
gold decides the semantics), a union of intervals, or a matrix.

Left out: number words ("five"), base subscripts (``1011_2``), units written as single letters.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

_UNITS = sorted(
    """
    degrees degree cm centimeters centimeter centimetres centimetre meters meter metres metre km kilometers
    kilometer mm millimeters millimeter inches inch feet foot ft yards yard yd miles mile mph kph kmh kg
    kilograms kilogram grams gram mg pounds pound lbs lb ounces ounce oz tons ton liters liter litres litre
    ml mL gallons gallon quarts quart cups cup seconds second sec secs minutes minute mins min hours hour hrs
    hr days day weeks week months month years year dollars dollar cents cent euros euro units unit square
    sq cubic points point students people persons apples cookies marbles books pages times per each
    """.split(),
    key=len,
    reverse=True,
)
_UNIT_RE = re.compile(r"(?<![A-Za-z\\])(?:" + "|".join(_UNITS) + r")(?:\s*\^\{?[23]\}?)?(?![A-Za-z])")
_TEXT_CMD_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|textsf|texttt|textnormal|mathrm|mathbf|mathit|mathsf|mbox|operatorname|emph)"
    r"\s*\{([^{}]*)\}"
)
_SPACING_RE = re.compile(r"(?<!\\)\\[!,;:> ]|\\q?quad|~|\\(?:displaystyle|textstyle|scriptstyle|limits)\b")
_SIZING_RE = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|Biggl|Biggr|big|Big|bigg|Bigg|middle)(?![a-zA-Z])")
_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u00b7": "\\cdot ", "\u22c5": "\\cdot ", "\u221e": "\\infty ",
    "\u03c0": "\\pi ", "\u221a": "\\sqrt", "\u2264": "\\le ", "\u2265": "\\ge ", "\u2260": "\\ne ", "\u00b0": "^\\circ",
    "\u00a0": " ", "\u2009": " ", "\u202f": " ",
}
_THOUSANDS_RE = re.compile(r"^[+-]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?%?$")


def _unwrap_text(s: str) -> str:
    prev = None
    while prev != s:
        prev = s
        s = _TEXT_CMD_RE.sub(lambda m: " " + m.group(1) + " ", s)
    return s


def strip_outer_boxed(s: str) -> str:
    from winnow.verifier.extract import find_boxed

    st = s.strip()
    if st.startswith(("\\boxed", "\\fbox")):
        boxed, _ = find_boxed(st)
        if len(boxed) == 1 and st.endswith("}"):
            return boxed[0]
    return s


_R = re.compile
_DTFRAC = _R(r"\\[dtc]frac")
_BRACE_COMMA = _R(r"(\d)\{,\}(?=\d)")
_COMMA_BANG = _R(r"(\d),\\!\s*(?=\d{3})")
_THIN_SPACE = _R(r"(\d)\\,(?=\d{3}(?!\d))")
_DEGREE_SIGN = r"(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree)"
_DEGREES = _R(_DEGREE_SIGN)
_TRIG = _R(r"\\(?:sin|cos|tan|cot|sec|csc|arcsin|arccos|arctan)(?![a-zA-Z])")
_ANGLE = _R(r"(\d+(?:\.\d+)?)\s*" + _DEGREE_SIGN)
# TeX: an unbraced ^ or _ takes one token. A digit run glued to ^/_ is read whole (``2^10``, ``10^12``: the
# plain-text habit; nobody writes 2^1 0 for 20); a space, ``\,`` or another token after it starts a new factor.
_SCRIPT = _R(r"([\^_])[ \t]*(\d+|[A-Za-z]|\\[A-Za-z]+(?![A-Za-z{\[]))")
_BMOD = _R(r"\\bmod(?![a-zA-Z])")
_PMOD = _R(r"\(\s*\\(?:bmod|mod)\s*\{?\s*(\d+)\s*\}?\s*\)|\\pmod\s*\{\s*(\d+)\s*\}|\\pmod\s*(\d+)")
_PERCENT_WORD = _R(r"(?<![A-Za-z])(?:percentage|percent|pct)(?![A-Za-z])")
_CURRENCY = _R(r"[€£¥]|\\euro\b")
_GLUED_UNIT = _R(r"(?<=\d)\s*[a-zA-Z]{1,3}[²³]")  # "1,000.99m²": a unit with a superscript is never a variable
_SPACE_THOUSANDS = _R(r"^[+-]?[1-9]\d{0,2}(?: \d{3})+(?:\.\d+)?$")
_GLUED_CONJ = _R(r"(?<=[\d)\]}])\s*(?:or|and)\s*(?=[-+\d(\[{\\A-Za-z])")
_REL_OPS = ((_R(r"\\leqslant|\\leq|<=|\\le(?![a-z])"), "\\le "), (_R(r"\\geqslant|\\geq|>=|\\ge(?![a-z])"), "\\ge "),
            (_R(r"\\neq|!=|\\ne(?![a-z])"), "\\ne "), (_R(r"\\lt(?![a-z])"), "<"), (_R(r"\\gt(?![a-z])"), ">"))
_DIGIT = _R(r"\d")
_OR_AND = _R(r"\s+(?:or|and)\s+")
_MIXED = _R(r"^([+-]?\d+)\s+(\d+)\s*/\s*(\d+)$")
_IN_PREFIX = _R(r"^[a-zA-Z]\s*\\in\s*")
_CMD_SPACE = _R(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])")
_WS = _R(r"\s+")
_FRAC_DD = _R(r"\\frac(\d)(\d)")
_FRAC_D = _R(r"\\frac(\d)\{")
_FRAC_XD = _R(r"\\frac\{([^{}]*)\}(\d)")
_SQRT_D = _R(r"\\sqrt(\d)")
_INFIN = _R(r"\\infin(?![a-z])|\\infinity")
_UNARY_PLUS = _R(r"(?<![\w)}\]])\+(?=[\d\\.])")
_PLAIN_NUMBER = _R(r"-?\d+(?:\.\d+)?")
_PM = _R(r"\\pm(?![a-zA-Z])")
_EMPTY_SETS = {"\\{\\}", "\\varnothing", "\\emptyset", "\\O", "\\empty", "{}", "emptyset", "\u2205"}


@functools.lru_cache(maxsize=65536)
def canonicalize(s: str) -> str:
    """Canonical string form of an extracted answer (see module doc). Pure, O(n) regex passes, cached."""
    from winnow.verifier.extract import strip_math_delimiters

    s = s.strip()
    if _PLAIN_NUMBER.fullmatch(s):
        return s
    s = strip_math_delimiters(s)
    s = strip_outer_boxed(s)
    s = strip_math_delimiters(s)
    for k, v in _UNICODE.items():
        if k in s:
            s = s.replace(k, v)
    s = s.replace("\\left.", "").replace("\\right.", "")
    s = _SIZING_RE.sub("", s)
    s = s.replace("\\lbrace", "\\{").replace("\\rbrace", "\\}").replace("\\lbrack", "[").replace("\\rbrack", "]")
    s = s.replace("\\langle", "(").replace("\\rangle", ")")
    s = _DTFRAC.sub(r"\\frac", s)
    s = _BRACE_COMMA.sub(r"\1", s)
    s = _COMMA_BANG.sub(r"\1", s)
    s = _THIN_SPACE.sub(r"\1", s)
    s = _SPACING_RE.sub(" ", s)
    if ("circ" in s or "degree" in s) and _TRIG.search(s):  # an angle inside an expression with a trig function
        s = _ANGLE.sub(lambda m: f"(\\frac{{{m.group(1)}\\pi}}{{180}})", s)  # is pi/180 per degree: \\sin 30^\\circ = 1/2
    s = _DEGREES.sub("", s)  # a bare angle ("30^\\circ") is its number of degrees
    if "mod" in s:
        s = _PMOD.sub(lambda m: f"\\pmod{{{m.group(1) or m.group(2) or m.group(3)}}}", s)
        s = _BMOD.sub(r"\\mod ", s)
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "%")
    s = _unwrap_text(s)
    s = _PERCENT_WORD.sub("%", s)
    s = _CURRENCY.sub("", s)
    s = _GLUED_UNIT.sub("", s)
    for rx, rep in _REL_OPS:
        s = rx.sub(lambda _m, r=rep: r, s)
    if _DIGIT.search(s):
        s = _UNIT_RE.sub(" ", s)
    s = _OR_AND.sub(",", s.strip())
    s = _GLUED_CONJ.sub(",", s)
    if _SPACE_THOUSANDS.match(s):
        s = s.replace(" ", "")
    s = _MIXED.sub(r"\1\\frac{\2}{\3}", s.strip())
    s = _IN_PREFIX.sub("", s)
    if _THOUSANDS_RE.match(s.strip().rstrip(".")):  # before whitespace goes: "1, 000" stays a list
        s = s.replace(",", "")
    if "^" in s or "_" in s:
        s = _SCRIPT.sub(lambda m: f"{m.group(1)}{{{m.group(2)}}}", s)
    # whitespace: keep one space only between a command and a following letter
    s = _CMD_SPACE.sub("\\1\x00", s)
    s = _WS.sub("", s).replace("\x00", " ")
    s = _FRAC_DD.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_D.sub(r"\\frac{\1}{", s)
    s = _FRAC_XD.sub(r"\\frac{\1}{\2}", s)
    s = _SQRT_D.sub(r"\\sqrt{\1}", s)
    s = _INFIN.sub(r"\\infty", s)
    s = _UNARY_PLUS.sub("", s)
    s = s.rstrip(".").rstrip("\\").rstrip(",")
    if s in _EMPTY_SETS:
        return "\\emptyset"
    if s.lower() in _NUMBER_WORDS:  # the whole answer is a number word ("four", "\\text{twelve}")
        return _NUMBER_WORDS[s.lower()]
    if ";" in s and not s.startswith("\\begin"):
        s = _TUPLE_SEMICOLONS.sub(lambda m: m.group(0).replace(";", ","), s)  # "(0;-2;6)" is "(0,-2,6)"
        s = _semicolons(s)
    if len(s) > 2 and s[0] == "{" and s[-1] == "}" and _close_of_first(s) == len(s) - 1 and len(split_top(s[1:-1])) > 1:
        s = "\\{" + s[1:-1] + "\\}"  # "{1,2,3}": braces used as a list
    if len(_PM.findall(s)) == 1 and "," not in s:
        s = _expand_pm(s)
    return s


_TUPLE_SEMICOLONS = re.compile(r"\([^(),;]*(?:;[^(),;]*)+\)")


_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_NUMBER_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80",
                      "ninety": "90", "hundred": "100", "thousand": "1000"})


def _semicolons(s: str) -> str:
    """``a;b;c`` -> ``a,b,c``; a group of labelled values with distinct labels (``p=5,q=2;p=7,q=2``)
    becomes a tuple ``(5,2)``."""
    groups = split_top(s, ";")
    if len(groups) < 2:
        return s
    out = []
    for g in groups:
        items = split_top(g)
        labels = [split_label(it) for it in items]
        if len(items) > 1 and all(lb is not None for lb in labels) and len({lb[0] for lb in labels}) == len(items):
            out.append("(" + ",".join(lb[1] for lb in labels) + ")")
        else:
            out.append(g)
    return ",".join(x for x in out if x)


def _expand_pm(s: str) -> str:
    """One ``\\pm`` anywhere -> the list of both branches: ``a\\pm b`` -> ``a+b,a-b``, ``\\pm b`` -> ``b,-b``,
    ``\\frac{1\\pm\\sqrt5}{2}`` -> ``\\frac{1+\\sqrt5}{2},\\frac{1-\\sqrt5}{2}``."""
    m = _PM.search(s)
    plus = s[: m.start()] + "+" + s[m.end() :]
    minus = s[: m.start()] + "-" + s[m.end() :]
    return f"{_UNARY_PLUS.sub('', plus)},{minus}"


# --------------------------------------------------------------------------- structure

_OPENERS = "([{"
_CLOSERS = ")]}"
_ASSIGN_RE = re.compile(r"^([a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?|\\[a-zA-Z]+)=(?!=)(.+)$")
_CASES_RE = re.compile(r"^\\begin\{cases\}(.*)\\end\{cases\}$", re.S)
_CONDITION_WORDS = re.compile(r"^,?(?:if|for|when|where)(?![a-z]{2})")
_MATRIX_RE = re.compile(r"^\\begin\{(pmatrix|bmatrix|Bmatrix|matrix|smallmatrix|array)\}(.*)\\end\{\1\}$", re.S)


@dataclass(slots=True)
class Struct:
    """Top-level shape of a canonical answer.

    kind: ``scalar``, ``list`` (bare commas), ``set`` (braces), ``bracket`` (``(…)``/``[…]``/mixed, with
    ``open``/``close`` kept), ``union`` (of ``bracket`` items), ``matrix`` (``rows``), ``cases`` (``rows`` of
    [value, condition], from ``\\begin{cases}``).
    """

    kind: str
    text: str
    items: list[str] = field(default_factory=list)
    open: str = ""
    close: str = ""
    rows: list[list[str]] = field(default_factory=list)
    parts: list[Struct] = field(default_factory=list)


def split_top(s: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside any brackets/braces."""
    out, depth, start = [], 0, 0
    i = 0
    while i < len(s):
        ch = s[i]
        if ch in _OPENERS:
            depth += 1
        elif ch in _CLOSERS:
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            out.append(s[start:i])
            start = i + len(sep)
            i += len(sep)
            continue
        i += 1
    out.append(s[start:])
    return out


def _close_of_first(s: str) -> int:
    """Index where the bracket opened at s[0] closes (any bracket type), or -1."""
    depth = 0
    for i, ch in enumerate(s):
        if ch in _OPENERS:
            depth += 1
        elif ch in _CLOSERS:
            depth -= 1
            if depth == 0:
                return i
    return -1


_GREEK = ("alpha|beta|gamma|delta|epsilon|varepsilon|theta|vartheta|lambda|mu|nu|rho|sigma|tau|phi|varphi|psi|omega|"
          "xi|eta|zeta|kappa|chi|Delta|Gamma|Theta|Lambda|Sigma|Phi|Omega|Psi|Xi")
_SYM = rf"(?:[A-Za-z]+|\\(?:{_GREEK}))'*"
_LABEL_RE = re.compile(
    rf"^(?:{_SYM}|\(({_SYM})(?:,{_SYM})+\)|{_SYM}\({_SYM}(?:,{_SYM})*\)|\|{_SYM}\||{_SYM}:{_SYM}"
    rf"|\\frac\{{{_SYM}\}}\{{{_SYM}\}}|{_SYM}/{_SYM}|(?:m)?\\angle ?{_SYM})$"
)
_SUBSCRIPT_RE = re.compile(r"_(?:\{[^{}]*\}|[A-Za-z0-9])|\^\{?\\prime\}?|\\prime")
_DECOR_RE = re.compile(r"\\(?:overline|vec|hat|bar|widehat|overrightarrow|mathbf|bm)\{([^{}]*)\}")
_NOT_LABELS = {"sin", "cos", "tan", "log", "ln", "exp", "sqrt", "frac", "pi", "infty", "lim", "max", "min", "det"}
_CONST_CMDS = re.compile(
    r"\\(?:frac|sqrt|pi|cdot|times|div|infty|circ|pm|mp|ldots|cdots|sin|cos|tan|cot|sec|csc|log|ln|exp|"
    r"arcsin|arccos|arctan|binom)(?![a-zA-Z])"
)
_APPROX = re.compile(r"\\approx|\\simeq|≈")


def is_label(s: str) -> bool:
    """A left side made of symbols only: ``x``, ``(x,y)``, ``f(x)``, ``|AB|``, ``A:B``, ``\\frac{NO}{BO}``,
    ``x_1``, ``V_{1}:V_{2}``, ``\\overline{AB}``. Never one with a number or an operator (``2x``, ``x+y``)."""
    t = _DECOR_RE.sub(r"\1", s)
    t = _SUBSCRIPT_RE.sub("", t)
    t = t.replace(" ", "")
    if not t or t.lower() in _NOT_LABELS:
        return False
    return _LABEL_RE.match(t) is not None


def is_constant(s: str) -> bool:
    """A side with no variables: digits, operators and numeric commands only (``\\frac{10}{9}``, ``3\\sqrt2``)."""
    t = _CONST_CMDS.sub("", s)
    return bool(_DIGIT.search(t)) and not re.search(r"[A-Za-z\\]", t)


def _sides(s: str) -> list[str]:
    if "=" not in s or any(op in s for op in ("\\le", "\\ge", "<", ">", "\\ne")):
        return [s]
    return split_top(s, "=")


def split_label(s: str) -> tuple[str, str] | None:
    """``x=5`` -> ("x", "5") when the left side is a label (``is_label``); None otherwise."""
    sides = _sides(s)
    if len(sides) == 2 and sides[1] and is_label(sides[0]):
        return sides[0], sides[1]
    return None


def split_assignment(s: str) -> tuple[str, str] | None:
    """Kept name: ``split_label``."""
    return split_label(s)


def reduce_relation(s: str) -> str:
    """The value a relation states, or ``s`` itself when it is an equation to compare.

    * An approximation tail is dropped (``\\frac13\\approx0.33`` -> ``\\frac13``); a lone ``x\\approx 3`` reads as ``x=3``.
    * A label is dropped (``x=5`` -> ``5``, ``f(x)=x^2`` -> ``x^2``).
    * A chain of equalities gives its last side when that side is constant (``x=5+5+1=11`` -> ``11``,
      ``\\frac12\\cdot\\frac{20}{9}=\\frac{10}{9}`` -> ``\\frac{10}{9}``); so does ``constant = constant``.
    * Anything else with ``=`` (``2x+4y-3=0``, ``7=11a+c``) is an equation and stays whole.
    """
    if "\\pmod" in s:
        s = reduce_congruence(s)
    m = _APPROX.search(s)
    if m:
        head, tail = s[: m.start()], s[m.end() :]
        s = head if "=" in top_level(head) else (head + "=" + tail if head else tail)
    sides = _sides(s)
    if len(sides) < 2 or not all(sides):
        return s
    last = sides[-1]
    label = is_label(sides[0])
    if label and len(sides) == 2:
        return last
    if is_constant(last) and (label or len(sides) > 2 or (is_constant(sides[0]) and not sides[0].isdigit())):
        return last
    if label:
        return "=".join(sides[1:]) if len(sides) > 2 else last
    return s


def equation_sides(s: str) -> list[str] | None:
    """The sides of an equation that ``reduce_relation`` keeps whole (no label on the left, not a chain ending
    in a constant): ``e^{i\\pi}=-1`` -> [``e^{i\\pi}``, ``-1``]. None for anything else."""
    if "=" not in s:
        return None
    r = reduce_relation(s)
    if r != s or not is_equation(r):
        return None
    sides = _sides(r)
    return sides if len(sides) >= 2 and all(sides) else None


_PMOD_TAIL = re.compile(r"\\pmod\{(\d+)\}$")
_INTEGER = re.compile(r"-?\d+")


def reduce_congruence(s: str) -> str:
    """``a\\equiv b\\pmod{n}`` states the residue ``b`` when every side is congruent mod n (a false congruence
    stays whole, so it equals no value); ``x\\equiv 3\\pmod{7}`` is 3; a bare ``a\\pmod{n}`` is ``a``."""
    m = _PMOD_TAIL.search(s)
    if m is None:
        return s
    body, n = s[: m.start()], int(m.group(1))
    if "\\equiv" not in body:
        return body
    sides = split_top(body, "\\equiv")
    if n > 0 and all(_INTEGER.fullmatch(x) for x in sides):
        return sides[-1] if all((int(x) - int(sides[-1])) % n == 0 for x in sides) else s
    if len(sides) == 2 and sides[1] and is_label(sides[0]):
        return sides[1]
    return s


def top_level(s: str) -> str:
    """``s`` with every ``{…}`` group removed (so ``\\sum_{i=1}`` has no top-level ``=``). Linear."""
    if "{" not in s:
        return s
    out, depth = [], 0
    for ch in s:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def is_equation(s: str) -> bool:
    return "=" in top_level(s) and len(_sides(s)) >= 2


def _parse_bracket(s: str) -> Struct | None:
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _close_of_first(s) == len(s) - 1:
        items = split_top(s[1:-1])
        return Struct("bracket", s, items, s[0], s[-1])
    return None


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(x for x in items if x != ""))


def parse_structure(s: str) -> Struct:
    """Top-level structure of a canonical answer (see ``Struct``). Set/list items are de-duplicated.

    A label in front of a tuple, set, interval or matrix is dropped (``(p,q)=(3,2)``, ``D=(0,1)``).
    """
    lab = split_label(s) if "=" in s else None
    if lab is not None:
        inner = parse_structure(lab[1])
        if inner.kind != "scalar":
            return inner
    if len(s) > 2 and s[0] in "([" and s[-1] in ")]" and s[1:].startswith("\\begin{") and _close_of_first(s) == len(s) - 1:
        inner = parse_structure(s[1:-1])  # "\\left[\\begin{array}…\\end{array}\\right]": a matrix in delimiters
        if inner.kind == "matrix":
            return inner
    c = _CASES_RE.match(s) if s.count("\\begin{") == 1 else None
    if c:  # a piecewise answer: rows of (value, condition)
        rows = [r.split("&", 1) for r in c.group(1).split("\\\\") if r.strip()]
        return Struct("cases", s, rows=[[r[0].rstrip(","), _CONDITION_WORDS.sub("", r[1]) if len(r) > 1 else ""]
                                       for r in rows])
    m = _MATRIX_RE.match(s) if s.count("\\begin{") == 1 else None
    if m:
        body = m.group(2)
        if m.group(1) == "array":
            body = re.sub(r"^\{[lcr|]*\}", "", body)
        rows = [r for r in body.split("\\\\") if r.strip()]
        return Struct("matrix", s, rows=[r.split("&") for r in rows])
    if "\\cup" in s:
        pieces = split_top(s, "\\cup")
        if len(pieces) > 1:
            parts = [_parse_bracket(p) for p in pieces]
            if all(p is not None and len(p.items) == 2 for p in parts):
                return Struct("union", s, parts=parts)  # type: ignore[arg-type]
    if s.startswith("\\{") and s.endswith("\\}") and _close_of_first(s[1:]) == len(s) - 2:
        inner = s[2:-2]
        return Struct("set", s, _dedupe(split_top(inner)) if inner else [])
    b = _parse_bracket(s)
    if b is not None:
        if len(b.items) == 1 and b.open == "(" and b.close == ")":
            return parse_structure(b.items[0])  # "(5)" is just 5
        if len(b.items) >= 2:
            return b
    items = split_top(s)
    if len(items) > 1:
        items = _dedupe(items)
        return Struct("list", s, items) if len(items) > 1 else Struct("scalar", items[0] if items else "")
    return Struct("scalar", s)
