"""Dataset rows as users have them -> problem text, chat messages, gold answer, task. Shared, as its one user
:mod:`winnow.prompts` is (the learner's training data and ``winnow eval``'s data sets).

Used by the record prompt sources (jsonl, parquet, hf) of :mod:`winnow.prompts`. Pure functions over
plain dicts (what ``json.loads``, ``pyarrow.Table.to_pylist`` and ``datasets.Dataset`` rows give):

- **Fields by dotted path**: ``reward_model.ground_truth`` reads ``row["reward_model"]["ground_truth"]``;
  a number indexes a list (``messages.0.content``).
- **Prompts** are a string, or a chat message list ``[{"role": "user", "content": "..."}]`` (verl,
  TRL conversational). A message list keeps its turns (:attr:`RowProblem.messages`); its problem
  text is the last user turn.
- **Golds** are a string or a number. GSM8K solutions give what follows the last ``####`` (thousands
  commas dropped), MATH solutions the last ``\\boxed{...}``. A gold that is anything else (a dict, a
  list, a bool, None) is an error naming the row and the field, never its repr: a wrong field would
  otherwise score every sample wrong, silently.
- **Per-row task** (verifier route): ``task_field`` names a field that holds the task (e.g. verl's
  ``data_source``); rows without it use the configured ``task``.

Field defaults, when not configured: the problem is the first of :data:`PROBLEM_FIELDS` in row 0, the
gold the first of :data:`ANSWER_FIELDS`. So these rows load with no field settings at all::

    {"question": "Natalia sold 48 clips ...", "answer": "... #### 72"}                    GSM8K
    {"problem": "What is $1+1$?", "solution": "... so the answer is $\\boxed{2}$."}        MATH
    {"prompt": [{"role": "user", "content": "..."}], "reward_model": {"ground_truth": "72"},
     "data_source": "openai/gsm8k"}                                                       verl
    {"prompt": [{"role": "user", "content": "..."}], "solution": "72"}                   TRL (conversational)
    {"prompt": "What is 2+3?", "answer": 5}                                              plain
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from winnow.config import ConfigError

PROBLEM_FIELDS = ("problem", "question", "prompt", "query", "input")
"""Problem fields tried in order when ``problem_field`` is "" (row 0 decides)."""
ANSWER_FIELDS = ("answer", "ground_truth", "reward_model.ground_truth", "solution", "final_answer", "target")
"""Gold fields tried in order when ``answer_field`` is "" (row 0 decides)."""
ANSWER_FORMATS = ("auto", "gsm8k", "boxed", "plain")


class DatasetError(ConfigError):
    """A dataset row cannot be used (the message names the row and the field)."""


@dataclass(frozen=True, slots=True)
class RowProblem:
    """What one row gives: the problem text, its chat messages (None for a plain-text prompt), the gold
    answer, the task (None = the source's configured task)."""

    problem: str
    messages: tuple[tuple[str, str], ...] | None
    gold: str
    task: str | None


_MISSING = object()


def get_path(row: Any, path: str, default: Any = _MISSING) -> Any:
    """``row["a"]["b"]`` for ``path="a.b"`` (a number indexes a list). A field named with a literal dot
    (``"a.b"`` as one key) wins over the nested one. KeyError naming the missing part, unless ``default``."""
    if isinstance(row, dict) and path in row:
        return row[path]
    node = row
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list | tuple) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            if default is not _MISSING:
                return default
            raise KeyError(part)
    return node


def has_path(row: Any, path: str) -> bool:
    return get_path(row, path, None) is not None


def pick_field(row: dict[str, Any], configured: str, candidates: tuple[str, ...], what: str, where: str) -> str:
    """The configured field, else the first candidate present in ``row`` (row 0); DatasetError if none."""
    if configured:
        if not has_path(row, configured):
            raise DatasetError(f"{where}: row 0 has no field {configured!r} ({_fields(row)}); set {what}")
        return configured
    for c in candidates:
        if has_path(row, c):
            return c
    raise DatasetError(f"{where}: row 0 has none of the fields {list(candidates)} ({_fields(row)}); set {what}")


def _fields(row: Any) -> str:
    if not isinstance(row, dict):
        return f"a {type(row).__name__}"
    out = []
    for k, v in row.items():
        out.append(f"{k}.{{{', '.join(map(str, v))}}}" if isinstance(v, dict) and len(v) <= 6 else str(k))
    return "fields: " + ", ".join(out)


def _describe(value: Any) -> str:
    """A value's type and shape, never its full repr."""
    if isinstance(value, dict):
        keys = list(value)[:6]
        return f"a mapping with keys {keys}"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------------------------------------
# answers

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces, or None."""
    found = None
    for m in _BOX.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found = text[m.end() : i - 1].strip()
    return found


def gsm8k_answer(text: str) -> str | None:
    """What follows the last ``####`` with thousands commas dropped (``"... #### 1,234"`` -> ``"1234"``)."""
    idx = text.rfind("####")
    if idx < 0:
        return None
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text[idx + 4 :].strip())


def gold_text(value: Any, fmt: str = "auto") -> str:
    """A gold value -> the answer string. ``fmt``: "gsm8k" (after ``####``), "boxed" (last ``\\boxed{}``),
    "plain" (as is), "auto" (gsm8k if it has ``####``, else boxed if it has ``\\boxed``, else plain).
    ValueError (a message without the row) for values that are not a string or a finite number."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"the gold must be a string or a number, got {_describe(value)}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"the gold must be a finite number, got {value}")
        return str(int(value)) if value.is_integer() else repr(value)
    if not isinstance(value, str):
        hint = ""
        if isinstance(value, dict) and "ground_truth" in value:
            hint = " (the answer is probably in its 'ground_truth': use a dotted path, e.g. reward_model.ground_truth)"
        raise ValueError(f"the gold must be a string or a number, got {_describe(value)}{hint}")
    text = value.strip()
    if fmt in ("gsm8k", "auto"):
        ans = gsm8k_answer(text)
        if ans is not None:
            return ans
        if fmt == "gsm8k":
            raise ValueError(f"a GSM8K-style answer needs '####': {text[-80:]!r}")
    if fmt in ("boxed", "auto"):
        ans = last_boxed(text)
        if ans is not None:
            return ans
        if fmt == "boxed":
            raise ValueError(f"a MATH-style solution needs a \\boxed{{}} answer: {text[-80:]!r}")
    if not text:
        raise ValueError("the gold is empty")
    return text


# ---------------------------------------------------------------------------------------------
# prompts


def prompt_of(value: Any) -> tuple[str, tuple[tuple[str, str], ...] | None]:
    """A prompt value -> ``(problem text, messages)``: a string gives ``(text, None)``; a chat message
    list (dicts with ``role`` and ``content``) gives its last user turn and the turns as
    ``((role, content), ...)``. ValueError for anything else."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("the prompt is empty")
        return value, None
    if isinstance(value, list | tuple) and value:
        turns = []
        for i, m in enumerate(value):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(
                    f"a chat prompt must be a list of {{role, content}} strings; message {i} is {_describe(m)}"
                )
            turns.append((m["role"], m["content"]))
        users = [c for r, c in turns if r == "user"]
        if not users:
            raise ValueError("a chat prompt needs a user message")
        return users[-1], tuple(turns)
    raise ValueError(f"the prompt must be a string or a chat message list, got {_describe(value)}")


def row_problem(
    row: dict[str, Any],
    *,
    problem_field: str,
    answer_field: str,
    answer_format: str = "auto",
    task_field: str = "",
    where: str = "dataset",
    index: int = 0,
) -> RowProblem:
    """One row -> :class:`RowProblem`; DatasetError naming ``where``, the row ``index`` and the field."""

    def field(path: str) -> Any:
        try:
            value = get_path(row, path)
        except KeyError:
            raise DatasetError(f"{where}: row {index} has no field {path!r} ({_fields(row)})") from None
        return value

    try:
        problem, messages = prompt_of(field(problem_field))
    except ValueError as e:
        raise DatasetError(f"{where}: row {index}, field {problem_field!r}: {e}") from None
    try:
        gold = gold_text(field(answer_field), answer_format)
    except ValueError as e:
        raise DatasetError(f"{where}: row {index}, field {answer_field!r}: {e}") from None
    task = None
    if task_field:
        value = get_path(row, task_field, None)
        if value is not None and not isinstance(value, str):
            raise DatasetError(f"{where}: row {index}, field {task_field!r}: the task must be a string, got "
                               f"{_describe(value)}")
        task = value or None
    return RowProblem(problem, messages, gold, task)
