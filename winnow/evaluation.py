"""``winnow eval``: greedy accuracy and pass@k of a model, a run's version or an export, on data files and
reasoning-gym tasks, one row per (set, task).

What is evaluated (:func:`resolve_target`):

- a **run directory** (``learner-config.json``): the run's base model with the weights of ``--version N``
  (default: the newest in its weight store, else its newest checkpoint; ``--version 0`` is the base model),
  decoded as the run's generators sample (``config/generator-0.yaml`` of a ``winnow up`` run, else the
  learner's config): its ``numerics`` (precision, attention), ``chat`` format, ``sampling`` and verifier routes;
- a **model directory** or an **export** (``config.json``; an export's ``winnow-export.json`` gives its chat
  format), or a hub id / the ``smollm2-135m`` alias: decoded with the defaults (or the flags).

Decoding is the generators' transformers engine (:class:`winnow.hf_engine.HFEngine`): greedy
(temperature 0) for accuracy, and with ``-k K`` K samples per problem at the run's temperature/top_p for
pass@k. Each sample is scored through its task's verifier route (the generators' ``verifier`` block: the
in-process math verifier, or the gRPC endpoint its task pattern names; ``--verifier HOST:PORT`` sends every
task there).

Metrics, per (set, task) and per set:

- ``greedy_accuracy = #correct greedy responses / #problems``; ``truncated`` counts greedy responses cut off at
  ``max_new_tokens`` (finish_reason "length") that are not correct (shown apart from wrong ones);
- ``pass@k`` for k = 1, 2, 4, ..., K: the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language
  Models Trained on Code", eq. 1), :func:`pass_at_k` ``= 1 - C(n - c, k) / C(n, k)`` per problem with ``c``
  correct of ``n = K`` samples, averaged over problems;
- ``mean@k = #correct samples / (K * #problems)`` (equal to pass@1).

The table goes to stdout, everything (rows, per-problem greedy texts and correct counts, how it decoded) to the
JSON file. Not implemented: vLLM decoding (the generators' vLLM engine needs a GPU), maj@k.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from winnow.config import ConfigError

log = logging.getLogger(__name__)


# -- the estimator ------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from ``n`` samples with ``c`` correct (Chen et al. 2021):
    ``1 - C(n - c, k) / C(n, k)``; needs ``k <= n``."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def ks_up_to(k_max: int) -> list[int]:
    """1, 2, 4, ... up to ``k_max`` (and ``k_max`` itself)."""
    ks = [1]
    while ks[-1] * 2 <= k_max:
        ks.append(ks[-1] * 2)
    if k_max > ks[-1]:
        ks.append(k_max)
    return ks if k_max >= 1 else []


def file_kind(path: str) -> str:
    """The prompt-source kind of a data file, from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    raise ConfigError(f"--data: {path} is neither .jsonl nor .parquet (for a dataset folder, export it to one)")


# -- what is evaluated ---------------------------------------------------------------------------------


@dataclass
class Target:
    """A model to evaluate and how its generators decode it."""

    label: str
    """What the user named (run directory, model directory, hub id)."""
    model_dir: str
    """The Hugging Face folder the engine loads (a run's base model)."""
    weights: str | None = None
    """A weight file loaded over it (a run's version), or None."""
    version: int | None = None
    """The run's policy version (0 = the base model), None for a model directory."""
    chat: dict[str, Any] = field(default_factory=dict)
    """The generators' ``chat`` block (winnow.chat.ChatFormat)."""
    numerics: dict[str, Any] = field(default_factory=dict)
    """The generators' ``numerics`` block (precision, attention)."""
    lora: dict[str, Any] | None = None
    """A LoRA run's ``learner.lora`` section (its checkpoints hold peft state dicts, merged at load), else None."""
    sampling: dict[str, Any] = field(default_factory=dict)
    """The generators' ``sampling`` block (temperature, top_p, max_new_tokens)."""
    verifier: dict[str, Any] = field(default_factory=dict)
    """The generators' ``verifier`` routing block (endpoints, default_endpoint, in-process workers)."""


def _read(path: Path) -> dict[str, Any]:
    from winnow.config import read_config_file

    return read_config_file(str(path))


def resolve_target(name: str, version: int | None = None) -> Target:
    """The model, weights and decoding settings that ``name`` (a run directory, model directory, export, hub id
    or alias) stands for; ``version`` picks a run's version (default: the newest)."""
    from winnow.models import resolve_model

    path = Path(name).expanduser()
    if (path / "learner-config.json").is_file():
        return _run_target(path, version)
    if version is not None:
        raise ConfigError(f"--version: {name} is not a run directory (no learner-config.json)")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{name}: neither a run directory (learner-config.json) nor a model directory "
                              "(config.json)")
        meta = path / "winnow-export.json"
        chat = (json.loads(meta.read_text()).get("chat") or {}) if meta.is_file() else {}
        return Target(label=name, model_dir=str(path), chat=chat)
    return Target(label=name, model_dir=resolve_model(name))


def _run_target(run_dir: Path, version: int | None) -> Target:
    from winnow.export import available_versions
    from winnow.models import resolve_model

    learner = json.loads((run_dir / "learner-config.json").read_text())
    versions = available_versions(run_dir)
    if version is None:
        version = max(versions) if versions else 0
    if version != 0 and version not in versions:
        raise ConfigError(f"--version {version} is not in {run_dir}; available: {sorted(versions) or 'none'} "
                          "(0 = the base model)")
    gen_path = run_dir / "config" / "generator-0.yaml"  # a winnow up run: decode as its generators did
    gen_file = _read(gen_path) if gen_path.is_file() else {}
    gen = gen_file.get("generator", {})

    def shared(key: str) -> Any:
        """A pipeline section (chat, numerics, sampling): the top level of the generators' file (one section every
        service reads), else the generator section (runs before the shared sections), else the learner's."""
        return gen_file.get(key) or gen.get(key) or learner.get(key)
    routing = dict(gen.get("verifier") or {})
    ver_path = run_dir / "config" / "verifier.yaml"
    if routing.get("default_endpoint") and ver_path.is_file():
        # the math verifier `winnow up` started for the run is gone with it: the same engine in-process
        ver = _read(ver_path).get("verifier", {})
        if routing["default_endpoint"] == f"{ver.get('host')}:{ver.get('port')}":
            routing.update(default_endpoint="", in_process_workers=int(ver.get("workers", 1)),
                           in_process_timeout_s=float(ver.get("timeout_s", 5.0)))
    return Target(
        label=str(run_dir),
        model_dir=resolve_model(str(learner.get("model", "smollm2-135m"))),
        weights=str(versions[version]) if version else None,
        version=version,
        chat=shared("chat") or (learner.get("eval") or {}).get("chat") or {},
        numerics=shared("numerics") or {},
        sampling=shared("sampling") or {},
        verifier=routing,
        lora=learner.get("lora"),
    )


# -- the data ----------------------------------------------------------------------------------------


def source_configs(data: list[str], tasks: list[str], *, limit: int | None, task_size: int,
                   seed: int) -> list[tuple[str, dict[str, Any]]]:
    """``(set name, prompt source config)`` per data file (its rows in file order, the first ``limit``) and per
    reasoning-gym task (``task_size`` problems generated with ``seed``)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for path in data:
        cfg = {"kind": file_kind(path), "path": path, "shuffle": False}
        if limit:
            cfg["limit"] = limit
        out.append((Path(path).stem, cfg))
    for task in tasks:
        out.append((task, {"kind": "reasoning_gym", "name": task, "size": limit or task_size, "seed": seed}))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"two eval sets share a name: {names} (rename a file)")
    if not out:
        raise ConfigError("nothing to evaluate on: give --data FILE (JSONL/Parquet) and/or --task NAME (reasoning-gym)")
    return out


def load_sets(sources: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, list[Any]]]:
    """``(set name, problems)`` of each source."""
    from winnow.prompts import make_source, parse_source_config, source_path_problem

    out = []
    for name, cfg in sources:
        parsed = parse_source_config(cfg)
        if problem := source_path_problem(parsed):
            raise ConfigError(f"--data {cfg.get('path')}: {problem}")
        source = make_source(parsed)
        out.append((name, [source.get(i) for i in range(len(source))]))
    return out


# -- scoring -----------------------------------------------------------------------------------------


class RoutedVerifier:
    """Scores items through each task's route: ``routing`` is the generators' ``verifier`` block (task pattern
    -> gRPC endpoint, else ``default_endpoint``, else the in-process math verifier)."""

    def __init__(self, routing: dict[str, Any]) -> None:
        from winnow.generator.config import VerifierRouting

        self.routing = VerifierRouting(**routing)
        self._local: Any = None

    def verify_batch(self, items: list[Any]) -> list[Any]:
        import asyncio

        from winnow.scoring import in_process_verifier, verifier_client

        by_endpoint: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            by_endpoint.setdefault(self.routing.endpoint_for(item.task), []).append(i)
        out: list[Any] = [None] * len(items)
        for endpoint, idx in by_endpoint.items():
            batch = [items[i] for i in idx]
            if not endpoint:
                if self._local is None:
                    self._local = in_process_verifier(workers=self.routing.in_process_workers,
                                                      timeout_s=self.routing.in_process_timeout_s)
                verdicts = self._local.verify_batch(batch)
            else:
                token = self.routing.token.get_secret_value() if self.routing.token else None

                async def remote(endpoint=endpoint, batch=batch, token=token):
                    client = verifier_client(endpoint, token=token, timeout_s=self.routing.timeout_s)
                    try:
                        return await client.verify_batch(batch)
                    finally:
                        await client.close()

                try:
                    verdicts = asyncio.run(remote())
                except Exception as e:  # an RPC boundary: say which route failed and what to do
                    raise ConfigError(f"verifier {endpoint} (tasks {sorted({i.task for i in batch})}) failed: "
                                      f"{type(e).__name__}: {str(e)[:200]}. Start it, or pass --verifier HOST:PORT, "
                                      "or --verifier in-process") from None
            for i, v in zip(idx, verdicts, strict=True):
                out[i] = v
        return out

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None


# -- the evaluation ----------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: a (set, task) pair, or a set's ``all`` row."""

    set: str
    task: str
    problems: int
    greedy_accuracy: float
    truncated: int
    pass_at_k: dict[str, float]
    mean_at_k: float | None


def summarize(set_name: str, task: str, greedy_ok: list[bool], truncated: list[bool], counts: list[int],
              k: int) -> Row:
    """A row from per-problem results: greedy correctness, greedy cut off (and not correct), correct samples of k."""
    n = len(greedy_ok)
    return Row(
        set=set_name, task=task, problems=n,
        greedy_accuracy=sum(greedy_ok) / n,
        truncated=sum(t and not ok for t, ok in zip(truncated, greedy_ok, strict=True)),
        pass_at_k={str(j): statistics.fmean(pass_at_k(k, c, j) for c in counts) for j in ks_up_to(k)} if k else {},
        mean_at_k=sum(counts) / (k * n) if k else None,
    )


def evaluate_sets(engine: Any, formatter: Any, verifier: Any, sets: list[tuple[str, list[Any]]], *, k: int,
                  max_new_tokens: int, temperature: float, top_p: float, seed: int) -> dict[str, Any]:
    """Decode and score every set; returns ``{"rows": [...], "problems": {set: [...]}}`` (see the module doc).
    ``engine.generate(prompts, n, SamplingConfig)`` is the generators' engine interface."""
    from winnow.sampling import SamplingConfig
    from winnow.verdict import Item, Status

    rows: list[Row] = []
    details: dict[str, list[dict[str, Any]]] = {}
    greedy_cfg = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    sample_cfg = SamplingConfig(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    for set_name, problems in sets:
        if not problems:
            raise ConfigError(f"eval set {set_name} has no problems")
        prompts = [formatter(p.problem, p.messages) for p in problems]  # as the generator formats a request
        greedy = [g[0] for g in engine.generate(prompts, 1, greedy_cfg)]
        sampled = engine.generate(prompts, k, sample_cfg) if k else [[] for _ in problems]
        items = [Item(id=f"g{i}", response=c.text, gold=p.gold, task=p.task)
                 for i, (c, p) in enumerate(zip(greedy, problems, strict=True))]
        items += [Item(id=f"s{i}.{j}", response=c.text, gold=p.gold, task=p.task)
                  for i, (group, p) in enumerate(zip(sampled, problems, strict=True)) for j, c in enumerate(group)]
        correct = [v.status == Status.CORRECT for v in verifier.verify_batch(items)]
        greedy_ok, rest = correct[: len(problems)], correct[len(problems):]
        counts = [sum(rest[i * k: (i + 1) * k]) for i in range(len(problems))] if k else [0] * len(problems)
        cut = [c.finish_reason == "length" for c in greedy]
        details[set_name] = [
            {"prompt_id": p.prompt_id, "task": p.task, "gold": p.gold, "greedy": c.text, "greedy_correct": ok,
             "greedy_finish_reason": c.finish_reason, "correct_of_k": n}
            for p, c, ok, n in zip(problems, greedy, greedy_ok, counts, strict=True)
        ]
        tasks = sorted({p.task for p in problems})
        for task in tasks:
            idx = [i for i, p in enumerate(problems) if p.task == task]
            rows.append(summarize(set_name, task, [greedy_ok[i] for i in idx], [cut[i] for i in idx],
                                  [counts[i] for i in idx], k))
        if len(tasks) > 1:
            rows.append(summarize(set_name, "all", greedy_ok, cut, counts, k))
    return {"rows": [asdict(r) for r in rows], "problems": details}


def format_table(rows: list[dict[str, Any]], k: int) -> str:
    """The rows as an aligned text table (accuracies in %)."""
    ks = [str(j) for j in ks_up_to(k)]
    head = ["set", "task", "problems", "greedy %", "truncated"] + [f"pass@{j} %" for j in ks]
    body = [[r["set"], r["task"], str(r["problems"]), f"{100 * r['greedy_accuracy']:.1f}", str(r["truncated"])]
            + [f"{100 * r['pass_at_k'][j]:.1f}" for j in ks] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths,
                                                                                                    strict=True)))
                     for line in [head, *body])


def run_eval(args: Any) -> dict[str, Any]:
    """``winnow eval``: resolve the target, decode, score, print the table, write the JSON; returns the JSON."""
    import torch

    from winnow.chat import ChatFormat, PromptFormatter
    from winnow.hf_engine import HFEngine

    target = resolve_target(args.target, args.version)
    sets = load_sets(source_configs(args.data, args.task, limit=args.limit, task_size=args.task_size, seed=args.seed))
    sampling = target.sampling
    max_new_tokens = args.max_new_tokens or int(sampling.get("max_new_tokens", 256))
    temperature = args.temperature if args.temperature is not None else float(sampling.get("temperature", 1.0))
    top_p = float(sampling.get("top_p", 1.0))
    precision = args.precision or target.numerics.get("precision", "auto")
    attention = target.numerics.get("attention", "auto")
    routing = dict(target.verifier)
    if args.verifier:
        endpoint = "" if args.verifier == "in-process" else args.verifier
        routing = {**routing, "endpoints": {}, "default_endpoint": endpoint}
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    engine = HFEngine.from_pretrained(target.model_dir, device=args.device, dtype=precision, attention=attention,
                                      max_batch_sequences=args.batch_sequences)
    if target.weights:
        _load_version(engine, target.weights, target.version or 0, base=target.model_dir, lora=target.lora)
    formatter = PromptFormatter(engine.tokenizer, ChatFormat(**target.chat))
    verifier = RoutedVerifier(routing)
    try:
        result = evaluate_sets(engine, formatter, verifier, sets, k=args.k, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, seed=args.seed)
    finally:
        verifier.close()
    out = {
        "target": target.label, "model": target.model_dir, "weights": target.weights, "version": target.version,
        "decoding": {"engine": "transformers", "precision": precision, "attention": attention,
                     "max_new_tokens": max_new_tokens, "k": args.k, "temperature": temperature, "top_p": top_p,
                     "seed": args.seed, "chat": target.chat},
        "verifier": {key: v for key, v in routing.items() if key != "token"},
        "eval_s": round(time.perf_counter() - t0, 3),
        **result,
    }
    return out


def _load_version(engine: Any, weights: str, version: int, *, base: str | None = None,
                  lora: dict[str, Any] | None = None) -> None:
    """Load a run's version: a published safetensors file (full weights or a peft adapter), or a checkpoint's
    ``trainer.pt``. A LoRA run's checkpoint holds the peft model's state dict (base weights + adapters, peft's
    names): it is merged into the base (``W0 + (alpha / r) * B @ A``, as ``winnow export --merge``) and loaded as
    full weights."""
    if weights.endswith(".safetensors"):
        engine.load_weights(weights, version=version)
        return
    from winnow.export import _load_weights
    from winnow.hf_engine import check_state_dict

    state = _load_weights(Path(weights))
    if any("lora_A" in key for key in state):
        if base is None:
            raise ConfigError(f"{weights}: a LoRA checkpoint needs its base model to be merged into")
        from winnow.lora import load_peft

        merged = load_peft(base, peft_state=state, lora=lora or {}).merge_and_unload()
        state = {k: v.detach() for k, v in merged.state_dict().items()}
    check_state_dict(engine.model, state)
    engine.model.load_state_dict(state, strict=False)
    engine.version = version


def register(sub) -> None:
    """``winnow eval TARGET --data FILE ... [--task NAME ...] [-k K]``."""
    import argparse

    p = sub.add_parser(
        "eval",
        help="greedy accuracy and pass@k of a model, a run's version or an export on data files / reasoning-gym tasks",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="MODEL_OR_RUN",
                   help="run directory (learner-config.json), model directory, export, hub id or smollm2-135m")
    p.add_argument("--version", type=int, help="a run's policy version (default: the newest; 0 = the base model)")
    p.add_argument("--data", action="append", default=[], metavar="FILE",
                   help="JSONL or Parquet file of problems with answers (repeatable; read as the prompt sources do)")
    p.add_argument("--task", action="append", default=[], metavar="NAME",
                   help="reasoning-gym task, e.g. basic_arithmetic (repeatable)")
    p.add_argument("--limit", type=int, help="only the first N problems of each file / N problems per task")
    p.add_argument("--task-size", type=int, default=100, help="problems per reasoning-gym task without --limit")
    p.add_argument("-k", type=int, default=0, help="samples per problem for pass@1..k (0 = greedy only)")
    p.add_argument("--temperature", type=float, help="temperature of the k samples (default: the run's sampling)")
    p.add_argument("--max-new-tokens", type=int, help="response length (default: the run's sampling, else 256)")
    p.add_argument("--precision", choices=["auto", "bfloat16", "float32"],
                   help="decoding precision (default: the run's numerics.precision)")
    p.add_argument("--verifier", metavar="HOST:PORT", help="score every task at this verifier endpoint, or "
                   "'in-process' (default: the run's generator routes; the math verifier a winnow up run started "
                   "runs in-process)")
    p.add_argument("--seed", type=int, default=0, help="seed of the k samples and of reasoning-gym tasks")
    p.add_argument("--device", default="auto", help="torch device (auto = cuda if available)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--batch-sequences", type=int, default=64, help="sequences decoded at once")
    p.add_argument("-o", "--output", default="winnow-eval.json", help="JSON file with every row and problem")
    p.set_defaults(func=_main)


def _main(args: Any) -> int:
    if args.k < 0 or (args.limit is not None and args.limit < 1):
        raise ConfigError("-k must be >= 0 and --limit >= 1")
    out = run_eval(args)
    print(f"winnow eval: {out['target']}" + (f" version {out['version']}" if out["version"] is not None else "")
          + f" ({out['decoding']['precision']}, max_new_tokens {out['decoding']['max_new_tokens']}"
          + (f", k {args.k} at temperature {out['decoding']['temperature']}" if args.k else "") + ")")
    print(format_table(out["rows"], args.k))
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0
