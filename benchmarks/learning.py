"""Benchmark: winnow (``winnow up``) against a minimal synchronous loop, in held-out accuracy per wall second.

    .venv/bin/python benchmarks/learning.py [--steps 20] [--eval-every 2] [--work-dir DIR] [--out r.json]
    winnow bench learning [ARGS...]

The baseline is what a user would write instead of winnow: :func:`minimal_loop`, one process that
uses every core for each phase in turn: sample ``n`` answers per prompt with ``model.generate``
under bf16 autocast, score them with winnow's math verifier, take one SFT step on the correct
samples (RAFT), repeat. winnow is the same work run by ``winnow up`` (``winnow.up.Pipeline``:
broker, generator and learner processes, with the layout ``winnow up`` picks for this machine).
Both get the same model (SmolLM2-135M-Instruct), data (2-digit sums "What is a + b?", a, b in
10..49, in the same order), prompt format (the default chat format: system prompt, two few-shot
turns), hyper-parameters (RAFT = SFT on correct samples, token-mean, no KL or entropy term, AdamW
lr 1e-5 wd 0.01, grad clip 1.0), sampling (temperature 1, 24 new tokens), batch (8 prompts x 8
samples), number of steps and seed. This is issue 9's configuration. Layout choices that do not change
the gradient are each system's own: the loop's micro-batch (``--micro-batch`` full sequences) and
attention kernel (``--loop-attention``, default: the library's, what a user's loop gets), winnow's
micro-batches by tokens and ``numerics.attention`` (eager on CPU) from ``winnow up``'s defaults.

Evaluation is the same function for both, outside both clocks: greedy decoding of ``--eval-prompts``
fixed held-out sums (none of them in the training stream) under bf16 autocast, as the samples are
generated, scored by the same verifier. The loop evaluates its model in place (its clock paused);
winnow's published weights of the same versions are evaluated after its run (``weights.keep`` large).

Wall time is counted from the start of each system (model loading, and for winnow the broker and the
three processes, included) to the end of each optimizer step. Printed: accuracy per step for both
(accuracy per step must be no worse), wall time to reach the target accuracy (default: the loop's
final accuracy) and its ratio winnow / loop (**the goal is <= 0.8**), accuracy at equal wall time
(the shorter run's end) and its ratio, the same ratios from the first step on (start-up excluded),
seconds per step, and the load average (the 2 cores are shared with other jobs: run the two systems
back to back in one invocation, compare only ratios). A PNG plots accuracy against wall time.

Resumable: each finished system writes ``<work-dir>/<system>.json``; a rerun with the same
``--work-dir`` skips it (``--fresh`` redoes everything).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

SYSTEMS = ("loop", "winnow")


# -- the task --------------------------------------------------------------------------------------


def make_data(work: Path, size: int, eval_prompts: int, seed: int) -> tuple[Path, list[dict]]:
    """``train.jsonl`` (``size`` sums, the order both systems read) and the held-out sums (disjoint)."""
    pairs = [(a, b) for a in range(10, 50) for b in range(10, 50)]
    random.Random(seed).shuffle(pairs)
    held, rest = pairs[:eval_prompts], pairs[eval_prompts:]
    rng = random.Random(seed + 1)
    train = [rest[rng.randrange(len(rest))] for _ in range(size)]
    row = lambda a, b: {"question": f"What is {a} + {b}?", "answer": str(a + b)}  # noqa: E731
    path = work / "train.jsonl"
    path.write_text("".join(json.dumps(row(a, b)) + "\n" for a, b in train))
    return path, [row(a, b) for a, b in held]


class HeldOut:
    """Greedy accuracy on the held-out sums: the learner's own evaluator (winnow.learner.evaluate), which
    decodes with the generators' engine on a copy of the weights in the compute precision (bf16 here)."""

    def __init__(self, tokenizer: Any, rows: list[dict], max_new_tokens: int) -> None:
        from winnow.chat import ChatFormat
        from winnow.learner.evaluate import Evaluator
        from winnow.prompts import Problem

        problems = [Problem(f"heldout/{i}", r["question"], r["answer"], "math") for i, r in enumerate(rows)]
        self.evaluator = Evaluator(tokenizer, problems, chat=ChatFormat(), max_new_tokens=max_new_tokens,
                                   batch_size=len(problems))

    def __call__(self, model: Any, version: int) -> float:
        import types

        import torch

        policy = types.SimpleNamespace(model=model, compute_dtype=torch.bfloat16, version=version)
        return self.evaluator.score(self.evaluator.generate(policy))

    def close(self) -> None:
        self.evaluator.close()


# -- the baseline: a minimal synchronous loop -------------------------------------------------------


def minimal_loop(args: argparse.Namespace, model_dir: str, train: list[dict], heldout_rows: list[dict] | None,
                 train_on: str = "correct", chat: dict | None = None) -> dict:
    """Generate -> score -> SFT on the correct samples, one process, every core; returns the curve.

    ``train_on="all"``: a vanilla policy-gradient step on every sample instead (loss -r log pi, token-mean;
    the cost of a no-filter step, for benchmarks/pipeline.py's random model that is never right).
    ``heldout_rows=None``: no evaluation. ``chat``: ChatFormat fields (default: the default chat format).

    ``rows``: per step ``{"version", "wall_s"}`` (clock paused during evaluation); ``evals``:
    ``{"version", "wall_s", "accuracy"}``.
    """
    import torch

    from winnow.chat import ChatFormat, PromptFormatter
    from winnow.hf_engine import eos_token_ids
    from winnow.learner.model import load_causal_lm
    from winnow.scoring import in_process_verifier
    from winnow.verdict import Item, Status

    clock = Stopwatch()
    torch.manual_seed(args.seed)
    torch.set_num_threads(getattr(args, "loop_threads", 0) or os.cpu_count() or 1)
    # fp32 master weights, as winnow's learner; the library's default attention kernel unless --loop-attention
    model, tok = load_causal_lm(model_dir, attn_implementation=getattr(args, "loop_attention", None) or None)
    fmt = PromptFormatter(tok, ChatFormat(**(chat or {})))
    eos = set(eos_token_ids(model, tok))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "norm" not in n.lower()]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "norm" not in n.lower())]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr)
    verifier = in_process_verifier(workers=1, timeout_s=2.0)
    heldout = HeldOut(tok, heldout_rows, args.max_new_tokens) if heldout_rows else None
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    out: dict[str, Any] = {"rows": [], "evals": [], "phases": []}

    def evaluate(version: int) -> None:
        if heldout is None:
            return
        with clock.paused():
            acc = heldout(model, version)
        out["evals"].append({"version": version, "wall_s": clock.elapsed(), "accuracy": acc})
        log(f"  loop v{version}: held-out accuracy {acc:.3f} at {clock.elapsed():.0f}s")

    evaluate(0)
    G, n = args.batch_groups, args.n
    try:
        for step in range(args.steps):
            t0 = time.perf_counter()
            batch = train[step * G : (step + 1) * G]
            prompts = [fmt(r["question"]) for r in batch]
            width = max(map(len, prompts))
            ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
            mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
            model.eval()
            with torch.no_grad(), bf16():
                gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                                     top_k=0, max_new_tokens=args.max_new_tokens, num_return_sequences=n,
                                     pad_token_id=tok.pad_token_id, eos_token_id=sorted(eos), use_cache=True)
            model.train()
            responses = []
            for row in gen[:, width:].tolist():
                end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))  # keep the EOS token
                responses.append(row[:end])
            t1 = time.perf_counter()
            items = [Item(id=str(i), response=tok.decode(r, skip_special_tokens=True), gold=batch[i // n]["answer"],
                          task="math") for i, r in enumerate(responses)]
            correct = [v.status == Status.CORRECT for v in verifier.verify_batch(items)]
            t2 = time.perf_counter()
            kept = [(prompts[i // n], r, float(correct[i])) for i, r in enumerate(responses)
                    if r and (correct[i] or train_on == "all")]
            tokens = sum(len(r) for _, r, _ in kept)
            kept.sort(key=lambda k: -(len(k[0]) + len(k[1])))  # similar lengths together, as winnow
            # a careful user's habit (and winnow's): one autocast region for the step's micro-batches, so the bf16
            # casts of the weights are cached across them; each backward with autocast off, as outside a region
            with bf16():  # the region closes (its cached casts dropped) before the weights change
                for s in range(0, len(kept), args.micro_batch):
                    mb = kept[s : s + args.micro_batch]
                    L = max(len(p) + len(r) for p, r, _ in mb)
                    x = torch.full((len(mb), L), tok.pad_token_id)
                    am = torch.zeros((len(mb), L), dtype=torch.long)
                    y = torch.full((len(mb), L), -100)
                    for i, (p, r, _) in enumerate(mb):
                        x[i, : len(p) + len(r)] = torch.tensor(p + r)
                        am[i, : len(p) + len(r)] = 1
                        y[i, len(p) - 1 : len(p) + len(r) - 1] = torch.tensor(r)  # logits at t predict t+1
                    logits = model(input_ids=x, attention_mask=am).logits
                    nll = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100,
                                                            reduction="none").view(len(mb), L)
                    advantage = torch.tensor([1.0 if train_on == "correct" else a for _, _, a in mb])  # RAFT: 1
                    loss = (nll.sum(1) * advantage).sum() / tokens  # token-mean over the batch
                    with torch.autocast("cpu", enabled=False):
                        loss.backward()
            if kept:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            opt.zero_grad(set_to_none=True)
            t3 = time.perf_counter()
            out["rows"].append({"version": step + 1, "wall_s": clock.elapsed(), "reward": sum(correct) / len(correct),
                                "tokens": tokens})
            out["phases"].append({"generate_s": t1 - t0, "score_s": t2 - t1, "train_s": t3 - t2})
            log(f"  loop step {step + 1}: reward {sum(correct) / len(correct):.3f}, {tokens} tokens, generate "
                f"{t1 - t0:.1f}s score {t2 - t1:.1f}s train {t3 - t2:.1f}s")
            if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
                evaluate(step + 1)
    finally:
        verifier.close()
        if heldout is not None:
            heldout.close()
    return out


class Stopwatch:
    """Seconds since creation, not counting the time spent inside :meth:`paused`."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.excluded = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.start - self.excluded

    @contextlib.contextmanager
    def paused(self):
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.excluded += time.monotonic() - t0


# -- winnow: the same work through `winnow up` -------------------------------------------------------


def winnow_config(args: argparse.Namespace, model_dir: str, train_path: Path, bootstrap: str | None) -> dict:
    """Overrides of the task-specific fields only; the layout (threads, staleness, checkpoint and
    publication cadence) is what ``winnow up`` picks by itself."""
    sampling = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": args.max_new_tokens}
    cfg = {
        "up": {"generators": 1, "start_verifier": False, "stop_timeout_s": 60},
        "generator": {"model": model_dir, "batch_prompts": args.batch_groups, "sampling": sampling},
        "learner": {
            "model": model_dir,
            "seed": args.seed,
            "algo": {"preset": "raft", "kl_coef": 0.0, "entropy_coef": 0.0,
                     **({"max_staleness": args.max_staleness} if getattr(args, "max_staleness", None) is not None
                        else {})},
            "optim": {"lr": args.lr},  # micro-batches: winnow's own sizing (by tokens, up_default.yaml)
            "batch_groups": args.batch_groups,
            "n": args.n,
            "max_steps": args.steps,
            "sampling": sampling,
            "eval": {"every": 0},
            "weights": {"keep": args.steps + 1},
            "prompts": {"kind": "jsonl", "path": str(train_path)},
        },
    }
    if bootstrap:
        cfg["kafka"] = {"bootstrap_servers": bootstrap}
    return cfg


def run_winnow(args: argparse.Namespace, model_dir: str, train_path: Path, heldout_rows: list[dict],
               work: Path, v0_accuracy: float | None = None) -> dict:
    """One ``winnow up`` run to ``--steps``, then the held-out accuracy of its published versions."""
    import yaml

    from winnow.learner.model import load_causal_lm
    from winnow.learner.weights import version_dir
    from winnow.up import Pipeline, resolve

    run_dir = work / "winnow-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg_path = work / "winnow.yaml"
    cfg_path.write_text(yaml.safe_dump(winnow_config(args, model_dir, train_path, os.environ.get(
        "KAFKA_BOOTSTRAP_SERVERS")), sort_keys=False))
    data = resolve(str(cfg_path), [], run_dir)
    pipeline = Pipeline(data, run_dir, resume=False)
    t_start = time.time()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            pipeline.start()
        learner = pipeline.procs["learner"]
        deadline = time.monotonic() + args.run_timeout
        while learner.poll() is None:
            for name, proc in pipeline.procs.items():
                if name != "learner" and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{pipeline._tail_hint(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"winnow did not finish in {args.run_timeout:.0f}s; logs in {run_dir / 'logs'}")
            time.sleep(0.5)
        if learner.returncode != 0:
            raise RuntimeError(f"learner exited with {learner.returncode}:\n{pipeline._tail_hint('learner')}")
    finally:
        pipeline.stop_all()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = sorted((r for r in metrics if "loss" in r), key=lambda r: r["version"])
    out: dict[str, Any] = {
        "rows": [{"version": r["version"], "wall_s": r["time"] - t_start, "reward": r.get("reward_mean"),
                  "tokens": r.get("tokens")} for r in steps],
        "phases": [{k: r.get(k) for k in ("wait_s", "compute_s", "publish_s", "checkpoint_s", "time_forward_s",
                                          "time_backward_s", "time_optimizer_s", "staleness_mean", "staleness_max",
                                          "mismatch_kl")} for r in steps],
        "evals": [],
        "layout": data.get("up", {}),
    }
    for r in out["rows"]:
        log(f"  winnow step {r['version']}: reward {r['reward']:.3f} at {r['wall_s']:.0f}s")
    import torch
    from safetensors.torch import load_file

    from winnow.numerics import resolve_attention

    torch.set_num_threads(os.cpu_count() or 1)
    # the attention kernel winnow's generators sampled with (numerics.attention, "auto" in this config)
    model, tok = load_causal_lm(model_dir, attn_implementation=resolve_attention("auto", "cpu"))
    heldout = HeldOut(tok, heldout_rows, args.max_new_tokens)
    wall = {0: 0.0, **{r["version"]: r["wall_s"] for r in out["rows"]}}
    try:
        for v in eval_versions(args):
            if v:
                path = version_dir(run_dir / "weights", v) / "model.safetensors"
                if not path.exists():
                    raise RuntimeError(f"winnow published no weights for version {v} ({path})")
                model.load_state_dict(load_file(str(path)), strict=False)  # tied aliases are omitted
            if v == 0 and v0_accuracy is not None:  # the same initial weights: the loop's measurement
                acc = v0_accuracy
            else:
                acc = heldout(model, v)
            out["evals"].append({"version": v, "wall_s": wall[v], "accuracy": acc})
            log(f"  winnow v{v}: held-out accuracy {acc:.3f} at {wall[v]:.0f}s")
    finally:
        heldout.close()
    if not args.keep_weights:
        shutil.rmtree(run_dir / "weights", ignore_errors=True)
    return out


def eval_versions(args: argparse.Namespace) -> list[int]:
    return sorted({0, args.steps, *range(args.eval_every, args.steps + 1, args.eval_every)})


# -- comparison ------------------------------------------------------------------------------------


def time_to(evals: list[dict], target: float) -> float | None:
    """Wall seconds of the first evaluation at or above ``target`` (None if never)."""
    return next((e["wall_s"] for e in evals if e["accuracy"] >= target - 1e-9), None)


def accuracy_at(evals: list[dict], wall_s: float) -> float:
    """Accuracy of the last evaluation at or before ``wall_s`` (the model a user has by then)."""
    return [e for e in evals if e["wall_s"] <= wall_s + 1e-9][-1]["accuracy"]


def compare(results: dict, target: float | None) -> dict:
    loop, win = results["loop"], results["winnow"]
    target = loop["evals"][-1]["accuracy"] if target is None else target
    t_loop, t_win = time_to(loop["evals"], target), time_to(win["evals"], target)
    equal = min(loop["rows"][-1]["wall_s"], win["rows"][-1]["wall_s"])
    acc_loop, acc_win = accuracy_at(loop["evals"], equal), accuracy_at(win["evals"], equal)

    def steady(sys_: dict) -> float:  # seconds per step after the first (start-up excluded)
        r = sys_["rows"]
        return (r[-1]["wall_s"] - r[0]["wall_s"]) / max(1, len(r) - 1)

    first_loop, first_win = loop["rows"][0]["wall_s"], win["rows"][0]["wall_s"]
    shift = lambda evals, t0: [{**e, "wall_s": max(0.0, e["wall_s"] - t0)} for e in evals]  # noqa: E731
    t_loop_s = time_to(shift(loop["evals"], first_loop), target)
    t_win_s = time_to(shift(win["evals"], first_win), target)
    return {
        "target": target,
        "time_to_target_s": {"loop": t_loop, "winnow": t_win},
        "time_to_target_ratio": (t_win / t_loop) if t_loop and t_win is not None else None,
        "time_to_target_from_first_step_ratio": (t_win_s / t_loop_s) if t_loop_s and t_win_s is not None else None,
        "equal_wall_s": equal,
        "accuracy_at_equal_wall": {"loop": acc_loop, "winnow": acc_win},
        "accuracy_at_equal_wall_ratio": acc_win / acc_loop if acc_loop else None,
        "step_s": {"loop": steady(loop), "winnow": steady(win)},
        "step_s_ratio": steady(win) / steady(loop),
        "first_step_s": {"loop": first_loop, "winnow": first_win},
    }


def report(results: dict, cmp: dict) -> str:
    loop, win = results["loop"], results["winnow"]
    lines = [f"Learning: {results['model']}, 2-digit sums, RAFT, {results['args']['batch_groups']} prompts x "
             f"n={results['args']['n']}, lr {results['args']['lr']}, {results['args']['max_new_tokens']} new tokens, "
             f"{results['args']['steps']} steps; held-out greedy accuracy on {results['args']['eval_prompts']} sums "
             f"(bf16 autocast); {os.cpu_count()} CPUs"]
    for name in SYSTEMS:
        load = results[name].get("load", {})
        lines.append(f"  {name:6s} load average {load.get('before', [0])[0]:.2f} before, "
                     f"{load.get('after', [0])[0]:.2f} after; started {results[name].get('started', '?')}")
    lines.append(f"{'version':>7s} {'loop acc':>9s} {'loop s':>7s} {'winnow acc':>11s} {'winnow s':>9s}")
    wl = {e["version"]: e for e in loop["evals"]}
    ww = {e["version"]: e for e in win["evals"]}
    for v in sorted(set(wl) | set(ww)):
        a, b = wl.get(v), ww.get(v)
        lines.append(f"{v:7d} {a['accuracy'] if a else float('nan'):9.3f} {a['wall_s'] if a else float('nan'):7.0f} "
                     f"{b['accuracy'] if b else float('nan'):11.3f} {b['wall_s'] if b else float('nan'):9.0f}")
    rl = sum(r["reward"] for r in loop["rows"]) / len(loop["rows"])
    rw = sum(r["reward"] for r in win["rows"]) / len(win["rows"])
    lines.append(f"mean train reward: loop {rl:.3f}, winnow {rw:.3f}")
    tt = cmp["time_to_target_s"]
    fmt = lambda x: "never" if x is None else f"{x:.0f}s"  # noqa: E731
    ratio = cmp["time_to_target_ratio"]
    lines.append(f"time to held-out accuracy {cmp['target']:.3f}: loop {fmt(tt['loop'])}, winnow {fmt(tt['winnow'])}"
                 f" -> winnow/loop x{ratio:.2f}" if ratio is not None else
                 f"time to held-out accuracy {cmp['target']:.3f}: loop {fmt(tt['loop'])}, winnow {fmt(tt['winnow'])}")
    if cmp["time_to_target_from_first_step_ratio"] is not None:
        lines.append(f"  the same from each system's first step (start-up excluded): "
                     f"x{cmp['time_to_target_from_first_step_ratio']:.2f}")
    ae = cmp["accuracy_at_equal_wall"]
    lines.append(f"accuracy at equal wall time ({cmp['equal_wall_s']:.0f}s): loop {ae['loop']:.3f}, winnow "
                 f"{ae['winnow']:.3f}" + (f" -> winnow/loop x{cmp['accuracy_at_equal_wall_ratio']:.2f}"
                                         if cmp["accuracy_at_equal_wall_ratio"] is not None else ""))
    stal = [p.get("staleness_mean") for p in win.get("phases", []) if p.get("staleness_mean") is not None]
    if stal:
        hist = {k: sum(round(x) == k for x in stal) for k in sorted({round(x) for x in stal})}
        lines.append(f"winnow staleness (mean per step, versions): {sum(stal) / len(stal):.2f}; steps by rounded mean: "
                     + ", ".join(f"{k}: {v}" for k, v in hist.items()))
    ss, fs = cmp["step_s"], cmp["first_step_s"]
    lines.append(f"seconds per step after the first: loop {ss['loop']:.1f}, winnow {ss['winnow']:.1f} -> "
                 f"x{cmp['step_s_ratio']:.2f}; start to first step: loop {fs['loop']:.0f}s, winnow {fs['winnow']:.0f}s")
    return "\n".join(lines)


def plot(results: dict, cmp: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, style in (("loop", "o--"), ("winnow", "s-")):
        ev = results[name]["evals"]
        ax.plot([e["wall_s"] for e in ev], [e["accuracy"] for e in ev], style, drawstyle="steps-post",
                label=f"{'minimal synchronous loop' if name == 'loop' else 'winnow up'}")
    ax.axhline(cmp["target"], color="grey", lw=0.8, ls=":", label=f"target {cmp['target']:.2f}")
    ax.set_xlabel("wall time (s, from start)")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_title(f"{results['model']}: 2-digit sums, RAFT ({os.cpu_count()} CPU cores)", fontsize=10)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_step_ratio(args: argparse.Namespace, model_dir: str, repeats: int = 2) -> dict:
    """``--train-step``: one RAFT step of winnow's Trainer on a synthetic batch shaped like this task's
    (``--batch-groups`` prompts x ``--n`` samples, half of them correct, the default chat format), with
    ``optim.share_prompt`` off and on, alternated ``repeats`` times on the same model; seconds per step."""
    import torch

    from winnow.chat import ChatFormat, PromptFormatter
    from winnow.learner.algo import AlgoConfig
    from winnow.learner.batch import GroupData, SampleData
    from winnow.learner.config import OptimConfig
    from winnow.learner.model import load_causal_lm
    from winnow.learner.step import Trainer
    from winnow.verdict import Status

    model, tok = load_causal_lm(model_dir)
    fmt = PromptFormatter(tok, ChatFormat())
    rng = random.Random(args.seed)
    groups = []
    for g in range(args.batch_groups):
        a, b = rng.randint(10, 49), rng.randint(10, 49)
        prompt = fmt(f"What is {a} + {b}?")
        response = tok.encode(f"{a} + {b} = {a + b}. \\boxed{{{a + b}}}") + [tok.eos_token_id]
        samples = [SampleData(response_token_ids=response, behaviour_logprobs=[-0.1] * len(response),
                              policy_versions=[0] * len(response),
                              status=int(Status.CORRECT if i % 2 == 0 else Status.WRONG)) for i in range(args.n)]
        groups.append(GroupData(prompt_id=str(g), request_id=str(g), prompt_token_ids=prompt, samples=samples))
    times: dict[str, list[float]] = {"plain": [], "share_prompt": []}
    for _ in range(repeats):
        for share in (False, True):
            trainer = Trainer(model, AlgoConfig.from_preset("raft", kl_coef=0.0, entropy_coef=0.0),
                              OptimConfig(lr=args.lr, micro_batch_size=args.micro_batch, share_prompt=share),
                              pad_token_id=tok.pad_token_id, autocast_dtype=torch.bfloat16)
            t0 = time.perf_counter()
            trainer.train_step(groups)
            times["share_prompt" if share else "plain"].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    print(f"RAFT train step, {args.batch_groups} prompts x n={args.n} (half correct), prompt {len(groups[0].prompt_token_ids)} "
          f"tokens, response {len(groups[0].samples[0].response_token_ids)}; {torch.get_num_threads()} threads, load "
          f"average {os.getloadavg()[0]:.1f}: plain {best['plain']:.1f}s, share_prompt {best['share_prompt']:.1f}s "
          f"(best of {repeats}) -> x{best['plain'] / best['share_prompt']:.2f} faster")
    return {"times": times, "best": best}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/learning.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="HF model directory or 'smollm2-135m'")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=2, help="evaluate every this many versions")
    p.add_argument("--eval-prompts", type=int, default=32)
    p.add_argument("--batch-groups", type=int, default=8)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--micro-batch", type=int, default=8, help="the loop's sequences per forward/backward")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loop-threads", type=int, default=0,
                   help="torch threads of the loop (0 = every core, what a user's loop gets; 1 is kinder to a "
                   "machine that other jobs load)")
    p.add_argument("--loop-attention", default=None,
                   help="the loop's transformers attention kernel (default: the library's, what a user's loop "
                   "gets; 'eager' is what winnow picks on CPU: a sensitivity check)")
    p.add_argument("--max-staleness", type=int, default=None,
                   help="winnow's algo.max_staleness (default: winnow up's, 1); the loop is synchronous")
    p.add_argument("--target", type=float, default=None, help="target accuracy (default: the loop's final one)")
    p.add_argument("--order", default="loop,winnow", help="which systems to run, in this order")
    p.add_argument("--work-dir", default="runs/bench-learning", help="results (resumable) and the run directory")
    p.add_argument("--fresh", action="store_true", help="ignore results already in --work-dir")
    p.add_argument("--keep-weights", action="store_true", help="keep winnow's published weights")
    p.add_argument("--reps", type=int, default=1,
                   help="paired repetitions (seed + r, the order alternated, each in <work-dir>/rep<r>); prints medians "
                        "and spread, writes <work-dir>/summary.json (or --out)")
    p.add_argument("--run-timeout", type=float, default=3600.0)
    p.add_argument("--plot", default=None, help="PNG path (default: <work-dir>/learning.png)")
    p.add_argument("--out", default=None, help="write all results as JSON here")
    p.add_argument("--train-step", action="store_true",
                   help="only time winnow's RAFT step with optim.share_prompt off and on (a synthetic batch)")
    args = p.parse_args(argv)
    order = [s.strip() for s in args.order.split(",") if s.strip()]
    if not order or set(order) - set(SYSTEMS):
        p.error(f"--order: systems among {SYSTEMS}")
    for name in ("aiokafka", "winnow.kafka", "winnow.brokers", "winnow.up", "httpx", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)

    from winnow.models import resolve_model

    model_dir = resolve_model(args.model)
    if args.train_step:
        res = train_step_ratio(args, model_dir)
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
        return 0
    if args.reps > 1:  # paired repetitions: seed + r, the order alternated, each in <work-dir>/rep<r>
        runs = []
        for r in range(args.reps):
            rep = argparse.Namespace(**{**vars(args), "seed": args.seed + r, "work_dir": str(Path(args.work_dir) / f"rep{r}"),
                                        "plot": None, "out": None})
            runs.append(run_once(rep, model_dir, order if r % 2 == 0 else order[::-1]))
        summary = summarize([x for x in runs if x is not None])
        print(report_reps(summary))
        out = Path(args.out) if args.out else Path(args.work_dir) / "summary.json"
        out.write_text(json.dumps(summary, indent=1))
        print(f"summary: {out}")
        return 0
    run_once(args, model_dir, order)
    return 0


def run_once(args: argparse.Namespace, model_dir: str, order: list[str]) -> dict | None:
    """One paired run of the systems in ``order`` in ``args.work_dir`` (resumable per system); the results with their
    comparison, or None when not both systems ran."""
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    train_path, heldout_rows = make_data(work, size=args.steps * args.batch_groups * 4, eval_prompts=args.eval_prompts,
                                         seed=args.seed)
    train = [json.loads(line) for line in train_path.read_text().splitlines()]
    key = {k: getattr(args, k) for k in ("model", "steps", "eval_every", "eval_prompts", "batch_groups", "n", "lr",
                                         "max_new_tokens", "seed")}
    loop_key = {**key, "micro_batch": args.micro_batch, "autocast_region": "step"}  # the loop's own layout
    if args.max_staleness is not None:
        key = {**key, "max_staleness": args.max_staleness}
    if args.loop_threads:
        loop_key["loop_threads"] = args.loop_threads
    if args.loop_attention:
        loop_key["loop_attention"] = args.loop_attention
    keys = {"loop": loop_key, "winnow": key}
    results: dict[str, Any] = {"model": os.path.basename(str(args.model).rstrip("/")), "args": loop_key}
    for name in order:
        path = work / f"{name}.json"
        if path.exists() and not args.fresh:
            saved = json.loads(path.read_text())
            if saved.get("args") == keys[name]:
                log(f"{name}: reusing {path}")
                results[name] = saved
                continue
        log(f"{name}: {args.steps} steps ...")
        load_before = os.getloadavg()
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        if name == "loop":
            res = minimal_loop(args, model_dir, train, heldout_rows)
        else:
            v0 = results["loop"]["evals"][0]["accuracy"] if "loop" in results else None
            res = run_winnow(args, model_dir, train_path, heldout_rows, work, v0)
        res.update(args=keys[name], started=started, load={"before": load_before, "after": os.getloadavg()})
        path.write_text(json.dumps(res, indent=1))
        results[name] = res
    if not all(s in results for s in SYSTEMS):
        log("run both systems (--order loop,winnow) for the comparison")
        return None
    cmp = compare(results, args.target)
    results["comparison"] = cmp
    print(report(results, cmp))
    png = Path(args.plot) if args.plot else work / "learning.png"
    plot(results, cmp, png)
    print(f"plot: {png}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results


def summarize(runs: list[dict]) -> dict:
    """Median, min and max over paired repetitions of each comparison figure (None where a run never reached the
    target), with every repetition's values."""
    import statistics

    def spread(values: list) -> dict:
        vals = [v for v in values if v is not None]
        return {"median": statistics.median(vals) if vals else None, "min": min(vals, default=None),
                "max": max(vals, default=None), "values": values}

    figures = {
        "time_to_target_s.loop": [r["comparison"]["time_to_target_s"]["loop"] for r in runs],
        "time_to_target_s.winnow": [r["comparison"]["time_to_target_s"]["winnow"] for r in runs],
        "time_to_target_ratio": [r["comparison"]["time_to_target_ratio"] for r in runs],
        "step_s.loop": [r["comparison"]["step_s"]["loop"] for r in runs],
        "step_s.winnow": [r["comparison"]["step_s"]["winnow"] for r in runs],
        "step_s_ratio": [r["comparison"]["step_s_ratio"] for r in runs],
        "wall_s.loop": [r["loop"]["rows"][-1]["wall_s"] for r in runs],
        "wall_s.winnow": [r["winnow"]["rows"][-1]["wall_s"] for r in runs],
        "wall_ratio": [r["winnow"]["rows"][-1]["wall_s"] / r["loop"]["rows"][-1]["wall_s"] for r in runs],
        "final_accuracy.loop": [r["loop"]["evals"][-1]["accuracy"] for r in runs],
        "final_accuracy.winnow": [r["winnow"]["evals"][-1]["accuracy"] for r in runs],
        "target": [r["comparison"]["target"] for r in runs],
    }
    return {"reps": len(runs), "seeds": [r["args"]["seed"] for r in runs],
            "figures": {k: spread(v) for k, v in figures.items()}}


def report_reps(summary: dict) -> str:
    f = summary["figures"]
    fmt = lambda x, d=2: "-" if x is None else f"{x:.{d}f}"  # noqa: E731
    lines = [f"{summary['reps']} paired repetitions (seeds {summary['seeds']}): median [min, max]; per repetition"]
    for k, v in f.items():
        d = 3 if "accuracy" in k or k == "target" else 2 if "ratio" in k else 1
        lines.append(f"  {k:26s} {fmt(v['median'], d):>8s} [{fmt(v['min'], d)}, {fmt(v['max'], d)}]   "
                     + ", ".join(fmt(x, d) for x in v["values"]))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
