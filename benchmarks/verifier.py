"""Benchmark: winnow's math verifier engine vs math-verify 0.9.0, on the same inputs, in one run.

    .venv/bin/python benchmarks/verifier.py [--out results.json] [--quick] [--n 300]
    .venv/bin/python benchmarks/verifier.py --cli [--repeat 3] [--out results.json]
    winnow bench verifier [--out results.json]

Six timed categories (every item distinct; winnow runs with its verdict cache off, since each item
is scored twice, sequentially and then in one batch):
  ``integers``:       integers, right and wrong;
  ``dec_frac``:       fractions (unreduced, slash) and exact decimals, right and wrong;
  ``symbolic``:       LaTeX expressions that need algebra (expand, radicals, pi, exponentials);
  ``sets_intervals``: sets of numeric tuples, solution lists, intervals, unions of rays;
  ``relations``:      flipped and double inequalities, labelled values, chained equalities, lines
                      solved for y vs their implicit form (scale factor);
  ``adversarial``:    the hostile inputs of docs/verifier.md, 'Adversarial inputs' (huge powers and factorials,
      5,000 nested braces, a code-injection payload, rel-tol / percent / subset / bracket traps,
      hedged boxes, a 24k-character chain of thought).
For each set: sequential per-item latency p50/p99 (one caller, one item at a time: ``verify``)
and throughput, for winnow sequentially and with ``verify_batch`` (its worker pool), and for
math-verify sequentially (``parse`` + ``verify`` in the main thread with its own signal-based
timeouts, the only way it times out; it cannot run in threads). Ratios are printed as
ours/theirs: throughput > 1 and latency < 1 mean winnow is faster.

Then agreement with math-verify over a mixed set (several hundred items): GSM8K golds (from
``--gsm8k``, default ``../shared/data/gsm8k/test.jsonl``; skipped when absent) with correct
answers in many surface forms and perturbed answers, plus the three sets above and, when
present, the engine's case table (``tests/verifier/cases.py``: ``all_cases()``). Every item carries
its ground truth by construction (``None`` where the right verdict is a policy choice). Each
disagreement is classified by the variant that produced it and by who matches the ground truth;
``NOTES`` below holds the manual judgement for each kind. JSON results go to ``--out``.

``--cli``: the same comparison through the command line, start-up included. A file of
``--cli-integers`` integer items (default 20,000) and one of ``--cli-symbolic`` symbolic items (default
300) each go through ``winnow score FILE -o OUT`` (a fresh process, in-process engine, ``--workers``) and
through math-verify's CLI equivalent (a fresh ``benchmarks/verifier.py --math-verify-loop IN OUT``:
import math-verify, parse and verify line by line, write JSONL), back to back, ``--repeat`` times (default
3). Printed per run: both wall times, the ratio (math-verify / winnow: > 1 = winnow faster), the load
average before the run, how many ``correct`` flags agree, the CPU seconds of each side (``cpu s``: the process
and what it waited for; ``all cpu``: also winnow's pool workers, which the kernel reaps, sampled from /proc) and
their ratios; raw runs go to ``--out``. With ``--grpc``
each run also times ``winnow score FILE --verifier HOST:PORT`` against a ``winnow verifier serve`` started
(``--workers``, verdict cache off) and warmed up before the runs: the service's speed through its client.

Gold for math-verify is wrapped as ``\\boxed{gold}`` (the usual reward-function practice, e.g.
verl and Minimal-RL); GSM8K's ``#### 1,234`` is reduced to ``1234`` for it, while winnow gets
the raw ``#### 1,234`` (it understands that form).
"""

import argparse
import json
import logging
import platform
import random
import re
import runpy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"

# Manual judgement per variant kind, written after reading the disagreements of a run (see the
# docstring). "truth" is what a reward for RL should say; the note says why and who gets it right.
NOTES: dict[str, str] = {
    "answer_is": "'The answer is N.' with no box: a plain, unambiguous final-answer cue; both should accept.",
    "hash": "GSM8K-style '#### N' at the end: the dataset's own answer format; accept.",
    "thousands": "'1,234' with 3-digit groups is the number 1234 (GSM8K golds use it); accept.",
    "dollar": "'\\$18' is 18 dollars; the currency sign is not part of the value; accept.",
    "decimal0": "'18.00' equals 18 exactly; accept.",
    "units_text": "'18 \\text{ apples}': a trailing unit word does not change the value; accept.",
    "off_by_one": "N+1 for gold N: wrong.",
    "times10": "10N for gold N: wrong (a percent-style x10 allowance would be a false positive).",
    "no_answer": "No final answer at all: not correct.",
    "hedge": "Two different boxed values: a hedge; rewarding it teaches the policy to box every candidate.",
    "bare_number_no_cue": "Number only in running text, no cue: policy choice (winnow needs options.last_number).",
    "wrong_then_right": "Two boxed values, the last one right: policy choice (winnow treats distinct boxes as a hedge).",
}


# No `from __future__ import annotations` here: `winnow bench` loads this file without registering it
# in sys.modules, and dataclasses then cannot resolve string annotations.
@dataclass
class Case:
    kind: str
    response: str
    gold: str  # as winnow gets it
    mv_gold: str  # as math-verify gets it (before \boxed{} wrapping)
    truth: bool | None  # is the response correct? None: the right verdict is a policy choice
    reason: str = ""  # why (case-table rows carry their own reason)


# -- the sets ------------------------------------------------------------------------------------
def int_frac_cases(n: int, rng: random.Random) -> list[Case]:
    out: list[Case] = []
    seen: set[tuple[str, str]] = set()
    while len(out) < n:
        k = rng.randrange(6)
        if k == 0:
            g = rng.randint(-10**6, 10**6)
            c = Case("int_right", f"Adding everything up gives \\boxed{{{g}}}.", str(g), str(g), True)
        elif k == 1:
            g = rng.randint(-10**6, 10**6)
            c = Case("int_wrong", f"So the total is \\boxed{{{g + rng.choice([-2, -1, 1, 3])}}}.", str(g), str(g), False)
        elif k == 2:
            a, b = rng.randint(1, 999), rng.randint(2, 999)
            m = rng.randint(2, 9)
            c = Case("frac_unreduced_right", f"The probability is \\boxed{{\\frac{{{a * m}}}{{{b * m}}}}}.",
                     f"\\frac{{{a}}}{{{b}}}", f"\\frac{{{a}}}{{{b}}}", True)  # fmt: skip
        elif k == 3:
            a, b = rng.randint(1, 999), rng.randint(2, 999)
            c = Case("frac_wrong", f"The ratio is $\\boxed{{\\frac{{{a + 1}}}{{{b}}}}}$.", f"{a}/{b}", f"{a}/{b}", False)
        elif k == 4:
            a = rng.randint(1, 9999)
            exact = f"{a / 8:.3f}".rstrip("0").rstrip(".")  # a/8 has at most 3 decimals: exact
            c = Case("decimal_vs_frac", f"This equals \\boxed{{{exact}}}.", f"\\frac{{{a}}}{{8}}", f"\\frac{{{a}}}{{8}}",
                     True)  # fmt: skip
        else:
            a, b = rng.randint(1, 99), rng.randint(2, 99)
            c = Case("slash_frac_right", f"Hence \\boxed{{{a}/{b}}}", f"\\frac{{{a}}}{{{b}}}", f"\\frac{{{a}}}{{{b}}}", True)
        if (c.response, c.gold) not in seen:
            seen.add((c.response, c.gold))
            out.append(c)
    return out


def symbolic_cases(n: int, rng: random.Random) -> list[Case]:
    out: list[Case] = []
    seen: set[tuple[str, str]] = set()
    while len(out) < n:
        k = rng.randrange(7)
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        right = rng.random() < 0.6
        d = 0 if right else rng.choice([1, 2])
        if k == 0:  # expand a square
            r, g = f"x^2+{2 * a + d}x+{a * a}", f"(x+{a})^2"
        elif k == 1:  # rationalise a denominator
            p = rng.choice([2, 3, 5, 7, 11, 13])
            r, g = f"\\frac{{{a + d}\\sqrt{{{p}}}}}{{{p}}}", f"\\frac{{{a}}}{{\\sqrt{{{p}}}}}"
        elif k == 2:  # pull a square out of a radical
            p = rng.choice([2, 3, 5, 6, 7])
            r, g = f"{a}\\sqrt{{{p + d}}}", f"\\sqrt{{{a * a * p}}}"
        elif k == 3:  # multiples of pi
            r, g = f"\\frac{{{a + d}\\pi}}{{{b}}}", f"\\frac{{{2 * a}\\pi}}{{{2 * b}}}"
        elif k == 4:  # exponentials
            r, g = f"e^{{{a + b + d}x}}", f"e^{{{a}x}} \\cdot e^{{{b}x}}"
        elif k == 5:  # factored vs expanded quadratic
            r, g = f"x^2-{a + b + d}x+{a * b}", f"(x-{a})(x-{b})"
        else:  # trigonometric identity times a constant
            r, g = f"{a + d}", f"{a}\\sin^2 x + {a}\\cos^2 x"
        c = Case(f"sym{k}_{'right' if right else 'wrong'}", f"Simplifying, we get $\\boxed{{{r}}}$.", g, g, right)
        if (c.response, c.gold) not in seen:
            seen.add((c.response, c.gold))
            out.append(c)
    return out


def sets_intervals_cases(n: int, rng: random.Random) -> list[Case]:
    """Sets of numeric tuples, solution lists, intervals and unions (decided without sympy in winnow)."""
    out: list[Case] = []
    seen: set[tuple[str, str]] = set()
    while len(out) < n:
        k = rng.randrange(5)
        a, b, c, d = (rng.randint(-30, 30) for _ in range(4))
        right = rng.random() < 0.6
        if k == 0:  # a set of ordered pairs, in another order; wrong: one pair swapped
            g = f"({a},{b}),({c},{d})"
            r = f"\\{{({c},{d}),({a},{b})\\}}" if right else f"({b},{a}),({c},{d})"
            right = right or a == b
        elif k == 1:  # a solution list, permuted; wrong: a subset
            g = f"{a}, {b}, {c}"
            r = f"{c}, {a}, {b}" if right else f"{a}, {b}"
            right = right or c in (a, b)
        elif k == 2:  # an interval; wrong: the other bracket
            lo, hi = sorted((a, b + 31))
            g = f"[{lo}, {hi})"
            r = f"\\left[{lo},{hi}\\right)" if right else f"({lo}, {hi})"
        elif k == 3:  # a union of rays
            lo, hi = sorted((a, b + 31))
            g = f"(-\\infty, {lo}) \\cup ({hi}, \\infty)"
            r = f"(-\\infty,{lo})\\cup({hi},\\infty)" if right else f"(-\\infty,{lo}]\\cup({hi},\\infty)"
        else:  # a set with a fraction, answered with a decimal
            q = rng.choice([2, 4, 5, 8])
            g = f"\\{{\\frac{{{abs(a) + 1}}}{{{q}}}, {c}\\}}"
            dec = f"{(abs(a) + 1) / q:g}"
            r = f"\\{{{c}, {dec}\\}}" if right else f"\\{{{c + 1}, {dec}\\}}"
        case = Case(f"set{k}_{'right' if right else 'wrong'}", f"The solutions are $\\boxed{{{r}}}$.", g, g, right)
        if (case.response, case.gold) not in seen:
            seen.add((case.response, case.gold))
            out.append(case)
    return out


def relations_cases(n: int, rng: random.Random) -> list[Case]:
    """Flipped and double inequalities, labelled values, chains, equations up to a scale factor."""
    out: list[Case] = []
    seen: set[tuple[str, str]] = set()
    while len(out) < n:
        k = rng.randrange(5)
        a, b = rng.randint(-20, 20), rng.randint(1, 20)
        right = rng.random() < 0.6
        if k == 0:  # a simple inequality, flipped; wrong: the other direction
            g, r = f"x > {a}", (f"{a} < x" if right else f"{a} > x")
        elif k == 1:  # a double inequality vs an interval (gold inequality, predicted interval)
            g, r = f"{a} \\le x < {a + b}", (f"[{a}, {a + b})" if right else f"[{a}, {a + b}]")
        elif k == 2:  # a line solved for y vs its implicit form (scale factor)
            c = b if right else b + 1
            g, r = f"y = {b}x + {a}", f"{2 * b}x - 2y + {2 * c if a == 0 else 2 * a + (0 if right else 2)} = 0"
            if a == 0:
                g = f"y = {b}x"
                r = f"{2 * b}x - 2y = 0" if right else f"{2 * c}x - 2y = 0"
        elif k == 3:  # a labelled value
            g, r = f"{a}", (f"x = {a}" if right else f"x = {a + 1}")
        else:  # a chain of equalities: the last side
            g, r = f"{a + b}", (f"x = {a} + {b} = {a + b}" if right else f"x = {a} + {b} = {a + b + 1}")
        case = Case(f"rel{k}_{'right' if right else 'wrong'}", f"Therefore $\\boxed{{{r}}}$.", g, g, right)
        if (case.response, case.gold) not in seen:
            seen.add((case.response, case.gold))
            out.append(case)
    return out


def adversarial_cases() -> list[Case]:
    nested = "{" * 5000 + "1" + "}" * 5000
    long_cot = ("We consider each case in turn and keep track of the running total. " * 360) + "\\boxed{17}"
    raw = [
        ("power_tower", "\\boxed{9^{9^{9^{9}}}}", "81", False),
        ("huge_power", "\\boxed{99999999999^{99999999}}", "1", False),
        ("double_exp", "\\boxed{2^{2^{31}}}", "4", False),
        ("googolplex", "\\boxed{10^{10^{9}}}", "10", False),
        ("huge_factorial", "\\boxed{(10^{10^{8}})!}", "1", False),
        ("nested_braces", f"\\boxed{{{nested}}}", "1", None),
        ("code_injection", "\\boxed{__import__('os').system('touch /tmp/winnow_pwned')}", "0", False),
        ("reltol_trap", "\\boxed{1000050}", "1000000", False),
        ("percent_trap_x100", "\\boxed{50}", "0.5", False),
        ("percent_trap_div100", "\\boxed{0.28}", "28", False),
        ("subset_trap", "\\boxed{\\sqrt{67}}", "\\sqrt{67},-\\sqrt{85}", False),
        ("bracket_trap", "\\boxed{[0,9)}", "(0,9)", False),
        ("tiny_values", "\\boxed{\\frac{1}{2^{98}}}", "\\frac{1}{2^{99}}", False),
        ("hedged_boxes", "It is \\boxed{3} or maybe \\boxed{4}.", "4", False),
        ("long_cot", long_cot, "17", True),
        ("equation_trap", "\\boxed{3x+4y+14=0}", "3x-y+13=0", False),
        ("failed_latex_sign", "\\boxed{1-1/e}", "1+\\frac{1}{e}", False),
        ("malformed_sqrt", "\\boxed{4\\sqrt(2)}", "4", False),
        ("unbalanced", "\\boxed{\\frac{1}{2}", "\\frac{1}{2}", None),
        ("list_order_trap", "\\boxed{1,-3}", "1,-2", False),
        ("deep_sqrt", "\\boxed{" + "\\sqrt{" * 200 + "2" + "}" * 200 + "}", "2", False),
        ("big_int_close", "\\boxed{123456789012345678901234567891}", "123456789012345678901234567890", False),
    ]
    return [Case(f"adv_{k}", r, g, g, t) for k, r, g, t in raw]


def gsm8k_cases(path: Path, n_golds: int, rng: random.Random) -> list[Case]:
    if not path.is_file():
        return []
    golds: list[str] = []
    with open(path) as f:
        for line in f:
            golds.append(json.loads(line)["answer"].split("####")[-1].strip())
            if len(golds) >= n_golds:
                break
    out: list[Case] = []
    for raw in golds:
        g = int(raw.replace(",", ""))
        variants = [
            ("boxed", f"Step by step: the result is \\boxed{{{g}}}.", True),
            ("answer_is", f"Putting it together. The answer is {g}.", True),
            ("hash", f"Adding the parts gives the total.\n#### {g}", True),
            ("dollar", f"She makes \\boxed{{\\${g}}} a day.", True),
            ("decimal0", f"\\boxed{{{g}.00}}", True),
            ("units_text", f"\\boxed{{{g} \\text{{ apples}}}}", True),
            ("off_by_one", f"The answer is \\boxed{{{g + 1}}}.", False),
            ("times10", f"The answer is \\boxed{{{g * 10}}}.", False),
            ("no_answer", "I could not finish the computation in time.", False),
            ("hedge", f"Either \\boxed{{{g + 3}}} or \\boxed{{{g}}}.", False),
            ("bare_number_no_cue", f"After all that she has {g} left over", None),
            ("wrong_then_right", f"\\boxed{{{g + 2}}}. Wait, let me recheck: \\boxed{{{g}}}", None),
        ]
        if abs(g) >= 1000:
            variants.append(("thousands", f"The total is \\boxed{{{g:,}}}.", True))
        for kind, response, truth in rng.sample(variants, 3):
            out.append(Case(kind, response, f"#### {raw}", str(g), truth))
    return out


def case_table() -> list[Case]:
    """The engine's case table (tests/verifier/cases.py: ``all_cases()`` of (category, gold, response,
    expected status, reason)), if present. Its expected statuses are our own judgement, each with a
    reason; a gold the table marks ``error`` has no truth (the verifier must not judge it)."""
    path = REPO / "tests" / "verifier" / "cases.py"
    if not path.is_file():
        return []
    try:
        rows = runpy.run_path(str(path))["all_cases"]()
    except Exception as e:  # the table is optional; a broken table must not stop the benchmark
        print(f"(case table skipped: {type(e).__name__}: {e})", file=sys.stderr)
        return []
    out: list[Case] = []
    for category, gold, response, expected, reason in rows:
        truth = None if expected == "error" else expected == "correct"
        out.append(Case(f"table_{category}", response, gold, gold, truth, reason))
    return out


# -- the two verifiers ---------------------------------------------------------------------------
class MathVerifyRunner:
    """math-verify 0.9.0 as its README recommends, in the main thread (signal-based timeouts)."""

    def __init__(self) -> None:
        logging.getLogger("math_verify").setLevel(logging.CRITICAL)
        from math_verify import parse, verify

        self._parse, self._verify = parse, verify

    def __call__(self, c: Case) -> bool:
        try:
            gold = self._parse("\\boxed{" + c.mv_gold + "}")
            pred = self._parse(c.response)
            return bool(self._verify(gold, pred))
        except BaseException as e:  # its TimeoutException subclasses BaseException
            if isinstance(e, KeyboardInterrupt):
                raise
            return False


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    i = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[i]


def timed_set(name: str, cases: list[Case], engine, mv: MathVerifyRunner) -> dict:
    from winnow.verdict import Item

    items = [Item(id=str(i), response=c.response, gold=c.gold) for i, c in enumerate(cases)]
    ours_lat: list[float] = []
    ours_verdicts = []
    t0 = time.perf_counter()
    for it in items:
        t = time.perf_counter()
        ours_verdicts.append(engine.verify(it))
        ours_lat.append(time.perf_counter() - t)
    ours_seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.verify_batch(items)
    ours_batch = time.perf_counter() - t0
    mv_lat: list[float] = []
    mv_verdicts = []
    t0 = time.perf_counter()
    for c in cases:
        t = time.perf_counter()
        mv_verdicts.append(mv(c))
        mv_lat.append(time.perf_counter() - t)
    mv_seq = time.perf_counter() - t0
    n = len(cases)
    res = {
        "n": n,
        "ours": {
            "throughput_seq": n / ours_seq,
            "throughput_batch": n / ours_batch,
            "p50_ms": percentile(ours_lat, 50) * 1e3,
            "p99_ms": percentile(ours_lat, 99) * 1e3,
            "max_ms": max(ours_lat) * 1e3,
        },
        "math_verify": {
            "throughput_seq": n / mv_seq,
            "p50_ms": percentile(mv_lat, 50) * 1e3,
            "p99_ms": percentile(mv_lat, 99) * 1e3,
            "max_ms": max(mv_lat) * 1e3,
        },
    }
    o, m = res["ours"], res["math_verify"]
    res["ratio"] = {
        "throughput_seq": o["throughput_seq"] / m["throughput_seq"],
        "throughput_batch_vs_seq": o["throughput_batch"] / m["throughput_seq"],
        "p50": o["p50_ms"] / m["p50_ms"] if m["p50_ms"] else float("nan"),
        "p99": o["p99_ms"] / m["p99_ms"] if m["p99_ms"] else float("nan"),
    }
    res["verdicts"] = (ours_verdicts, mv_verdicts)
    return res


_DECIMAL = re.compile(r"^-?\d*\.\d+$")
_EXACT_MARKERS = ("\\frac", "\\pi", "\\sqrt", "e}", "/")

# Manual judgement of disagreement patterns found in runs (rule -> class, why). Applied in order
# before the truth-based fallback. "policy" = a defensible semantic choice, not an error of either.
RULES: list[tuple[str, str, str]] = [
    ("rounded_decimal", "policy",
     "a decimal standing for an exact gold: both verifiers need 6 matching places by default; winnow "
     "accepts fewer only with options.rounded / verifier.accept_rounded"),
    ("unfinished_think", "policy",
     "a box inside an unclosed <think>: winnow treats the thinking as unfinished (no answer)"),
    ("no_cue_number", "policy",
     "a number in running text with no answer cue: both take the last one by default (winnow: options.fallback=0 "
     "turns it off)"),
    ("tiny_values", "ours", "1/2^98 vs 1/2^99: math-verify's chop at 15 digits calls them equal (its issue #14)"),
    ("relation_vs_expr", "ours",
     "'7=11a+c' for gold '11a+c' (or '7=5' for 5): an equation with a false lhs is not the value; "
     "math-verify unwraps the rhs of any assignment"),
    ("anagram_text", "ours", "'sey' vs 'yes': math-verify compares text as a product of symbols (order-free)"),
    ("mcq_no_box", "ours",
     "MCQ letter with an 'Answer:' cue and no box: math-verify's default config only reads expressions "
     "(it needs StringExtractionConfig for letters)"),
]


def rule_for(c: Case, v, mv_correct: bool) -> str | None:
    from winnow.verdict import Status

    ours_correct = v.status == Status.CORRECT
    resp = c.response
    if ours_correct and not mv_correct and _DECIMAL.match(v.extracted.strip() or "-") and (
        any(m in c.gold for m in _EXACT_MARKERS) or "." in c.gold
    ):
        return "rounded_decimal"
    if not ours_correct and v.status == Status.NO_ANSWER and "<think>" in resp and "</think>" not in resp:
        return "unfinished_think"
    if v.status == Status.NO_ANSWER and mv_correct and "\\boxed" not in resp and "answer" not in resp.lower():
        return "no_cue_number"
    if "2^{98}" in resp + c.gold and "2^{99}" in resp + c.gold:
        return "tiny_values"
    if v.path == "relation" and not ours_correct and "=" not in c.gold:
        return "relation_vs_expr"
    if v.path == "text" and not ours_correct and sorted(v.extracted.lower()) == sorted(c.gold.lower()):
        return "anagram_text"
    if v.path == "mcq" and ours_correct and "\\boxed" not in resp:
        return "mcq_no_box"
    return None


def classify(c: Case, v, mv_correct: bool) -> tuple[str, str, str]:
    """(who is right: ours | math-verify | neither | policy, the rule that decided or "truth", why)."""
    from winnow.verdict import Status

    rule = rule_for(c, v, mv_correct)
    if rule is not None:
        label, why = next((lab, why) for name, lab, why in RULES if name == rule)
        return label, rule, why
    ours_correct = v.status == Status.CORRECT
    why = c.reason or NOTES.get(c.kind, "")
    if c.truth is None:
        return "policy", "truth", why
    if ours_correct == c.truth and mv_correct != c.truth:
        return "ours", "truth", why
    if mv_correct == c.truth and ours_correct != c.truth:
        return "math-verify", "truth", why
    return "neither", "truth", why


def agreement(cases: list[Case], ours_verdicts, mv_verdicts) -> dict:
    from winnow.verdict import Status

    rows = []
    by_kind: dict[str, dict[str, int]] = {}
    agree = 0
    ours_right = mv_right = judged = 0
    split = {"constructed": [0, 0, 0], "case_table": [0, 0, 0]}  # judged, ours right, math-verify right
    for c, v, m in zip(cases, ours_verdicts, mv_verdicts, strict=True):
        oc = v.status == Status.CORRECT
        base = c.kind.split("_")[0] if c.kind.startswith("sym") else c.kind
        k = by_kind.setdefault(base, {"n": 0, "agree": 0})
        k["n"] += 1
        if c.truth is not None:
            judged += 1
            ours_right += oc == c.truth
            mv_right += m == c.truth
            acc = split["case_table" if c.kind.startswith("table_") else "constructed"]
            acc[0] += 1
            acc[1] += oc == c.truth
            acc[2] += m == c.truth
        if oc == m:
            agree += 1
            k["agree"] += 1
            continue
        right, rule, why = classify(c, v, m)
        rows.append(
            {
                "kind": c.kind,
                "right": right,
                "rule": rule,
                "truth": c.truth,
                "ours": v.status.label,
                "ours_path": v.path,
                "ours_extracted": v.extracted[:80],
                "math_verify": m,
                "gold": c.gold[:80],
                "response": c.response[:160] + ("..." if len(c.response) > 160 else ""),
                "note": why,
            }
        )
    return {
        "n": len(cases),
        "agree": agree,
        "agreement_rate": agree / len(cases) if cases else float("nan"),
        "judged": judged,
        "ours_accuracy_vs_truth": ours_right / judged if judged else float("nan"),
        "math_verify_accuracy_vs_truth": mv_right / judged if judged else float("nan"),
        "by_kind": by_kind,
        # The case table's expectations are the engine's own judgement (circular for "ours"); the
        # constructed items' truth comes from how they were generated.
        "accuracy_by_source": {
            k: {"judged": a[0], "ours": a[1] / a[0] if a[0] else None, "math_verify": a[2] / a[0] if a[0] else None}
            for k, a in split.items()
        },
        "disagreements": rows,
    }


# -- verdict identity: every verdict of a fixed corpus, to compare two versions of verifier/ ---------------
def snapshot_rows(gsm8k: Path, n_random: int = 300) -> list[tuple[str, str, str, dict]]:
    """(gold, response, task, options) rows: the case table (with its options rows), the peer-style suite, the
    timed sets (seeded, larger), GSM8K variants (when present), a grid of integer edge forms x wrappers x options,
    random integer pairs, and seeded random symbolic pairs of tests/verifier/test_quicktex.py's generator."""
    rows: list[tuple[str, str, str, dict]] = []
    tests = REPO / "tests" / "verifier"
    if (tests / "cases.py").is_file():
        table = runpy.run_path(str(tests / "cases.py"))
        rows += [(g, r, "", {}) for _, g, r, _, _ in table["all_cases"]()]
        rows += [(g, r, "", dict(o)) for g, r, _, _, o in table.get("CASES_OPTIONS", [])]
    if (tests / "peer_style.py").is_file():
        rows += [(g, r, "", {}) for g, r, _, _ in runpy.run_path(str(tests / "peer_style.py"))["PEER_STYLE"]]
    rng = random.Random(7)
    cases = (int_frac_cases(3000, rng) + symbolic_cases(3000, rng) + sets_intervals_cases(800, rng)
             + relations_cases(800, rng) + adversarial_cases() + gsm8k_cases(gsm8k, 400, rng))
    rows += [(c.gold, c.response, "", {}) for c in cases]
    atoms = ["0", "-0", "007", "42", "-42", "+42", "42.0", "1,000", "1000", "12\n", " 12", "12 ", "٣", "²", "1e3", "50%",
             "50", "0.5", "x=3", "3=x", "1/0", "nan", "(42)", "\\{42\\}", "42,43", "A", "(B)", "b", "yes", "\\infty",
             "123456789012345678901234567890", "5^2", "-", "", "1.", ".5", "1:2", "12:00", "3 \\pmod 5"]
    wraps = ["\\boxed{%s}", "The answer is %s.", "Answer: %s", "#### %s", "%s", "$%s$", "<think>\\boxed{1}</think>\\boxed{%s}",
             "<think>%s", "\\boxed{%s} or \\boxed{7}", "\\boxed{%s}\nFinal Answer: 7", "So $\\boxed{%s}$.", "\\fbox{%s}",
             "\\boxed %s", "\\boxed{%s", "**Answer:** %s", "I think it is %s apples", "x\x0crac{1}{2} \\boxed{%s}",
             "\\\\boxed{%s}", "<|im_start|>assistant\\boxed{%s}<|im_end|><|im_start|>user\\boxed{9}"]
    opts: list[dict] = [{}, {"percent": "1"}, {"rounded": "1"}, {"fallback": "0"}, {"mcq": "1"}, {"imaginary": "none"},
                        {"last_number": "0"}]
    for g in atoms:
        for a in atoms:
            for w in wraps:
                rows.append((g, w % a, "", opts[rng.randrange(len(opts))]))
        for o in opts:
            rows.append((g, "\\boxed{42}", rng.choice(["", "mcq", "gsm8k"]), o))
    for _ in range(3000):
        g = str(rng.randint(-10**7, 10**7))
        p = str(int(g) + rng.choice([0, 0, 1, -1, 10])) if rng.random() < .8 else g + rng.choice(["%", ".0", "0", "/1"])
        rows.append((g, rng.choice(wraps) % p, "", opts[rng.randrange(len(opts))]))
        rows.append((rng.choice(["%s", "\\boxed{%s}", "#### %s", "$%s$", " %s", "%s."]) % g, "\\boxed{" + p + "}", "", {}))
    if (tests / "test_quicktex.py").is_file():
        gen = runpy.run_path(str(tests / "test_quicktex.py"))["_random_expr"]
        srng = random.Random(29)
        for _ in range(n_random):
            a = gen(srng)
            k = srng.randrange(4)
            b = (a.replace(" ", "") if k == 0 else gen(srng) if k == 1
                 else re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), a, count=1) if k == 2 else a)
            rows.append((a, "\\boxed{" + b + "}", "", opts[srng.randrange(3)] if srng.random() < 0.2 else {}))
    return rows


def verdict_snapshot(out: Path, gsm8k: Path, n_random: int = 300) -> int:
    """``--verdict-snapshot OUT``: the verdict of every row of :func:`snapshot_rows`, in this process (the fast path,
    then ``pool.handle_job`` for symbolic jobs, one call per distinct job), as JSON lines of text. Run it for two
    versions of ``verifier/`` (``--verifier-dir``) and compare the files: identical verdicts, path and detail
    included."""
    import signal

    from winnow.verifier import engine
    from winnow.verifier.pool import handle_job

    def alarm(*_):
        raise TimeoutError

    signal.signal(signal.SIGALRM, alarm)
    rows = snapshot_rows(gsm8k, n_random)
    done: dict[tuple, str] = {}
    lines, jobs, timeouts = [], 0, 0
    t0 = time.process_time()
    for n, (g, r, task, o) in enumerate(rows):
        if n % 5000 == 0:
            print(f"row {n}/{len(rows)}: {jobs} jobs, {time.process_time() - t0:.0f} s CPU", file=sys.stderr, flush=True)
        try:
            d = engine.decide_fast(engine.prepare_gold(g, task, o), r, o)
        except Exception as e:
            lines.append(f"EXC {type(e).__name__}: {e}")
            continue
        if not isinstance(d, engine.Job):
            lines.append(repr(d))
            continue
        if d.key not in done:
            jobs += 1
            signal.alarm(10)  # a safety net (random junk can make sympy's evalf slow); a timeout shows in the file
            try:
                done[d.key] = repr(sorted(handle_job(d.as_dict()).items()))
            except TimeoutError:
                timeouts += 1
                done[d.key] = "TIMEOUT"
            finally:
                signal.alarm(0)
        lines.append(f"job {d.extracted!r} {done[d.key]}")
    out.write_text("\n".join(lines) + "\n")
    print(f"{len(rows)} rows, {jobs} distinct symbolic jobs ({timeouts} past 10 s), {time.process_time() - t0:.1f} s CPU "
          f"-> {out}", file=sys.stderr)
    return 0


# -- through the command line: `winnow score FILE` vs math-verify's loop over the same file ----------------
def write_jsonl(path: Path, cases: list[Case]) -> None:
    """One ``winnow score`` input line per case; ``mv_gold`` rides along for the math-verify loop."""
    with open(path, "w") as f:
        for i, c in enumerate(cases):
            f.write(json.dumps({"id": i, "response": c.response, "gold": c.gold, "mv_gold": c.mv_gold}) + "\n")


def math_verify_loop(src: str, dst: str) -> int:
    """math-verify's CLI equivalent (it ships no CLI): import it, then per JSONL line ``parse`` the boxed gold
    and the response, ``verify``, write the line back with ``correct``. What a user scripts around it."""
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    from math_verify import parse, verify

    with open(src) as fin, open(dst, "w") as fout:
        for line in fin:
            rec = json.loads(line)
            try:
                ok = bool(verify(parse("\\boxed{" + rec["mv_gold"] + "}"), parse(rec["response"])))
            except BaseException as e:  # its TimeoutException subclasses BaseException
                if isinstance(e, KeyboardInterrupt):
                    raise
                ok = False
            rec["correct"] = ok
            fout.write(json.dumps(rec) + "\n")
    return 0


class _ReapedCpu:
    """CPU seconds of the descendants of ``pid`` that no ``getrusage`` reports: those whose parent ignores SIGCHLD,
    so the kernel reaps them (winnow's pool workers, children of the zygote). Sampled from ``/proc`` every
    ``interval_s`` in a thread (the last sample of each process; at most one interval of a process's CPU is lost)."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        import os
        import threading

        self.pid, self.interval_s, self.tick = pid, interval_s, os.sysconf("SC_CLK_TCK")
        self.seen: dict[int, float] = {}  # pid -> last CPU seconds, for processes reaped by the kernel
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return ""

    def _ignores_sigchld(self, pid: int) -> bool:
        for line in self._read(f"/proc/{pid}/status").splitlines():
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) >> 16 & 1)  # SIGCHLD = 17 -> bit 16
        return False

    def _sample(self) -> None:
        import os

        todo = [self.pid]
        while todo:
            parent = todo.pop()
            kids: list[int] = []
            try:
                for tid in os.listdir(f"/proc/{parent}/task"):
                    kids += [int(k) for k in self._read(f"/proc/{parent}/task/{tid}/children").split()]
            except OSError:
                continue
            reaped = bool(kids) and self._ignores_sigchld(parent)
            for kid in kids:
                todo.append(kid)
                if reaped:
                    fields = self._read(f"/proc/{kid}/stat").rsplit(")", 1)[-1].split()
                    if len(fields) > 12:  # utime, stime: fields 14, 15 of stat (11, 12 after the name)
                        self.seen[kid] = (int(fields[11]) + int(fields[12])) / self.tick

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return sum(self.seen.values())


def _timed(cmd: list[str]) -> dict:
    """Run ``cmd`` to its end: wall seconds (from spawn to exit), the load average just before, exit code,
    ``cpu_s``: user + system CPU seconds of the process and the descendants it waited for (the zygote of winnow's
    worker pool, not the workers, which the zygote lets the kernel reap), and ``cpu_tree_s``: ``cpu_s`` plus the CPU
    of those kernel-reaped descendants, sampled from /proc (:class:`_ReapedCpu`): all the CPU the command used.
    On a shared machine the CPU ratio is the steadier figure (the work each side does, whatever the load); the wall
    ratio is the claim."""
    import os
    import resource
    import subprocess

    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reaped = _ReapedCpu(proc.pid)
    _, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    reaped_s = reaped.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode not in (0, 1):  # 1: some line scored "error" (an unanswerable gold), still timed
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {stderr[-2000:]}")
    return {"wall_s": wall, "cpu_s": cpu, "cpu_tree_s": cpu + reaped_s, "load1_before": load, "rc": proc.returncode,
            "stderr_tail": stderr.strip()[-300:]}


def _start_server(workers: int):
    """A ``winnow verifier serve`` on a free loopback port, verdict cache off, warmed up with every kind of item
    (not timed): (process, "127.0.0.1:PORT")."""
    import os
    import socket
    import subprocess
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "winnow", "verifier", "serve", "--port", str(port), "--metrics-port", "-1",
           "--workers", str(workers), "--set", "cache_size=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = f"127.0.0.1:{port}"
    warm = int_frac_cases(50, random.Random(98)) + symbolic_cases(50, random.Random(98))
    with tempfile.TemporaryDirectory(prefix="winnow-bench-warm-") as tmp:
        src = os.path.join(tmp, "warm.jsonl")
        write_jsonl(Path(src), warm)
        _timed([sys.executable, "-m", "winnow", "score", "--no-progress", src, "-o", os.devnull, "--verifier", target,
                "--retry-s", "60"])
    return proc, target


def cli_main(args) -> int:
    """``--cli``: each input file through ``winnow score`` (a fresh process: start-up, reading, scoring,
    writing) and through math-verify's loop (a fresh process too), back to back, ``--repeat`` times."""
    import os
    import tempfile

    rng = random.Random(args.seed)
    ints: list[Case] = []
    while len(ints) < args.cli_integers:
        ints += [c for c in int_frac_cases(3000, rng) if c.kind.startswith("int_")]
    files = {"integers": ints[: args.cli_integers], "symbolic": symbolic_cases(args.cli_symbolic, rng)}
    winnow_cmd = [sys.executable, "-m", "winnow", "score", "--no-progress"]
    if args.workers:
        winnow_cmd += ["--workers", str(args.workers)]
    mv_cmd = [sys.executable, str(Path(__file__).resolve()), "--math-verify-loop"]
    modes = {"in_process": winnow_cmd}
    server = _start_server(args.workers) if args.grpc else None
    if server is not None:
        modes["grpc"] = winnow_cmd + ["--verifier", server[1]]
    results: dict = {
        "mode": "cli",
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": _cpus()},
        "versions": _versions(),
        "commands": {**{m: " ".join(c[1:]) + " IN -o OUT" for m, c in modes.items()},
                     "math_verify": "benchmarks/verifier.py --math-verify-loop IN OUT"},
        "server": f"winnow verifier serve --workers {args.workers} --set cache_size=0 (started and warmed before "
                  "the runs)" if server else None,
        "files": {},
    }
    try:
        with tempfile.TemporaryDirectory(prefix="winnow-bench-cli-") as tmp:
            for name, cases in files.items():
                src = Path(tmp) / f"{name}.jsonl"
                write_jsonl(src, cases)
                runs = []
                for r in range(args.repeat):
                    print(f"cli {name} ({len(cases)} lines) run {r + 1}/{args.repeat}...", file=sys.stderr, flush=True)
                    run = {m: _timed(cmd + [str(src), "-o", os.path.join(tmp, f"{m}.jsonl")]) for m, cmd in modes.items()}
                    run["math_verify"] = theirs = _timed(mv_cmd + [str(src), os.path.join(tmp, "mv.jsonl")])
                    for m in modes:
                        run[m]["ratio"] = theirs["wall_s"] / run[m]["wall_s"]
                        run[m]["cpu_ratio"] = theirs["cpu_s"] / max(run[m]["cpu_s"], 1e-9)
                        run[m]["cpu_tree_ratio"] = theirs["cpu_tree_s"] / max(run[m]["cpu_tree_s"], 1e-9)
                        with open(os.path.join(tmp, f"{m}.jsonl")) as f1, open(os.path.join(tmp, "mv.jsonl")) as f2:
                            run[m]["agree"] = sum(json.loads(a)["correct"] == json.loads(b)["correct"]
                                                  for a, b in zip(f1, f2, strict=True))
                    runs.append(run)
                out = {"lines": len(cases), "runs": runs}
                for m in modes:
                    ratios = sorted(r[m]["ratio"] for r in runs)
                    out[f"{m}_ratio"] = {"min": ratios[0], "median": ratios[len(ratios) // 2], "max": ratios[-1]}
                results["files"][name] = out
    finally:
        if server is not None:
            server[0].terminate()
            server[0].wait(30)
    print(f"\nwinnow score vs math-verify {results['versions'].get('math-verify')} loop, same file, fresh processes")
    print(f"{'file':<10} {'lines':>6} {'mode':<10} | {'winnow s':>8} {'mv s':>7} {'ratio':>6} {'load':>5} {'agree':>6}"
          f" | {'cpu s':>6} {'mv cpu':>7} {'ratio':>6} | {'all cpu':>7} {'ratio':>6}")
    for name, f in results["files"].items():
        for m in modes:
            for r in f["runs"]:
                print(f"{name:<10} {f['lines']:>6} {m:<10} | {r[m]['wall_s']:>8.2f} {r['math_verify']['wall_s']:>7.2f} "
                      f"{r[m]['ratio']:>6.1f} {r[m]['load1_before']:>5.2f} {r[m]['agree']:>6} | {r[m]['cpu_s']:>6.2f} "
                      f"{r['math_verify']['cpu_s']:>7.2f} {r[m]['cpu_ratio']:>6.1f} | {r[m]['cpu_tree_s']:>7.2f} "
                      f"{r[m]['cpu_tree_ratio']:>6.1f}")
            x = f[f"{m}_ratio"]
            print(f"{name:<10} {m}: ratio median {x['median']:.1f} (min {x['min']:.1f}, max {x['max']:.1f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str))
        print(f"results written to {args.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--math-verify-loop"]:
        return math_verify_loop(argv[1], argv[2])
    if "--verifier-dir" in argv:  # score with another copy of verifier/ (an earlier commit's), before anything imports it
        import winnow.verifier

        winnow.verifier.__path__[:] = [str(Path(argv[argv.index("--verifier-dir") + 1]).resolve())]
    ap = argparse.ArgumentParser(prog="benchmarks/verifier.py", description=__doc__.splitlines()[0])
    ap.add_argument("--cli", action="store_true", help="time `winnow score FILE` against math-verify's loop instead")
    ap.add_argument("--cli-integers", type=int, default=20000, help="--cli: lines of the integer file")
    ap.add_argument("--cli-symbolic", type=int, default=300, help="--cli: lines of the symbolic file")
    ap.add_argument("--repeat", type=int, default=3, help="--cli: runs of each file (the spread)")
    ap.add_argument("--grpc", action="store_true", help="--cli: also time `winnow score --verifier` against a "
                    "running `winnow verifier serve` (started and warmed first)")
    ap.add_argument("--out", type=Path, help="write JSON results here")
    ap.add_argument("--quick", action="store_true", help="small sets (a smoke run)")
    ap.add_argument("--n", type=int, default=300, help="items in each timed category (adversarial has a fixed set)")
    ap.add_argument("--gsm8k", type=Path, default=DEFAULT_GSM8K, help="GSM8K test.jsonl (skipped if absent)")
    ap.add_argument("--gsm8k-golds", type=int, default=150, help="GSM8K golds to use (3 variants each)")
    ap.add_argument("--workers", type=int, default=2, help="winnow engine workers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verdict-snapshot", type=Path, metavar="OUT", help="write the verdict of every row of a fixed "
                    "corpus (~45,000 rows) to OUT instead, to compare two versions of verifier/ (see verdict_snapshot)")
    ap.add_argument("--snapshot-random", type=int, default=300, help="with --verdict-snapshot: seeded random symbolic "
                    "pairs (test_quicktex.py's generator) in the corpus")
    ap.add_argument("--verifier-dir", type=Path, help="with --verdict-snapshot: use this verifier/ folder (e.g. an "
                    "earlier commit's, from `git archive`) instead of the installed winnow.verifier")
    args = ap.parse_args(argv)
    if args.verdict_snapshot:
        return verdict_snapshot(args.verdict_snapshot, args.gsm8k, args.snapshot_random)
    if args.cli:
        if args.quick:
            args.cli_integers, args.cli_symbolic, args.repeat = 2000, 40, 1
        return cli_main(args)
    n = 40 if args.quick else args.n
    rng = random.Random(args.seed)

    try:
        mv = MathVerifyRunner()
    except ImportError:
        print("math-verify is not installed (pip install 'math-verify==0.9.0', the dev extra)", file=sys.stderr)
        return 2
    from winnow.verifier.engine import MathVerifier

    int_frac = int_frac_cases(3 * n, rng)
    sets = {
        "integers": [c for c in int_frac if c.kind.startswith("int_")][:n],
        "dec_frac": [c for c in int_frac if not c.kind.startswith("int_")][:n],
        "symbolic": symbolic_cases(n, rng),
        "sets_intervals": sets_intervals_cases(n, rng),
        "relations": relations_cases(n, rng),
        "adversarial": adversarial_cases(),
    }
    # No verdict cache: every timed item is distinct and is scored twice (sequential, then batch).
    engine = MathVerifier(workers=args.workers, timeout_s=2.0, memory_mb=1024, max_tasks_per_worker=500,
                          cache_size=0)  # fmt: skip
    results: dict = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": _cpus()},
        "versions": _versions(),
        "workers": args.workers,
        "sets": {},
    }
    try:
        engine.verify_batch([])  # warm up the pool outside the timings
        warm = int_frac_cases(20, random.Random(99)) + symbolic_cases(10, random.Random(99))
        for c in warm:
            mv(c)
        engine.verify_batch([_item(i, c) for i, c in enumerate(warm)])
        verdicts = {}
        for name, cases in sets.items():
            print(f"timing {name} ({len(cases)} items)...", file=sys.stderr, flush=True)
            r = timed_set(name, cases, engine, mv)
            verdicts[name] = r.pop("verdicts")
            results["sets"][name] = r

        mixed = gsm8k_cases(args.gsm8k, 30 if args.quick else args.gsm8k_golds, rng) + case_table()
        print(f"agreement: scoring {len(mixed)} extra items...", file=sys.stderr, flush=True)
        ours_mixed = engine.verify_batch([_item(i, c) for i, c in enumerate(mixed)])
        mv_mixed = [mv(c) for c in mixed]
        all_cases = mixed + [c for cases in sets.values() for c in cases]
        all_ours = list(ours_mixed) + [v for name in sets for v in verdicts[name][0]]
        all_mv = mv_mixed + [m for name in sets for m in verdicts[name][1]]
        results["agreement"] = agreement(all_cases, all_ours, all_mv)
        results["agreement"]["sources"] = {
            "gsm8k_variants": sum(1 for c in mixed if not c.kind.startswith("table_")),
            "case_table": sum(1 for c in mixed if c.kind.startswith("table_")),
            **{name: len(cases) for name, cases in sets.items()},
        }
    finally:
        close = getattr(engine, "close", None)
        if close:
            close()

    print_report(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str))
        print(f"results written to {args.out}", file=sys.stderr)
    return 0


def _item(i: int, c: Case):
    from winnow.verdict import Item

    return Item(id=str(i), response=c.response, gold=c.gold)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("winnow", "math-verify", "sympy", "latex2sympy2_extended"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def print_report(results: dict) -> None:
    w = results["workers"]
    print(f"\nwinnow engine ({w} workers) vs math-verify {results['versions'].get('math-verify')}, same inputs")
    head = (f"{'set':<14} {'n':>4} | {'ours it/s':>9} {'batch it/s':>10} {'p50 ms':>8} {'p99 ms':>8} | "
            f"{'mv it/s':>8} {'p50 ms':>8} {'p99 ms':>8} | {'thr x':>6} {'batch x':>7} {'p50 x':>6} {'p99 x':>6}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for name, r in results["sets"].items():
        o, m, x = r["ours"], r["math_verify"], r["ratio"]
        print(
            f"{name:<14} {r['n']:>4} | {o['throughput_seq']:>9.0f} {o['throughput_batch']:>10.0f} {o['p50_ms']:>8.3f} "
            f"{o['p99_ms']:>8.2f} | {m['throughput_seq']:>8.0f} {m['p50_ms']:>8.3f} {m['p99_ms']:>8.1f} | "
            f"{x['throughput_seq']:>6.2f} {x['throughput_batch_vs_seq']:>7.2f} {x['p50']:>6.3f} {x['p99']:>6.3f}"
        )
    print("ratios are ours/theirs: thr x and batch x > 1 = faster; p50 x, p99 x < 1 = lower latency")
    a = results["agreement"]
    print(
        f"\nagreement with math-verify: {a['agree']}/{a['n']} = {a['agreement_rate']:.1%}  "
        f"(vs ground truth on {a['judged']} judged items: ours {a['ours_accuracy_vs_truth']:.1%}, "
        f"math-verify {a['math_verify_accuracy_vs_truth']:.1%})"
    )
    for src, acc in a["accuracy_by_source"].items():
        if acc["judged"]:
            print(f"  {src:<12} {acc['judged']:>5} judged: ours {acc['ours']:.1%}, math-verify {acc['math_verify']:.1%}")
    counts: dict[str, int] = {}
    for d in a["disagreements"]:
        counts[d["right"]] = counts.get(d["right"], 0) + 1
    print("disagreements by who matches the ground truth: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))  # fmt: skip
    by_rule: dict[tuple[str, str, str], int] = {}
    for d in a["disagreements"]:
        key = (d["kind"] if d["rule"] == "truth" else d["rule"], d["right"], d["note"])
        by_rule[key] = by_rule.get(key, 0) + 1
    print(f"{'kind / rule':<22} {'right':<12} {'count':>5}  why")
    for (kind, right, note), cnt in sorted(by_rule.items(), key=lambda kv: -kv[1]):
        print(f"{kind:<22} {right:<12} {cnt:>5}  {note[:110]}")
    print("\nevery disagreement:")
    for d in a["disagreements"]:
        resp = d["response"].replace("\n", " ")
        print(f"  [{d['right']}] {d['kind']}: gold={d['gold']!r} resp={resp[:90]!r} -> ours={d['ours']} "
              f"({d['ours_path']}, {d['ours_extracted']!r}) math-verify={d['math_verify']}")  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
