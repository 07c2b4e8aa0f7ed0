"""Input guards of the verifier: cheap checks that run before any parsing (docs/verifier.md, 'Input guards' and 'Symbolic path').

Two layers:

* ``check_text`` is O(n) over the extracted answer (a string): length, control characters,
  balanced braces/brackets, brace depth. It never imports sympy.
* ``check_tree`` walks a parsed sympy expression (inside a worker process) and refuses trees that
  could make sympy hang or allocate gigabytes: more than ``MAX_NODES`` nodes, an integer literal
  above 10^50, an exponent above 10^4 (including towers: the magnitude of an exponent is bounded
  recursively, so ``9^{9^{9^9}}`` is refused without evaluating it), a factorial argument above
  10^3, nesting deeper than 30, or any number whose estimated size exceeds 10^5 decimal digits.

Both return ``None`` when the input is acceptable, else a ``Refusal`` naming the rule; the caller
maps ``kind`` to a status (``unparsable`` or ``too_complex``).

Left out: guards on the time a particular sympy algorithm takes (that is the pool's wall-clock
budget) and on objects the LaTeX grammar cannot produce.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

MAX_RESPONSE_CHARS = 8000  # kept from the end of a response, after </think>
MAX_ANSWER_CHARS = 512
MAX_BRACE_DEPTH = 50
MAX_BOXED = 8
MAX_NODES = 300
MAX_INT = 10**50
MAX_EXPONENT = 10**4
MAX_FACTORIAL_ARG = 10**3
MAX_DEPTH = 30
MAX_LOG10 = 1e5  # refuse numbers with more than ~100k decimal digits

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_OPEN = {"{": "}", "(": ")", "[": "]"}


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a guard refused an input. ``kind`` is ``"unparsable"`` or ``"too_complex"``."""

    kind: str
    detail: str


def has_control_chars(text: str) -> bool:
    return _CONTROL.search(text) is not None


def brace_depth(text: str) -> tuple[int, bool]:
    """Maximum ``{}`` nesting depth of ``text`` and whether its braces balance (``\\{`` counts too)."""
    if "{" not in text and "}" not in text:
        return 0, True
    depth = best = 0
    for ch in text:
        if ch == "{":
            depth += 1
            if depth > best:
                best = depth
        elif ch == "}":
            depth -= 1
            if depth < 0:
                return best, False
    return best, depth == 0


def check_text(answer: str) -> Refusal | None:
    """O(n) checks on an extracted answer before any canonicalisation or parsing."""
    if len(answer) > MAX_ANSWER_CHARS:
        return Refusal("too_complex", f"answer has {len(answer)} chars > {MAX_ANSWER_CHARS}")
    if has_control_chars(answer):
        return Refusal("unparsable", "control characters in answer")
    depth, balanced = brace_depth(answer)
    if depth > MAX_BRACE_DEPTH:
        return Refusal("too_complex", f"brace depth {depth} > {MAX_BRACE_DEPTH}")
    if not balanced:
        return Refusal("unparsable", "unbalanced braces")
    return None


# --------------------------------------------------------------------------- sympy tree guard


def _log10_bound(expr: Any, memo: dict[int, float]) -> float:
    """Upper bound of log10|value| for a numeric sympy subtree; ``inf`` when it may be astronomical.

    Symbols count as magnitude 10 (log 1): the bound is about literal sizes, not values.
    """
    key = id(expr)
    if key in memo:
        return memo[key]
    import sympy

    if isinstance(expr, sympy.Integer):
        n = abs(int(expr))
        out = math.log10(n) if n > 1 else 0.0
    elif isinstance(expr, sympy.Rational):
        out = max(_log10_bound(sympy.Integer(expr.p), memo), _log10_bound(sympy.Integer(expr.q), memo))
    elif isinstance(expr, sympy.Float):
        try:
            v = abs(float(expr))
            out = math.log10(v) if 1 < v < math.inf else (0.0 if v <= 1 else math.inf)
        except (OverflowError, ValueError):
            out = math.inf
    elif isinstance(expr, sympy.Pow):
        base = _log10_bound(expr.base, memo)
        exp = _log10_bound(expr.exp, memo)
        # |b^e| <= 10^(base * 10^exp)
        out = math.inf if exp > 300 else max(base, 1.0) * 10.0**exp
    elif isinstance(expr, sympy.Mul):
        out = sum(_log10_bound(a, memo) for a in expr.args)
    elif isinstance(expr, sympy.Add):
        out = max((_log10_bound(a, memo) for a in expr.args), default=0.0) + math.log10(len(expr.args) + 1)
    elif isinstance(expr, sympy.factorial):
        arg = _log10_bound(expr.args[0], memo)
        out = math.inf if arg > 300 else 10.0**arg * max(arg, 1.0)
    else:
        out = max((_log10_bound(a, memo) for a in expr.args if isinstance(a, sympy.Basic)), default=1.0)
    memo[key] = out
    return out


def check_tree(expr: Any) -> Refusal | None:
    """Refuse sympy trees that are too big or whose evaluation could blow up (see module doc)."""
    import sympy

    nodes = 0
    memo: dict[int, float] = {}
    stack = [(expr, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            return Refusal("too_complex", f"more than {MAX_NODES} nodes")
        if depth > MAX_DEPTH:
            return Refusal("too_complex", f"nesting deeper than {MAX_DEPTH}")
        if isinstance(node, sympy.Integer) and abs(int(node)) > MAX_INT:
            return Refusal("too_complex", "integer literal > 10^50")
        if isinstance(node, sympy.Rational) and (abs(node.p) > MAX_INT or node.q > MAX_INT):
            return Refusal("too_complex", "rational literal > 10^50")
        if isinstance(node, sympy.Pow):
            exp_mag = _log10_bound(node.exp, memo)
            if exp_mag > math.log10(MAX_EXPONENT):
                return Refusal("too_complex", "exponent > 10^4")
        if isinstance(node, sympy.factorial | sympy.factorial2 | sympy.gamma | sympy.subfactorial):
            if _log10_bound(node.args[0], memo) > math.log10(MAX_FACTORIAL_ARG):
                return Refusal("too_complex", "factorial argument > 10^3")
        if isinstance(node, sympy.binomial):
            if _log10_bound(node.args[0], memo) > 6:
                return Refusal("too_complex", "binomial argument > 10^6")
        if isinstance(node, sympy.Basic) and node.is_number and not isinstance(node, sympy.Number):
            if _log10_bound(node, memo) > MAX_LOG10:
                return Refusal("too_complex", "number with more than 10^5 digits")
        args = node.args if isinstance(node, sympy.Basic) else ()
        if isinstance(node, sympy.MatrixBase):
            args = tuple(node)
        for a in args:
            stack.append((a, depth + 1))
    return None


class VerifyError(Exception):
    """A verdict that is not correct/wrong, raised deep inside a comparison.

    ``status`` is a ``Status`` label: ``unparsable``, ``too_complex`` or ``error`` (a gold that cannot
    be parsed: not the model's fault, so never scored as wrong).
    """

    def __init__(self, status: str, detail: str):
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
