"""Benchmark: the learner's training step on CPU, and what chunked log-probs save, in one run.

    .venv/bin/python benchmarks/learner_step.py [--model DIR|smollm2] [--steps 3] [--quick] [--out results.json]
    winnow bench learner_step [--model DIR]

Part 1, throughput: ``Trainer.train_step`` (GRPO preset, KL to a reference model, so the step does
policy forward, reference forward, backward and AdamW) on random token batches, for the tiny test
model and, with ``--model``, a real model directory (or ``smollm2``: the embedded SmolLM2-135M,
converted once by ``winnow.models``). Reports trained tokens/s and the share of the step
spent recomputing log-probs (policy forward), in the reference forward, and in the rest (backward +
optimizer + collation).

Part 2, peak memory of the log-prob computation, on a vocabulary-heavy synthetic Qwen2 (vocab
``--vocab``, long responses), each variant in its own fresh subprocess so that the peak resident set
(``ru_maxrss``) is its own:
  ``naive``   ``log_softmax(logits.float())`` over the whole (b, t, V), entropy from it (what a
              straightforward implementation does; the baseline),
  ``logits``  the model's logits, log-softmax and entropy in row chunks (``token_logprobs_and_entropy``),
  ``hidden``  the LM head applied chunk by chunk to the hidden states (``logprobs_from_hidden``): the
              (b, t, V) logits never exist (the Trainer's default for plain heads).
The number reported is the peak RSS during one training step (``VmHWM``, reset through
``/proc/self/clear_refs`` after a warm-up step) minus the RSS just before it (same model, same
optimizer state, same batch), and the step time. Ratios are against ``naive``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch


def _random_groups(vocab: int, groups: int, n: int, prompt_len: int, response_len: int, seed: int):
    from winnow.learner.batch import GroupData, SampleData

    g = torch.Generator().manual_seed(seed)
    out = []
    for gi in range(groups):
        prompt = torch.randint(3, vocab, (prompt_len,), generator=g).tolist()
        samples = []
        for si in range(n):
            resp = torch.randint(3, vocab, (response_len,), generator=g).tolist()
            samples.append(SampleData(resp, [-3.0] * response_len, [0] * response_len, 1 + (gi + si) % 2))
        out.append(GroupData(f"p{gi}", f"r{gi}", prompt, samples))
    return out


class NaiveTrainer:
    """Factory for a Trainer whose log-probs are computed the straightforward way (the baseline)."""

    @staticmethod
    def make(*args, **kwargs):
        from winnow.learner.model import response_logits
        from winnow.learner.step import Trainer

        class _Naive(Trainer):
            def _logprobs(self, model, mb, with_entropy):
                args = (mb.input_ids, mb.attention_mask, mb.position_ids, mb.prompt_width, mb.response_width)
                with self._autocast():
                    logits = response_logits(model, *args)
                logp = torch.log_softmax(logits.float() / self.temperature, dim=-1)  # (b, t, V) fp32
                lp = logp.gather(-1, mb.targets[..., None])[..., 0]
                ent = -(logp.exp() * logp).sum(-1) if with_entropy else None
                return lp, ent

        return _Naive(*args, **kwargs)


def _trainer(model, variant: str, micro_batch_size: int, chunk: int, autocast=None):
    from winnow.learner.algo import AlgoConfig
    from winnow.learner.step import OptimConfig, Trainer

    algo = AlgoConfig.from_preset("grpo")  # kl_coef 0.001 (reference forward), entropy_coef 0.001
    optim = OptimConfig(lr=1e-6, micro_batch_size=micro_batch_size)
    if variant == "naive":
        return NaiveTrainer.make(model, algo, optim, pad_token_id=0, logprob_mode="logits")
    return Trainer(
        model,
        algo,
        optim,
        pad_token_id=0,
        logprob_mode=variant,
        logprob_chunk_size=chunk or None,
        autocast_dtype=autocast if autocast is not None else "auto",
    )


def _status_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child_memory(args) -> dict:
    """One variant in this (fresh) process: peak RSS growth over one step, after a warm-up step."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(cfg)
    trainer = _trainer(model, args.variant, args.mem_micro_batch, args.mem_chunk)
    groups = _random_groups(args.vocab, args.mem_groups, 2, 32, args.mem_response_len, seed=1)
    trainer.train_step(groups)  # warm-up: optimizer state, lazy initialisation
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak-RSS high-water mark (VmHWM), Linux >= 4.0
        f.write("5")
    before = _status_mib("VmRSS")
    t0 = time.perf_counter()
    m = trainer.train_step(groups)
    dt = time.perf_counter() - t0
    peak = _status_mib("VmHWM")
    return {
        "variant": args.variant,
        "peak_growth_mib": peak - before,
        "peak_mib": peak,
        "rss_before_mib": before,
        "step_s": dt,
        "tokens": m["tokens"],
        "loss": m["loss"],
    }


def run_memory(args) -> list[dict]:
    rows = []
    for variant in ("naive", "logits", "hidden"):
        cmd = [sys.executable, os.path.abspath(__file__), "--_child", variant]
        for k in (
            "vocab",
            "hidden",
            "mem_chunk",
            "mem_micro_batch",
            "mem_groups",
            "mem_response_len",
            "threads",
        ):
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        # a fixed mmap threshold: large buffers go back to the OS when freed, so RSS follows live memory
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"memory child {variant} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def run_throughput(
    model, name: str, args, groups: int, n: int, prompt_len: int, response_len: int, autocast=None
) -> dict:
    vocab = model.get_input_embeddings().weight.shape[0]
    trainer = _trainer(model, "auto", args.micro_batch, args.chunk, autocast)
    batch = _random_groups(vocab, groups, n, prompt_len, response_len, seed=2)
    trainer.train_step(batch)  # warm-up
    ms = [trainer.train_step(batch) for _ in range(args.steps)]
    total = statistics.median(m["time_total_s"] for m in ms)
    fwd = statistics.median(m["time_forward_s"] for m in ms)
    ref = statistics.median(m["time_ref_s"] for m in ms)
    tokens = ms[0]["tokens"]
    return {
        "model": name,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "sequences": groups * n,
        "tokens_per_seq": prompt_len + response_len,
        "trained_tokens": tokens,
        "step_s": total,
        "tokens_per_s": tokens / total,
        "forward_share": fwd / total,
        "ref_share": ref / total,
        "rest_share": 1 - (fwd + ref) / total,
        "logprob_mode": trainer.logprob_mode,
        "autocast": str(autocast).replace("torch.", "") if autocast is not None else "none",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", default=None, help="a HF model directory, hub id, or 'smollm2' (also benchmarked)"
    )
    p.add_argument(
        "--steps", type=int, default=3, help="measured steps per throughput case (after 1 warm-up)"
    )
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument(
        "--chunk", type=int, default=0, help="log-prob chunk size in rows (0 = the Trainer's auto)"
    )
    p.add_argument("--vocab", type=int, default=65536, help="vocabulary of the memory benchmark's model")
    p.add_argument("--hidden", type=int, default=128, help="hidden size of the memory benchmark's model")
    p.add_argument(
        "--mem-chunk", type=int, default=0, help="chunk size in the memory part (0 = the Trainer's auto)"
    )
    p.add_argument("--mem-micro-batch", type=int, default=4)
    p.add_argument("--mem-groups", type=int, default=2)
    p.add_argument("--mem-response-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--quick", action="store_true", help="smaller memory case and 1 measured step")
    p.add_argument(
        "--bf16", action="store_true", help="also time each model with bf16 autocast (fp32 master weights)"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the memory part")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._child:
        args.variant = args._child
        print(json.dumps(child_memory(args)))
        return 0
    if args.quick:
        args.steps, args.vocab, args.mem_response_len = 1, 32768, 256

    from winnow.learner.model import load_causal_lm
    from winnow.learner.tiny import build_tiny_model_and_tokenizer

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs", flush=True)
    results: dict = {"throughput": [], "memory": []}
    precisions = [None, torch.bfloat16] if args.bf16 else [None]
    for autocast in precisions:
        tiny, _ = build_tiny_model_and_tokenizer(seed=0)
        results["throughput"].append(
            run_throughput(tiny, "tiny (hidden 64, 2 layers)", args, 8, 4, 32, 96, autocast)
        )
    if args.model:
        path = args.model
        if path.lower().startswith("smollm2"):
            from winnow.models import resolve_model

            path = resolve_model(path)
        for autocast in precisions:
            model, _ = load_causal_lm(path, dtype="float32", device="cpu")
            name = os.path.basename(str(path).rstrip("/"))
            results["throughput"].append(run_throughput(model, name, args, 2, 2, 64, 192, autocast))
            del model

    print("\nTraining step throughput (GRPO + KL; median of measured steps)")
    print(
        f"{'model':34s} {'params':>8s} {'autocast':>9s} {'seqs x len':>11s} {'step s':>8s} {'tok/s':>9s} "
        f"{'logprob fwd':>11s} {'ref fwd':>8s} {'bwd+opt':>8s}"
    )
    for r in results["throughput"]:
        print(
            f"{r['model']:34s} {r['params_m']:7.2f}M {r['autocast']:>9s} {r['sequences']:4d} x {r['tokens_per_seq']:<4d} "
            f"{r['step_s']:8.3f} {r['tokens_per_s']:9.0f} {r['forward_share']:10.0%} {r['ref_share']:8.0%} "
            f"{r['rest_share']:8.0%}"
        )

    if args.no_memory:
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2)
        return 0
    print(
        f"\nPeak memory of one step, vocab {args.vocab}, hidden {args.hidden}, micro-batch "
        f"{args.mem_micro_batch} x {32 + args.mem_response_len} tokens, {args.mem_groups * 2} sequences "
        "(fresh process per variant)",
        flush=True,
    )
    results["memory"] = run_memory(args)
    base = next(r for r in results["memory"] if r["variant"] == "naive")
    print(f"{'variant':8s} {'peak growth MiB':>16s} {'vs naive':>9s} {'step s':>8s} {'vs naive':>9s}")
    for r in results["memory"]:
        print(
            f"{r['variant']:8s} {r['peak_growth_mib']:16.0f} {r['peak_growth_mib'] / base['peak_growth_mib']:9.2f} "
            f"{r['step_s']:8.2f} {r['step_s'] / base['step_s']:9.2f}"
        )
    (b_t, b_v) = args.mem_micro_batch * args.mem_response_len, args.vocab
    chunk = args.mem_chunk or max(16, min(8192, (1 << 24) // args.vocab))  # = Trainer's auto_chunk_size
    print(f"(one fp32 (b, t, V) tensor here = {b_t * b_v * 4 / 2**20:.0f} MiB; chunks of {chunk} rows)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
