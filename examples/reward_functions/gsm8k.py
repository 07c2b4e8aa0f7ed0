"""Reward functions for GSM8K, written as a verl / TRL user writes them (examples/reward_functions/README.md).

``strict_format``: 1.0 when the response ends with a line ``#### <number>`` (verl's ``gsm8k.py`` strict
method), else 0.0. ``correctness``: the number after the last ``####`` (or the last number, in ``flexible``
mode) against the gold; it also returns a status, so a response with no answer is NO_ANSWER in logs.
Route a task to both with weights (``verifier.reward_functions.routes``): the score is their weighted sum.

Plain Python, no winnow import: the verifier loads this file by path and runs the functions in its sandboxed
worker processes.
"""

from __future__ import annotations

import re

_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)")
_STRICT = re.compile(r"(?:^|\n)####\s*-?[\d,]*\.?\d+\s*$")
_NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def _gold_number(gold: str) -> float | None:
    m = _FINAL.findall(gold)
    return _number(m[-1] if m else gold.strip())


def strict_format(completion: str, **kwargs) -> float:
    """1.0 iff the response's last line is ``#### <number>``."""
    return 1.0 if _STRICT.search(completion.strip()) else 0.0


def correctness(completion: str, ground_truth: str, method: str = "strict", **kwargs) -> tuple[str, float]:
    """(status, 1.0 or 0.0): the final ``#### N`` (``method="flexible"``: the last number) equals the gold."""
    found = _FINAL.findall(completion)
    if not found and method == "flexible":
        found = _NUMBER.findall(completion)
    if not found:
        return "no_answer", 0.0
    answer, gold = _number(found[-1]), _gold_number(ground_truth)
    if gold is None:
        raise ValueError(f"gold {ground_truth!r} has no number")  # a bad gold is an ERROR, never a zero
    if answer is None:
        return "unparsable", 0.0
    return ("correct", 1.0) if abs(answer - gold) < 1e-9 else ("wrong", 0.0)
