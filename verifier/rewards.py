"""Python reward functions served over the Verifier API (``verifier.reward_functions``; docs/verifiers.md).

A user names functions in config, per task route, as TRL's ``reward_funcs``/``reward_weights`` or verl's
``custom_reward_function`` do: ``package.module:function`` or ``path/to/file.py:function``, each with a weight.
The verifier service scores every item whose task a route matches with those functions and answers a status
*and* a scalar score (``VerifyResult.score`` = the weighted sum), so every generator gets the same rewards over
the same gRPC contract; other tasks go to the math engine (:class:`RoutedEngine`).

Where the functions run: in the sandboxed worker pool of :mod:`winnow.verifier.pool` (a zygote that imports the
functions once, then forks single-threaded workers with RLIMIT_AS/RLIMIT_CPU; each item has a wall-clock budget
after which its worker is SIGKILLed and replaced; workers are recycled). Requests and replies are JSON frames.
An exception in a function, a wrong return type, a non-finite value or a crashed worker is STATUS_ERROR, an
overrun is STATUS_TIMEOUT, and neither carries a score: a failure never becomes a zero reward.

This is process isolation with resource limits, not a security boundary against hostile code: a function that
executes model output (the code example) runs it with the worker's user and filesystem. Run such a verifier in
its own container (no secrets, read-only root, no network) as the Helm chart's ``verifier.extra`` does.

The calling convention, one item at a time, is in :func:`call_kwargs` and :func:`normalize`; a function declared
``batched`` (TRL's ``fn(prompts, completions, **kw) -> list``) is called once for all the items of its route in a
batch (:func:`score_batch`, :meth:`RewardEngine.verify_batch`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from winnow.verdict import Item, Status, Verdict

PATH = "reward_fn"
"""``VerifyResult.path`` of items decided by reward functions."""
_ITEM_NAMES = ("prompt", "completion", "response", "solution_str", "gold", "ground_truth", "answer", "solution",
               "task", "data_source", "extra_info")
_BATCH_NAMES = ("prompts", "completions")


# ------------------------------------------------------------------------------ loading (zygote, check)


def load_function(spec: str) -> Callable[..., Any]:
    """``module:function`` or ``path/file.py:function`` -> the callable. Raises ImportError/AttributeError/TypeError
    with the spec in the message."""
    module, _, name = spec.rpartition(":")
    if module.endswith(".py") or "/" in module or os.sep in module:
        path = Path(module).expanduser().resolve()
        if not path.is_file():
            raise ImportError(f"{spec}: no file {path}")
        mod_name = "winnow_reward_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        mod = sys.modules.get(mod_name)
        if mod is None:
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise ImportError(f"{spec}: cannot load {path} as a Python module")
            mod = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_name] = mod
            loader_spec.loader.exec_module(mod)
    else:
        mod = importlib.import_module(module)
    fn = getattr(mod, name, None)
    if fn is None:
        raise AttributeError(f"{spec}: module {module!r} has no attribute {name!r}")
    if not callable(fn):
        raise TypeError(f"{spec}: {name!r} is not callable")
    return fn


def _accepted(fn: Callable[..., Any]) -> frozenset[str] | None:
    """Keyword names ``fn`` accepts; None when it takes ``**kwargs`` (everything)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                          inspect.Parameter.KEYWORD_ONLY))


def _required(fn: Callable[..., Any]) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]


class _Fn:
    """A loaded reward function with its weight and calling convention."""

    def __init__(self, spec: dict) -> None:
        self.name = spec["function"]
        self.weight = float(spec.get("weight", 1.0))
        self.batched = bool(spec.get("batched", False))
        self.fn = load_function(self.name)
        self.accepts = _accepted(self.fn)
        known = set(_BATCH_NAMES if self.batched else ()) | set(_ITEM_NAMES)
        unknown = [n for n in _required(self.fn) if n not in known]
        if unknown:  # a field an item does not have is only known per request (an option): say so at call time
            self.needs_options = unknown
        else:
            self.needs_options = []

    def __call__(self, kwargs: dict[str, Any]) -> Any:
        if self.batched:
            return self.call_batch([kwargs])[0]
        if self.accepts is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in self.accepts}
        return self.fn(**kwargs)

    def call_batch(self, kwargs_list: list[dict[str, Any]]) -> list[Any]:
        """A batched (TRL) function called once for several items: every keyword is the list of the items' values
        (an option some items lack is None for them), ``prompts``/``completions`` the lists of prompts and
        completions; it must return one value per item."""
        names = list(dict.fromkeys(k for kw in kwargs_list for k in kw))
        kwargs = {k: [kw.get(k) for kw in kwargs_list] for k in names}
        kwargs["prompts"], kwargs["completions"] = kwargs["prompt"], kwargs["completion"]
        if self.accepts is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in self.accepts}
        values = self.fn(**kwargs)
        if not isinstance(values, list | tuple) or len(values) != len(kwargs_list):
            raise TypeError(f"a batched function must return a list of one value per completion "
                            f"({len(kwargs_list)}), got {values!r:.80}")
        return list(values)


_ROUTES: list[tuple[list[_Fn], float]] = []


def zygote_init(arg: str) -> None:
    """Import every route's functions once (the pool's zygote; workers inherit them by fork)."""
    _ROUTES.clear()
    for route in json.loads(arg):
        _ROUTES.append(([_Fn(f) for f in route["functions"]], float(route.get("pass_score", 1.0))))


# ------------------------------------------------------------------------------ one item (worker)


def call_kwargs(item: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments a function may take for one item: the request's options by name (as a TRL dataset's
    extra columns arrive), then ``prompt``, the response as ``completion``/``response``/``solution_str`` (verl), the
    gold as ``gold``/``ground_truth``/``answer``/``solution``, the task as ``task``/``data_source`` (verl) and the
    options as ``extra_info`` (verl). Named arguments win over options of the same name."""
    response, gold, task = item.get("response", ""), item.get("gold", ""), item.get("task", "")
    options = dict(item.get("options") or {})
    return {**options, "prompt": item.get("prompt", ""), "completion": response, "response": response,
            "solution_str": response, "gold": gold, "ground_truth": gold, "answer": gold, "solution": gold,
            "task": task, "data_source": task, "extra_info": options}


def normalize(value: Any) -> tuple[Status | None, float, str, str]:
    """A function's return value -> (status or None, score, extracted, detail).

    Accepted: a real number (bool counts as 0/1); ``(status, number)``; a dict with ``score`` and optionally
    ``status``, ``extracted``, ``detail``. A status is a :class:`Status`, its int value or its label
    (``"correct"``, ``"no_answer"``, ...). Anything else, or a non-finite number, raises (-> STATUS_ERROR)."""
    status: Any = None
    extracted = detail = ""
    if isinstance(value, dict):
        if "score" not in value:
            raise TypeError(f"returned a dict without 'score': keys {sorted(value)[:8]}")
        status, score = value.get("status"), value["score"]
        extracted, detail = str(value.get("extracted", "")), str(value.get("detail", ""))
    elif isinstance(value, tuple):
        if len(value) != 2:
            raise TypeError(f"returned a tuple of {len(value)} values; expected (status, score)")
        status, score = value
    else:
        score = value
    try:
        score = float(score)  # int, bool, numpy and torch scalars
    except (TypeError, ValueError):
        raise TypeError(f"returned {type(score).__name__} {score!r:.60}, not a number") from None
    if not math.isfinite(score):
        raise ValueError(f"returned a non-finite score {score}")
    if status is not None:
        try:
            status = Status(status) if isinstance(status, int) else Status.from_label(str(status).removeprefix("STATUS_"))
        except (KeyError, ValueError):
            raise ValueError(f"returned unknown status {status!r}") from None
    return status, score, extracted, detail


def score_item(route: int, item: dict[str, Any], batched: dict[int, Any] | None = None) -> dict[str, Any]:
    """Run route ``route``'s functions on one item -> the JSON reply (status label, score or None, ...).

    ``batched``: values already computed for this item by batched functions (index in the route -> the value, or
    the exception the batch call raised), from :func:`score_batch`."""
    functions, pass_score = _ROUTES[route]
    kwargs = call_kwargs(item)
    total = 0.0
    statuses: list[Status] = []
    extracted, details = "", []
    for j, f in enumerate(functions):
        try:
            if batched is not None and j in batched:
                raw = batched[j]
                if isinstance(raw, BaseException):
                    raise raw
            else:
                raw = f(kwargs)
            status, value, ext, detail = normalize(raw)
        except MemoryError:
            return {"status": "error", "path": PATH, "detail": f"{f.name}: worker memory limit", "exit": "memory"}
        except (Exception, SystemExit) as exc:  # a bug in the function: an error, never a zero
            return {"status": "error", "path": PATH, "detail": f"{f.name}: {type(exc).__name__}: {exc}"[:500]}
        if status in (Status.ERROR, Status.UNSPECIFIED):
            return {"status": "error", "path": PATH, "detail": f"{f.name}: {detail or 'returned status error'}"[:500]}
        total += f.weight * value
        if status is not None:
            statuses.append(status)
        extracted = extracted or ext
        if detail:
            details.append(f"{f.name.rpartition(':')[2]}: {detail}")
    not_correct = [s for s in statuses if s != Status.CORRECT]
    if not_correct:
        final = not_correct[0]
    elif statuses:
        final = Status.CORRECT
    else:
        final = Status.CORRECT if total >= pass_score else Status.WRONG
    return {"status": final.label, "score": total, "path": PATH, "extracted": extracted,
            "detail": "; ".join(details)[:500]}


def score_batch(route: int, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Run route ``route``'s functions on several items: each batched function once for all of them (as TRL calls
    ``reward_funcs``), the others per item -> ``{"results": [one reply per item]}``. An exception in a batched call
    is every item's error; the memory limit ends the worker (``exit``)."""
    functions, _ = _ROUTES[route]
    kwargs_list = [call_kwargs(it) for it in items]
    per_item: list[dict[int, Any]] = [{} for _ in items]
    for j, f in enumerate(functions):
        if not f.batched:
            continue
        try:
            values: list[Any] = f.call_batch(kwargs_list)
        except MemoryError:
            reply = {"status": "error", "path": PATH, "detail": f"{f.name}: worker memory limit"}
            return {"results": [reply] * len(items), "exit": "memory"}
        except (Exception, SystemExit) as exc:  # a bug in the function: every item's error, never a zero
            values = [exc] * len(items)
        for i, v in enumerate(values):
            per_item[i][j] = v
    results = [score_item(route, it, per_item[i]) for i, it in enumerate(items)]
    out: dict[str, Any] = {"results": results}
    if any(r.get("exit") for r in results):
        out["exit"] = "memory"
    return out


def handle_job(job: dict) -> dict:
    """The pool's job handler in a worker: ``{"route": r, "item": {...}}``, or ``{"route": r, "items": [...]}`` for a
    route with batched functions (:func:`score_batch`)."""
    if "items" in job:
        return score_batch(int(job["route"]), job["items"])
    return score_item(int(job["route"]), job["item"])


# ------------------------------------------------------------------------------ the parent side


def check_functions(routes_json: str, timeout_s: float = 120.0) -> None:
    """Load every function in a throw-away process (as the zygote will), so a typo fails at start-up with the
    function named, not as a dead worker pool. Raises ``ConfigError``."""
    from winnow.config import ConfigError

    proc = subprocess.run([sys.executable, "-m", "winnow.verifier.rewards", "--check", routes_json],
                          capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stdout + proc.stderr).strip().splitlines() if ln.strip()]
        raise ConfigError(f"verifier.reward_functions: {lines[-1] if lines else f'check exited {proc.returncode}'}")


def routes_json(cfg: Any) -> str:
    """``RewardFunctions.routes`` as the JSON the zygote reads."""
    return json.dumps([{"functions": [f.model_dump() for f in r.functions], "pass_score": r.pass_score}
                       for r in cfg.routes])


class RewardEngine:
    """Scores items with the reward functions of their route, in the worker pool; thread-safe."""

    def __init__(self, cfg: Any, *, on_worker_restart: Callable[[str], None] | None = None,
                 check: bool = True) -> None:
        """``cfg``: :class:`~winnow.verifier.config.RewardFunctions`. Loads the functions once in a check process
        (``check``), then starts the pool (its zygote imports them)."""
        from winnow.verifier.pool import WorkerPool

        self.routes = [list(r.tasks) for r in cfg.routes]
        self.batched_routes = frozenset(i for i, r in enumerate(cfg.routes) if any(f.batched for f in r.functions))
        self.timeout_s = cfg.timeout_s
        arg = routes_json(cfg)
        if check:
            check_functions(arg)
        self._pool = WorkerPool(workers=cfg.workers, timeout_s=cfg.timeout_s, memory_mb=cfg.memory_mb,
                                max_tasks=cfg.max_tasks_per_worker, on_restart=on_worker_restart,
                                handler="winnow.verifier.rewards", handler_arg=arg)
        self._executor = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="winnow-rewards")
        self._closed = False
        self._lock = threading.Lock()

    def route_of(self, task: str) -> int | None:
        """Index of the first route whose patterns match ``task``; None = not a reward-function task."""
        for i, patterns in enumerate(self.routes):
            if any(fnmatch.fnmatchcase(task, p) for p in patterns):
                return i
        return None

    def verify_batch(self, items: list[Item], *, deadline_s: float | None = None) -> list[Verdict]:
        """One verdict per item (each must match a route), in order; items run in parallel over the workers. The items
        of a route with a batched function go to one worker together (chunks of at most ``_BATCH_BYTES`` of JSON),
        so each batched function is called once for them, with a budget of ``timeout_s`` per item."""
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        routes = [self.route_of(it.task) for it in items]
        if any(r is None for r in routes):
            raise ValueError("RewardEngine.verify_batch: an item's task matches no reward-function route")
        jobs: list[tuple[list[int], Any]] = []
        for r in sorted(self.batched_routes.intersection(routes)):
            for chunk in _chunks([i for i, ri in enumerate(routes) if ri == r], items):
                jobs.append((chunk, self._executor.submit(self._batch, [items[i] for i in chunk], r, deadline)))
        jobs += [([i], self._executor.submit(self._one, it, r, deadline))
                 for i, (it, r) in enumerate(zip(items, routes, strict=True)) if r not in self.batched_routes]
        out: list[Verdict | None] = [None] * len(items)
        for chunk, fut in jobs:
            for i, v in zip(chunk, fut.result(), strict=True):
                out[i] = v
        return out  # type: ignore[return-value]

    @staticmethod
    def _job_item(item: Item) -> dict[str, Any]:
        return {"prompt": item.prompt, "response": item.response, "gold": item.gold, "task": item.task,
                "options": dict(item.options)}

    def _run(self, job: dict, timeout_s: float, deadline: float | None) -> dict:
        try:
            return self._pool.run(job, timeout_s=timeout_s, deadline=deadline)
        except Exception as exc:  # the pool failed (closed, no zygote): an error verdict
            return {"status": "error", "path": "pool", "detail": f"{type(exc).__name__}: {exc}"}

    def _one(self, item: Item, route: int, deadline: float | None) -> list[Verdict]:
        t0 = time.perf_counter()
        reply = self._run({"route": route, "item": self._job_item(item)}, self.timeout_s, deadline)
        return [_verdict(item, reply, t0)]

    def _batch(self, items: list[Item], route: int, deadline: float | None) -> list[Verdict]:
        t0 = time.perf_counter()
        job = {"route": route, "items": [self._job_item(it) for it in items]}
        reply = self._run(job, self.timeout_s * len(items), deadline)
        results = reply.get("results")
        if not isinstance(results, list) or len(results) != len(items):
            results = [reply] * len(items)  # the worker crashed, overran or was never reached: every item shares it
        return [_verdict(it, r, t0) for it, r in zip(items, results, strict=True)]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.close()
        self._executor.shutdown(wait=True, cancel_futures=True)


_BATCH_BYTES = 256 * 1024
"""Most JSON bytes of items in one batched job (the pool's frames are at most 1 MiB, the reply included)."""
_BATCH_ITEMS = 512
"""Most items in one batched job (their replies share one frame too)."""


def _chunks(indices: list[int], items: list[Item]) -> list[list[int]]:
    """``indices`` in order, cut where a chunk would pass ``_BATCH_BYTES`` of JSON (an item alone may) or
    ``_BATCH_ITEMS`` items."""
    out: list[list[int]] = []
    size = 0
    for i in indices:
        it = items[i]
        n = len(json.dumps([it.prompt, it.response, it.gold, it.task, dict(it.options)])) + 64
        if out and size + n <= _BATCH_BYTES and len(out[-1]) < _BATCH_ITEMS:
            out[-1].append(i)
            size += n
        else:
            out.append([i])
            size = n
    return out


def _verdict(item: Item, reply: dict[str, Any], t0: float) -> Verdict:
    """An item's verdict from its worker reply: no score on an error, nor on a timeout or crash of the worker."""
    status = Status.from_label(reply.get("status", "error"))
    score = reply.get("score")
    if status in (Status.ERROR, Status.TIMEOUT) and reply.get("path") != PATH:
        score = None  # the worker crashed or overran: no score
    if status == Status.ERROR:
        score = None
    return Verdict(id=item.id, status=status, extracted=reply.get("extracted", ""), path=reply.get("path", PATH),
                   detail=reply.get("detail", ""), latency_ms=(time.perf_counter() - t0) * 1000.0,
                   score=None if score is None else float(score))


class RoutedEngine:
    """The server's engine when reward functions are configured: items of a reward-function task go to
    :class:`RewardEngine`, the others to the math engine (created on first use when ``math`` is a factory)."""

    def __init__(self, rewards: RewardEngine, math_engine: Any) -> None:
        self.rewards = rewards
        self._math = math_engine

    def verify_batch(self, items: list[Item], *, deadline_s: float | None = None) -> list[Verdict]:
        routed = [self.rewards.route_of(it.task) is not None for it in items]
        out: list[Verdict | None] = [None] * len(items)
        parts = [(self.rewards, [i for i, r in enumerate(routed) if r]),
                 (self._math, [i for i, r in enumerate(routed) if not r])]
        for engine, idx in parts:
            if idx:
                for i, v in zip(idx, engine.verify_batch([items[i] for i in idx], deadline_s=deadline_s), strict=True):
                    out[i] = v
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.rewards.close()
        with contextlib.suppress(Exception):
            self._math.close()


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="load the configured reward functions and report the first problem")
    parser.add_argument("--check", required=True, metavar="ROUTES_JSON")
    args = parser.parse_args(argv)
    try:
        zygote_init(args.check)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        print(f"cannot load a reward function: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for functions, _ in _ROUTES:
        for f in functions:
            if f.needs_options:
                print(f"note: {f.name} requires {f.needs_options}: each request must carry them as options",
                      file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
