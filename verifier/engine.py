"""The verifier engine: ``grade`` (pure, in-process) and ``MathVerifier`` (fast paths + sandboxed sympy).

Pipeline for one (response, gold) (docs/verifier.md, 'The engine, stage by stage'):

1. Gold: ``extract.extract_gold`` (``#### 42``, ``\\boxed{}``, ``$…$``) -> ``canonical.canonicalize`` ->
   structure, MCQ letter, text flag (``prepare_gold``; done once per distinct gold in a batch).
   A gold that fails the guards or is empty is ERROR, since it is not the model's fault.
2. Response: ``extract.extract_answer`` (think stripped, tail kept, last box...). Nothing found ->
   NO_ANSWER (path ``extract``). Guards (``guard.check_text``): control characters or unbalanced
   braces -> UNPARSABLE, too long / too deep / more than 8 boxes -> TOO_COMPLEX (path ``guard``).
3. Hedging, one rule for boxes and answer statements: the values of every ``\\boxed{}`` and every final-answer
   statement (``Final Answer: …``, a line opening with ``Answer:``/``####``; ``extract.final_statements``) are
   collected; two different values among them (compared by the fast paths, so ``\\boxed{0.5}`` and
   ``Answer: \\frac12`` agree) are WRONG (path ``hedge``) unless the gold is a set/list, in which case they
   are joined into one list answer. An intermediate box followed by a different final statement is a hedge too.
4. MCQ golds (path ``mcq``) and text golds (path ``text``) are decided here.
5. Fast paths (``fastpath.compare_struct`` with ``fast_scalar_eq``): decided -> done (paths ``string``,
   ``number``, ``tuple``, ``interval``, ``set``, ``matrix``, ``relation``).
6. Otherwise the symbolic path (``symbolic.compare_canonical``): in-process in ``grade``, in a worker
   process with a wall-clock budget in ``MathVerifier`` (TIMEOUT when killed). Results of this step
   are kept in an LRU cache keyed by (canonical gold, canonical answer, percent option); a hit has
   path ``cache`` and the original path in ``detail``.

Paths (``Verdict.path``, the deciding step): ``extract``, ``guard``, ``gold``, ``hedge``, ``mcq``, ``text``,
``string``, ``number``, ``tuple``, ``interval``, ``set``, ``matrix``, ``relation``, ``numeric_probe``,
``symbolic``, ``cache``; ``pool``/``deadline`` for timeouts and worker failures; ``internal`` for a bug.

Statuses: CORRECT/WRONG; NO_ANSWER (nothing extracted); UNPARSABLE (answer fails the guards or the
grammar); TIMEOUT (worker killed, or the batch deadline passed); TOO_COMPLEX (refused by a guard);
ERROR (gold unparsable, or an internal exception: never turned into WRONG).

Options (``Item.options``, string values "1"/"true" or "0"/"false"; ``MathVerifier(default_options=…)``
supplies defaults from the config, a request's own options win):

* ``fallback`` (default on; ``last_number`` is an alias): with no marker, take the last math span, then
  the last number. Off = a strict format (only boxes and answer markers count).
* ``rounded`` (default off): accept a decimal rounded or truncated to >= 2 places for an exact or
  irrational gold. Risk: a low-precision guess earns full reward. Without it a decimal stands for an
  exact value only when it matches to 6 places (Math-Verify's default float rounding).
* ``imaginary`` (default ``i``): the letter read as the imaginary unit, ``i`` or ``j``; ``none`` when the
  problem declares ``i`` a variable. ``(1+i)^2`` equals ``2i``; with ``none`` it equals ``1+2i+i^2`` only.
* ``percent``: accept x vs x/100. ``mcq``: lower-case letters count as choices (a task name containing
  ``mcq`` sets it).

Golds (``prepare_gold``): at most ``MAX_GOLD_CHARS`` characters (longer is ERROR, before any parsing);
extracted in linear time; an MCQ gold with its option text (``(B) 42``) accepts the letter or the
option's value; an undefined gold (``1/0``, ``nan``) is ERROR (unanswerable). Gold preparation runs under
the same batch deadline as the answers.

Left out: reward mapping (the learner's config), answers spread over several boxes for tuple golds.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from winnow.verifier.canonical import Struct, canonicalize, parse_structure
from winnow.verifier.extract import MAX_GOLD_CHARS, extract_answer, extract_gold
from winnow.verifier.fastpath import (
    compare_struct,
    fast_scalar_eq,
    is_text_gold,
    is_undefined,
    mcq_letter,
    pred_letter,
    text_norm,
)
from winnow.verifier.guard import MAX_BOXED, VerifyError, check_text
from winnow.verifier.types import Item, Status, Verdict

if TYPE_CHECKING:
    from winnow.verifier.pool import WorkerPool

_CHOICE_RE = re.compile(r"\(([A-J])\)")


class Result(NamedTuple):
    """What ``grade`` returns (a ``Verdict`` without id and latency)."""

    status: Status
    extracted: str = ""
    path: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Gold:
    """A gold answer prepared once: canonical text, structure, MCQ letter, text flag, or an error."""

    raw: str
    canon: str
    struct: Struct | None
    letter: str | None
    text: bool
    error: str = ""


@dataclass(frozen=True, slots=True)
class Job:
    """A comparison the fast paths could not decide (sent to the symbolic path)."""

    gold: str
    pred: str
    percent: bool
    extracted: str
    rounded: bool = False
    unit: str = "i"

    @property
    def key(self) -> tuple[str, str, bool, bool, str]:
        return (self.gold, self.pred, self.percent, self.rounded, self.unit)

    def as_dict(self) -> dict:
        return {"gold": self.gold, "pred": self.pred, "percent": self.percent, "rounded": self.rounded,
                "unit": self.unit}


def _flag(options: dict[str, str] | None, name: str, default: bool = False) -> bool:
    v = options.get(name) if options else None
    if v is None:
        return default
    if v == "1" or v == "0":  # the usual values (the config's defaults): the general rule below gives the same
        return v == "1"
    v = str(v).strip().lower()
    if not v:
        return default
    return v in ("1", "true", "yes", "on")


_OPTION_GOLD_RE = re.compile(r"^\(?([A-J])\)?\s*[.:)]?\s+(\S.*)$", re.S)


_PLAIN_INT_GOLD = re.compile(r"-?\d{1,64}")


def prepare_gold(gold: str, task: str = "", options: dict[str, str] | None = None) -> Gold:
    if _PLAIN_INT_GOLD.fullmatch(gold):  # a bare integer (most GSM8K-style golds): every step below keeps it as is
        return Gold(gold, gold, Struct("scalar", gold), None, False)
    if len(gold) > MAX_GOLD_CHARS:
        return Gold(gold[:64], "", None, None, False, f"gold has {len(gold)} chars > {MAX_GOLD_CHARS}")
    raw = extract_gold(gold)
    if not raw:
        return Gold(raw, "", None, None, False, "empty gold")
    refusal = check_text(raw)
    if refusal is not None:
        return Gold(raw, "", None, None, False, f"gold refused by guard: {refusal.detail}")
    option = _OPTION_GOLD_RE.match(re.sub(r"^\\text(?:bf)?\{\s*(\(?[A-J]\)?[.:]?)\s*\}", r"\1", raw))
    if option and (option.group(0).startswith("(") or option.group(0)[1:2] in ".:)"):  # MCQ gold with option text
        canon = canonicalize(option.group(2).rstrip("."))
        return Gold(raw, canon, parse_structure(canon), option.group(1), is_text_gold(option.group(2)))
    canon = canonicalize(raw)
    if not canon:
        return Gold(raw, "", None, None, False, "gold is empty after canonicalisation")
    if is_undefined(canon):
        return Gold(raw, canon, None, None, False, "gold is undefined (division by zero or nan): unanswerable")
    mcq = _flag(options, "mcq") or "mcq" in task.lower()
    return Gold(raw, canon, parse_structure(canon), mcq_letter(canon, mcq_task=mcq), is_text_gold(raw))


_UNITS = ("i", "j", "none")


def imaginary_unit(options: dict[str, str] | None) -> str:
    """The ``imaginary`` option: the letter read as the imaginary unit (``i``, default; ``j``), or ``none``
    when the problem declares ``i`` a variable. Anything else is a caller's bug (ValueError -> ERROR)."""
    unit = str((options or {}).get("imaginary", "i")).strip().lower() or "i"
    if unit not in _UNITS:
        raise ValueError(f"option imaginary={unit!r}: expected one of {', '.join(_UNITS)}")
    return unit


def _status(label: str) -> Status:
    return Status.from_label(label)


def decide_fast(gold: Gold, response: str, options: dict[str, str] | None = None) -> Result | Job:
    """Steps 2-5 of the module doc: a final ``Result``, or a ``Job`` for the symbolic path."""
    if gold.error:
        return Result(Status.ERROR, "", "gold", gold.error)
    ex = extract_answer(response, last_number=_flag(options, "last_number", _flag(options, "fallback", True)))
    if ex.n_boxed > MAX_BOXED:
        return Result(Status.TOO_COMPLEX, "", "guard", f"{ex.n_boxed} boxed answers > {MAX_BOXED}")
    if ex.answer is None:
        if ex.unbalanced:
            return Result(Status.UNPARSABLE, "", "guard", "unbalanced braces after \\boxed")
        return Result(Status.NO_ANSWER, "", "extract", ex.method or "no answer found")
    answer = ex.answer
    for text in ex.boxed or [answer]:
        refusal = check_text(text)
        if refusal is not None:
            return Result(_status(refusal.kind), text[:512], "guard", refusal.detail)
    percent = _flag(options, "percent")
    rounded = _flag(options, "rounded")
    pred = canonicalize(answer)

    stated = ex.boxed + [f for f in ex.finals if check_text(f) is None]
    distinct = _distinct_boxed(stated, percent)
    if len(distinct) > 1:
        assert gold.struct is not None
        if gold.struct.kind not in ("set", "list"):
            return Result(Status.WRONG, answer, "hedge", f"{len(distinct)} distinct final answers (boxes and statements)")
        pred = ",".join(distinct)
        answer = ", ".join(distinct)

    if gold.letter is not None:
        letter = pred_letter(answer) or pred_letter(pred)
        if len(set(_CHOICE_RE.findall(answer.upper()))) > 1:
            return Result(Status.WRONG, answer, "hedge", "several choice letters")
        if letter is not None or gold.raw == gold.canon or not gold.canon or mcq_letter(gold.canon):
            ok = letter == gold.letter
            return Result(Status.CORRECT if ok else Status.WRONG, answer, "mcq", "" if letter else "no choice letter")
        # an MCQ gold with its option text ("(B) 42") answered by the option's value: compare the values
    if gold.text:
        ok = text_norm(gold.raw) == text_norm(answer) or gold.canon.lower() == pred.lower()
        return Result(Status.CORRECT if ok else Status.WRONG, answer, "text")
    if not pred:
        return Result(Status.NO_ANSWER, answer, "extract", "empty answer")
    assert gold.struct is not None
    pstruct = parse_structure(pred)

    def elem_eq(a: str, b: str) -> tuple[bool | None, str]:
        return fast_scalar_eq(a, b, percent_option=percent, rounded=rounded)

    verdict, path = compare_struct(gold.struct, pstruct, elem_eq)
    if verdict is not None:
        return Result(Status.CORRECT if verdict else Status.WRONG, answer, path)
    return Job(gold.canon, pred, percent, answer, rounded, imaginary_unit(options))


def _distinct_boxed(boxed: list[str], percent: bool) -> list[str]:
    if len(boxed) < 2:
        return boxed
    out: list[str] = []
    for b in boxed:
        c = canonicalize(b)
        if c and not any(c == o or fast_scalar_eq(o, c, percent_option=percent)[0] for o in out):
            out.append(c)
    return out


def run_symbolic(job: Job) -> Result:
    """The symbolic step in-process (no timeout). Used by ``grade``; workers use ``pool.handle_job``."""
    from winnow.verifier.pool import handle_job

    reply = handle_job(job.as_dict())
    return Result(_status(reply["status"]), job.extracted, reply["path"], reply.get("detail", ""))


def grade(response: str, gold: str, task: str = "", options: dict[str, str] | None = None) -> Result:
    """Grade one response against one gold, entirely in this process (no pool, no timeout)."""
    try:
        decision = decide_fast(prepare_gold(gold, task, options), response, options)
    except VerifyError as exc:
        return Result(_status(exc.status), "", "guard", exc.detail)
    except Exception as exc:  # a bug is an ERROR, never WRONG
        return Result(Status.ERROR, "", "internal", f"{type(exc).__name__}: {exc}")
    if isinstance(decision, Result):
        return decision
    return run_symbolic(decision)


# --------------------------------------------------------------------------- the engine


class _LRU:
    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


_CACHEABLE = {Status.CORRECT, Status.WRONG, Status.UNPARSABLE, Status.TOO_COMPLEX}


class MathVerifier:
    """Thread-safe verifier: fast paths in-process, the symbolic path in a pool of worker processes."""

    def __init__(self, *, workers: int = 2, timeout_s: float = 2.0, memory_mb: int = 1024,
                 max_tasks_per_worker: int = 500, cache_size: int = 65536,
                 on_worker_restart: Callable[[str], None] | None = None,
                 on_cache: Callable[[bool], None] | None = None,
                 default_options: dict[str, str] | None = None, idle_warmup: bool = False,
                 lazy_pool: bool = False):
        """``lazy_pool``: start the worker processes (a zygote that imports sympy) only when the first item
        needs the symbolic path, in the background while the rest of that batch takes the fast paths
        (``winnow score``: a file of integers never starts them). Off for the service, whose first
        symbolic call should not wait for sympy to load."""
        self.timeout_s = timeout_s
        self.default_options = dict(default_options or {})
        self._on_cache = on_cache
        self._on_restart_cb = on_worker_restart
        self._stats_lock = threading.Lock()
        self._stats = {"cache_hits": 0, "cache_misses": 0, "worker_restarts": 0, "symbolic_calls": 0,
                       "timeouts": 0, "errors": 0, "fast_path": 0}
        self._cache = _LRU(cache_size)
        self._pool_args = dict(workers=workers, timeout_s=timeout_s, memory_mb=memory_mb,
                               max_tasks=max_tasks_per_worker, on_restart=self._on_restart, idle_warmup=idle_warmup)
        self._pool: WorkerPool | None = None
        self._pool_lock = threading.Lock()
        self._pool_starting = False
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="winnow-verifier")
        self._closed = False
        if not lazy_pool:
            self._get_pool()

    def _get_pool(self) -> WorkerPool:
        """The worker pool, started on first use (blocks while it starts: about a second, sympy's import)."""
        with self._pool_lock:
            if self._pool is None:
                if self._closed:
                    raise RuntimeError("MathVerifier is closed")
                from winnow.verifier.pool import WorkerPool

                self._pool = WorkerPool(**self._pool_args)
            return self._pool

    def _start_pool_soon(self) -> None:
        """Start the pool in a background thread (the first symbolic job of a lazy engine), once."""
        with self._pool_lock:
            if self._pool is not None or self._pool_starting:
                return
            self._pool_starting = True

        def start() -> None:
            with contextlib.suppress(Exception):  # a failure is reported by the job that needs the pool
                self._get_pool()

        threading.Thread(target=start, name="winnow-verifier-pool-start", daemon=True).start()

    def start_pool_for(self, items: list[Item]) -> bool:
        """A lazy engine's look-ahead: start the worker pool now, in the background, if one of ``items`` needs
        the symbolic path (``winnow score`` peeks at a file's first lines, so sympy loads while the file is read
        and the fast items are scored). Nothing is counted or cached. True if the pool is started or starting."""
        for item in items:
            if self.pool_requested:
                return True
            options = {**self.default_options, **item.options} if self.default_options else item.options
            try:
                decision = decide_fast(prepare_gold(item.gold, item.task, options), item.response, options)
            except Exception:  # verify_batch reports it
                continue
            if isinstance(decision, Job) and self._cache.get(decision.key) is None:
                self._start_pool_soon()
        return self.pool_requested

    # -- bookkeeping
    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] += n

    def _on_restart(self, reason: str) -> None:
        self._count("worker_restarts")
        if self._on_restart_cb is not None:
            self._on_restart_cb(reason)

    @property
    def stats(self) -> dict[str, int]:
        with self._stats_lock:
            return dict(self._stats)

    @property
    def pool_requested(self) -> bool:
        """Whether the worker pool is started or starting (always, unless ``lazy_pool`` and no item needed it yet)."""
        return self._pool is not None or self._pool_starting

    @property
    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (for tests and debugging); none before a lazy pool starts."""
        return self._pool.pids() if self._pool is not None else []

    # -- API
    def verify(self, item: Item) -> Verdict:
        return self.verify_batch([item])[0]

    def verify_batch(self, items: list[Item], *, deadline_s: float | None = None) -> list[Verdict]:
        """Verdicts in the order of ``items``; golds prepared once; symbolic jobs run in parallel workers."""
        if self._closed:
            raise RuntimeError("MathVerifier is closed")
        start = time.monotonic()
        deadline = None if deadline_s is None else start + deadline_s
        golds: dict[tuple, Gold] = {}
        out: list[Verdict | None] = [None] * len(items)
        pending: dict[tuple, list[tuple[int, float, Job]]] = {}
        defaults, n_fast = self.default_options, 0
        for i, item in enumerate(items):
            t0 = time.perf_counter()
            options = item.options
            if defaults:  # a request's own options win; the shared defaults dict is only read, never changed
                options = {**defaults, **options} if options else defaults
            if self._closed:  # shutting down: finish the batch at once instead of holding the process
                out[i] = self._verdict(item, Result(Status.ERROR, "", "internal", "verifier shutting down"), t0)
                continue
            if deadline is not None and time.monotonic() > deadline:  # gold and answer parsing share the budget
                out[i] = self._verdict(item, Result(Status.TIMEOUT, "", "deadline", "batch deadline passed"), t0)
                continue
            try:
                gkey = (item.gold, item.task, _flag(options, "mcq"))
                gold = golds.get(gkey)
                if gold is None:
                    gold = golds[gkey] = prepare_gold(item.gold, item.task, options)
                decision = decide_fast(gold, item.response, options)
            except Exception as exc:  # one bad item must not fail the batch
                self._count("errors")
                decision = Result(Status.ERROR, "", "internal", f"{type(exc).__name__}: {exc}"[:300])
            if isinstance(decision, Result):
                n_fast += 1
                out[i] = self._verdict(item, decision, t0)
                continue
            cached = self._cache.get(decision.key)
            if self._on_cache is not None:
                self._on_cache(cached is not None)
            if cached is not None:
                self._count("cache_hits")
                status, path, detail = cached
                out[i] = self._verdict(item, Result(status, decision.extracted, "cache", path), t0)
                continue
            self._count("cache_misses")
            if self._pool is None:
                self._start_pool_soon()
            pending.setdefault(decision.key, []).append((i, t0, decision))
        if n_fast:
            self._count("fast_path", n_fast)
        if pending and self._closed:
            for jobs in pending.values():
                for i, t0, job in jobs:
                    out[i] = self._verdict(items[i], Result(Status.ERROR, job.extracted, "internal",
                                                            "verifier shutting down"), t0)
            pending = {}
        if pending:
            futures = {key: self._executor.submit(self._run_job, jobs[0][2], deadline)
                       for key, jobs in pending.items()}
            for key, fut in futures.items():
                result = fut.result()
                if result.status in _CACHEABLE:
                    self._cache.put(key, (result.status, result.path, result.detail))
                for i, t0, job in pending[key]:
                    out[i] = self._verdict(items[i], result._replace(extracted=job.extracted), t0)
        return out  # type: ignore[return-value]

    def _run_job(self, job: Job, deadline: float | None) -> Result:
        self._count("symbolic_calls")
        try:
            reply = self._get_pool().run(job.as_dict(), timeout_s=self.timeout_s, deadline=deadline)
        except Exception as exc:  # pool failure: an error verdict, counted
            self._count("errors")
            return Result(Status.ERROR, job.extracted, "pool", f"{type(exc).__name__}: {exc}")
        status = _status(reply["status"])
        if status == Status.TIMEOUT:
            self._count("timeouts")
        elif status == Status.ERROR:
            self._count("errors")
        return Result(status, job.extracted, reply.get("path", ""), reply.get("detail", ""))

    @staticmethod
    def _verdict(item: Item, r: Result, t0: float) -> Verdict:
        return Verdict(id=item.id, status=r.status, extracted=r.extracted, path=r.path, detail=r.detail,
                       latency_ms=(time.perf_counter() - t0) * 1000.0)

    def close(self) -> None:
        """Stop the worker processes (SIGKILL) and the dispatch threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._pool_lock:  # waits for a pool that is starting
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
