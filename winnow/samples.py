"""The sample log: what the model wrote at each step, ``<run_dir>/samples.jsonl``. Shared, not the learner's:
one module for the file's format, which the learner writes (:class:`SampleLog`) and ``winnow samples`` reads.

One JSON line per logged group::

    {"step": 12, "prompt_id": "gsm8k/17", "request_id": "...", "task": "math", "problem": "...",
     "gold": "72", "outcome": "trained", "policy_version": 11,
     "samples": [{"text": "...", "status": "correct", "reward": 1.0, "extracted": "72",
                  "finish_reason": "stop", "tokens": 57, "kept": true, "why": ""}, ...]}

``step`` is the policy version the learner reached with the step that consumed the group (the
``version`` of the same step's metrics.jsonl row). ``outcome`` is the group's fate (``trained``,
``all_correct`` / ``all_wrong``: the algorithm's filter dropped it, ``stale``: too old, dropped
before the step); ``kept`` says whether the sample contributed to the update and ``why`` why not
(``group all_wrong``, ``not correct (raft)``, ``verifier error``, ``stale``...).

Bounded by :class:`winnow.learner.tracking.SamplesConfig`: every k-th step, at most ``max_groups`` groups
per step, texts cut to ``max_chars``, and no more appends past ``max_mb``.
``winnow samples RUN_DIR [--step K] [--status wrong]`` prints it. The texts are the model's (or a
foreign writer's): printed, every control character but newline and tab (ESC, CSI, OSC, BEL, CR, DEL,
C1) and every bidirectional override is shown as an escape (``\\x1b``), never sent to the terminal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleJudgement:
    """The learner's view of each sample of G groups: ``kept`` (it contributed to the update), ``valid``
    (the verifier judged it), ``rewards`` (the learner's status -> reward map), the filter's name."""

    kept: list[list[bool]]
    valid: list[list[bool]]
    rewards: list[list[float]]
    filter: str = ""

STATUS_LABELS = ("unspecified", "correct", "wrong", "no_answer", "unparsable", "timeout", "too_complex", "error")


def shown_status(sample: dict[str, Any]) -> str:
    """The status a reader is shown: ``truncated`` for a response cut off at the token limit (finish_reason
    "length") that is not correct, since the verifier's wrong/no_answer then says nothing of the model's answer;
    otherwise the verifier's status. The log keeps the verifier's status."""
    status = str(sample.get("status", ""))
    return "truncated" if sample.get("finish_reason") == "length" and status != "correct" else status


def _label(status: int) -> str:
    return STATUS_LABELS[status] if 0 <= status < len(STATUS_LABELS) else f"status_{status}"


def _cut(text: str, limit: int) -> str:
    if limit and len(text) > limit:
        return text[:limit] + f"… [{len(text) - limit} more chars]"
    return text


def group_row(
    msg: Any,
    outcome: str,
    *,
    kept: list[bool] | None = None,
    valid: list[bool] | None = None,
    rewards: list[float] | None = None,
    filter_name: str = "",
    max_chars: int = 0,
) -> dict[str, Any]:
    """One samples.jsonl row for a ``ScoredGroup`` message (without ``step``)."""
    samples = []
    for i, s in enumerate(msg.samples):
        k = bool(kept[i]) if kept is not None else outcome == "trained"
        v = bool(valid[i]) if valid is not None else True
        status = _label(int(s.status))
        if k:
            why = ""
        elif outcome == "stale":
            why = "stale"
        elif not v:
            why = "verifier error (invalid)"
        elif outcome in ("all_correct", "all_wrong"):
            why = f"group {outcome}"
        elif filter_name == "raft" and status != "correct":
            why = "not correct (raft)"
        else:
            why = f"filter {filter_name}" if filter_name else "dropped"
        samples.append(
            {
                "text": _cut(s.text, max_chars),
                "status": status,
                "reward": float(rewards[i]) if rewards is not None else None,
                "extracted": s.extracted,
                "finish_reason": s.finish_reason,
                "tokens": len(s.response_token_ids),
                "kept": k,
                "why": why,
            }
        )
    return {
        "prompt_id": msg.prompt_id,
        "request_id": msg.request_id,
        "task": msg.task,
        "problem": _cut(getattr(msg, "problem", ""), max_chars),
        "gold": getattr(msg, "gold", ""),
        "outcome": outcome,
        "policy_version": int(msg.policy_version),
        "generator_id": msg.generator_id,
        "samples": samples,
    }


class SampleLog:
    """Collects the groups of each step (:meth:`record`) and appends them at the step's end (:meth:`flush`)."""

    def __init__(self, path: str | Path, cfg: Any) -> None:
        self.path = Path(path)
        self.cfg = cfg
        self._pending: list[dict[str, Any]] = []  # the step's batch
        self._dropped: list[dict[str, Any]] = []  # groups dropped before the step (stale)
        self._full_warned = False

    def _wanted(self, step: int) -> bool:
        return bool(self.cfg.every > 0 and self.cfg.max_groups > 0 and step % self.cfg.every == 0)

    def record(
        self,
        groups: list[Any],
        outcomes: list[str],
        *,
        step: int,
        judged: SampleJudgement | None = None,
    ) -> None:
        """Groups (``ScoredGroup``) the step ``step`` consumed or dropped, each with its outcome, and the
        learner's per-sample judgement (kept, valid, reward; None = kept iff the group was trained). The
        batch's groups come first in the log, then the ones dropped as stale, ``max_groups`` in all."""
        if not groups or not self._wanted(step):
            return
        bucket = self._dropped if all(o == "stale" for o in outcomes) else self._pending
        room = self.cfg.max_groups - len(bucket)
        if room <= 0:
            return
        for i, (g, outcome) in enumerate(list(zip(groups, outcomes, strict=True))[:room]):
            bucket.append(
                group_row(
                    g,
                    outcome,
                    kept=judged.kept[i] if judged is not None and outcome != "stale" else None,
                    valid=judged.valid[i] if judged is not None else None,
                    rewards=judged.rewards[i] if judged is not None else None,
                    filter_name=judged.filter if judged is not None else "",
                    max_chars=self.cfg.max_chars,
                )
            )

    def flush(self, step: int) -> list[dict[str, Any]]:
        """Append the recorded groups as the rows of ``step``; returns the rows written."""
        rows = (self._pending + self._dropped)[: self.cfg.max_groups]
        self._pending, self._dropped = [], []
        if not rows:
            return []
        limit = int(self.cfg.max_mb * 1024 * 1024)
        if self.path.exists() and self.path.stat().st_size >= limit:
            if not self._full_warned:
                log.warning("%s reached samples.max_mb=%s; no more samples are logged", self.path, self.cfg.max_mb)
                self._full_warned = True
            return []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}, ensure_ascii=False) + "\n")
        return [{"step": step, **r} for r in rows]


def table_rows(rows: list[dict[str, Any]], max_chars: int = 0) -> tuple[list[str], list[list[Any]]]:
    """Sample-log rows -> ``(columns, one row per sample)`` for tracking tables."""
    columns = ["step", "prompt_id", "problem", "gold", "outcome", "i", "status", "reward", "extracted", "kept",
               "why", "response"]
    out = []
    for r in rows:
        for i, s in enumerate(r["samples"]):
            out.append([r["step"], r["prompt_id"], _cut(r.get("problem", ""), max_chars), r.get("gold", ""),
                        r["outcome"], i, s["status"], s["reward"], s["extracted"], s["kept"], s["why"],
                        _cut(s["text"], max_chars)])
    return columns, out


# ---------------------------------------------------------------------------------------------
# reading and printing (winnow samples)


_UNSAFE = [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0),  # C0 but \t \n, DEL, C1
           0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]  # bidi marks and overrides
_VISIBLE = {c: ("\\r" if c == 0x0D else f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _UNSAFE}
_JSON_ESCAPED = {c: f"\\u{c:04x}" for c in _UNSAFE}


def visible(text: Any) -> str:
    """``text`` safe to print on a terminal: each control character (except newline and tab) and each
    bidirectional override replaced by its escape, e.g. ESC by the four characters ``\\x1b``."""
    return str(text).translate(_VISIBLE)


def json_line(row: dict[str, Any]) -> str:
    """``row`` as one JSON line that is safe to print: the characters :func:`visible` escapes are written
    as ``\\uXXXX`` (JSON escapes C0 itself; DEL, C1 and bidi marks it leaves raw)."""
    return json.dumps(row, ensure_ascii=False).translate(_JSON_ESCAPED)


def read_samples(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a samples.jsonl (a torn last line is skipped)."""
    p = Path(path)
    with p.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def select(
    rows: Iterator[dict[str, Any]], *, step: int | None = None, status: str | None = None,
    outcome: str | None = None, prompt: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Rows of step ``step`` with at least one sample of ``status`` (the row keeps only those samples); ``truncated``
    selects the cut-off responses (:func:`shown_status`)."""
    for r in rows:
        if step is not None and int(r.get("step", -1)) != step:
            continue
        if outcome is not None and r.get("outcome") != outcome:
            continue
        if prompt is not None and prompt not in r.get("prompt_id", ""):
            continue
        if status is not None:
            kept = [s for s in r.get("samples", []) if status in (s.get("status"), shown_status(s))]
            if not kept:
                continue
            r = {**r, "samples": kept}
        yield r


def format_row(r: dict[str, Any], *, max_chars: int = 0) -> str:
    """A readable block for one group, safe to print (every field goes through :func:`visible`)."""
    head = (f"── step {r.get('step')}  {r.get('prompt_id')}  outcome: {r.get('outcome')}  "
            f"gold: {r.get('gold', '')!s}  (policy v{r.get('policy_version')}, task {r.get('task', '')})")
    lines = [visible(head)]
    if r.get("problem"):
        lines.append("problem: " + visible(_cut(str(r["problem"]), max_chars)).replace("\n", "\n         "))
    for i, s in enumerate(r.get("samples", [])):
        mark = "kept" if s.get("kept") else f"dropped: {s.get('why', '')}"
        lines.append(visible(
            f"  [{i}] {shown_status(s)}  reward {s.get('reward')}  extracted {s.get('extracted', '')!r}  "
            f"{s.get('tokens')} tok ({s.get('finish_reason')})  {mark}"
        ).replace("\n", "\\n"))
        text = visible(_cut(str(s.get("text", "")), max_chars).rstrip())
        lines.append("      " + text.replace("\n", "\n      "))
    return "\n".join(lines)
