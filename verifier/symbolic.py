"""The symbolic path: LaTeX -> sympy with a grammar parser, guarded, then compared (docs/verifier.md, 'Symbolic path').

Runs inside a worker process of ``winnow.verifier.pool`` (or in-process in ``grade``). Imports sympy.

* Parsing: ``latex2sympy2_extended``'s ANTLR grammar and converter (sympy objects are built with
  ``evaluate=False``; SLL prediction first, full LL only when SLL reports an error: the same trees; SLL's costliest
  blind spot, a letter with a superscript (every polynomial), is decided in the SLL stage: ``_SuperscriptFirst``).
  Model text is never passed to ``eval``, ``sympify`` or ``parse_expr``: the library's converter calls
  ``sympy.Number(token)`` (which ends in ``parse_expr``) for number tokens, so ``_SafeLatex2Sympy``
  overrides those two places with ``int()``/``Float(str)``; the library only calls ``parse_expr``
  otherwise on ``variable_values``, which we never pass. A test patches
  ``parse_expr``/``eval``/``exec`` to raise and runs the symbolic path.
  Every parsed tree goes through ``guard.check_tree`` before any evaluation.
* Scalars, in order: the fast path; structural ``==``; for constants a numeric probe
  (``evalf(30)``, relative error 1e-12, no chop, so ``1/2^99 != 1/2^98``; a side printed as a
  decimal with d >= 2 decimals must equal the exact value rounded half-up or truncated to d decimals;
  Float-free constants are first compared exactly as rationals when ``(a - b).doit()`` is one, so
  integers stay exact); for expressions with free symbols, evaluation at up to 6 random positive
  rational points (3 must agree to relative 1e-12; one clear mismatch decides "wrong"); only then
  ``simplify(a - b) == 0`` / ``a.equals(b)``.
* The imaginary unit: every free ``i`` (option ``imaginary``: ``i``, ``j``, or ``none`` when the problem
  declares ``i`` a variable) is ``sympy.I`` on both sides alike (``imaginary_unit``), so ``(1+i)^2`` is ``2i``.
* Statements: ``expr = value`` with no label on the left against a value holds only when every side equals
  the value (``fastpath.statement_pairs``): ``e^{i\\pi}=-1`` for -1, never ``e^{i\\pi}=1`` for 1.
* Relations: equations compare ``lhs - rhs`` up to a nonzero constant factor (checked at random
  points); univariate inequalities compare as solution sets; a gold inequality may match a
  predicted interval or union (never the reverse: an interval gold needs an interval).
* Structures (tuples, sets, intervals, matrices) are split by ``canonical.parse_structure`` and
  compared by ``fastpath.compare_struct`` with ``scalar_eq`` below for the elements.

Left out: assumptions (``\\sqrt{1/n}`` vs ``1/\\sqrt n`` is decided at positive points only),
multivariate inequality systems, degrees vs radians, functional equations.
"""

from __future__ import annotations

import functools
import random
import re
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation

import sympy
from antlr4.atn.ATNState import BlockEndState
from antlr4.atn.ParserATNSimulator import ParserATNSimulator
from antlr4.atn.PredictionMode import PredictionMode
from antlr4.atn.Transition import RuleTransition
from antlr4.error.ErrorStrategy import BailErrorStrategy
from latex2sympy2_extended import NormalizationConfig, normalize_latex
from latex2sympy2_extended.latex2sympy2 import ConversionConfig, PSParser, _Latex2Sympy, comma_number_regex

from winnow.verifier.canonical import Struct, parse_structure
from winnow.verifier.fastpath import (
    HIGH_PRECISION,
    compare_struct,
    fast_scalar_eq,
    is_inequality,
    parse_number,
    resolve_pair,
    statement_pairs,
)
from winnow.verifier.guard import VerifyError, check_tree
from winnow.verifier.quicktex import quick_parse

_SLL = PredictionMode.SLL
_NORM = NormalizationConfig(basic_latex=True, units=False, malformed_operators=True, nits=False, boxed="none")
_REL_TOL = sympy.Float("1e-12", 30)
_POINT_TOL = sympy.Float("1e-12", 30)
_DECIMAL_RE = re.compile(r"\d*\.\d+")


_INT_RE = re.compile(r"^\d+$")
_FLOAT_RE = re.compile(r"^(?:\d+\.\d*|\.\d+)$")


def safe_number(text: str):
    """A sympy number from a numeric token without ``sympy.Number(str)`` (which goes through
    ``sympify`` -> ``parse_expr`` -> ``eval``): ``int()`` for integers, ``Float(str)`` for decimals."""
    t = text.replace(",", "").replace(" ", "")
    if _INT_RE.match(t):
        return sympy.Integer(int(t))
    if _FLOAT_RE.match(t):
        return sympy.Float(t)
    raise ValueError(f"not a number token: {text[:40]!r}")


def _superscript_decision() -> int | None:
    """The ATN decision of ``atom_expr: LETTER (supexpr subexpr | subexpr supexpr | subexpr | supexpr)?``, checked
    against the grammar's shape (alternative 4 is ``supexpr`` alone, 5 the exit); None if the generated parser
    differs (then nothing is overridden)."""

    def rules_of(state) -> list[int] | None:  # the rules an alternative calls, in order, up to the block's end
        rules: list[int] = []
        for _ in range(20):
            if isinstance(state, BlockEndState):
                return rules
            if len(state.transitions) != 1:
                return None
            t = state.transitions[0]
            if isinstance(t, RuleTransition):
                rules.append(t.ruleIndex)
                state = t.followState
            elif t.isEpsilon:
                state = t.target
            else:
                return None
        return None

    atn = PSParser.atn
    found = [d for d in atn.decisionToState if d.ruleIndex == PSParser.RULE_atom_expr]
    if len(found) != 1 or len(found[0].transitions) != 5:
        return None
    alts = [rules_of(t.target) for t in found[0].transitions]
    sup, sub = PSParser.RULE_supexpr, PSParser.RULE_subexpr
    if alts != [[sup, sub], [sub, sup], [sub], [sup], []]:
        return None
    return found[0].decision


_SUPERSCRIPT_DECISION = _superscript_decision()


class _SuperscriptFirst(ParserATNSimulator):
    """SLL prediction, except at the superscript decision of ``atom_expr`` in a text without ``_``.

    SLL cannot decide ``x^{2}``: alternatives 1 (``supexpr subexpr``) and 4 (``supexpr``) share their prefix, so
    SLL reports a conflict, takes alternative 1 and fails at the missing ``_``; every letter with a superscript
    then cost a full-LL re-parse (~13 ms for ``x^{2}+14x+49``, against 0.3 ms). Without any ``_`` in the text,
    alternatives 1-3 cannot match, and the only other candidate is the exit (5): an enclosing ``exp CARET`` taking
    the same ``^S`` (the same sub-grammar as ``supexpr``), with the same continuation, since ``exp``'s optional
    ``subexpr`` needs a ``_``. So whenever 5 is viable so is 4, and LL resolves that ambiguity to the lower
    alternative, 4: the answer returned here. A syntax error still sends the text to the full-LL parse; tests
    compare every tree with LL's."""

    def adaptivePredict(self, input, decision, outerContext):
        if decision == _SUPERSCRIPT_DECISION and input.LA(1) == PSParser.CARET:
            return 4
        return super().adaptivePredict(input, decision, outerContext)


class _SafeLatex2Sympy(_Latex2Sympy):
    """latex2sympy2_extended's converter with its two ``sympy.Number(str)`` calls replaced."""

    def parse_number(self, text):
        return safe_number(text)

    def parse_tree(self, latex_str: str):
        """The grammar's parse tree (``math`` context) of ``latex_str``; raises on a syntax error.

        ANTLR's two-stage parse: SLL prediction first (several times faster than full-context LL); its
        contract is that it returns the very tree LL would, or reports a syntax error, in which case the
        input is parsed again the usual way and LL decides. The first stage bails out at the first error
        (ANTLR's BailErrorStrategy, the documented partner of SLL): no recovery bookkeeping (``sync`` at every
        loop and block), and an error raises either way (our listener raises in the second stage)."""
        parser = self.create_parser(latex_str)
        if "_" not in latex_str and _SUPERSCRIPT_DECISION is not None and PredictionMode.SLL is _SLL:  # (the SLL stage)
            parser._interp = _SuperscriptFirst(parser, parser.atn, parser.decisionsToDFA, parser.sharedContextCache)
        parser._interp.predictionMode = PredictionMode.SLL
        parser._errHandler = BailErrorStrategy()
        try:
            return parser.math()
        except Exception:
            return self.create_parser(latex_str).math()

    def parse(self, latex_str: str):
        math = self.parse_tree(latex_str)
        if math.set_relation():
            return self.convert_set_relation(math.set_relation())
        if math.set_elements():
            if comma_number_regex.match(latex_str):  # "1,000" is a number, "1, 000" a set (upstream rule)
                t = latex_str
                if "," in t and t.startswith("0"):
                    t = t.replace(",", ".")
                return safe_number(t)
            return self.convert_set_elements(math.set_elements())
        if math.set_elements_relation():
            return self.convert_set_elements_relation(math.set_elements_relation())
        raise ValueError("nothing matched")


@functools.lru_cache(maxsize=4096)
def _parse_cached(text: str):
    normal = normalize_latex(text, _NORM)
    quick = quick_parse(normal)  # the grammar's object for the commonest shapes, without ANTLR (None: not read)
    if quick is not None:
        return quick
    converter = _SafeLatex2Sympy(None, None, False, config=ConversionConfig())
    return converter.parse(normal)


def clear_caches() -> None:
    """Forget parsed strings (the zygote warms up on examples, then clears before forking workers)."""
    _parse_cached.cache_clear()


def parse_latex(text: str, *, side: str):
    """Parse canonical LaTeX into a guarded sympy object. ``side`` is "gold" or "pred" (error kinds)."""
    try:
        expr = _parse_cached(text)
    except (MemoryError, RecursionError) as exc:
        raise VerifyError("too_complex", f"{side} parse: {type(exc).__name__}") from None
    except Exception as exc:  # the grammar rejects the text: a verdict, not a crash
        status = "error" if side == "gold" else "unparsable"
        raise VerifyError(status, f"{side} does not parse: {str(exc).splitlines()[0][:120]}") from None
    if isinstance(expr, sympy.Basic) and expr.has(sympy.UnevaluatedExpr):  # "50\\%" -> 50*(1/100)
        expr = expr.replace(lambda e: isinstance(e, sympy.UnevaluatedExpr), lambda e: e.args[0])
    if isinstance(expr, list | tuple):  # "\\frac{1\\pm\\sqrt5}{2}": the grammar returns both branches
        if not expr or not all(isinstance(e, sympy.Expr) for e in expr):
            raise VerifyError("error" if side == "gold" else "unparsable", f"{side} parses to several expressions")
        expr = sympy.FiniteSet(*expr, evaluate=False)
    refusal = check_tree(expr)
    if refusal is not None:
        raise VerifyError(refusal.kind, f"{side}: {refusal.detail}")
    return expr


def _decimals_of(text: str) -> int | None:
    """Printed decimals when the text is a plain decimal number (for the decimal-vs-exact tolerance)."""
    n = parse_number(text)
    return n.decimals if n is not None and n.kind == "dec" else None


def _is_finite_number(v) -> bool:
    """An evaluated number: real and imaginary parts are finite sympy Numbers (not an unevaluated tree)."""
    if not v.is_number or v.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo):
        return False
    try:
        re_, im_ = v.as_real_imag()
    except Exception:
        return False
    return bool(re_.is_Number and im_.is_Number)


def _close(a, b, tol) -> bool:
    """Relative closeness of two evaluated numbers (complex allowed)."""
    diff = sympy.N(abs(a - b), 30)
    scale = sympy.N(max(abs(a), abs(b), key=lambda v: sympy.N(v, 30)), 30)
    if scale == 0:
        return diff == 0
    try:
        return bool(diff <= tol * scale)
    except TypeError:  # not comparable: not equal as far as we can tell
        return False


def _exact_rational_diff(g, p) -> bool | None:
    """For Float-free constants, ``(g - p).doit()``; decides when that is a Rational (integers exact)."""
    if g.has(sympy.Float) or p.has(sympy.Float):
        return None
    try:
        diff = (g - p).doit()
    except (MemoryError, RecursionError):
        raise
    except Exception:
        return None
    if isinstance(diff, sympy.Rational):
        return diff == 0
    return None


def _decimal_matches(exact, dec, d: int) -> bool:
    """``dec`` (printed with ``d`` decimals) is ``exact`` rounded half-up or truncated to ``d`` decimals."""
    try:
        x = Decimal(str(sympy.N(exact, 40)))
        y = Decimal(str(sympy.N(dec, 40)))
    except (InvalidOperation, ValueError):
        return False
    q = Decimal(1).scaleb(-d)
    y = y.quantize(q, rounding=ROUND_HALF_UP)
    return x.quantize(q, rounding=ROUND_HALF_UP) == y or x.quantize(q, rounding=ROUND_DOWN) == y


def _numeric_probe(g, p, g_text: str, p_text: str, *, rounded: bool = False) -> bool | None:
    exact = _exact_rational_diff(g, p)
    if exact is not None:
        return exact
    try:
        gv = sympy.N(g, 30)
        pv = sympy.N(p, 30)
    except (MemoryError, RecursionError):
        raise
    except Exception:
        return None
    if not (_is_finite_number(gv) and _is_finite_number(pv)):
        return None
    if gv.free_symbols or pv.free_symbols:
        return None
    gd, pd = _decimals_of(g_text), _decimals_of(p_text)
    if (gd is None) != (pd is None):
        d = gd if gd is not None else pd
        exact, dec = (pv, gv) if gd is not None else (gv, pv)
        if rounded and d >= 2:
            return _decimal_matches(exact, dec, d)
        if d >= HIGH_PRECISION:  # strict: a decimal stands for an exact value only to 6 places
            return _decimal_matches(exact, dec, HIGH_PRECISION)
        if not rounded:
            return _close(gv, pv, _REL_TOL)
    return _close(gv, pv, _REL_TOL)


def _points(symbols, n: int, seed: int):
    rng = random.Random(seed)
    syms = sorted(symbols, key=lambda s: s.name)
    for _ in range(n):
        yield {s: sympy.Rational(rng.randint(7, 60), rng.randint(5, 13)) for s in syms}


def _random_points(g, p) -> bool | None:
    syms = g.free_symbols | p.free_symbols
    agree = 0
    for point in _points(syms, 6, 12345):
        try:
            gv = g.evalf(30, subs=point)
            pv = p.evalf(30, subs=point)
        except (MemoryError, RecursionError):
            raise
        except Exception:
            continue
        if not (_is_finite_number(gv) and _is_finite_number(pv)) or gv.free_symbols or pv.free_symbols:
            continue
        if not _close(gv, pv, _POINT_TOL):
            return False
        agree += 1
        if agree >= 3:
            return True
    return None


def _simplify_equal(g, p) -> bool:
    try:
        if sympy.simplify(g - p) == 0:
            return True
        return bool(g.equals(p))
    except (MemoryError, RecursionError):
        raise
    except Exception:
        return False


UNITS = ("i", "j", "none")


def imaginary_unit(e, unit: str = "i"):
    """The grammar reads ``i`` as a symbol: make every free ``i`` (or ``j``) the imaginary unit, on both sides
    alike, unless the problem declared it a variable (``unit="none"``). Bound ``i`` (``\\sum_{i=1}``) stays."""
    if unit == "none" or not isinstance(e, sympy.Basic):
        return e
    sym = sympy.Symbol(unit)
    return e.subs(sym, sympy.I) if sym in e.free_symbols else e


def expr_equal(g, p, g_text: str = "", p_text: str = "", *, rounded: bool = False) -> tuple[bool, str]:
    """Compare two parsed sympy expressions (the imaginary unit already resolved). Returns (equal, path)."""
    if g == p:
        return True, "symbolic"
    if isinstance(g, sympy.Expr) and isinstance(p, sympy.Expr):
        if not g.free_symbols and not p.free_symbols:
            r = _numeric_probe(g, p, g_text, p_text, rounded=rounded)
            if r is not None:
                return r, "numeric_probe"
        else:
            r = _random_points(g, p)
            if r is not None:
                return r, "numeric_probe"
        return _simplify_equal(g, p), "symbolic"
    if isinstance(g, sympy.MatrixBase) and isinstance(p, sympy.MatrixBase):
        if g.shape != p.shape:
            return False, "matrix"
        return all(expr_equal(a, b)[0] for a, b in zip(g, p, strict=True)), "matrix"
    if isinstance(g, sympy.Set) and isinstance(p, sympy.Set):
        try:
            return bool(g == p or sympy.simplify(g.symmetric_difference(p)) == sympy.S.EmptySet), "set"
        except Exception:
            return False, "set"
    return False, "symbolic"


def _eq_up_to_scalar(d1, d2) -> bool:
    """lhs-rhs of two equations equal up to a nonzero constant factor."""
    syms = d1.free_symbols | d2.free_symbols
    if not syms:
        return bool(sympy.simplify(d1) == 0) == bool(sympy.simplify(d2) == 0)
    ratios = []
    for point in _points(syms, 6, 777):
        try:
            a = d1.evalf(30, subs=point)
            b = d2.evalf(30, subs=point)
        except Exception:
            continue
        if not (_is_finite_number(a) and _is_finite_number(b)) or a.free_symbols or b.free_symbols:
            continue
        if b == 0 or abs(b) < 1e-25:
            if abs(a) > 1e-20:
                return False
            continue
        ratios.append(a / b)
    if len(ratios) >= 3:
        r0 = ratios[0]
        return abs(r0) > 1e-20 and all(_close(r, r0, _POINT_TOL) for r in ratios[1:])
    try:
        q = sympy.simplify(d1 / d2)
        return bool(q.is_number and q != 0 and q.is_finite)
    except Exception:
        return False


def _as_set(rel):
    syms = rel.free_symbols
    if len(syms) != 1:
        return None
    try:
        return rel.as_set()
    except Exception:
        return None


def _is_inequality(e) -> bool:
    """A strict/non-strict inequality, or an And/Or of them (``1<x<3`` parses to an And)."""
    if isinstance(e, sympy.Rel):
        return not isinstance(e, sympy.Equality | sympy.Unequality)
    if isinstance(e, sympy.And | sympy.Or):
        return all(_is_inequality(a) for a in e.args)
    return False


def _is_relation(e) -> bool:
    return isinstance(e, sympy.Rel) or _is_inequality(e)


def relation_equal(g, p) -> tuple[bool, str]:
    """Gold relation vs predicted relation (or a predicted set, for a gold inequality)."""
    if isinstance(g, sympy.Equality) and isinstance(p, sympy.Equality):
        if g == p:
            return True, "relation"
        return _eq_up_to_scalar(g.lhs - g.rhs, p.lhs - p.rhs), "relation"
    if _is_inequality(g):
        gset = _as_set(g)
        if isinstance(p, sympy.Set):
            pset = p
        elif _is_inequality(p):
            if (g.free_symbols != p.free_symbols) and len(g.free_symbols) == 1:
                return False, "relation"
            pset = _as_set(p)
        else:
            return False, "relation"
        if gset is None or pset is None:
            return bool(g == p), "relation"
        return expr_equal(gset, pset)[0], "relation"
    return bool(g == p), "relation"


def scalar_eq(g: str, p: str, *, percent_option: bool = False, rounded: bool = False,
              unit: str = "i") -> tuple[bool, str]:
    """Compare two canonical scalar strings: fast path first, then sympy."""
    fast, path = fast_scalar_eq(g, p, percent_option=percent_option, rounded=rounded)
    if fast is not None:
        return fast, path
    pairs = statement_pairs(g, p)
    if pairs is not None:  # "e^{i\\pi}=-1" for -1: every side must equal the value
        for a, b in pairs:
            if not scalar_eq(a, b, percent_option=percent_option, rounded=rounded, unit=unit)[0]:
                return False, "relation"
        return True, "relation"
    g, p, verdict = resolve_pair(g, p)
    if verdict is not None:
        return verdict, "relation"
    gx = imaginary_unit(parse_latex(g, side="gold"), unit)
    px = imaginary_unit(parse_latex(p, side="pred"), unit)
    if _undefined(gx):
        raise VerifyError("error", "gold is undefined (division by zero or nan)")
    if _undefined(px):
        return False, "symbolic"  # undefined is never equal to anything
    g_rel = _is_relation(gx)
    p_rel = _is_relation(px)
    if g_rel or p_rel:
        if g_rel and (p_rel or isinstance(px, sympy.Set)):
            return relation_equal(gx, px)
        return False, "relation"
    if isinstance(gx, sympy.Expr | sympy.MatrixBase | sympy.Set) and isinstance(px, sympy.Expr | sympy.MatrixBase | sympy.Set):
        return expr_equal(gx, px, g, p, rounded=rounded)
    return bool(gx == px), "relation"  # logic (And/Or/...) compares structurally


def _undefined(e) -> bool:
    """nan / complex infinity, literal or after evaluation (``\\frac{1}{0}``, ``0/0``)."""
    if not isinstance(e, sympy.Expr):
        return False
    if e.has(sympy.nan, sympy.zoo):
        return True
    if e.free_symbols or not e.is_number:
        return False
    try:
        v = e.doit()
    except Exception:
        return False
    return v is sympy.nan or v is sympy.zoo or (isinstance(v, sympy.Basic) and v.has(sympy.nan, sympy.zoo))


def compare_canonical(gold: str, pred: str, *, percent_option: bool = False, rounded: bool = False,
                      unit: str = "i") -> tuple[bool, str]:
    """Full comparison of canonical gold and prediction (structures, then scalars), fast then symbolic.

    ``unit``: the symbol read as the imaginary unit (``i``, ``j``, or ``none`` when the problem declares
    ``i`` a variable)."""
    gs = parse_structure(gold)
    ps = parse_structure(pred)

    def elem_eq(a: str, b: str) -> tuple[bool | None, str]:
        return scalar_eq(a, b, percent_option=percent_option, rounded=rounded, unit=unit)

    result, path = compare_struct(gs, ps, elem_eq)
    if result is None and path == "relation":
        return _inequality_vs_set(gs, ps)
    if result is None and path == "matrix":
        return _matrix_expression(gs.text, ps.text, unit)
    if result is None:
        raise VerifyError("error", f"undecided comparison ({gs.kind} vs {ps.kind})")
    return result, path or "symbolic"


def _matrix_expression(gold: str, pred: str, unit: str = "i") -> tuple[bool, str]:
    """A gold matrix against sums/products of literal matrices (evaluated elementwise)."""
    gx = imaginary_unit(parse_latex(gold, side="gold"), unit)
    px = imaginary_unit(parse_latex(pred, side="pred"), unit)
    try:
        gm = sympy.Matrix(gx.doit()) if not isinstance(gx, sympy.MatrixBase) else gx
        pm = px.doit() if hasattr(px, "doit") else px
        pm = sympy.Matrix(pm)
    except Exception:
        return False, "matrix"
    return expr_equal(gm, pm)[0], "matrix"


def _inequality_vs_set(gs: Struct, ps: Struct) -> tuple[bool, str]:
    gx = parse_latex(gs.text, side="gold")
    px = parse_latex(ps.text, side="pred")
    if not is_inequality(gs.text) or not _is_inequality(gx):
        return False, "relation"
    return relation_equal(gx, px)
