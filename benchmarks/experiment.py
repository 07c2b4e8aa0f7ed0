"""The algorithm comparison of Xiong et al. (2025, arXiv 2504.11343) through winnow's real pipeline.

    winnow experiment [--suite main|ablations|staleness|all|prereg|long] [--seeds 0,1,2] [--steps 10] [--results DIR]
    winnow experiment --report-only --results DIR       # rebuild the table and the plots
    .venv/bin/python benchmarks/experiment.py ...        # the same

Suites (every run: same model, task, seed set and budget; only the algorithm differs):

- ``main``: the presets ``raft``, ``raft++``, ``reinforce``, ``grpo``, ``reinforce_rej`` as defined in
  ``winnow.learner.algo.PRESETS`` (reward map {0, 1}, KL 0.001, entropy bonus 0.001: the released code).
- ``ablations`` (paper Fig. 4): ``reinforce``, ``reinforce+remove_all_wrong``, ``reinforce+remove_all_correct``,
  ``reinforce+mean_zero``, ``reinforce_rej``, ``reinforce_rej+std``, all with ``reward_wrong: -1`` (the paper's
  +-1 reward; under {0, 1} these ablations do not differ, see docs/algorithms.md).
- ``staleness``: one preset (``--staleness-preset``, default ``reinforce_rej``) with ``max_staleness`` 0, 1, 2, 4,
  each without and with the decoupled correction (``algo.decoupled``; at staleness 0 it changes nothing and
  is not run).
- ``prereg`` (the pre-registered comparison, docs/results/README.md "Pre-registered: ..."; not part of ``all``):
  ``raft++``, ``grpo``, ``reinforce_rej`` and ``placebo``, RAFT++'s update on the model's own samples kept at
  random with probability ``--placebo-rate`` whatever their answer (the reward is a uniform draw served by a
  Python reward function, :func:`placebo_score`; see :func:`up_config`). Its report adds ``prereg.md``: every
  metric with a paired bootstrap interval over problems (:func:`paired_bootstrap`) against the initial model and
  between arms, and the verdict of each pre-registered criterion (``PREREG_CRITERIA``).
- ``long`` (the paper's dynamics over a longer budget; not part of ``all``): ``raft++``, ``grpo``, ``reinforce_rej``
  as presets, meant with ``--curve-every K``: each run also keeps its policy every K steps
  (``learner.weights.keep_every``) and this script evaluates each of them greedily on the held-out problems
  (``curve.json``). Its report adds ``long.md`` (accuracy, KL and entropy at each evaluated step, paired intervals
  over problems against the initial model and between arms) and the plot ``curve.png`` (held-out accuracy vs step,
  and the accuracy gain vs KL to the initial model).

``--exclude-heldout`` (reasoning-gym tasks): the held-out problems are distinct by :func:`problem_key` (both orders
of a commutative pair are one problem) and every run trains on its seed's stream without them (a JSONL file per run
under ``--work-dir``/train; ``summary.json`` records how many were removed). Every evaluation also records, per
problem, whether the greedy answer and how many samples lack a final-answer marker (:func:`has_marker`).

Each run is one ``winnow up`` (``winnow.up.Pipeline``: generator and learner as separate processes over one
Kafka-protocol broker, the broker shared by all runs of an invocation, each run on its own topic prefix;
answers scored in-process by the generator, i.e. ``up.start_verifier: false``). The learner does no
evaluation during the run (``eval.every: 0``), checkpoints only at the end, and stops at ``--steps``.

Evaluation, after each run, by this script: the final published weights are loaded into the generator's own
transformers engine (``HFEngine``, the precision and decoding the generators sample with, so the evaluation
decodes exactly as training samples) and answer ``--eval-problems`` held-out problems: the same
reasoning-gym task generated with another seed (``--eval-seed``; training uses seed ``1000 + run seed``).
With ``--data FILE`` the runs train on a JSONL/Parquet file instead (GSM8K-style rows, docs/datasets.md) and
evaluate on the first ``--eval-problems`` rows of ``--eval-data FILE`` (e.g. GSM8K train and test), or, without
it, on as many rows of ``FILE`` held out of training.
Greedy accuracy (temperature 0) and ``--eval-k`` samples per problem at the training temperature give
pass@k for k = 1, 2, 4, ..., eval-k (unbiased estimator, Chen et al. 2021: 1 - C(n-c, k) / C(n, k) averaged
over problems). The initial model is evaluated the same way once per results directory (``base``): that is
the task's starting success rate.

Results directory (default ``docs/results/``), filled run by run, resumable: ``runs/<run id>/`` holds the
learner's ``metrics.jsonl`` (one line per step), ``eval.json`` and ``summary.json``; a run with a
``summary.json`` is skipped, an unfinished one starts again from scratch. Its ``config.json`` records the
budget: reusing a results directory with another budget is refused (use another ``--results``). The
pipeline's own files (weights, checkpoints, broker data, logs) go to ``--work-dir`` (default
``runs/experiment``), kept for inspection. At the end (and with ``--report-only``) it writes ``table.md``
and the plots ``reward.png``, ``entropy.png``, ``kl.png`` (mean over seeds per preset vs step, min-max band),
for the staleness suite ``staleness.png`` (accuracy vs wall time), and for the prereg suite ``prereg.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import re
import shutil
import signal
import statistics
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from winnow import evaluation

log = logging.getLogger("winnow.experiment")

REPO = Path(__file__).resolve().parent.parent
MAIN_PRESETS = ["raft", "raft++", "reinforce", "grpo", "reinforce_rej"]
ABLATION_PRESETS = [
    "reinforce",
    "reinforce+remove_all_wrong",
    "reinforce+remove_all_correct",
    "reinforce+mean_zero",
    "reinforce_rej",
    "reinforce_rej+std",
]
STALENESS_VALUES = [0, 1, 2, 4]
PREREG_ARMS = ["raft++", "grpo", "reinforce_rej", "placebo"]
PLACEBO = "placebo"
"""The placebo arm's label: RAFT++'s update on samples kept at random (``Budget.placebo_rate``), see :func:`up_config`."""
SUITES = ("main", "ablations", "staleness", "prereg", "long")
ALL_SUITES = ("main", "ablations", "staleness")
"""``--suite all``: the paper's suites (``prereg`` and ``long`` are run on their own, with their own budgets)."""
LONG_ARMS = ["raft++", "grpo", "reinforce_rej"]
"""The ``long`` suite: the paper's question of which leads early and which catches up, over a longer budget."""


# -- what to run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One run: a suite, a label shared by its seeds (one line in the plots, one row in the table), the
    algorithm block overrides and the seed."""

    suite: str
    label: str
    algo: dict[str, Any]
    seed: int

    @property
    def run_id(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", self.label.replace("+", "p").replace("=-1", "m1")).strip("_")
        return f"{self.suite}-{slug}-s{self.seed}"


def plan(suites: list[str], seeds: list[int], staleness_preset: str = "reinforce_rej",
         staleness_values: list[int] | None = None) -> list[RunSpec]:
    """Every run of the requested suites, seed-major within a suite (all presets of seed 0 first, so
    a budget cut leaves complete seeds)."""
    specs: list[RunSpec] = []
    for suite in suites:
        if suite not in SUITES:
            raise ValueError(f"--suite: unknown suite {suite!r}; valid: {', '.join(SUITES)}, all")
        for seed in seeds:
            if suite == "main":
                specs += [RunSpec(suite, p, {"preset": p}, seed) for p in MAIN_PRESETS]
            elif suite == "prereg":  # docs/results/README.md, "Pre-registered: ..."
                specs += [RunSpec(suite, a, {"preset": "raft++", "advantage": "unit"} if a == PLACEBO else {"preset": a},
                                  seed) for a in PREREG_ARMS]
            elif suite == "long":
                specs += [RunSpec(suite, a, {"preset": a}, seed) for a in LONG_ARMS]
            elif suite == "ablations":
                specs += [RunSpec(suite, f"{p} (r_wrong=-1)", {"preset": p, "reward_wrong": -1.0}, seed)
                          for p in ABLATION_PRESETS]
            else:
                for s in staleness_values or STALENESS_VALUES:
                    for decoupled in (False, True):
                        if decoupled and s == 0:
                            continue  # nothing is stale: the correction is the identity
                        label = f"{staleness_preset} staleness={s}{' decoupled' if decoupled else ''}"
                        algo = {"preset": staleness_preset, "max_staleness": s, "decoupled": decoupled}
                        specs.append(RunSpec(suite, label, algo, seed))
    return specs


@dataclass
class Budget:
    """What every run of one results directory shares (recorded in ``config.json``)."""

    model: str = "smollm2-135m"
    steps: int = 10
    batch_groups: int = 8
    n: int = 4
    max_new_tokens: int = 32
    lr: float = 5e-5
    micro_batch: int = 16
    task: str = "chain_sum"
    task_config: dict[str, Any] = field(
        default_factory=lambda: {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})
    task_size: int = 5000
    eval_problems: int = 32
    eval_k: int = 16
    eval_seed: int = 424242
    temperature: float = 1.0
    max_staleness: int = 1
    data: str = ""
    """Train on this JSONL/Parquet file (GSM8K-style rows, docs/datasets.md) instead of the reasoning-gym ``task``."""
    eval_data: str = ""
    """Evaluate on the first ``eval_problems`` rows of this file ("" = held out: the task with ``eval_seed``, or
    ``eval_problems`` rows of ``data`` set aside by a permutation seeded with ``eval_seed``)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further ``winnow up`` config merged over each run's (``--config`` file)."""
    exclude_heldout: bool = False
    """Held-out problems are distinct by :func:`problem_key` (both orders of a commutative pair are one problem), and
    every training stream is the reasoning-gym task without them (:func:`training_rows`, a JSONL file per seed)."""
    placebo_rate: float = 0.3
    """The placebo arm keeps each of its own samples with this probability, independently of correctness."""
    curve_every: int = 0
    """Also evaluate every run's policy every this many steps (greedy, the held-out problems; ``curve.json``): the
    run keeps those versions (``learner.weights.keep_every``). 0 = the final weights only."""
    curve_drift_problems: int = 128
    """The first this many held-out problems also measure each curve point's KL to the initial model and entropy
    (:func:`policy_drift`: one sample each, exact per position, so few problems suffice)."""


def up_config(spec: RunSpec, budget: Budget, model_dir: str, bootstrap: str, prefix: str,
              train_file: str | None = None) -> dict[str, Any]:
    """The ``winnow up`` config of one run: the embedded default with the budget, the run's algorithm and
    seed filled in; ``train_file``: the run's training rows when ``budget.exclude_heldout`` (:func:`write_training_file`).

    The placebo arm (``PLACEBO``) is RAFT++ (clipped loss, advantage 1 on the kept samples, KL and entropy terms as
    every arm) whose kept samples are chosen at random: ``winnow up`` starts its verifier with the Python reward
    function :func:`placebo_score` on every task, so each sample's reward is a uniform draw ``u`` and it is kept iff
    ``u >= 1 - placebo_rate`` (``algo.score_threshold``), with probability ``placebo_rate`` whatever its answer."""
    from winnow.config import deep_merge
    from winnow.up import resolve

    sampling = {"temperature": budget.temperature, "top_p": 1.0, "max_new_tokens": budget.max_new_tokens}
    algo = {"max_staleness": budget.max_staleness, **spec.algo}
    if spec.label == PLACEBO:  # a sample "counts as correct" iff its placebo score u ~ U[0, 1) is >= 1 - rate
        algo["score_threshold"] = 1.0 - budget.placebo_rate
    layer = {
        "up": {"generators": 1, "start_verifier": False, "stop_timeout_s": 60},
        "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": prefix, "session_timeout_ms": 6000},
        "generator": {"model": model_dir, "batch_prompts": budget.batch_groups, "sampling": sampling},
        "learner": {
            "model": model_dir,
            "seed": spec.seed,
            "algo": algo,
            "optim": {"lr": budget.lr, "micro_batch_size": budget.micro_batch},
            "batch_groups": budget.batch_groups,
            "n": budget.n,
            "max_steps": budget.steps,
            "sampling": sampling,
            "checkpoint": {"every": budget.steps},
            "weights": {"keep_every": budget.curve_every},
            "eval": {"every": 0},
            "tracking": {"sinks": []},  # the runner keeps its own records (results/runs/<id>/)
            "prompts": train_source(budget, spec.seed, train_file),
        },
    }
    if spec.label == PLACEBO:  # every training answer is scored by placebo_score in the verifier `winnow up` starts
        layer["up"]["start_verifier"] = True
        layer["verifier"] = {"workers": 1, "reward_functions": {"workers": 1, "routes": [
            {"tasks": ["*"], "functions": [{"function": f"{Path(__file__).resolve()}:placebo_score"}]}]}}
    data = resolve(None, [], Path("."))
    data["learner"].pop("algo", None)  # the run's algorithm and task only, no inherited knobs
    data["learner"].pop("prompts", None)
    data = deep_merge(deep_merge(data, layer), budget.extra)
    data["learner"]["algo"] = {**data["learner"].get("algo", {}), **algo}
    return data


# -- evaluation -------------------------------------------------------------------------------------


# pass@k's estimator, the k ladder and the data-file kinds are winnow eval's (winnow/evaluation.py): one of each
pass_at_k, ks_up_to = evaluation.pass_at_k, evaluation.ks_up_to


def file_kind(path: str) -> str:
    """The prompt-source kind of a data file, from its suffix."""
    try:
        return evaluation.file_kind(path)
    except evaluation.ConfigError:
        raise ValueError(f"--data/--eval-data: {path} is neither .jsonl nor .parquet") from None


def train_source(budget: Budget, seed: int, train_file: str | None = None) -> dict[str, Any]:
    """The training prompt source of a run with ``seed``: the reasoning-gym task generated with ``1000 + seed``,
    or the rows of ``budget.data`` in an order seeded with ``1000 + seed``. When the held-out rows come from the
    same file they are chosen with ``holdout_seed = eval_seed``, independently of the order, so every run holds
    out the same rows and trains on them in its own order. With ``budget.exclude_heldout``: ``train_file``, that
    stream without the held-out problems (:func:`write_training_file`), in its order."""
    if budget.exclude_heldout:
        if not train_file:
            raise ValueError("exclude_heldout: the run needs its training file (write_training_file)")
        return {"kind": "jsonl", "path": train_file, "shuffle": False, "name": f"rg/{budget.task}",
                "task": f"rg/{budget.task}"}
    if not budget.data:
        return {"kind": "reasoning_gym", "name": budget.task, "size": budget.task_size, "seed": 1000 + seed,
                "config": budget.task_config}
    own = {"holdout": 0, "shuffle_seed": 1000 + seed} if budget.eval_data else {
        "holdout": budget.eval_problems, "holdout_seed": budget.eval_seed, "shuffle_seed": 1000 + seed}
    return {"kind": file_kind(budget.data), "path": budget.data, "shuffle": True, "split": "train", **own}


def eval_source(budget: Budget) -> dict[str, Any]:
    """The held-out problems' source (see ``Budget.eval_data``); never overlaps the training rows."""
    if budget.eval_data:
        return {"kind": file_kind(budget.eval_data), "path": budget.eval_data, "limit": budget.eval_problems,
                "shuffle": False}  # the first rows, as documented
    if budget.data:
        return {"kind": file_kind(budget.data), "path": budget.data, "holdout": budget.eval_problems,
                "split": "eval", "holdout_seed": budget.eval_seed, "shuffle_seed": budget.eval_seed}
    size = budget.eval_problems * (HELDOUT_POOL if budget.exclude_heldout else 1)
    return {"kind": "reasoning_gym", "name": budget.task, "size": size, "seed": budget.eval_seed,
            "config": budget.task_config}


HELDOUT_POOL = 4
"""With ``exclude_heldout`` the held-out problems are the first ``eval_problems`` distinct keys among
``HELDOUT_POOL x eval_problems`` problems of the held-out seed."""

_NUMBER = r"\d+(?:\.\d+)?"
_EXPR_RE = re.compile(rf"[-+]?\s*{_NUMBER}(?:\s*[-+*/×÷]\s*[-+]?\s*{_NUMBER})+")
_TOKEN_RE = re.compile(rf"{_NUMBER}|[-+*/×÷]")


def problem_key(text: str) -> str:
    """The identity of an arithmetic problem for held-out exclusion: its longest arithmetic expression with the
    order of commutative operands removed, the wording around it ignored.

    - only ``+``/``-``: ``sum:`` and the sorted signed terms (``7 + 60`` = ``60 + 7``; ``96 - 79`` = ``-79 + 96``,
      but not ``79 - 96``);
    - only ``*``/``×``: ``prod:`` and the sorted factors;
    - any other mix (``2 + 3 * 4``, a division): ``expr:`` and the tokens in order (no reordering is claimed);
    - no expression: ``text:`` and the text, lower-cased, whitespace collapsed."""
    exprs = _EXPR_RE.findall(text)
    if not exprs:
        return "text:" + " ".join(text.lower().split())
    tokens = _TOKEN_RE.findall(max(exprs, key=len))
    terms: list[tuple[str, str]] = []  # (binary operator before it, signed number)
    op, sign = "+", ""
    expect_number = True
    for t in tokens:
        if expect_number:
            if t in "+-":
                sign = "-" if (sign == "-") != (t == "-") else ""  # unary signs compose
                continue
            terms.append((op, sign + t))
            sign, expect_number = "", False
        else:
            op, expect_number = t, True

    def number(x: str) -> str:
        v = float(x)
        return str(int(v)) if v.is_integer() else repr(v)

    ops = {o for o, _ in terms[1:]}
    if ops <= {"+", "-"}:
        signed = [float(n) * (-1 if o == "-" else 1) for o, n in terms]
        return "sum:" + ",".join(number(str(v)) for v in sorted(signed))
    if ops <= {"*", "×"}:
        return "prod:" + ",".join(number(str(v)) for v in sorted(float(n) for _, n in terms))
    return "expr:" + " ".join(tokens)


def eval_problems(budget: Budget) -> list[Any]:
    """The held-out problems (``eval_source``); with ``exclude_heldout``, distinct by :func:`problem_key`."""
    from winnow.prompts import make_source

    source = make_source(eval_source(budget))
    if not budget.exclude_heldout:
        if len(source) < budget.eval_problems:
            raise SystemExit(f"winnow experiment: --eval-problems {budget.eval_problems}, but the held-out source "
                             f"has {len(source)} rows")
        return [source.get(i) for i in range(budget.eval_problems)]
    if budget.data:
        raise SystemExit("winnow experiment: --exclude-heldout applies to reasoning-gym tasks, not --data")
    out, keys = [], set()
    for i in range(len(source)):
        p = source.get(i)
        if (k := problem_key(p.problem)) not in keys:
            keys.add(k)
            out.append(p)
            if len(out) == budget.eval_problems:
                return out
    raise SystemExit(f"winnow experiment: --eval-problems {budget.eval_problems}, but the task has only {len(out)} "
                     f"distinct problems among {len(source)} of seed {budget.eval_seed}")


def training_rows(budget: Budget, seed: int, heldout: list[Any]) -> tuple[list[dict[str, str]], int]:
    """The training stream of run seed ``seed`` without the held-out problems: the reasoning-gym task generated
    with ``1000 + seed`` (``budget.task_size`` problems, in order), less every problem whose :func:`problem_key`
    is a held-out one's. Returns the rows (``question``, ``answer``) and how many were excluded."""
    from winnow.prompts import make_source

    held = {problem_key(p.problem) for p in heldout}
    source = make_source({"kind": "reasoning_gym", "name": budget.task, "size": budget.task_size,
                          "seed": 1000 + seed, "config": budget.task_config})
    rows, excluded = [], 0
    for i in range(len(source)):
        p = source.get(i)
        if problem_key(p.problem) in held:
            excluded += 1
        else:
            rows.append({"question": p.problem, "answer": p.gold})
    if not rows:
        raise SystemExit(f"winnow experiment: every training problem of seed {seed} is a held-out one")
    return rows, excluded


def write_training_file(budget: Budget, seed: int, heldout: list[Any], path: Path) -> int:
    """Write :func:`training_rows` to ``path`` (JSONL); returns the number of problems excluded."""
    rows, excluded = training_rows(budget, seed, heldout)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return excluded


def placebo_score(**_: Any) -> float:
    """The placebo arm's reward function (run by the verifier `winnow up` starts): a uniform draw in [0, 1) from
    the operating system's entropy, whatever the prompt and the answer. Not reproducible run to run (the pipeline
    is not either), but independent across samples: the verifier's workers are forked from one process, so a
    seeded ``random`` state would repeat in each of them."""
    return int.from_bytes(os.urandom(7), "big") / 2**56


def has_marker(text: str) -> bool:
    """Whether an answer states its final answer with a marker: the verifier's extractor, without its last-number
    fallback, finds a ``\\boxed{}`` or a final-answer statement ("Answer:", "The answer is", "####", ...)."""
    from winnow.verifier.extract import extract_answer

    ex = extract_answer(text, last_number=False)
    return ex.answer is not None and ex.method in ("boxed", "marker")


def completion_logits(model: Any, prompts: list[list[int]], completions: list[list[int]], batch: int = 16) -> Any:
    """Yield, row by row, the float32 logits ``(len(completion), V)`` that predict each completion token given the
    prompt and the earlier tokens (teacher-forced), one forward per ``batch`` rows. A prefix common to a batch's
    prompts (the few-shot turns; at least ``MIN_COMMON_PREFIX`` tokens) is run once and the rows' own
    ``prompt[c:] + completion``, right-padded, over its KV cache, as the generators' engine prefills (the same keys,
    values and positions as a plain forward of each row). ``prompts``, ``completions``: token ids, non-empty."""
    import inspect

    import torch
    from transformers import DynamicCache

    from winnow.hf_engine import MIN_COMMON_PREFIX, common_prefix_length

    dev = next(model.parameters()).device
    kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    for start in range(0, len(prompts), batch):
        chunk = list(zip(prompts[start:start + batch], completions[start:start + batch], strict=True))
        c = min(common_prefix_length([p for p, _ in chunk]), min(len(p) for p, _ in chunk) - 1)
        if len(chunk) < 2 or c < MIN_COMMON_PREFIX:
            c = 0
        extra: dict[str, Any] = {}
        if c:
            try:
                past = DynamicCache(config=model.config)
            except TypeError:  # older transformers
                past = DynamicCache()
            with torch.no_grad():
                model(input_ids=torch.tensor([chunk[0][0][:c]], device=dev), use_cache=True, logits_to_keep=1,
                      attention_mask=torch.ones((1, c), dtype=torch.long, device=dev), **{kwarg: past})
            past.batch_repeat_interleave(len(chunk))
            extra = {kwarg: past, "use_cache": True}
        rows = [p[c:] + comp for p, comp in chunk]
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long, device=dev)
        own = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, device=dev)
            own[i, :len(r)] = 1
        mask = torch.cat([torch.ones((len(rows), c), dtype=torch.long, device=dev), own], dim=1)
        positions = torch.arange(c, c + width, device=dev).repeat(len(rows), 1)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                           **(extra or {"use_cache": False})).logits
        for i, (p, comp) in enumerate(chunk):
            own_prompt = len(p) - c  # >= 1: the row's last prompt token predicts its first completion token
            yield logits[i, own_prompt - 1:own_prompt + len(comp) - 1].float()


def completion_logprobs(model: Any, prompts: list[list[int]], completions: list[list[int]],
                        batch: int = 16) -> list[list[float]]:
    """Teacher-forced ``log model(token | prompt, earlier tokens)`` of each completion's tokens
    (:func:`completion_logits`)."""
    import torch

    out = []
    for logits, c in zip(completion_logits(model, prompts, completions, batch), completions, strict=True):
        lp = torch.log_softmax(logits, dim=-1)
        out.append(lp.gather(-1, torch.tensor(c, dtype=torch.long, device=lp.device)[:, None])[:, 0].tolist())
    return out


def completion_kl_entropy(model: Any, ref: Any, prompts: list[list[int]], completions: list[list[int]],
                          batch: int = 16) -> tuple[list[float], list[float]]:
    """Per row, summed over the completion's positions t: ``KL(model(.|y<t) || ref(.|y<t))`` and the entropy of
    ``model(.|y<t)``, each exact over the vocabulary. With ``y`` sampled from ``model``, the sum's expectation is the
    sequence-level KL(model || ref) (the chain rule) with far less variance than ``log model(y) - log ref(y)``, and it
    is never negative. Both models' logits come from :func:`completion_logits` (same code, float32 softmax)."""
    import torch

    kls: list[float] = []
    ents: list[float] = []
    pairs = zip(completion_logits(model, prompts, completions, batch),
                completion_logits(ref, prompts, completions, batch), strict=True)
    for mine, theirs in pairs:
        lp, lq = torch.log_softmax(mine, dim=-1), torch.log_softmax(theirs, dim=-1)
        prob = lp.exp()
        kls.append(float((prob * (lp - lq)).sum()))
        ents.append(float(-(prob * lp).sum()))
    return kls, ents


def eval_engine(model_dir: str, weights: str | None, problems: list[Any], chat: dict[str, Any], precision: str,
                attention: str, threads: int) -> tuple[Any, list[list[int]]]:
    """The generators' transformers engine on ``model_dir`` (with the safetensors ``weights`` loaded over it, if
    given) at ``precision`` / ``attention``, and the problems' prompts formatted as the generator formats a request.
    ``threads``: torch threads of this process (0 = torch's default)."""
    import torch

    from winnow.chat import ChatFormat, PromptFormatter
    from winnow.hf_engine import HFEngine

    if threads:
        torch.set_num_threads(threads)
    engine = HFEngine.from_pretrained(model_dir, dtype=precision, attention=attention, max_batch_sequences=64)
    if weights:
        engine.load_weights(weights, version=1)
    fmt = PromptFormatter(engine.tokenizer, ChatFormat(**chat))
    return engine, [fmt(p.problem, p.messages) for p in problems]


def evaluate(model_dir: str, weights: str | None, problems: list[Any], budget: Budget, chat: dict[str, Any],
             precision: str = "auto", seed: int = 0, threads: int = 1, attention: str = "auto") -> dict[str, Any]:
    """Greedy accuracy and pass@k of the model at ``model_dir`` (with the safetensors ``weights`` loaded
    over it, if given), decoded by the generators' transformers engine at the run's ``numerics.precision``
    and ``numerics.attention``: exactly as the generators sample during training. ``threads``: torch threads of this process (1 by
    default: on a shared machine OpenMP threads that spin for a busy core slow decoding by an order of
    magnitude; 0 = torch's default)."""

    from winnow.sampling import SamplingConfig
    from winnow.scoring import in_process_verifier
    from winnow.verdict import Item, Status

    t0 = time.perf_counter()
    engine, prompts = eval_engine(model_dir, weights, problems, chat, precision, attention, threads)
    greedy = engine.generate(prompts, 1, SamplingConfig(temperature=0.0, max_new_tokens=budget.max_new_tokens))
    sampled: list[list[Any]] = []
    if budget.eval_k:
        sampling = SamplingConfig(temperature=budget.temperature, top_p=1.0,
                                  max_new_tokens=budget.max_new_tokens, seed=seed + 1)
        sampled = engine.generate(prompts, budget.eval_k, sampling)
    verifier = in_process_verifier(workers=1, timeout_s=2.0)
    try:
        def correct(texts: list[str], problem: Any) -> list[bool]:
            items = [Item(id=str(i), response=t, gold=problem.gold, task=problem.task) for i, t in enumerate(texts)]
            return [v.status == Status.CORRECT for v in verifier.verify_batch(items)]

        greedy_ok = [correct([g[0].text], p)[0] for g, p in zip(greedy, problems, strict=True)]
        counts = [sum(correct([c.text for c in s], p)) for s, p in zip(sampled, problems, strict=True)] if sampled else []
    finally:
        verifier.close()
    out: dict[str, Any] = {
        "greedy_accuracy": sum(greedy_ok) / len(problems),
        "problems": len(problems),
        "k": budget.eval_k,
        "eval_s": time.perf_counter() - t0,
        "greedy_correct": greedy_ok,
        "sample_correct_counts": counts,
        "problem_keys": [problem_key(p.problem) for p in problems],
        "greedy_no_marker": [not has_marker(g[0].text) for g in greedy],
        "sample_no_marker_counts": [sum(not has_marker(c.text) for c in s) for s in sampled],
        "greedy_examples": [g[0].text for g in greedy[:3]],
    }
    tokens = [lp for s in sampled for c in s for lp in c.logprobs]
    if tokens:  # E[-log mu(a)] over sampled tokens: a Monte Carlo estimate of the per-token entropy
        out["sample_entropy"] = -statistics.fmean(tokens)
        out["response_tokens_mean"] = len(tokens) / (len(problems) * budget.eval_k)
    if counts:
        out["pass_at_k"] = {str(k): statistics.fmean(pass_at_k(budget.eval_k, c, k) for c in counts)
                            for k in ks_up_to(budget.eval_k)}
        out["mean_at_k"] = sum(counts) / (budget.eval_k * len(problems))
    return out


def policy_drift(model_dir: str, weights: str | None, ref: Any, problems: list[Any], budget: Budget,
                 chat: dict[str, Any], precision: str = "auto", attention: str = "auto", seed: int = 0,
                 threads: int = 1) -> dict[str, Any]:
    """How far the policy (``model_dir`` with ``weights``) has moved from ``ref`` (the initial model, built by
    :func:`reference_model` in the same precision) on held-out prompts: one response per problem sampled at the
    training temperature, and along it, per token, ``heldout_kl`` = KL(pi || ref) and ``heldout_entropy`` of pi, exact
    over the vocabulary at each position (:func:`completion_kl_entropy`; per problem in ``kl_sums``,
    ``entropy_sums``, ``sample_tokens``).

    The policy is the one the generators sample and :func:`evaluate` decodes: the published weights in the run's
    ``numerics.precision`` (bf16 on this CPU; the learner's forward runs under autocast to it too). Its float32
    master weights move further and sooner: after one step of lr 1e-5 they are KL 0.021 per token from the initial
    model where the bf16 policy is 0.0010, since most weights' updates stay inside one bf16 rounding step until
    they accumulate (docs/results/README.md, long runs)."""
    from winnow.sampling import SamplingConfig

    t0 = time.perf_counter()
    engine, prompts = eval_engine(model_dir, weights, problems, chat, precision, attention, threads)
    sampling = SamplingConfig(temperature=budget.temperature, top_p=1.0, max_new_tokens=budget.max_new_tokens,
                              seed=seed + 7)
    completions = [g[0].token_ids for g in engine.generate(prompts, 1, sampling)]
    rows = [i for i, c in enumerate(completions) if c]
    row_kl, row_ent = completion_kl_entropy(engine.model, ref, [prompts[i] for i in rows],
                                            [completions[i] for i in rows])
    kl_sums, ent_sums = [0.0] * len(problems), [0.0] * len(problems)
    for i, k, e in zip(rows, row_kl, row_ent, strict=True):
        kl_sums[i], ent_sums[i] = k, e
    tokens = [len(c) for c in completions]
    return {"heldout_kl": sum(kl_sums) / max(1, sum(tokens)), "heldout_entropy": sum(ent_sums) / max(1, sum(tokens)),
            "kl_sums": kl_sums, "entropy_sums": ent_sums, "sample_tokens": tokens, "drift_problems": len(problems),
            "drift_s": time.perf_counter() - t0}


def reference_model(model_dir: str, precision: str = "auto", attention: str = "auto") -> Any:
    """The initial model as :func:`policy_drift` builds the policy (the generators' engine, same precision)."""
    from winnow.hf_engine import HFEngine

    return HFEngine.from_pretrained(model_dir, dtype=precision, attention=attention).model


# -- one run ----------------------------------------------------------------------------------------


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_pipeline(data: dict[str, Any], run_dir: Path, timeout_s: float) -> float:
    """Start the services of one run, wait for the learner to finish ``max_steps``, stop everything;
    returns the wall seconds from start to the learner's exit."""
    from winnow.up import Pipeline

    pipeline = Pipeline(data, run_dir, resume=False)
    t0 = time.monotonic()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the banner of `winnow up`
            pipeline.start()
        deadline = t0 + timeout_s
        while True:
            learner = pipeline.procs["learner"]
            if learner.poll() is not None:
                if learner.returncode != 0:
                    raise RuntimeError(f"learner exited with {learner.returncode}:\n{pipeline._tail_hint('learner')}")
                return time.monotonic() - t0
            for name, proc in pipeline.procs.items():
                if name != "learner" and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{pipeline._tail_hint(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"run did not finish in {timeout_s:.0f}s; logs in {run_dir / 'logs'}")
            time.sleep(0.5)
    finally:
        pipeline.stop_all()


def published_versions(run_dir: Path) -> list[tuple[int, Path]]:
    """``(version, weight file)`` of every version the run's store still holds, oldest first."""
    found = sorted((int(p.name[1:]), p / "model.safetensors") for p in (run_dir / "weights").glob("v*")
                   if p.name[1:].isdigit())
    return [(v, f) for v, f in found if f.exists()]


def final_weights(run_dir: Path) -> tuple[str, int]:
    """The newest published weight file of a run and its version."""
    versions = published_versions(run_dir)
    if not versions:
        raise RuntimeError(f"no published weights under {run_dir / 'weights'}")
    version, path = versions[-1]
    return str(path), version


CURVE_KEYS = ("greedy_accuracy", "greedy_correct", "greedy_no_marker", "problem_keys", "eval_s", "heldout_kl",
              "heldout_entropy", "kl_sums", "entropy_sums", "sample_tokens", "drift_problems", "drift_s")
"""What ``curve.json`` keeps of each point of the learning curve (:func:`evaluate`, greedy, and
:func:`policy_drift`)."""


TRAINED_ONLY = ("entropy", "kl")
"""Learner metrics measured over the trained tokens only: undefined (logged as 0) on a step that trained nothing."""


def trained(row: dict) -> bool:
    return float(row.get("tokens", 0.0)) > 0 and not row.get("skipped")


def summarize(spec: RunSpec, rows: list[dict], ev: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """One run's numbers for the table: the last steps' training signals and the held-out evaluation."""
    steps = [r for r in rows if "loss" in r]
    tail = steps[-max(1, len(steps) // 4):]  # last quarter of the run
    trained_steps = [r for r in steps if trained(r)]
    trained_tail = trained_steps[-max(1, len(trained_steps) // 4):]  # entropy/KL: last quarter of trained steps

    def mean(key: str, rs: list[dict]) -> float | None:
        vals = [float(r[key]) for r in rs if isinstance(r.get(key), int | float)]
        return statistics.fmean(vals) if vals else None

    last = steps[-1] if steps else {}
    return {
        **asdict(spec),
        "run_id": spec.run_id,
        "steps": len(steps),
        "wall_s": wall_s,
        "train_s": (steps[-1]["time"] - steps[0]["time"]) if len(steps) > 1 else 0.0,
        "tokens_trained": sum(float(r.get("tokens", 0.0)) for r in steps),
        "acceptance_first": mean("acceptance_rate", steps[:max(1, len(steps) // 4)]),
        "acceptance_last": mean("acceptance_rate", tail),
        "reward_last": mean("reward_mean", tail),
        "entropy_first": mean("entropy", trained_steps[:1]),
        "entropy_last": mean("entropy", trained_tail),
        "kl_last": mean("kl", trained_tail),
        "kept_groups_mean": mean("kept_group_fraction", steps),
        "staleness_mean": mean("staleness_mean", steps),
        "stale_dropped": int(last.get("outcomes", {}).get("stale", 0)),
        "skipped_steps": sum(not trained(r) for r in steps),
        "sample_entropy": ev.get("sample_entropy"),
        "greedy_accuracy": ev["greedy_accuracy"],
        "pass_at_k": ev.get("pass_at_k", {}),
        "mean_at_k": ev.get("mean_at_k"),
    }


def run_one(spec: RunSpec, budget: Budget, model_dir: str, bootstrap: str, results: Path, work: Path,
            problems: list[Any], timeout_s: float, eval_threads: int = 1) -> dict[str, Any]:
    """Run, evaluate and record one spec (``results/runs/<id>/``); returns its summary."""
    out = results / "runs" / spec.run_id
    run_dir = work / spec.run_id
    for d in (out, run_dir):
        shutil.rmtree(d, ignore_errors=True)  # an unfinished earlier attempt starts over
    out.mkdir(parents=True)
    prefix = f"exp-{uuid.uuid4().hex[:6]}-{spec.run_id}"[:120]
    train_file, excluded = None, None
    if budget.exclude_heldout:  # the run's training stream without the held-out problems
        train_file = work / "train" / f"{spec.run_id}.jsonl"
        excluded = write_training_file(budget, spec.seed, problems, train_file)
    data = up_config(spec, budget, model_dir, bootstrap, prefix, str(train_file) if train_file else None)
    (out / "up.json").write_text(json.dumps(data, indent=1))
    wall_s = run_pipeline(data, run_dir, timeout_s)
    shutil.copy(run_dir / "metrics.jsonl", out / "metrics.jsonl")
    weights, version = final_weights(run_dir)
    numerics = data.get("numerics", {})
    ev = evaluate(model_dir, weights, problems, budget, data["generator"].get("chat", {}),
                  precision=numerics.get("precision", "auto"), attention=numerics.get("attention", "auto"),
                  seed=spec.seed, threads=eval_threads)
    ev["weights_version"] = version
    (out / "eval.json").write_text(json.dumps(ev, indent=1))
    if budget.curve_every:  # the policy every curve_every steps and the final one: greedy, and its drift
        precision, attention = numerics.get("precision", "auto"), numerics.get("attention", "auto")
        greedy_only, ref = replace(budget, eval_k=0), reference_model(model_dir, precision, attention)
        chat = data["generator"].get("chat", {})
        points = []
        for v, path in published_versions(run_dir):
            if v == 0 or (v % budget.curve_every and v != version):
                continue
            pt = evaluate(model_dir, str(path), problems, greedy_only, chat, precision=precision, attention=attention,
                          seed=spec.seed, threads=eval_threads)
            pt.update(policy_drift(model_dir, str(path), ref, problems[:budget.curve_drift_problems], budget, chat,
                                   precision=precision, attention=attention, seed=spec.seed, threads=eval_threads))
            points.append({"version": v, **{k: pt[k] for k in CURVE_KEYS if k in pt}})
        del ref
        (out / "curve.json").write_text(json.dumps({"every": budget.curve_every, "points": points}, indent=1))
    summary = summarize(spec, _rows(out / "metrics.jsonl"), ev, wall_s)
    summary["git_commit"] = _git_commit()
    if excluded is not None:
        summary["train_excluded"] = excluded
    (out / "summary.json").write_text(json.dumps(summary, indent=1))  # last: marks the run finished
    for big in ("weights", "checkpoints"):  # GBs per run (a full state per version); logs and metrics stay
        shutil.rmtree(run_dir / big, ignore_errors=True)
    return summary


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# -- the report -------------------------------------------------------------------------------------


def _fmt(values: list[float], pct: bool = False, digits: int = 3) -> str:
    """``mean ± sd`` (sample sd; ``mean`` alone for one value; ``n/a`` for none)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    scale = 100.0 if pct else 1.0
    m = statistics.fmean(vals) * scale
    d = 1 if pct else digits
    if len(vals) == 1:
        return f"{m:.{d}f}"
    return f"{m:.{d}f} ± {statistics.stdev(vals) * scale:.{d}f}"


def load_summaries(results: Path) -> list[dict[str, Any]]:
    """Every finished run's summary, recomputed from its ``metrics.jsonl`` and ``eval.json`` (so a change
    of :func:`summarize` applies to runs recorded before it)."""
    out = []
    for path in sorted((results / "runs").glob("*/summary.json")):
        saved = json.loads(path.read_text())
        spec = RunSpec(saved["suite"], saved["label"], saved["algo"], saved["seed"])
        ev = json.loads((path.parent / "eval.json").read_text())
        out.append({**saved, **summarize(spec, _rows(path.parent / "metrics.jsonl"), ev, saved["wall_s"])})
    return out


def table(results: Path) -> str:
    """The markdown table: one row per (suite, label), mean ± sd over its seeds."""
    cfg = json.loads((results / "config.json").read_text())
    summaries = load_summaries(results)
    base = json.loads((results / "base_eval.json").read_text()) if (results / "base_eval.json").exists() else None
    ks = [str(k) for k in ks_up_to(cfg["budget"]["eval_k"])]
    head = (["suite", "run", "seeds", "greedy acc %"] + [f"pass@{k} %" for k in ks]
            + ["held-out entropy", "train acc first→last %", "reward last", "KL last", "entropy first→last",
               "tokens trained", "skipped steps", "wall s", "dropped stale"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if base is not None:
        cells = ["base", "initial model", "-", f"{100 * base['greedy_accuracy']:.1f}"]
        cells += [f"{100 * base['pass_at_k'][k]:.1f}" for k in ks]
        cells += [f"{base['sample_entropy']:.3f}" if "sample_entropy" in base else "n/a"] + ["-"] * 8
        lines.append("| " + " | ".join(cells) + " |")
    groups: dict[tuple[str, str], list[dict]] = {}
    for s in summaries:
        groups.setdefault((s["suite"], s["label"]), []).append(s)
    order = {s: i for i, s in enumerate(SUITES)}
    for (suite, label), rs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9), _label_order(kv[0][1]))):
        def col(key: str, rs: list[dict] = rs) -> list:
            return [r.get(key) for r in rs]

        cells = [suite, label, str(len(rs)), _fmt(col("greedy_accuracy"), pct=True)]
        cells += [_fmt([r["pass_at_k"].get(k) for r in rs], pct=True) for k in ks]
        cells += [
            _fmt(col("sample_entropy")),
            f"{_fmt(col('acceptance_first'), pct=True)} → {_fmt(col('acceptance_last'), pct=True)}",
            _fmt(col("reward_last")),
            _fmt(col("kl_last"), digits=4),
            f"{_fmt(col('entropy_first'))} → {_fmt(col('entropy_last'))}",
            f"{statistics.fmean(col('tokens_trained')):.0f}",
            f"{statistics.fmean(r.get('skipped_steps', 0) for r in rs):.1f}",
            f"{statistics.fmean(col('wall_s')):.0f}",
            f"{statistics.fmean(col('stale_dropped')):.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _label_order(label: str) -> tuple[int, str]:
    for i, p in enumerate(MAIN_PRESETS + ABLATION_PRESETS):
        if label == p or label.startswith(p + " "):
            return (i, label)
    return (99, label)


def describe_data(b: dict[str, Any]) -> str:
    """The training and held-out problems of a recorded budget, in words (table.md's header)."""
    if b.get("data"):
        train = f"training data {Path(b['data']).name} (rows shuffled with seed 1000 + run seed)"
        if b.get("eval_data"):
            return f"{train}, held-out: the first {b['eval_problems']} problems of {Path(b['eval_data']).name}"
        return f"{train}, held-out: {b['eval_problems']} of its rows set aside with seed {b['eval_seed']}"
    return (f"task reasoning-gym {b['task']} {json.dumps(b['task_config'])} (training seed 1000 + run seed, "
            f"held-out: {b['eval_problems']} problems of seed {b['eval_seed']})")


# -- the pre-registered analysis (docs/results/README.md, "Pre-registered: ...") ------------------------


def paired_bootstrap(a: list[float], b: list[float], *, n_boot: int = 10_000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """Paired bootstrap over problems: ``a``, ``b`` (n,) per-problem values of two models on the same problems in
    the same order -> ``(mean(a - b), lo, hi)``, the percentile interval at ``level`` of the mean difference over
    ``n_boot`` resamples of the n problem indices with replacement (``numpy.random.default_rng(seed)``: the same
    inputs give the same interval)."""
    import numpy as np

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.ndim != 1 or len(d) == 0 or len(a) != len(b):
        raise ValueError(f"paired_bootstrap needs two equal, non-empty 1-D sequences, got {len(a)} and {len(b)}")
    if not 0.0 < level < 1.0 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1, got {level}, {n_boot}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 1000):  # (chunk, n) index blocks bound the memory
        idx = rng.integers(0, len(d), size=(min(1000, n_boot - start), len(d)))
        means[start:start + len(idx)] = d[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(d.mean()), float(lo), float(hi)


PREREG_METRICS = ("greedy", "pass@1", "pass@k", "no_marker", "no_marker_greedy")
PREREG_SEEDS = 3
"""Seeds an arm needs before a criterion on it is decided (the protocol's 3)."""


def per_problem(ev: dict[str, Any], metric: str) -> list[float]:
    """One evaluation's per-problem values of ``metric`` (``eval.json``): greedy (0/1), pass@1 and pass@k (k = the
    evaluation's samples per problem; :func:`pass_at_k` of the problem's correct count), no_marker (fraction of the
    samples without a final-answer marker), no_marker_greedy (0/1)."""
    k = int(ev.get("k") or 0)
    if metric == "greedy":
        return [float(x) for x in ev["greedy_correct"]]
    if metric == "no_marker_greedy":
        return [float(x) for x in ev["greedy_no_marker"]]
    if metric == "no_marker":
        return [c / k for c in ev["sample_no_marker_counts"]]
    if metric in ("pass@1", "pass@k"):
        kk = 1 if metric == "pass@1" else k
        return [pass_at_k(k, c, kk) for c in ev["sample_correct_counts"]]
    raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(PREREG_METRICS)}")


def arm_values(evals: list[dict[str, Any]], metric: str) -> list[float]:
    """An arm's per-problem value: the mean over its seeds' evaluations (which must be of the same problems)."""
    keys = [tuple(ev["problem_keys"]) for ev in evals if "problem_keys" in ev]
    if len(set(keys)) > 1:
        raise ValueError("the evaluations are not of the same held-out problems (problem_keys differ)")
    per_seed = [per_problem(ev, metric) for ev in evals]
    return [statistics.fmean(vals) for vals in zip(*per_seed, strict=True)]


@dataclass(frozen=True)
class Criterion:
    """A pre-registered hypothesis: ``arm`` minus ``other`` (an arm or ``base``) on ``metric``; ``direction`` +1
    holds iff the ``level`` interval's lower bound is > 0, -1 iff its upper bound is < 0."""

    id: str
    text: str
    metric: str
    arm: str
    other: str
    direction: int
    level: float


_BONFERRONI_3 = 1.0 - 0.05 / 3
PREREG_CRITERIA = [
    Criterion("P1", "RAFT++ greedy accuracy > placebo", "greedy", "raft++", PLACEBO, 1, _BONFERRONI_3),
    Criterion("P2", "GRPO greedy accuracy > placebo", "greedy", "grpo", PLACEBO, 1, _BONFERRONI_3),
    Criterion("P3", "Reinforce-Rej greedy accuracy > placebo", "greedy", "reinforce_rej", PLACEBO, 1, _BONFERRONI_3),
    Criterion("S1", "RAFT++ greedy accuracy > initial model", "greedy", "raft++", "base", 1, 0.95),
    Criterion("S2", "GRPO greedy accuracy > initial model", "greedy", "grpo", "base", 1, 0.95),
    Criterion("S3", "Reinforce-Rej greedy accuracy > initial model", "greedy", "reinforce_rej", "base", 1, 0.95),
    Criterion("S4", "RAFT++ pass@1 > placebo", "pass@1", "raft++", PLACEBO, 1, 0.95),
    Criterion("S5", "GRPO pass@1 > placebo", "pass@1", "grpo", PLACEBO, 1, 0.95),
    Criterion("S6", "Reinforce-Rej pass@1 > placebo", "pass@1", "reinforce_rej", PLACEBO, 1, 0.95),
    Criterion("S7", "RAFT++ pass@k < GRPO pass@k", "pass@k", "raft++", "grpo", -1, 0.95),
    Criterion("S8", "placebo no-marker rate (samples) < initial model", "no_marker", PLACEBO, "base", -1, 0.95),
]
"""The hypotheses of the protocol, in its words; the report decides each mechanically (:func:`check_criterion`)."""


def check_criterion(c: Criterion, evals: dict[str, dict[int, dict[str, Any]]], base: dict[str, Any] | None,
                    min_seeds: int = PREREG_SEEDS) -> dict[str, Any]:
    """Decide one criterion from the evaluations (``evals[arm][seed]``, ``base``): the paired interval over
    problems of the per-problem seed means (the seeds both arms have), each seed's own difference, and the verdict
    ``holds`` / ``does not hold``, or ``pending`` while an arm has fewer than ``min_seeds`` seeds."""
    mine = evals.get(c.arm, {})
    if c.other == "base":
        seeds = sorted(mine)
        other = [base] * len(seeds) if base is not None else []
    else:
        seeds = sorted(set(mine) & set(evals.get(c.other, {})))
        other = [evals[c.other][s] for s in seeds]
    if not seeds or not other:
        return {"criterion": c, "seeds": 0, "verdict": f"pending: 0 of {min_seeds} seeds"}
    a = arm_values([mine[s] for s in seeds], c.metric)
    b = arm_values(other, c.metric)
    diff, lo, hi = paired_bootstrap(a, b, level=c.level)
    per_seed = [statistics.fmean(per_problem(mine[s], c.metric)) - statistics.fmean(per_problem(o, c.metric))
                for s, o in zip(seeds, other, strict=True)]
    held = lo > 0 if c.direction > 0 else hi < 0
    verdict = ("holds" if held else "does not hold") if len(seeds) >= min_seeds else (
        f"pending: {len(seeds)} of {min_seeds} seeds")
    return {"criterion": c, "seeds": len(seeds), "diff": diff, "lo": lo, "hi": hi, "per_seed": per_seed,
            "verdict": verdict}


def load_prereg_evals(results: Path) -> tuple[dict[str, dict[int, dict[str, Any]]], dict[str, Any] | None]:
    """``evals[arm][seed]`` of the finished ``prereg`` runs, and the initial model's evaluation (or None)."""
    evals: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted((results / "runs").glob("prereg-*/summary.json")):
        saved = json.loads(path.read_text())
        evals.setdefault(saved["label"], {})[int(saved["seed"])] = json.loads((path.parent / "eval.json").read_text())
    base_path = results / "base_eval.json"
    return evals, (json.loads(base_path.read_text()) if base_path.exists() else None)


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}"


def prereg_report(results: Path, min_seeds: int = PREREG_SEEDS) -> str:
    """``prereg.md``: per arm each metric with its paired 95% interval against the initial model, every pair of arms,
    and the pre-registered criteria with their verdicts; all from the run files (``eval.json``)."""
    evals, base = load_prereg_evals(results)
    arms = [a for a in PREREG_ARMS if a in evals] + sorted(a for a in evals if a not in PREREG_ARMS)
    if base is None or not arms:
        return "No finished prereg runs (or no base_eval.json) yet.\n"
    k = int(base.get("k") or 0)
    names = {"greedy": "greedy acc %", "pass@1": "pass@1 %", "pass@k": f"pass@{k} %",
             "no_marker": "no-marker % (samples)", "no_marker_greedy": "no-marker % (greedy)"}
    metrics = [m for m in PREREG_METRICS if k or m in ("greedy", "no_marker_greedy")]
    n = len(base["greedy_correct"])
    out = [f"# Pre-registered comparison: {n} held-out problems, paired bootstrap over problems "
           f"(10,000 resamples, seed 0, percentile intervals)\n",
           "An arm's value on a problem is the mean over its seeds; its row is the mean over problems, and [lo, hi] "
           "the 95% interval of its difference from the initial model (percentage points).\n"]
    head = ["arm", "seeds"] + [names[m] for m in metrics]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out.append("| initial model | - | " + " | ".join(f"{100 * statistics.fmean(per_problem(base, m)):.1f}"
                                                     for m in metrics) + " |")
    for arm in arms:
        seeds = sorted(evals[arm])
        cells = [arm, ",".join(map(str, seeds))]
        for m in metrics:
            a = arm_values([evals[arm][s] for s in seeds], m)
            diff, lo, hi = paired_bootstrap(a, per_problem(base, m))
            cells.append(f"{100 * statistics.fmean(a):.1f} ({_pct(diff)} [{_pct(lo)}, {_pct(hi)}])")
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Between arms: difference (row arm minus column arm) with its 95% interval, on the seeds both have.\n"]
    head = ["arm", "vs"] + [names[m] for m in metrics]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, x in enumerate(arms):
        for y in arms[i + 1:]:
            seeds = sorted(set(evals[x]) & set(evals[y]))
            if not seeds:
                continue
            cells = [x, y]
            for m in metrics:
                diff, lo, hi = paired_bootstrap(arm_values([evals[x][s] for s in seeds], m),
                                                arm_values([evals[y][s] for s in seeds], m))
                cells.append(f"{_pct(diff)} [{_pct(lo)}, {_pct(hi)}]")
            out.append("| " + " | ".join(cells) + " |")
    out += ["", "Pre-registered criteria (docs/results/README.md): verdicts decided by the interval at the stated "
            f"level; nothing is decided before each arm has {min_seeds} seeds.\n",
            "| id | hypothesis | level | difference (pp) | interval | per seed | verdict |", "|---|---|---|---|---|---|---|"]
    for c in PREREG_CRITERIA:
        r = check_criterion(c, evals, base, min_seeds)
        if "diff" not in r:
            out.append(f"| {c.id} | {c.text} | {100 * c.level:.2f}% | - | - | - | {r['verdict']} |")
            continue
        seeds = ", ".join(_pct(d) for d in r["per_seed"])
        out.append(f"| {c.id} | {c.text} | {100 * c.level:.2f}% | {_pct(r['diff'])} | [{_pct(r['lo'])}, "
                   f"{_pct(r['hi'])}] | {seeds} | **{r['verdict']}** |")
    out += ["", "Runs: mean training acceptance over the steps (for the placebo its keep rate, not an accuracy: its "
            "samples are kept at random), training problems removed as held-out, wall time, commit.\n",
            "| arm | seed | acceptance (mean over steps) % | training problems excluded | wall s | commit |",
            "|---|---|---|---|---|---|"]
    for path in sorted((results / "runs").glob("prereg-*/summary.json")):
        saved = json.loads(path.read_text())
        acc = [float(r["acceptance_rate"]) for r in _rows(path.parent / "metrics.jsonl")
               if "loss" in r and isinstance(r.get("acceptance_rate"), int | float)]
        out.append(f"| {saved['label']} | {saved['seed']} | {100 * statistics.fmean(acc):.1f} | "
                   f"{saved.get('train_excluded', '-')} | {saved['wall_s']:.0f} | {saved.get('git_commit') or '-'} |"
                   if acc else f"| {saved['label']} | {saved['seed']} | - | {saved.get('train_excluded', '-')} | "
                   f"{saved['wall_s']:.0f} | {saved.get('git_commit') or '-'} |")
    return "\n".join(out) + "\n"


# -- the long runs: learning curves (issue 24 item 3) --------------------------------------------------


def load_long(results: Path) -> tuple[dict[str, dict[int, dict[int, dict[str, Any]]]], dict[str, dict[int, list[dict]]]]:
    """The finished ``long`` runs: ``evals[arm][seed][version]`` (the points of ``curve.json``; the final ``eval.json``
    where the curve has no point of its version) and ``rows[arm][seed]`` (their learner metrics, one per step)."""
    evals: dict[str, dict[int, dict[int, dict[str, Any]]]] = {}
    rows: dict[str, dict[int, list[dict]]] = {}
    for path in sorted((results / "runs").glob("long-*/summary.json")):
        saved = json.loads(path.read_text())
        arm, seed = saved["label"], int(saved["seed"])
        mine = evals.setdefault(arm, {}).setdefault(seed, {})
        if (path.parent / "curve.json").exists():
            for pt in json.loads((path.parent / "curve.json").read_text())["points"]:
                mine[int(pt["version"])] = pt
        ev = json.loads((path.parent / "eval.json").read_text())
        mine.setdefault(int(ev.get("weights_version", saved["steps"])), ev)
        rows.setdefault(arm, {})[seed] = [r for r in _rows(path.parent / "metrics.jsonl") if "loss" in r]
    return evals, rows


def load_base_curve(results: Path) -> dict[str, Any]:
    """The initial model's curve point (``base_curve.json``: held-out entropy, KL 0), or {} before it is measured."""
    path = results / "base_curve.json"
    return json.loads(path.read_text()) if path.exists() else {}


def window_mean(rows: list[dict], key: str, lo: int, hi: int) -> float | None:
    """Mean of a learner metric over the trained steps with ``lo < version <= hi`` (None if none trained)."""
    vals = [float(r[key]) for r in rows if lo < int(r["version"]) <= hi and key in r and trained(r)]
    return statistics.fmean(vals) if vals else None


def long_points(evals: dict[str, dict[int, dict[int, dict[str, Any]]]]) -> dict[str, list[int]]:
    """Per arm, the evaluated versions every one of its seeds has, ascending."""
    out = {}
    for arm, seeds in evals.items():
        common = set.intersection(*(set(v) for v in seeds.values())) if seeds else set()
        out[arm] = sorted(common)
    return out


def _seed_mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def long_report(results: Path) -> str:
    """``long.md``: held-out greedy accuracy at every evaluated step per arm (paired 95% interval against the initial
    model), the arms against each other at each step, and the held-out KL to the initial model, the held-out entropy
    and the learner's KL at those steps; all from the run files."""
    evals, rows = load_long(results)
    base_path = results / "base_eval.json"
    if not evals or not base_path.exists():
        return "No finished long runs (or no base_eval.json) yet.\n"
    base = json.loads(base_path.read_text())
    b0 = per_problem(base, "greedy")
    arms = [a for a in LONG_ARMS if a in evals] + sorted(a for a in evals if a not in LONG_ARMS)
    for a in arms:  # every comparison is paired by problem: the same problems in the same order everywhere
        for s, by_version in evals[a].items():
            if any(ev.get("problem_keys") != base.get("problem_keys") for ev in by_version.values()):
                raise ValueError(f"long run {a} seed {s} was not evaluated on base_eval.json's problems")
    points = long_points(evals)
    steps = sorted({v for a in arms for v in points[a]})
    seeds = {a: sorted(evals[a]) for a in arms}
    every = max(1, min((b - a for a, b in zip(steps, steps[1:], strict=False)), default=1))

    def acc(arm: str, v: int) -> list[float]:
        return arm_values([evals[arm][s][v] for s in seeds[arm]], "greedy")

    out = [f"# Learning curves: {len(b0)} held-out problems, the policy every {every} steps\n",
           "Held-out greedy accuracy (%) at each step (mean over the arm's seeds per problem, then over problems) and, "
           "in brackets, its difference from the initial model with the paired 95% bootstrap interval over problems "
           "(10,000 resamples, percentage points).\n",
           "| step | " + " | ".join(f"{a} (seeds {','.join(map(str, seeds[a]))})" for a in arms) + " |",
           "|---|" + "---|" * len(arms),
           "| 0 (initial) | " + " | ".join(f"{100 * statistics.fmean(b0):.1f}" for _ in arms) + " |"]
    for v in steps:
        cells = []
        for a in arms:
            if v not in points[a]:
                cells.append("-")
                continue
            x = acc(a, v)
            d, lo, hi = paired_bootstrap(x, b0)
            cells.append(f"{100 * statistics.fmean(x):.1f} ({_pct(d)} [{_pct(lo)}, {_pct(hi)}])")
        out.append(f"| {v} | " + " | ".join(cells) + " |")
    pairs = [(x, y) for i, x in enumerate(arms) for y in arms[i + 1:]]
    if pairs:
        out += ["", "Between arms at each step: difference in greedy accuracy (first arm minus second) with its paired "
                "95% interval over problems (pp).\n",
                "| step | " + " | ".join(f"{x} - {y}" for x, y in pairs) + " |", "|---|" + "---|" * len(pairs)]
        for v in steps:
            cells = []
            for x, y in pairs:
                if v not in points[x] or v not in points[y]:
                    cells.append("-")
                    continue
                d, lo, hi = paired_bootstrap(acc(x, v), acc(y, v))
                cells.append(f"{_pct(d)} [{_pct(lo)}, {_pct(hi)}]")
            out.append(f"| {v} | " + " | ".join(cells) + " |")
    out += ["", "Each arm's change from each evaluated step to its last one (a plateau: an interval containing 0), "
            "greedy accuracy, paired 95% interval over problems (pp).\n",
            "| from step | " + " | ".join(f"{a} (to step {points[a][-1]})" for a in arms) + " |",
            "|---|" + "---|" * len(arms)]
    for v in steps:
        cells = []
        for a in arms:
            if v not in points[a] or v == points[a][-1]:
                cells.append("-")
                continue
            d, lo, hi = paired_bootstrap(acc(a, points[a][-1]), acc(a, v))
            cells.append(f"{_pct(d)} [{_pct(lo)}, {_pct(hi)}]")
        if any(c != "-" for c in cells):
            out.append(f"| {v} | " + " | ".join(cells) + " |")
    out += ["", "Per arm at each step: held-out KL(pi || pi_init) and entropy of pi per token, exact over the "
            "vocabulary at each position of one sampled response per held-out problem (temperature 1), the "
            f"learner's k3 KL over its trained tokens in the {every} steps before (which differ by method: RAFT++ trains "
            "on correct samples only), and gain per KL: the accuracy gain over the initial model (pp) per unit of "
            "held-out KL. Means over seeds.\n",
            "| arm | step | held-out KL | held-out entropy | learner KL | gain (pp) | gain per KL |",
            "|---|---|---|---|---|---|---|"]
    base0 = load_base_curve(results)
    if "heldout_entropy" in base0:
        out.append(f"| initial model | 0 | 0 | {base0['heldout_entropy']:.3f} | - | - | - |")
    for a in arms:
        for v in points[a]:
            evs = [evals[a][s][v] for s in seeds[a]]
            kl = _seed_mean([ev.get("heldout_kl") for ev in evs])
            ent = _seed_mean([ev.get("heldout_entropy") for ev in evs])
            lkl = _seed_mean([window_mean(rows[a][s], "kl", v - every, v) for s in seeds[a]])
            gain = 100 * (statistics.fmean(acc(a, v)) - statistics.fmean(b0))
            out.append(f"| {a} | {v} | {f'{kl:.4f}' if kl is not None else '-'} | "
                       f"{f'{ent:.3f}' if ent is not None else '-'} | {f'{lkl:.4f}' if lkl is not None else '-'} | "
                       f"{gain:+.1f} | {f'{gain / kl:.0f}' if kl else '-'} |")
    return "\n".join(out) + "\n"


def plot_long(results: Path, plt: Any) -> list[Path]:
    """``curve.png``: per arm vs step, held-out greedy accuracy (95% normal band over problems), held-out KL to the
    initial model and held-out entropy; and the accuracy gain over the initial model vs that KL."""
    evals, _ = load_long(results)
    base_path = results / "base_eval.json"
    if not evals or not base_path.exists():
        return []
    base = json.loads(base_path.read_text())
    b0 = per_problem(base, "greedy")
    base0 = load_base_curve(results)
    points = long_points(evals)
    arms = [a for a in LONG_ARMS if a in evals] + sorted(a for a in evals if a not in LONG_ARMS)
    fig, axes = plt.subplots(1, 4, figsize=(22, 4.4))
    for a in arms:
        seeds = sorted(evals[a])
        xs, ms, half = [0], [statistics.fmean(b0)], [0.0]
        kx, kls, ents, gains = [0], [0.0], [base0.get("heldout_entropy")], [0.0]
        for v in points[a]:
            vals = arm_values([evals[a][s][v] for s in seeds], "greedy")
            xs.append(v)
            ms.append(statistics.fmean(vals))
            half.append(1.96 * statistics.stdev(vals) / len(vals) ** 0.5 if len(vals) > 1 else 0.0)
            kl = _seed_mean([evals[a][s][v].get("heldout_kl") for s in seeds])
            if kl is not None:
                kx.append(v)
                kls.append(kl)
                ents.append(_seed_mean([evals[a][s][v].get("heldout_entropy") for s in seeds]))
                gains.append(ms[-1] - ms[0])
        line, = axes[0].plot(xs, ms, marker="o", label=f"{a} (seeds {len(seeds)})")
        color = line.get_color()
        axes[0].fill_between(xs, [m - h for m, h in zip(ms, half, strict=True)],
                             [m + h for m, h in zip(ms, half, strict=True)], alpha=0.15, color=color)
        axes[1].plot(kx, kls, marker="o", label=a, color=color)
        ent_pts = [(x, e) for x, e in zip(kx, ents, strict=True) if e is not None]
        if ent_pts:
            axes[2].plot(*zip(*ent_pts, strict=True), marker="o", label=a, color=color)
        axes[3].plot(kls, gains, marker="o", label=a, color=color)
    titles = [(f"held-out greedy accuracy ({len(b0)} problems; 95% band)", "optimizer step"),
              ("held-out KL(pi || pi_init) per token", "optimizer step"),
              ("held-out entropy of pi per token", "optimizer step"),
              ("accuracy gain vs held-out KL", "KL(pi || pi_init) per token")]
    for ax, (title, xlabel) in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = results / "curve.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def write_report(results: Path) -> list[Path]:
    """``table.md`` and the plots in ``results``; returns the files written."""
    cfg = json.loads((results / "config.json").read_text())
    b, hw = cfg["budget"], cfg["hardware"]
    header = (
        f"Model {b['model']}; {describe_data(b)}; {b['steps']} steps "
        f"x {b['batch_groups']} prompts x n={b['n']}, {b['max_new_tokens']} new tokens, lr {b['lr']}, "
        f"temperature {b['temperature']}; hardware: {hw['cpus']} CPUs ({hw['processor']}), "
        f"{'GPU ' + hw['gpu'] if hw.get('gpu') else 'no GPU'}, {hw['platform']}.\n"
        "greedy acc / pass@k: held-out, final weights decoded by the generator's engine (pass@k unbiased from "
        f"{b['eval_k']} samples per problem); train acc: fraction of correct samples (first / last quarter of "
        "the steps); held-out entropy: mean -log-prob per token of those samples (a Monte Carlo estimate of "
        "the policy's per-token entropy on held-out prompts, comparable across presets); reward: learner mean reward over the last quarter of the steps; KL (k3 vs the initial "
        "model), entropy: learner metrics over the trained tokens only, first trained step and last quarter of "
        "the trained steps (steps that trained nothing are left out and counted in skipped steps); wall s: one run start to learner exit, one process each for generator and "
        "learner; mean ± sd over seeds.\n\n"
    )
    files = [results / "table.md"]
    files[0].write_text(header + table(results))
    if any((results / "runs").glob("prereg-*/summary.json")):
        (results / "prereg.md").write_text(prereg_report(results))
        files.append(results / "prereg.md")
    if any((results / "runs").glob("long-*/summary.json")):
        (results / "long.md").write_text(long_report(results))
        files.append(results / "long.md")
    files += plot(results)
    return files


def plot(results: Path) -> list[Path]:
    """reward/entropy/KL vs step per suite (one line per label, mean over seeds, min-max band), and for the
    staleness suite greedy accuracy vs wall time. Skipped with a message when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)
        return []
    curves: dict[str, dict[str, list[list[dict]]]] = {}
    summaries = load_summaries(results)
    for s in summaries:
        rows = [r for r in _rows(results / "runs" / s["run_id"] / "metrics.jsonl") if "loss" in r]
        curves.setdefault(s["suite"], {}).setdefault(s["label"], []).append(rows)
    written: list[Path] = []
    metrics = [("acceptance_rate", "train accuracy (fraction of correct samples)", "reward"),
               ("entropy", "mean token entropy (trained tokens)", "entropy"),
               ("kl", "KL(pi || pi_ref), k3 (trained tokens)", "kl")]
    for key, ylabel, name in metrics:
        suites = [s for s in SUITES if s in curves]
        if not suites:
            continue
        fig, axes = plt.subplots(1, len(suites), figsize=(6.5 * len(suites), 4.2), squeeze=False)
        for ax, suite in zip(axes[0], suites, strict=True):
            for label in sorted(curves[suite], key=_label_order):
                runs = curves[suite][label]
                steps = sorted({int(r["version"]) for rows in runs for r in rows})
                series = []
                for st in steps:
                    vals = [float(r[key]) for rows in runs for r in rows if int(r["version"]) == st and key in r
                            and (key not in TRAINED_ONLY or trained(r))]
                    if vals:
                        series.append((st, statistics.fmean(vals), min(vals), max(vals)))
                if not series:
                    continue
                xs, ms, lo, hi = zip(*series, strict=True)
                line, = ax.plot(xs, ms, label=f"{label} (n={len(runs)})", marker=".")
                if len(runs) > 1:
                    ax.fill_between(xs, lo, hi, alpha=0.15, color=line.get_color())
            ax.set_title(f"{suite}: {ylabel}")
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = results / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    stale = [s for s in summaries if s["suite"] == "staleness"]
    if stale:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for label in sorted({s["label"] for s in stale}):
            pts = [(s["wall_s"], s["greedy_accuracy"]) for s in stale if s["label"] == label]
            ax.scatter(*zip(*pts, strict=True), label=label, marker="x" if "decoupled" in label else "o")
        ax.set_xlabel("wall time of the run (s)")
        ax.set_ylabel("held-out greedy accuracy")
        ax.set_title("staleness: accuracy vs wall time")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = results / "staleness.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written + plot_long(results, plt)


# -- main -------------------------------------------------------------------------------------------


def _hardware() -> dict[str, Any]:
    processor = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    return {"cpus": os.cpu_count(), "processor": processor, "platform": platform.platform(), "gpu": gpu}


def check_config(results: Path, budget: Budget) -> None:
    """Record the budget in ``results/config.json``, or refuse when the directory holds another budget."""
    path = results / "config.json"
    mine = json.loads(json.dumps(asdict(budget)))
    if path.exists():
        # a field added since the directory was filled has its default there
        theirs = {**json.loads(json.dumps(asdict(Budget()))), **json.loads(path.read_text())["budget"]}
        if theirs != mine:
            diff = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
            raise SystemExit(f"winnow experiment: {results} holds runs with another budget (differs in "
                             f"{', '.join(diff)}); use another --results or the same options")
        return
    results.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"budget": mine, "hardware": _hardware()}, indent=1))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = Budget()
    p = argparse.ArgumentParser(prog="winnow experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="main",
                   help="main, ablations, staleness, prereg, long, all (the first three), or a comma-separated list")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds")
    p.add_argument("--results", default=str(REPO / "docs" / "results"), help="results directory (resumable)")
    p.add_argument("--work-dir", default="runs/experiment", help="pipeline run directories (weights, logs)")
    p.add_argument("--model", default=d.model, help="'smollm2-135m', a HF model directory or hub id, a .gguf file, or 'tiny' (test model)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-groups", type=int, default=d.batch_groups, help="prompts per optimizer step")
    p.add_argument("--n", type=int, default=d.n, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--micro-batch", type=int, default=d.micro_batch)
    p.add_argument("--task", default=d.task, help="reasoning-gym dataset")
    p.add_argument("--task-config", default=json.dumps(d.task_config), help="the dataset's options, JSON")
    p.add_argument("--data", default="", help="train on this JSONL/Parquet file (e.g. GSM8K train) instead of --task")
    p.add_argument("--eval-data", default="",
                   help="evaluate on the first --eval-problems rows of this file (e.g. GSM8K test); default: "
                        "held out of --data, or --task generated with --eval-seed")
    p.add_argument("--eval-problems", type=int, default=d.eval_problems)
    p.add_argument("--eval-k", type=int, default=d.eval_k, help="samples per held-out problem for pass@k")
    p.add_argument("--eval-seed", type=int, default=d.eval_seed, help="reasoning-gym seed of the held-out set")
    p.add_argument("--eval-threads", type=int, default=1,
                   help="torch threads of the evaluation (1: no OpenMP spinning on a shared machine; 0 = default)")
    p.add_argument("--exclude-heldout", action="store_true",
                   help="held-out problems distinct by problem_key, and removed from every training stream")
    p.add_argument("--placebo-rate", type=float, default=d.placebo_rate,
                   help="the placebo arm (--suite prereg) keeps each sample with this probability")
    p.add_argument("--curve-every", type=int, default=d.curve_every,
                   help="also evaluate each run's policy every this many steps (greedy; curve.json; 0 = off)")
    p.add_argument("--staleness-preset", default="reinforce_rej")
    p.add_argument("--staleness-values", default="0,1,2,4")
    p.add_argument("--config", default=None, help="a winnow up config file merged over every run's config")
    p.add_argument("--run-timeout", type=float, default=14400.0,
                   help="seconds allowed per run (training and its pipeline; a run past it fails and is rerun from "
                        "scratch): generous, since a 30-step run of the pre-registered suite took ~1,750 s on a "
                        "shared 2-core machine and the old 1,800 s default failed it")
    p.add_argument("--only", default=None, help="run only these labels or presets (comma-separated), in this order within a seed")
    p.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs")
    p.add_argument("--report-only", action="store_true", help="only rebuild table.md and the plots")
    p.add_argument("--base-only", action="store_true",
                   help="only evaluate the initial model (the task's starting success rate) and exit")
    p.add_argument("--dry-run", action="store_true", help="print the runs that would start and exit")
    args = p.parse_args(argv)
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
        args.staleness_list = [int(s) for s in args.staleness_values.split(",") if s.strip()]
    except ValueError:
        p.error("--seeds and --staleness-values take comma-separated integers")
    try:
        args.task_config_dict = json.loads(args.task_config)
    except json.JSONDecodeError as e:
        p.error(f"--task-config is not JSON: {e}")
    args.suites = list(ALL_SUITES) if args.suite == "all" else [s.strip() for s in args.suite.split(",") if s.strip()]
    bad = [s for s in args.suites if s not in SUITES]
    if bad:
        p.error(f"--suite: unknown {bad}; valid: {', '.join(SUITES)}, all")
    if args.steps < 1 or args.eval_problems < 1 or args.eval_k < 0:
        p.error("--steps and --eval-problems must be >= 1, --eval-k >= 0")
    if not 0.0 < args.placebo_rate <= 1.0:
        p.error("--placebo-rate must be in (0, 1]")
    if args.curve_every < 0:
        p.error("--curve-every must be >= 0")
    if args.exclude_heldout and args.data:
        p.error("--exclude-heldout applies to reasoning-gym tasks (--task), not --data")
    for name in ("data", "eval_data"):
        path = getattr(args, name)
        if path:
            flag = "--" + name.replace("_", "-")
            if not Path(path).is_file():
                p.error(f"{flag}: {path} is not a file")
            try:
                file_kind(path)
            except ValueError:
                p.error(f"{flag}: {path} is neither .jsonl nor .parquet")
            setattr(args, name, str(Path(path).resolve()))
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = Path(args.results)
    if threading.current_thread() is threading.main_thread():  # SIGTERM stops the services like Ctrl-C
        signal.signal(signal.SIGTERM, _interrupt)
    if args.report_only:
        for f in write_report(results):
            print(f"wrote {f}")
        print((results / "table.md").read_text())
        return 0
    from winnow.config import read_config_file

    budget = Budget(model=args.model, steps=args.steps, batch_groups=args.batch_groups, n=args.n,
                    max_new_tokens=args.max_new_tokens, lr=args.lr, micro_batch=args.micro_batch, task=args.task,
                    task_config=args.task_config_dict, eval_problems=args.eval_problems, eval_k=args.eval_k,
                    eval_seed=args.eval_seed, data=args.data, eval_data=args.eval_data,
                    extra=read_config_file(args.config) if args.config else {}, exclude_heldout=args.exclude_heldout,
                    placebo_rate=args.placebo_rate, curve_every=args.curve_every)
    specs = plan(args.suites, args.seed_list, args.staleness_preset, args.staleness_list)
    if args.only:  # these labels or presets only, in the order given (within each suite and seed)
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]

        def rank(s: RunSpec) -> int:
            return next(i for i, w in enumerate(wanted) if w in (s.label, s.algo.get("preset")))

        specs = [s for s in specs if s.label in wanted or s.algo.get("preset") in wanted]
        specs.sort(key=lambda s: (SUITES.index(s.suite), s.seed, rank(s)))
    todo = [s for s in specs if not (results / "runs" / s.run_id / "summary.json").exists()]
    if args.max_runs is not None:
        todo = todo[: args.max_runs]
    done = sum((results / "runs" / s.run_id / "summary.json").exists() for s in specs)
    print(f"{len(specs)} runs planned, {done} already done, {len(todo)} to run now", file=sys.stderr)
    if args.dry_run:
        for s in todo:
            print(s.run_id, json.dumps(s.algo))
        return 0
    check_config(results, budget)
    for name in ("aiokafka", "winnow.kafka", "winnow.brokers", "winnow.up"):
        logging.getLogger(name).setLevel(logging.WARNING)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if budget.model == "tiny":
        from winnow.learner.tiny import save_tiny

        with contextlib.redirect_stderr(io.StringIO()):
            model_dir = save_tiny(work / "tiny-model", seed=0)
    else:
        from winnow.models import resolve_model

        model_dir = resolve_model(budget.model)
    problems = eval_problems(budget)
    probe = up_config(RunSpec("main", "base", {}, 0), budget, model_dir, "", "", "-")  # the decoding settings
    chat, numerics = probe["generator"].get("chat", {}), probe.get("numerics", {})
    if not (results / "base_eval.json").exists():
        print("evaluating the initial model ...", file=sys.stderr, flush=True)
        base = evaluate(model_dir, None, problems, budget, chat, precision=numerics.get("precision", "auto"),
                        attention=numerics.get("attention", "auto"), threads=args.eval_threads)
        (results / "base_eval.json").write_text(json.dumps(base, indent=1))
        print(f"  initial model: greedy {base['greedy_accuracy']:.3f}, pass@k {base.get('pass_at_k')}",
              file=sys.stderr, flush=True)
    if budget.curve_every and not (results / "base_curve.json").exists():  # the curves' step 0: entropy, KL 0
        print("evaluating the initial model's held-out entropy ...", file=sys.stderr, flush=True)
        precision, attention = numerics.get("precision", "auto"), numerics.get("attention", "auto")
        pt = policy_drift(model_dir, None, reference_model(model_dir, precision, attention),
                          problems[:budget.curve_drift_problems], budget, chat, precision=precision,
                          attention=attention, seed=0, threads=args.eval_threads)
        (results / "base_curve.json").write_text(json.dumps(pt, indent=1))
    if args.base_only:
        return 0
    broker = None
    from winnow.brokers import LocalBroker

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    try:
        if todo and not bootstrap:
            broker = LocalBroker("noida", work / "broker")
            bootstrap = broker.start()
        for i, spec in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {spec.run_id} ({time.strftime('%H:%M:%S')}) ...", file=sys.stderr, flush=True)
            s = run_one(spec, budget, model_dir, bootstrap, results, work, problems, args.run_timeout,
                        args.eval_threads)
            print(f"  done in {s['wall_s']:.0f}s: greedy {s['greedy_accuracy']:.3f}, pass@{budget.eval_k} "
                  f"{s['pass_at_k'].get(str(budget.eval_k), float('nan')):.3f}, train acc "
                  f"{s['acceptance_first']} -> {s['acceptance_last']}", file=sys.stderr, flush=True)
    finally:
        if broker is not None:
            broker.stop()
    for f in write_report(results):
        print(f"wrote {f}", file=sys.stderr)
    print((results / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
