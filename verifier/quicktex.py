"""A quick reader for the commonest symbolic answers: the same sympy objects as the grammar, without ANTLR.

ANTLR's Python runtime is most of a symbolic job (docs/benchmarks.md, 'Third pass'): a warm parse ~0.5-1 ms,
and each new shape of input costs its adaptive prediction a DFA build (~1-2 ms per job in a fresh worker). This
module reads a small, unambiguous subset of LaTeX by recursive descent and builds each sympy object with the
very calls ``latex2sympy2_extended``'s converter makes for the grammar's tree of that text (``add_flat`` /
``mul_flat`` of the converter instance, ``Pow(..., evaluate=False)``, the mixed-fraction rule of
``convert_postfix_list``, ``-number`` for a subtracted number, ``Rational`` for an integer fraction, ``exp``
for ``e^``, ...), so the result is the object ``parse`` would return. Anything outside the subset returns
``None`` and the text goes to the grammar as before; so does a text on which a conversion step raises.

The subset (after ``normalize_latex``; at most ``MAX_LEN`` characters):

* numbers ``12``, ``1.5``, ``.5`` (not next to another number across a space: ``2 3`` is the grammar's mixed
  fraction, not read here), lowercase letters other than ``d`` (differentials) and ``e``, never two letters in a
  row (multi-letter tokens such as ``ln``), ``e`` as Euler's number and ``e^`` as ``exp`` (not after a digit:
  ``2e3`` is scientific notation), ``\\pi``;
* ``+ -`` (binary, left-associative, and unary), ``\\cdot``, ``\\times``, ``/``, implicit products;
* ``^{expr}`` and ``^`` with one digit or one letter, on a number, letter, group or power;
* ``(expr)``, ``\\frac{expr}{expr}``, ``\\sqrt{expr}``;
* ``\\sin \\cos \\tan`` with an optional exponent and either ``(expr)`` or one letter/number/``\\pi`` as the
  argument, followed by ``+``, ``-``, ``)``, ``}`` or the end (so the grammar's argument extent is not in doubt).

Tests (``tests/verifier/test_quicktex.py``) compare this reader's object with the grammar's, ``srepr`` for
``srepr``, on fixed shapes, on seeded random expressions of the subset and on the symbolic inputs of the
benchmark sets, and check that every text the grammar rejects is declined here.
"""

from __future__ import annotations

import sympy
from latex2sympy2_extended.latex2sympy2 import ConversionConfig, _Latex2Sympy
from latex2sympy2_extended.symbols import get_symbol

MAX_LEN = 400
_FUNCS = {"sin", "cos", "tan"}
_CMDS = {"frac", "sqrt", "pi", "cdot", "times"} | _FUNCS
_LETTERS = frozenset("abcfghijklmnopqrstuvwxyz")  # not d (differentials), not e (Euler's number, exp)
_CONV = _Latex2Sympy(None, None, False, config=ConversionConfig())
_LOWER = ConversionConfig().lowercase_symbols
_END = frozenset({"+", "-", ")", "}", None})


class _Decline(Exception):
    """The text is outside the subset: the grammar reads it."""


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, value) pairs: 'num', 'let', 'e', 'cmd', or the character itself for ``+ - ( ) { } ^ /``."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    prev_space = False
    while i < n:
        c = text[i]
        if c == " ":
            prev_space = True
            i += 1
            continue
        if c.isdigit() and c.isascii() or c == "." and i + 1 < n and text[i + 1].isdigit():
            j = i
            while j < n and text[j].isascii() and text[j].isdigit():
                j += 1
            if j < n and text[j] == ".":
                j += 1
                if not (j < n and text[j].isascii() and text[j].isdigit()):
                    raise _Decline
                while j < n and text[j].isascii() and text[j].isdigit():
                    j += 1
            if j < n and (text[j] in ".,e" or text[j].isdigit()):
                raise _Decline
            if prev_space and out and out[-1][0] == "num":
                raise _Decline
            out.append(("num", text[i:j]))
            i = j
        elif c in _LETTERS or c == "e":
            if i + 1 < n and text[i + 1].isalpha():
                raise _Decline
            if c == "e":
                if out and out[-1][0] == "num" and not prev_space:
                    raise _Decline
                if i + 1 < n and text[i + 1] != "^" and text[i + 1:].lstrip(" ")[:1] == "^":
                    raise _Decline  # "e ^{x}": the grammar's token is "e^"
            out.append(("e" if c == "e" else "let", c))
            i += 1
        elif c == "\\":
            j = i + 1
            while j < n and text[j].isascii() and text[j].isalpha():
                j += 1
            name = text[i + 1 : j]
            if name not in _CMDS:
                raise _Decline
            out.append(("cmd", name))
            i = j
        elif c in "+-(){}^/":
            out.append((c, c))
            i += 1
        else:
            raise _Decline
        prev_space = False
    return out


class _Reader:
    def __init__(self, toks: list[tuple[str, str]]):
        self.toks = toks
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i][0] if self.i < len(self.toks) else None

    def peek_tok(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str) -> str:
        if self.peek() != kind:
            raise _Decline
        v = self.toks[self.i][1]
        self.i += 1
        return v

    # additive: left-associative; convert_add
    def expr(self):
        lh = self.mp()
        while self.peek() in ("+", "-"):
            op = self.take(self.peek())  # type: ignore[arg-type]
            rh = self.mp()
            if op == "-":
                if hasattr(rh, "func") and rh.func.is_Number:
                    rh = -rh
                else:
                    rh = _CONV.mul_flat(-1, rh)
            lh = _CONV.add_flat(lh, rh)
        return lh

    # mp: left-associative; convert_mp
    def mp(self):
        lh = self.unary()
        while True:
            t = self.peek_tok()
            if t == ("cmd", "cdot") or t == ("cmd", "times"):
                self.i += 1
                lh = _CONV.mul_flat(lh, self.unary())
            elif t is not None and t[0] == "/":
                self.i += 1
                rh = self.unary()
                if getattr(lh, "is_Integer", False) and getattr(rh, "is_Integer", False):
                    lh = sympy.Rational(lh, rh)
                else:
                    lh = sympy.Mul(lh, sympy.Pow(rh, -1, evaluate=False), evaluate=False)
            else:
                return lh

    # unary: (ADD|SUB) unary | postfix+ ; convert_unary, convert_postfix_list
    def unary(self):
        k = self.peek()
        if k == "+":
            self.i += 1
            return self.unary()
        if k == "-":
            self.i += 1
            t = self.unary()
            if hasattr(t, "func") and t.func.is_Number:
                return -t
            if getattr(t, "is_Number", False):
                return -t
            return _CONV.mul_flat(-1, t)
        items = [self.postfix()]
        while self.peek() in ("num", "let", "e", "(") or (self.peek() == "cmd" and self.toks[self.i][1] in
                                                            ("frac", "sqrt", "pi") + tuple(_FUNCS)):
            items.append(self.postfix())
        return _postfix_list(items)

    def postfix(self):
        named = self.peek() in ("let", "e") or self.peek_tok() == ("cmd", "pi")
        base = self.comp()
        while self.peek() == "^":
            if isinstance(base, _Func):
                raise _Decline
            self.i += 1
            base = sympy.Pow(_value(base), self.sup(), evaluate=False)
        if named and self.peek() == "(":  # "f(x)", "y^3(t)": the grammar reads a function application
            raise _Decline
        return _value(base)

    def sup(self):
        """A superscript: ``{expr}`` or one digit / one letter."""
        k = self.peek()
        if k == "{":
            self.i += 1
            e = self.expr()
            self.take("}")
            return e
        if k == "num":
            v = self.take("num")
            if len(v) != 1 or self.peek() == "^":
                raise _Decline
            return _number(v)
        if k == "let":
            v = self.take("let")
            if self.peek() == "^":  # "x^{t}" in an exponent takes the next superscript itself
                raise _Decline
            return _letter(v)
        raise _Decline

    def comp(self):
        k = self.peek()
        if k == "num":
            return _number(self.take("num"))
        if k == "let":
            return _letter(self.take("let"))
        if k == "e":
            self.i += 1
            if self.peek() == "^":
                self.i += 1
                e = sympy.exp(self.sup())
                if self.peek() == "^":
                    raise _Decline
                return _Func(e)
            return sympy.E
        if k == "(":
            self.i += 1
            e = self.expr()
            self.take(")")
            return e
        if k == "cmd":
            name = self.take("cmd")
            if name == "pi":
                return get_symbol("\\pi", None, _LOWER)
            if name == "frac":
                self.take("{")
                top = self.expr()
                self.take("}")
                self.take("{")
                bot = self.expr()
                self.take("}")
                if getattr(top, "is_Integer", False) and getattr(bot, "is_Integer", False):
                    return sympy.Rational(top, bot)
                return sympy.Mul(top, sympy.Pow(bot, -1, evaluate=False), evaluate=False)
            if name == "sqrt":
                self.take("{")
                e = self.expr()
                self.take("}")
                return sympy.Pow(e, sympy.S.Half, evaluate=False)
            if name in _FUNCS:
                return _Func(self.func(name))
        raise _Decline

    def func(self, name: str):
        """``\\sin`` etc.: convert_func's single-argument branch."""
        func_pow = None
        if self.peek() == "^":
            self.i += 1
            func_pow = self.sup()
        k = self.peek()
        if k == "(":
            self.i += 1
            arg = self.expr()
            self.take(")")
        elif k == "num":
            arg = _number(self.take("num"))
        elif k == "let":
            arg = _letter(self.take("let"))
        elif self.peek_tok() == ("cmd", "pi"):
            self.i += 1
            arg = get_symbol("\\pi", None, _LOWER)
        else:
            raise _Decline
        if self.peek() not in _END:
            raise _Decline
        if func_pow == -1:
            name = "a" + name
            func_pow = None
        expr = getattr(sympy, name)(arg, evaluate=False)
        if func_pow:
            expr = sympy.Pow(expr, func_pow, evaluate=False)
        return expr


class _Func:
    """A function call or ``e^``: no superscript may follow (the grammar would read it differently)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _value(x):
    return x.value if isinstance(x, _Func) else x


def _number(text: str):
    """``_SafeLatex2Sympy.parse_number``: ``int()`` / ``Float(str)``, never ``sympy.Number(str)``."""
    if "." in text:
        return sympy.Float(text)
    return sympy.Integer(int(text))


def _letter(c: str):
    return get_symbol(c, None, _LOWER)


def _postfix_list(items: list):
    """convert_postfix_list: a right fold of implicit products with the mixed-fraction rule."""
    res = items[0]
    if len(items) == 1:
        return res
    rh = _postfix_list(items[1:])
    if getattr(res, "is_Integer", False) and getattr(rh, "is_Rational", False) and rh.p > 0 and rh.q > 0:
        if res < 0:
            return sympy.Rational(res * rh.q - rh.p, rh.q)
        return sympy.Rational(res * rh.q + rh.p, rh.q)
    return _CONV.mul_flat(res, rh)


def quick_parse(text: str):
    """The sympy object the grammar's converter gives for ``text`` (normalised LaTeX), or None (not read here)."""
    if not text or len(text) > MAX_LEN:
        return None
    try:
        r = _Reader(_tokens(text))
        e = r.expr()
        if r.i != len(r.toks):
            return None
        return e
    except _Decline:
        return None
    except (RecursionError, MemoryError):
        return None
    except Exception:
        return None  # a conversion step raised: let the grammar give its own answer
