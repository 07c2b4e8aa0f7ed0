"""Answer extraction from full model outputs and from dataset golds (docs/verifier.md, 'Input guards' and 'Extraction'). Linear time.

Response, in order:

1. ``<think>…</think>`` is dropped (everything up to the last ``</think>``; an unclosed ``<think>``
   means the model never answered), then only the last ``MAX_RESPONSE_CHARS`` characters are kept.
   JSON-escape damage is repaired (``\\x0crac`` -> ``\\frac``, ``\\\\frac`` -> ``\\frac``) and chat-template
   tokens are dropped (the text is cut where a next turn starts: ``<|im_start|>user``).
2. Answer markers: ``final answer is``, ``Final Answer:``, ``Answer:``, ``the answer is``, ``Answer``
   directly followed by math, ``#### x``. The last marker wins; if it comes after the last box and is a
   final statement (``final answer``, or ``Answer:``/``####`` opening a line) the answer is taken from it.
   Every box and every final statement is also collected (``boxed``, ``finals``): the engine's hedging
   rule treats them alike (two different values among them are a hedge). After the marker: display math
   (which may span lines); else the line as a sentence: the line itself when it is math only, a list
   of math spans joined by "and"/commas, or else the last math span or number, whichever ends later.
3. The last ``\\boxed{…}`` / ``\\fbox{…}`` or ``\\boxed 5``. All boxed answers are collected so the caller
   can apply the hedging rule.
4. A response that is only math (up to 512 characters, no prose words; ``$…$`` or bare; matrices), or a
   single word (``Monday``).
5. The no-marker fallback (``last_number``, on by default, see the engine's ``fallback`` option): the
   last math span, then the last number (decimal comma, thousands, a trailing ``%``/percent).

Golds: ``#### 42`` (GSM8K); several boxes -> their list (``\\boxed{1} and \\boxed{2}``); one box; a box
never closed -> the rest; a solution-style gold (prose with a final-answer marker, or long prose) ->
its final answer found as in a response; else the text without math delimiters.

Left out: other languages' markers (``答案是``), answers split over several sentences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from winnow.verifier.guard import MAX_BRACE_DEPTH, MAX_RESPONSE_CHARS, brace_depth


@dataclass(slots=True)
class Extraction:
    """What was found in a response. ``answer`` is None when nothing was found."""

    answer: str | None
    method: str = ""  # "boxed", "final_answer", "hashes", "answer_colon", "bare", "last_number"
    boxed: list[str] = field(default_factory=list)  # every boxed answer, in order (hedging rule)
    unbalanced: bool = False  # a \boxed{ whose brace never closes
    n_boxed: int = 0
    finals: list[str] = field(default_factory=list)  # every final-answer statement's value, in order (hedging rule)


_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
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


_BRACE_RE = re.compile(r"[{}]")


def brace_pairs(text: str) -> dict[int, int]:
    """Index of every ``{`` -> index of its closing ``}``, in one pass (a stack). Unclosed ones are absent.
    Only the braces are visited (a regex scan finds them), not every character."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE_RE.finditer(text):
        i = m.start()
        if text[i] == "{":
            stack.append(i)
        elif stack:
            pairs[stack.pop()] = i
    return pairs


def find_boxed(text: str, pairs: dict[int, int] | None = None) -> tuple[list[str], bool]:
    """All ``\\boxed{…}`` / ``\\fbox{…}`` / ``\\boxed x`` contents, in order, and whether one is unclosed.

    Linear in ``len(text)``: braces are matched once for the whole text (``brace_pairs``; a caller that
    has them already passes ``pairs``).
    """
    out: list[str] = []
    unbalanced = False
    for m in _BOX_RE.finditer(text):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            if pairs is None:
                pairs = brace_pairs(text)
            j = pairs.get(i, -1)
            if j < 0:
                unbalanced = True
                continue
            out.append(text[i + 1 : j])
        elif m.end() < len(text) and text[m.end()] == " ":
            # "\boxed 5": up to the next space, "$" or end of line
            rest = re.match(r"[^\s$]+", text[i : i + 200])
            if rest:
                out.append(rest.group(0).rstrip("."))
    return out, unbalanced


def box_spans(text: str, pairs: dict[int, int] | None = None) -> list[tuple[int, int]]:
    """(start, end) of every closed ``\\boxed{…}`` in ``text`` (end: index after the closing brace)."""
    if pairs is None:
        pairs = brace_pairs(text)
    spans = []
    for m in _BOX_RE.finditer(text):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        j = pairs.get(i, -1) if i < len(text) and text[i] == "{" else -1
        if j >= 0:
            spans.append((m.start(), j + 1))
    return spans


# JSON escapes that ate a LaTeX backslash: "\f" (form feed) + "rac" was "\frac", "\t" + "imes" was "\times".
_ESCAPED = {"\x0c": "f", "\x08": "b", "\t": "t", "\n": "n", "\r": "r", "\x07": "a", "\x0b": "v"}
_COMMANDS = {
    "f": "frac|forall", "b": "begin|beta|binom|boxed|bar|bmatrix|bigl|bigr|big", "t": "times|text|textbf|theta|tan|tau|tfrac|to|textit",
    "n": "neq|nu|not|nabla|ne", "r": "right|rho|rangle|rfloor|rceil|rightarrow", "a": "alpha|approx|angle|ast",
    "v": "vec|varphi|vee|varepsilon|vdots",
}
_ESCAPE_RE = re.compile(
    "|".join(f"{re.escape(char)}(?=(?:{'|'.join(name[1:] for name in _COMMANDS[letter].split('|'))})(?![a-z]))"
             for char, letter in _ESCAPED.items())
)
_DOUBLE_BACKSLASH_RE = re.compile(
    r"(?<!\\)\\\\(?=(?:frac|dfrac|left|right|sqrt|cdot|times|pi|le|ge|leq|geq|neq|infty|text|mathrm|boxed|begin|"
    r"cup|cap|in|pm|alpha|beta|gamma|theta|sin|cos|tan|log|ln)(?![a-zA-Z]))"
)
_TURN_RE = re.compile(r"<\|(?:im_start|start_header_id|user|assistant|system)\|>|<\|im_end\|>\s*<\|im_start\|>")
_SPECIAL_TOKEN_RE = re.compile(r"<\|[A-Za-z_]{1,40}\|>|</?s>|<eos>|<pad>")


def repair_escapes(text: str) -> str:
    """Undo JSON-escape damage: a control character that ate a command's backslash (``\\x0crac`` ->
    ``\\frac``) and double-escaped backslashes before a command (``\\\\frac`` -> ``\\frac``). Linear."""
    if any(c in text for c in _ESCAPED):
        text = _ESCAPE_RE.sub(lambda m: "\\" + _ESCAPED[m.group(0)], text)
    if "\\\\" in text:
        text = _DOUBLE_BACKSLASH_RE.sub(lambda m: "\\", text)
    return text


_LEADING_TOKENS_RE = re.compile(r"^(?:\s*<\|[A-Za-z_]{1,40}\|>(?:assistant|user|system)?)+")


def strip_chat_tokens(text: str) -> str:
    """Cut at the start of a next chat turn (``<|im_start|>user``) and drop other special tokens."""
    if "<|" not in text and "</s>" not in text:
        return text
    text = _LEADING_TOKENS_RE.sub("", text)
    m = _TURN_RE.search(text)
    if m:
        text = text[: m.start()]
    return _SPECIAL_TOKEN_RE.sub(" ", text) if "<" in text else text


def strip_math_delimiters(s: str) -> str:
    """Remove one layer of ``$…$``, ``$$…$$``, ``\\(…\\)``, ``\\[…\\]`` around the whole string."""
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left) : len(s) - len(right)].strip()
    return s


_HOPE = "i hope it is correct"
_MATH_SPAN_RE = re.compile(
    r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<![\\$])\$((?:\\\$|[^$\n])+?)\$", re.DOTALL
)
_DELIMITED = ((re.compile(r"\$\$(.+?)\$\$", re.DOTALL), "$$", "$$"), (re.compile(r"\\\[(.+?)\\\]", re.DOTALL), "\\[", "\\]"),
              (re.compile(r"\\\((.+?)\\\)", re.DOTALL), "\\(", "\\)"))
_INLINE_SPAN_RE = re.compile(r"(?<![\\$])\$((?:\\\$|[^$\n])+?)\$")
_OPENER_RE = re.compile(r"\$|\\\[|\\\(")


def strip_hope(s: str) -> str:
    """Cut lm-eval's "I hope it is correct." tail (and a period and spaces before it). Linear: the regex
    ``\\.?\\s*I hope…`` it replaces retried ``\\s*`` at every blank and took seconds on a page of newlines."""
    i = s.lower().find(_HOPE)
    if i < 0:
        return s
    head = s[:i].rstrip()
    return head[:-1] if head.endswith(".") else head


def math_spans(s: str) -> list[tuple[int, int, str]]:
    """(start, end, inner) of every math span, left to right, as ``_MATH_SPAN_RE.finditer`` finds them, in
    linear time: an opener with no closer after it is skipped at once (the regex scanned to the end of the
    text for each one, quadratic on ``\\[`` repeated 4,000 times)."""
    last_close = {close: s.rfind(close) for _, _, close in _DELIMITED}
    out = []
    pos = 0
    while True:
        m = _OPENER_RE.search(s, pos)
        if m is None:
            return out
        i = m.start()
        found = None
        for rx, opener, close in _DELIMITED:
            if s.startswith(opener, i) and last_close[close] >= i + len(opener) + 1:
                found = rx.match(s, i)  # the nearest closer exists: the lazy scan stops there
                if found is not None:
                    break
        if found is None and s[i] == "$":
            found = _INLINE_SPAN_RE.match(s, i)  # bounded by the end of the line
        if found is None:
            pos = i + 1
            continue
        out.append((i, found.end(), found.group(1)))
        pos = found.end()
_SENTENCE_NUMBER_RE = re.compile(
    r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:[.,]\d+)?(?:\s*/\s*\d+)?(?:\s*(?:%|percent\b|pct\b))?"
)
_MARKER_RE = re.compile(
    r"final answer is[:\s]*|final answer\s*[:：]\s*|(?<![a-z])answer\s*(?:is\s*)?[:：]\s*|(?<![a-z])answer\s+is\s+"
    r"|(?<![a-z])answer\s*(?=\$|\\\[|\\\()|^[ \t]*####\s*",
    re.IGNORECASE | re.MULTILINE,
)
# Every alternative of ``_MARKER_RE`` contains "answer" or "####" (same flags): a text without either has no
# marker, and this scan is cheaper than the full pattern's at every position.
_MARKER_HINT_RE = re.compile(r"answer|####", re.IGNORECASE)
_MAX_BARE_CHARS = 512


def _strip_bold(line: str) -> str:
    """Markdown bold around a statement: ``**42**.`` -> ``42.`` (string operations: linear)."""
    line = line.lstrip("*").lstrip().rstrip()
    dot = line.endswith(".")
    core = line[:-1].rstrip() if dot else line
    if core.endswith("*"):
        line = core.rstrip("*").rstrip() + ("." if dot else "")
    return line.strip()
_SPAN_LIST_RE = re.compile(r"\$[^$]+\$(?:\s*(?:,|;|and|or|,\s*and)\s*\$[^$]+\$)+")


def _last_span_or_number(s: str) -> str | None:
    """The last math span (``$…$``, ``$$…$$``, ``\\[…\\]``, ``\\(…\\)``) or the last number, whichever ends later."""
    spans = math_spans(s) if ("$" in s or "\\" in s) else []
    span = spans[-1] if spans else None
    number = None
    for m in _SENTENCE_NUMBER_RE.finditer(s):
        number = m
    if span is not None and (number is None or span[1] >= number.end()):
        return span[2].strip() or None
    if number is not None:
        return number.group(0).strip()
    return None


def _marker_answer(rest: str, *, prose: bool = True) -> str | None:
    """The answer after a marker: display math (may span lines), else the rest of the line as a
    sentence: itself when it is math only, else its last math span or number, else (``prose``) the line."""
    rest = rest.lstrip()
    m = re.match(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]", rest, re.DOTALL)
    if m:
        return next(g for g in m.groups() if g is not None).strip() or None
    line = rest.split("\n", 1)[0]
    line = strip_hope(line).replace('\\"', '"').strip().strip('"').strip()
    line = _strip_bold(line)  # "**42**." -> "42."
    if not line:
        return None
    spans = _SPAN_LIST_RE.fullmatch(line.rstrip(".").strip())
    if spans:  # "$12$ and $13$": several values in one statement
        return ", ".join(x.strip() for x in re.findall(r"\$([^$]+)\$", line))
    bare = strip_math_delimiters(line.rstrip(".").strip())
    if _looks_bare(bare):
        return bare
    return _last_span_or_number(line) or (line if prose else None)


def _looks_bare(s: str, limit: int = _MAX_BARE) -> bool:
    """A math-looking answer (no prose words), or a single word (``Monday``, ``yes``)."""
    if not s or len(s) > limit or ("\n" in s and limit <= _MAX_BARE):
        return False
    if re.fullmatch(r"[A-Za-z]+", s):
        return True
    t = re.sub(r"\\(?:text|mathrm|textbf|mbox)\{[^{}]*\}|\\begin\{[a-z]*\}|\\end\{[a-z]*\}", "", s)
    t = re.sub(r"\d\s*(?:percent|pct)\b|(?<=[\d)\]}])\s*(?:or|and)(?=[-+\d(\[{\\A-Za-z])", "", t)
    return "$" not in t and not _WORD_RE.findall(t) and not re.search(r"(?<![\\A-Za-z])[A-Za-z](?:\s+[A-Za-z]){2,}", t)


def _final_statement(text: str, marker: re.Match) -> bool:
    """A marker strong enough to override earlier boxes: "final answer", or "Answer"/"####" opening a
    line (not "let me check my answer: ...")."""
    if "final" in marker.group(0).lower():
        return True
    line_start = text.rfind("\n", 0, marker.start()) + 1
    return not text[line_start : marker.start()].strip(" \t*#>_-")


_MAX_STATEMENT_CHARS = 2048  # an answer statement is read from at most this many characters after its marker


def final_statements(text: str) -> list[str]:
    """The value of every final-answer statement (``Final Answer: …``, ``The final answer is …``, a line
    opening with ``Answer:``/``####``), one per line (its last marker), in order; lines without math or a
    number (``Answer: let us compute``) state nothing. Linear: each marker reads a bounded slice."""
    last_on_line: dict[int, re.Match] = {}
    for m in _MARKER_RE.finditer(text):
        if _final_statement(text, m):
            last_on_line[text.rfind("\n", 0, m.start())] = m
    out = []
    for m in last_on_line.values():
        ans = _marker_answer(text[m.end() : m.end() + _MAX_STATEMENT_CHARS], prose=False)
        if ans:
            out.append(ans)
    return out


def _prepare(response: str) -> str | None:
    text = strip_think(response)
    if text is None:
        return None
    if len(text) > MAX_RESPONSE_CHARS:
        text = text[-MAX_RESPONSE_CHARS:]
    text = repair_escapes(text)
    return strip_chat_tokens(text)


def extract_answer(response: str, *, last_number: bool = True) -> Extraction:
    """Find the final answer in a model response (see module doc for the order).

    ``last_number`` (the no-marker fallback: the last math span, then the last number) is on by default.
    """
    text = _prepare(response)
    if text is None:
        return Extraction(None, "think_unclosed")
    marker = _last(_MARKER_RE, text) if _MARKER_HINT_RE.search(text) else None
    pairs = brace_pairs(text) if "box" in text else {}
    spans = box_spans(text, pairs) if "box" in text else []
    n_boxed = len(_BOX_RE.findall(text)) if spans or "box" in text else 0
    finals = final_statements(text) if marker is not None else []
    boxed, unbalanced = find_boxed(text, pairs) if n_boxed else ([], False)
    if marker is not None and (not spans or (marker.start() >= spans[-1][1] and _final_statement(text, marker))):
        ans = _marker_answer(text[marker.end() :])
        if ans:
            return Extraction(ans, "marker", boxed, unbalanced, n_boxed, finals)
    if boxed:
        return Extraction(boxed[-1].strip(), "boxed", boxed, unbalanced, n_boxed, finals)
    if unbalanced:
        return Extraction(None, "boxed", [], True, n_boxed)
    if marker is not None:
        ans = _marker_answer(text[marker.end() :])
        if ans:
            return Extraction(ans, "marker")
    stripped = strip_hope(text).strip().strip("*").strip()
    bare = strip_math_delimiters(stripped).rstrip(".").strip()
    if _looks_bare(bare, _MAX_BARE_CHARS) and (len(bare) <= _MAX_BARE or "$" not in stripped[1:-1]):
        return Extraction(bare, "bare")
    if last_number and brace_depth(stripped)[0] <= MAX_BRACE_DEPTH:  # no fallback into pathological nesting
        ans = _last_span_or_number(stripped)
        if ans:
            return Extraction(ans.rstrip(",").strip(), "last_number")
    return Extraction(None, "")


MAX_GOLD_CHARS = 16384
_LIST_GAP_RE = re.compile(r"^[\s$.,;:\\()\[\]+*-]*(?:(?:and|or|,|;|\\quad|\\text\{\s*(?:and|or)\s*\})[\s$.,;:\\()\[\]]*)?"
                          r"(?:[A-Za-z]{1,12}\s+(?:and|or)\s*)?[\s$\\()]*$")


def _boxes_listed(g: str) -> bool:
    """Several boxes in a gold form a list when only separators lie between them (``\\boxed{1}, \\boxed{2}``,
    ``\\boxed{1} and \\boxed{2}``, ``\\boxed{1} papers and \\boxed{2}``), not prose (``\\boxed{1} no no \\boxed{2}``)."""
    spans = box_spans(g)
    gaps = [g[a[1] : b[0]] for a, b in zip(spans, spans[1:], strict=False)]
    return all(len(gap) <= 40 and _LIST_GAP_RE.match(gap) for gap in gaps)
_PROSE_RE = re.compile(r"[A-Za-z]{3,}\s+[A-Za-z]{2,}\s+[A-Za-z]{2,}")
_LEADING_SPAN_RE = re.compile(r"^\s*(?:\$\$(.+?)\$\$|\$([^$]+)\$|\\\((.+?)\\\))\s*[,.;:]?\s+(?=[A-Za-z])", re.S)
_TRAILING_REMARK_RE = re.compile(r"(?<=\S)\s+\((?=[^()\\$]*(?<![A-Za-z\\])[A-Za-z]{3,})[^()\\$]*\)\s*\.?\s*$")


def extract_gold(gold: str) -> str:
    """The answer part of a dataset gold (linear in its length; callers bound it by ``MAX_GOLD_CHARS``).

    ``#### x`` (GSM8K); several ``\\boxed{}`` -> their list (``\\boxed{1} and \\boxed{2}`` -> ``1, 2``); one box ->
    its content; a box never closed -> the rest of the text; a solution-style gold (prose) -> its final
    answer, found like a response's; else the bare text without math delimiters.
    """
    g = repair_escapes(gold.strip())
    if "####" in g:
        return g.rsplit("####", 1)[1].strip()
    if _BOX_RE.search(g):
        boxed, unbalanced = find_boxed(g)
        distinct = list(dict.fromkeys(b.strip() for b in boxed if b.strip()))
        if len(distinct) > 1 and _boxes_listed(g):
            return ", ".join(distinct)
        if len(distinct) > 1:
            return boxed[-1].strip()
        if distinct:
            return distinct[0]
        if unbalanced:
            m = _last(_BOX_RE, g)
            return g[m.end() :].lstrip(" {").strip()
    bare = strip_math_delimiters(g)
    if _MARKER_RE.search(g) or (len(g) > 200 and _PROSE_RE.search(re.sub(r"\\text\{[^{}]*\}", "", bare))):
        ex = extract_answer(g)  # a solution-style gold: its final answer
        if ex.answer:
            return ex.answer
    lead = _LEADING_SPAN_RE.match(g)
    if lead and _PROSE_RE.search(g[lead.end() :] + " and so"):  # "$\\frac12$, since half are left"
        return next(x for x in lead.groups() if x is not None).strip()
    return _TRAILING_REMARK_RE.sub("", bare)  # "42 (rounded)"
