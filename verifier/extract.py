"""Answer extraction from full model outputs and from dataset golds (VERIFIER_NOTES §4.1-4.2).

Response, in order (the first that yields something wins):

1. ``<think>…</think>`` is dropped (everything up to the last ``</think>``; an unclosed ``<think>``
   means the model never answered), then only the last ``MAX_RESPONSE_CHARS`` characters are kept.
2. The last ``\\boxed{…}`` / ``\\fbox{…}`` (brace-matched, O(n)) or ``\\boxed 5``. All boxed
   answers are collected so the caller can apply the hedging rule.
3. ``final answer is …`` (Minerva / lm-eval "I hope it is correct" format), then ``#### …``
   (GSM8K style), then ``Answer: …`` (DAPO style), then ``the answer is …`` (each: the last
   occurrence, one line; a leading ``$…$`` span is taken, markdown ``**`` dropped).
4. A bare short answer: the whole response is a short math-looking string (``42``, ``$\\frac12$``,
   ``**42**``) with no prose words, or a single word (``Monday``).
5. Only with ``last_number=True``: the last number in the text.

Golds: ``#### 42`` (GSM8K), ``\\boxed{}`` (MATH solutions), ``$…$``, ``\\(…\\)``, ``\\[…\\]``, or bare.

Left out: natural-language answers without a marker ("so she has 5 apples left"), answers split
across several ``$…$`` spans, other languages' markers (``答案是``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from winnow.verifier.guard import MAX_RESPONSE_CHARS


@dataclass(slots=True)
class Extraction:
    """What was found in a response. ``answer`` is None when nothing was found."""

    answer: str | None
    method: str = ""  # "boxed", "final_answer", "hashes", "answer_colon", "bare", "last_number"
    boxed: list[str] = field(default_factory=list)  # every boxed answer, in order (hedging rule)
    unbalanced: bool = False  # a \boxed{ whose brace never closes
    n_boxed: int = 0


_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
_FINAL_RE = re.compile(r"final answer is[:\s]*(.+?)(?:\.?\s*I hope it is correct|\n|$)", re.IGNORECASE)
_HASHES_RE = re.compile(r"^\s*####\s*(.+?)\s*$", re.MULTILINE)
_ANSWER_RE = re.compile(r"(?:^|[\s*_])answer\s*(?:is)?\s*[:：]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_ANSWER_IS_RE = re.compile(r"\banswer\s+is\s*:?\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_WORD_RE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")
_MAX_BARE = 64


def _last(pattern: re.Pattern, text: str) -> re.Match | None:
    m = None
    for m in pattern.finditer(text):  # noqa: B007
        pass
    return m


def strip_think(text: str) -> str | None:
    """Drop the reasoning block. Returns None when a ``<think>`` block never closes."""
    end = text.rfind("</think>")
    if end >= 0:
        return text[end + len("</think>") :]
    if "<think>" in text:
        return None
    return text


def _match_brace(text: str, start: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``start``, or -1. Escaped ``\\{``/``\\}`` count too."""
    depth = 0
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def find_boxed(text: str) -> tuple[list[str], bool]:
    """All ``\\boxed{…}`` / ``\\fbox{…}`` / ``\\boxed x`` contents, in order, and whether one is unclosed."""
    out: list[str] = []
    unbalanced = False
    for m in _BOX_RE.finditer(text):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            j = _match_brace(text, i)
            if j < 0:
                unbalanced = True
                continue
            out.append(text[i + 1 : j])
        elif m.end() < len(text) and text[m.end()] == " ":
            # "\boxed 5": up to the next space, "$" or end of line
            rest = re.match(r"[^\s$]+", text[i:])
            if rest:
                out.append(rest.group(0).rstrip("."))
    return out, unbalanced


def strip_math_delimiters(s: str) -> str:
    """Remove one layer of ``$…$``, ``$$…$$``, ``\\(…\\)``, ``\\[…\\]`` around the whole string."""
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left) : len(s) - len(right)].strip()
    return s


def _clean_marker_answer(s: str) -> str:
    s = s.strip().strip("*").strip()
    # "$\frac12$." / "$5$ dollars": keep the first math span when the line starts with one
    m = re.match(r"^\$+([^$]+)\$+", s)
    if m:
        return m.group(1).strip()
    m = re.match(r"^\\\((.+?)\\\)", s)
    if m:
        return m.group(1).strip()
    s = s.rstrip(".").strip()
    return s


def _looks_bare(s: str) -> bool:
    """A short math-looking answer (no prose words), or a single word (``Monday``, ``yes``)."""
    if not s or len(s) > _MAX_BARE or "\n" in s:
        return False
    if re.fullmatch(r"[A-Za-z]+", s):
        return True
    return not _WORD_RE.findall(re.sub(r"\\(?:text|mathrm|textbf)\{[^{}]*\}", "", s)) and not re.search(
        r"(?<![\\A-Za-z])[A-Za-z](?:\s+[A-Za-z]){2,}", s
    )


def extract_answer(response: str, *, last_number: bool = False) -> Extraction:
    """Find the final answer in a model response (see module doc for the order)."""
    text = strip_think(response)
    if text is None:
        return Extraction(None, "think_unclosed")
    if len(text) > MAX_RESPONSE_CHARS:
        text = text[-MAX_RESPONSE_CHARS:]
    boxed, unbalanced = find_boxed(text)
    n_boxed = len(_BOX_RE.findall(text))
    if boxed:
        return Extraction(boxed[-1].strip(), "boxed", boxed, unbalanced, n_boxed)
    if unbalanced:
        return Extraction(None, "boxed", [], True, n_boxed)
    m = _last(_FINAL_RE, text)
    if m:
        ans = _clean_marker_answer(m.group(1))
        if ans:
            return Extraction(ans, "final_answer")
    m = _last(_HASHES_RE, text)
    if m:
        return Extraction(_clean_marker_answer(m.group(1)), "hashes")
    m = _last(_ANSWER_RE, text)
    if m:
        ans = _clean_marker_answer(m.group(1))
        if ans:
            return Extraction(ans, "answer_colon")
    m = _last(_ANSWER_IS_RE, text)
    if m:
        ans = _clean_marker_answer(m.group(1))
        if ans:
            return Extraction(ans, "answer_is")
    bare = strip_math_delimiters(text.strip().strip("*").strip())
    bare = bare.rstrip(".").strip()
    if _looks_bare(bare):
        return Extraction(bare, "bare")
    if last_number:
        nums = _NUMBER_RE.findall(text)
        if nums:
            return Extraction(nums[-1].rstrip(","), "last_number")
    return Extraction(None, "")


def extract_gold(gold: str) -> str:
    """The answer part of a dataset gold: ``#### x`` (GSM8K), the last ``\\boxed{}``, or the bare text."""
    g = gold.strip()
    if "####" in g:
        return g.rsplit("####", 1)[1].strip()
    if _BOX_RE.search(g):
        boxed, _ = find_boxed(g)
        if boxed:
            return boxed[-1].strip()
    return strip_math_delimiters(g)
