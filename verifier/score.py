"""``winnow score``: grade a JSONL file of answers, in-process or through a running verifier.

Input: one JSON object per line::

    {"id": "q1", "response": "... so the answer is \\boxed{42}", "gold": "42", "task": "gsm8k", "options": {}}

``response`` (string) and ``gold`` (string or number) are required; ``id``, ``task`` (string) and
``options`` (object of scalars) are optional. Every other field is copied through untouched.

Output: one line per input line, in input order: the input object plus ``status`` (correct, wrong,
no_answer, unparsable, timeout, too_complex, error), ``correct`` (bool), ``extracted``, ``path``,
``detail`` and ``latency_ms``, and ``score`` when the verifier returned a scalar score next to the status (Python
reward functions, a reward model: partial credit; absent for a status-only verdict) (these names overwrite input
fields of the same name). ``id`` is
optional and never used for matching: items travel under their line number, so duplicate or
missing ids are fine. Blank lines are skipped (they produce no output line).

A malformed line (bad JSON, not an object, missing or mistyped field) becomes an error record at
its position, e.g. ``{"line": 7, "status": "error", "correct": false, "error": "line 7: missing
field 'gold'"}``; the other lines are still scored.

A line that is not valid UTF-8, holds a lone surrogate, an integer of more than 4,300 digits or JSON
nested too deep is malformed in the same way. ``NaN``/``Infinity`` are read as the strings ``nan`` and
``\\infty`` (a ``nan`` gold scores ``error``: unanswerable), so the output is always valid JSON.

Exit status: 0 when every line was scored without error; 1 when some lines were malformed or got
status ``error`` (all other lines scored); 2 for usage/config errors; 3 when the remote verifier stayed
unavailable or refused a call (wrong token, limits); 4 when scoring was aborted because the output
could not be written (disk full, ``/dev/full``, permissions). For 3 the lines scored before that
point are written.

The output never clobbers the input: ``-o`` naming the input file itself (also through a symlink or a
hard link) is refused, and a regular output file is written to a temporary file next to it and
renamed into place at the end (a run aborted by a write error leaves any previous output untouched).
A summary (counts by status, malformed lines, throughput) goes to stderr.

Memory stays bounded: lines are read, scored and written in chunks of ``--batch-size`` with at most
``inflight`` chunks outstanding, so files of any length stream through.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from winnow.verifier.types import Item, Status, Verdict

Scorer = Callable[[list[Item]], Awaitable[list[Verdict]]]
RESULT_FIELDS = ("status", "correct", "extracted", "path", "detail", "latency_ms", "score")


class LineError(ValueError):
    """A malformed input line; the message starts with ``line N:``."""


@dataclass(slots=True)
class Parsed:
    line: int
    record: dict[str, Any] | None = None
    item: Item | None = None
    error: str = ""


@dataclass
class Summary:
    lines: int = 0
    counts: collections.Counter = field(default_factory=collections.Counter)
    malformed: int = 0
    first_malformed: str = ""
    elapsed_s: float = 0.0

    @property
    def failed(self) -> bool:
        return self.malformed > 0 or self.counts[Status.ERROR.label] > 0

    def format(self) -> str:
        rate = self.lines / self.elapsed_s if self.elapsed_s > 0 else 0.0
        order = [s.label for s in Status if s != Status.UNSPECIFIED]
        counts = ", ".join(f"{k} {self.counts[k]}" for k in order if self.counts[k])
        text = f"winnow score: {self.lines} lines in {self.elapsed_s:.2f}s ({rate:.1f} lines/s): {counts or 'none'}"
        if self.malformed:
            text += f"; {self.malformed} malformed line{'s' if self.malformed > 1 else ''} (first: {self.first_malformed})"
        return text


def _scalar(name: str, value: Any, line: int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value
    raise LineError(f"line {line}: field {name!r} must be a string or number, got {type(value).__name__}")


_CONSTANTS = {"NaN": "nan", "Infinity": "\\infty", "-Infinity": "-\\infty"}
# Built once (``json.loads``/``json.dumps`` with arguments build a new decoder/encoder per call).
_decode = json.JSONDecoder(parse_constant=_CONSTANTS.__getitem__).decode
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
_check_encode = json.JSONEncoder(ensure_ascii=False).encode
_LABELS = {s: s.label for s in Status}
_MAX_UNCHECKED_OPENERS = 200  # a line with fewer '[' and '{' nests too shallow for the encoder to overflow


def parse_line(line: int, text: str | bytes) -> Parsed:
    """One JSONL line -> the record and its Item, or an error naming the line."""
    check = True
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            return Parsed(line, error=f"line {line}: invalid UTF-8 at byte {e.start}")
        # strict UTF-8 holds no surrogate, so only a \u escape can make one; shallow JSON re-encodes
        check = "\\u" in text or text.count("[") + text.count("{") > _MAX_UNCHECKED_OPENERS
    try:
        record = _decode(text)
    except json.JSONDecodeError as e:
        return Parsed(line, error=f"line {line}: invalid JSON: {e.msg} (column {e.colno})")
    except RecursionError:
        return Parsed(line, error=f"line {line}: invalid JSON: nested too deep")
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        return Parsed(line, error=f"line {line}: invalid JSON: {str(e)[:120]}")
    try:
        if check:
            _check_encode(record).encode("utf-8")
    except UnicodeEncodeError:
        return Parsed(line, error=f"line {line}: lone surrogate in a string (not valid Unicode)")
    except (RecursionError, ValueError) as e:
        return Parsed(line, error=f"line {line}: unsupported JSON value: {type(e).__name__}")
    try:
        if not isinstance(record, dict):
            raise LineError(f"line {line}: expected a JSON object, got {type(record).__name__}")
        for name in ("response", "gold"):
            if name not in record:
                raise LineError(f"line {line}: missing field {name!r}")
        if not isinstance(record["response"], str):
            raise LineError(
                f"line {line}: field 'response' must be a string, got {type(record['response']).__name__}"
            )
        gold = record["gold"]
        if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
            raise LineError(f"line {line}: field 'gold' must be a string or number, got {type(gold).__name__}")
        task = record.get("task")
        if task is not None and not isinstance(task, str):
            raise LineError(f"line {line}: field 'task' must be a string, got {type(task).__name__}")
        options = record.get("options")
        if options is not None and not isinstance(options, dict):
            raise LineError(f"line {line}: field 'options' must be an object, got {type(options).__name__}")
        opts = {str(k): _scalar(f"options.{k}", v, line) for k, v in (options or {}).items()}
    except LineError as e:
        return Parsed(line, record=record if isinstance(record, dict) else None, error=str(e))
    item = Item(id=str(line), response=record["response"], gold=str(gold), task=task or "", options=opts)
    return Parsed(line, record=record, item=item)


def error_record(p: Parsed) -> dict[str, Any]:
    out: dict[str, Any] = {"line": p.line}
    if p.record is not None and "id" in p.record:
        out["id"] = p.record["id"]
    out.update(status=Status.ERROR.label, correct=False, error=p.error)
    return out


def result_record(record: dict[str, Any], v: Verdict) -> dict[str, Any]:
    out = dict(record)
    out.update(
        status=_LABELS[v.status],
        correct=v.status == Status.CORRECT,
        extracted=v.extracted,
        path=v.path,
        detail=v.detail,
        latency_ms=round(v.latency_ms, 3),
    )
    if v.score is not None:
        out["score"] = v.score
    else:
        out.pop("score", None)  # a result field: an input's own "score" is not the verifier's
    return out


def read_chunks(lines: Iterable[str | bytes], size: int) -> Iterator[list[tuple[int, str | bytes]]]:
    """(line number, text) in chunks of ``size`` non-blank lines; line numbers start at 1."""
    chunk: list[tuple[int, str | bytes]] = []
    for n, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        chunk.append((n, text))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def score_lines(
    lines: Iterable[str | bytes],
    out: IO[str],
    scorer: Scorer,
    *,
    batch_size: int = 256,
    inflight: int = 2,
    progress: Any = None,
) -> Summary:
    """Score ``lines`` with ``scorer`` and write one output line per non-blank input line, in order.

    At most ``inflight`` chunks of ``batch_size`` lines are held in memory at once.
    """
    summary = Summary()
    start = time.perf_counter()
    pending: collections.deque[tuple[list[Parsed], asyncio.Task | None]] = collections.deque()

    async def flush() -> None:
        parsed, task = pending.popleft()
        verdicts = iter(await task) if task is not None else iter(())
        lines: list[str] = []
        for p in parsed:
            if p.item is None:
                summary.malformed += 1
                summary.first_malformed = summary.first_malformed or p.error
                rec = error_record(p)
            else:
                v = next(verdicts)
                if v.id != p.item.id:
                    raise RuntimeError(f"verifier answered id {v.id!r} for line {p.line}")
                summary.counts[_LABELS[v.status]] += 1
                rec = result_record(p.record, v)
            lines.append(_encode(rec))
        lines.append("")
        out.write("\n".join(lines))  # one write per chunk
        summary.lines += len(parsed)
        if progress is not None:
            progress.update(len(parsed))

    try:
        for chunk in read_chunks(lines, batch_size):
            parsed = [parse_line(n, text) for n, text in chunk]
            items = [p.item for p in parsed if p.item is not None]
            task = asyncio.ensure_future(scorer(items)) if items else None
            pending.append((parsed, task))
            while len(pending) > inflight:
                await flush()
            await asyncio.sleep(0)
        while pending:
            await flush()
    finally:
        for _, task in pending:
            if task is not None:
                task.cancel()
        out.flush()
        summary.elapsed_s = time.perf_counter() - start
    return summary


PEEK_LINES = 64


def peek_items(src: IO[bytes]) -> list[Item]:
    """The items of the complete lines already in ``src``'s read buffer (at most ``PEEK_LINES``), without
    consuming them: what the engine looks at to start its worker pool before the first chunk is read."""
    peek = getattr(src, "peek", None)
    if peek is None:
        return []
    try:
        head = peek(1 << 16)
    except (OSError, ValueError):
        return []
    lines = head.split(b"\n")[:-1][:PEEK_LINES]  # the last piece may be a partial line
    return [p.item for p in (parse_line(n, text) for n, text in enumerate(lines, 1) if text.strip()) if p.item]


def _count_lines(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return None


@dataclass(frozen=True)
class EngineSettings:
    """What ``winnow score`` takes from the verifier config. ``defaults()`` are ``VerifierConfig()``'s, known
    without importing pydantic (~0.2 s of start-up); a test checks that they agree."""

    engine_workers: int
    timeout_s: float = 2.0
    memory_mb: int = 1024
    max_tasks_per_worker: int = 500
    cache_size: int = 65536
    max_batch_items: int = 4096
    default_options: dict[str, str] = field(default_factory=lambda: {"rounded": "0", "fallback": "1"})

    @classmethod
    def defaults(cls, workers: int = 0) -> EngineSettings:
        return cls(engine_workers=workers or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                  else 1))

    @classmethod
    def of(cls, cfg) -> EngineSettings:
        """From a resolved ``VerifierConfig``."""
        return cls(**{name: getattr(cfg, name) for name in cls.__dataclass_fields__})


def engine_settings(args) -> EngineSettings:
    """The config of ``winnow score``: resolved and validated by :func:`winnow.config.load_config` (file, env,
    ``--set``) when any of them is given, else the defaults without pydantic (``--workers`` 1-256 applied)."""
    configured = args.config or getattr(args, "set", None) or any(k.startswith("WINNOW_") for k in os.environ)
    if not configured and (args.workers is None or 1 <= args.workers <= 256):  # VerifierConfig.workers: le=256
        return EngineSettings.defaults(args.workers or 0)
    from winnow.config import load_config, parse_overrides
    from winnow.verifier.config import VerifierConfig

    overrides = parse_overrides(getattr(args, "set", None))
    if args.workers is not None:
        overrides["workers"] = args.workers
    return EngineSettings.of(load_config(VerifierConfig, args.config, overrides))


def run(args) -> int:
    """Entry point of ``winnow score`` (args from :func:`winnow.verifier.main.register`)."""
    if args.batch_size < 1:
        print("winnow score: --batch-size must be >= 1", file=sys.stderr)
        return 2
    if args.output and args.output != "-" and args.input != "-" and _same_file(args.input, args.output):
        print(f"winnow score: -o {args.output} is the input file itself (same file, link or symlink)", file=sys.stderr)
        return 2
    cfg = engine_settings(args)
    try:
        src = sys.stdin.buffer if args.input == "-" else open(args.input, "rb", buffering=1 << 16)  # noqa: SIM115
    except OSError as e:
        print(f"winnow score: cannot read {args.input}: {e.strerror}", file=sys.stderr)
        return 2
    try:
        sink = _Sink(args.output)
    except OSError as e:
        print(f"winnow score: cannot write {args.output}: {e.strerror}", file=sys.stderr)
        return 2
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    bar = None
    if show:
        from tqdm import tqdm

        total = _count_lines(args.input) if args.input != "-" else None
        bar = tqdm(total=total, unit="line", file=sys.stderr, dynamic_ncols=True, desc="score")
    ok = False
    try:
        summary = asyncio.run(_run_async(args, cfg, src, sink.file, bar))
        sink.finish()
        ok = True
    except _Unavailable as e:
        print(f"winnow score: {e}", file=sys.stderr)
        try:
            sink.finish()  # keep the lines scored before the verifier failed
            ok = True
        except OSError:
            pass
        return 3
    except OSError as e:
        print(f"winnow score: aborted: cannot write {args.output or 'stdout'}: {e.strerror or e}", file=sys.stderr)
        return 4
    finally:
        if bar is not None:
            bar.close()
        if src is not sys.stdin.buffer:
            src.close()
        if not ok:
            sink.abort()
    print(summary.format(), file=sys.stderr)
    return 1 if summary.failed else 0


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (by device and inode: symlinks and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


class _Sink:
    """The output: stdout, a device/FIFO written in place, or a regular file written to a temporary
    file in the same directory and renamed over the target by ``finish``."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.tmp: str | None = None
        if not path or path == "-":
            self.file = sys.stdout
            return
        if os.path.exists(path) and not os.path.isfile(path):  # /dev/full, /dev/null, a FIFO
            self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115
            return
        import tempfile

        self.path = path = os.path.realpath(path)  # through a symlink: replace its target, keep the link
        fd, self.tmp = tempfile.mkstemp(prefix=".winnow-score-", suffix=".tmp", dir=os.path.dirname(path))
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o666 & ~umask)
        self.file = os.fdopen(fd, "w", encoding="utf-8")

    def finish(self) -> None:
        if self.file is sys.stdout:
            self.file.flush()
            return
        self.file.flush()
        if self.tmp is not None:
            os.fsync(self.file.fileno())
        self.file.close()
        if self.tmp is not None:
            os.replace(self.tmp, self.path)  # type: ignore[arg-type]
            self.tmp = None

    def abort(self) -> None:
        if self.file is not sys.stdout:
            try:
                self.file.close()
            except OSError:
                pass
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass


class _Unavailable(RuntimeError):
    """The remote verifier failed for good (the message says how)."""


async def _run_async(args, cfg, src, dst, bar) -> Summary:
    if args.verifier:
        from winnow.verifier.client import VerifierClient, VerifierError

        token = args.token or os.environ.get("WINNOW_VERIFIER_TOKEN") or None
        client = VerifierClient(
            args.verifier,
            token=token,
            tls=args.tls,
            root_certificates=args.ca_file,
            max_batch_items=min(args.batch_size, cfg.max_batch_items),
            retry_total_s=args.retry_s,
        )
        try:
            return await score_lines(src, dst, client.verify_batch, batch_size=args.batch_size, progress=bar)
        except VerifierError as e:  # unavailable past --retry-s, or a call refused (auth, limits)
            raise _Unavailable(str(e)) from None
        finally:
            await client.close()

    from winnow.verifier.engine import MathVerifier

    engine = MathVerifier(
        workers=cfg.engine_workers,
        timeout_s=cfg.timeout_s,
        memory_mb=cfg.memory_mb,
        max_tasks_per_worker=cfg.max_tasks_per_worker,
        cache_size=cfg.cache_size,
        default_options=cfg.default_options,
        lazy_pool=True,  # a file that never needs sympy never starts the worker processes
    )
    engine.start_pool_for(peek_items(src))
    try:

        async def scorer(items: list[Item]) -> list[Verdict]:
            if engine.pool_requested:  # symbolic jobs wait on worker processes: keep reading meanwhile
                return await asyncio.to_thread(engine.verify_batch, items)
            return engine.verify_batch(items)  # fast paths only so far: a thread would only add GIL hand-offs

        return await score_lines(src, dst, scorer, batch_size=args.batch_size, progress=bar)
    finally:
        engine.close()
