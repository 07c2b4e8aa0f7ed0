"""GPU check, step 2: trained tokens/s and peak memory of ``Trainer.train_step`` (the learner) in bf16.

    python benchmarks/gpu/learner_speed.py --out DIR [--dry-run] [--model DIR] [--variants hidden,logits,naive]

The model is a random Qwen2 with Qwen2.5-0.5B's shapes (494M parameters, vocabulary 151,936), or
``--model DIR``, loaded the way the learner loads it on a GPU: fp32 master weights and AdamW state with
bf16 autocast (``learner.dtype: auto``; ``--master bf16``: bf16 parameters, the explicit opt-in). A batch is ``--groups``
groups of ``--n`` samples of ``--prompt-len + --response-len`` tokens (random ids, half the groups
rewarded), trained with the GRPO preset without KL (no reference forward; prime-rl's number has none
either), ``--micro-batch`` sequences per micro-batch: by default 4 x 1,024 = **4,096-token
micro-batches**, 8 of them per optimizer step. After ``--warmup`` steps, ``--steps`` steps are timed.

Variants (each on a freshly built model and optimizer, with peak memory reset):
  ``hidden``  the learner's default: the LM head applied chunk by chunk to the hidden states
              (``logprobs_from_hidden``), the (b, t, V) logits never exist;
  ``logits``  the model's logits, log-softmax/entropy in row chunks (``token_logprobs_and_entropy``);
  ``naive``   no chunking: ``log_softmax(logits.float())`` over the whole (b, t, V) (the baseline).

Reported per variant: step seconds (median), trained (response) tokens/s, all tokens/s (prompt +
response: the unit prime-rl reports, ~11.9k tokens/s for a 0.6B model on one H100), peak GPU memory
(``torch.cuda.max_memory_allocated``) and its growth over the memory held before the step (model +
optimizer state); ratios against ``naive``. On CPU (``--dry-run``: tiny model, 2 x 64-token
micro-batches) the memory is the process's peak RSS.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import (  # noqa: E402
    QWEN2_0_5B,
    QWEN2_1_5B,
    TINY,
    describe_real_model,
    env_info,
    peak_rss_mib,
    read_matmul_tflops,
    train_flops_per_token,
    write_json,
)

SIZES = {"0.5b": QWEN2_0_5B, "1.5b": QWEN2_1_5B}

STEP = "1_learner"
PRIME_RL_ANCHOR = {"tokens_per_s": 11_900, "model": "Qwen3-0.6B", "gpu": "1x H100", "source": "prime-rl README"}


def build_model(args, dev: torch.device, dtype: torch.dtype, arch=None):
    """The model under test on ``dev`` in ``dtype`` (a fresh random Qwen2 unless ``--model``)."""
    if args.model:
        from winnow.learner.model import load_causal_lm

        model, _ = load_causal_lm(args.model, dtype=dtype, device=dev)
        return model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    arch = arch or (TINY if args.dry_run else QWEN2_0_5B)
    torch.manual_seed(0)
    with torch.device(dev):
        model = Qwen2ForCausalLM(Qwen2Config(**arch, use_cache=False))
    return model.to(dtype)


def random_groups(vocab: int, groups: int, n: int, prompt_len: int, response_len: int, seed: int = 0):
    """``groups`` groups of ``n`` samples of random ids; statuses alternate so GRPO's advantages are non-zero."""
    from winnow.learner.batch import GroupData, SampleData

    g = torch.Generator().manual_seed(seed)
    out = []
    for gi in range(groups):
        prompt = torch.randint(3, vocab, (prompt_len,), generator=g).tolist()
        samples = [
            SampleData(torch.randint(3, vocab, (response_len,), generator=g).tolist(), [-11.0] * response_len,
                       [0] * response_len, 1 + (gi + si) % 2)
            for si in range(n)
        ]
        out.append(GroupData(f"p{gi}", f"r{gi}", prompt, samples))
    return out


def make_trainer(model, variant: str, micro_batch: int, autocast, checkpointing: bool = False):
    from winnow.learner.algo import AlgoConfig
    from winnow.learner.model import response_logits
    from winnow.learner.step import OptimConfig, Trainer

    algo = AlgoConfig.from_preset("grpo", kl_coef=0.0)
    optim = OptimConfig(lr=1e-6, micro_batch_size=micro_batch, gradient_checkpointing=checkpointing)
    kw = dict(pad_token_id=0, ref_model=None, autocast_dtype=autocast)
    if variant != "naive":
        return Trainer(model, algo, optim, logprob_mode=variant, **kw)

    class NaiveTrainer(Trainer):
        """Log-probs the straightforward way: the whole (b, t, V) log-softmax in fp32 (the baseline)."""

        def _logprobs(self, model, mb, with_entropy):
            args = (mb.input_ids, mb.attention_mask, mb.position_ids, mb.prompt_width, mb.response_width)
            with self._autocast():
                logits = response_logits(model, *args)
            logp = torch.log_softmax(logits.float() / self.temperature, dim=-1)  # (b, t, V)
            lp = logp.gather(-1, mb.targets[..., None])[..., 0]
            return lp, (-(logp.exp() * logp).sum(-1) if with_entropy else None)

    return NaiveTrainer(model, algo, optim, logprob_mode="logits", **kw)


def run_variant(args, variant: str, dev: torch.device, size: str = "0.5b", checkpointing: bool = False,
                matmul_tflops: float | None = None) -> dict[str, Any]:
    dtype = torch.float32 if (args.master == "fp32" or dev.type == "cpu") else torch.bfloat16
    autocast = torch.bfloat16 if (dev.type == "cuda" and dtype == torch.float32) else None
    arch = TINY if args.dry_run else SIZES[size]
    model = build_model(args, dev, dtype, arch)
    trainer = make_trainer(model, variant, args.micro_batch, autocast, checkpointing)
    vocab = model.get_input_embeddings().weight.shape[0]
    groups = random_groups(vocab, args.groups, args.n, args.prompt_len, args.response_len)
    for _ in range(args.warmup):
        trainer.train_step(groups)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    ms = []
    for _ in range(args.steps):
        ms.append(trainer.train_step(groups))
    step_s = statistics.median(m["time_total_s"] for m in ms)
    seqs = args.groups * args.n
    seq_len = args.prompt_len + args.response_len
    flops = train_flops_per_token(arch, seq_len) * seqs * seq_len / step_s
    res: dict[str, Any] = {
        "variant": variant,
        "size": size,
        "checkpointing": checkpointing,
        "model_tflops": round(flops / 1e12, 2),
        "mfu_vs_measured_matmul": round(flops / 1e12 / matmul_tflops, 4) if matmul_tflops else None,
        "logprob_mode": trainer.logprob_mode,
        "logprob_chunk_size": trainer.logprob_chunk_size,
        "params_dtype": str(dtype).replace("torch.", ""),
        "autocast": str(autocast).replace("torch.", "") if autocast else "none",
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "sequences": seqs,
        "micro_batch_tokens": args.micro_batch * (args.prompt_len + args.response_len),
        "micro_batches_per_step": -(-seqs // args.micro_batch),
        "step_s": round(step_s, 4),
        "step_s_all": [round(m["time_total_s"], 4) for m in ms],
        "trained_tokens": ms[0]["tokens"],
        "trained_tokens_per_s": round(ms[0]["tokens"] / step_s, 1),
        "all_tokens_per_s": round(seqs * (args.prompt_len + args.response_len) / step_s, 1),
        "forward_share": round(statistics.median(m["time_forward_s"] / m["time_total_s"] for m in ms), 3),
        "loss": ms[-1]["loss"],
        "finite": all(torch.isfinite(torch.tensor(m["loss"])) for m in ms),
    }
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        res.update(peak_mem_gib=round(peak / 2**30, 2), peak_growth_gib=round((peak - before) / 2**30, 2),
                   held_before_step_gib=round(before / 2**30, 2))
    else:
        res["peak_rss_mib_process"] = round(peak_rss_mib(), 1)
    del trainer, model
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check_out")
    p.add_argument("--dry-run", action="store_true", help="tiny model on CPU, 1 timed step")
    p.add_argument("--model", default=None, help="a real model directory (default: a random 0.5B-class Qwen2)")
    p.add_argument("--variants", default="hidden,logits,naive")
    p.add_argument("--sizes", default="0.5b", help="comma list of 0.5b, 1.5b (random Qwen2 shapes)")
    p.add_argument("--checkpointing", default="off", help="comma list of off, on (activation checkpointing)")
    p.add_argument("--plan", default=None,
                   help="explicit runs SIZE:VARIANT:CKPT,... (overrides --sizes/--variants/--checkpointing)")
    p.add_argument("--master", choices=("bf16", "fp32"), default="fp32",
                   help="bf16 parameters (the learner's GPU default) or fp32 + bf16 autocast")
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--response-len", type=int, default=768)
    p.add_argument("--micro-batch", type=int, default=4, help="sequences per micro-batch (4 x 1024 = 4k tokens)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    if args.dry_run:
        args.groups, args.n, args.prompt_len, args.response_len, args.micro_batch = 2, 2, 16, 48, 2
        args.warmup, args.steps = 1, 1
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    result: dict[str, Any] = {"step": STEP, "env": env_info(), "dry_run": args.dry_run, "args": vars(args),
                              "device": str(dev), "anchor": PRIME_RL_ANCHOR}
    result["model"] = describe_real_model(args.model) if args.model else {
        "kind": "random Qwen2 (Qwen2.5-0.5B shapes)" if not args.dry_run else "random tiny Qwen2",
        "real_model": False, "arch": TINY if args.dry_run else QWEN2_0_5B}
    rows = []
    try:
        matmul = read_matmul_tflops(args.out)
        result["matmul_bf16_tflops"] = matmul
        if args.plan:
            plan = [tuple(x.split(":")) for x in args.plan.split(",") if x.strip()]
        else:
            plan = [(s_, v, c) for s_ in args.sizes.split(",") for c in args.checkpointing.split(",")
                    for v in args.variants.split(",")]
        for size, variant, ckpt in plan:
            t0 = time.perf_counter()
            try:
                rows.append({**run_variant(args, variant, dev, size, ckpt == "on", matmul),
                             "wall_s": round(time.perf_counter() - t0, 1)})
            except torch.OutOfMemoryError as e:  # the naive path can run out of memory: that is a result
                rows.append({"variant": variant, "size": size, "checkpointing": ckpt == "on", "oom": str(e)[:300]})
                gc.collect()
                torch.cuda.empty_cache()
            print(rows[-1], flush=True)
        for r in rows:
            base = next((b for b in rows if b["variant"] == "naive" and "step_s" in b
                         and b.get("size") == r.get("size") and b.get("checkpointing") == r.get("checkpointing")), None)
            if base and "step_s" in r:
                r["speed_vs_naive"] = round(base["step_s"] / r["step_s"], 3)
                if "peak_growth_gib" in r and base.get("peak_growth_gib"):
                    r["peak_growth_vs_naive"] = round(r["peak_growth_gib"] / base["peak_growth_gib"], 3)
        for r in rows:
            if "all_tokens_per_s" in r:
                r["all_tokens_per_s_vs_prime_rl_anchor"] = round(r["all_tokens_per_s"] / PRIME_RL_ANCHOR["tokens_per_s"], 3)
        result.update(status="ok", variants=rows,
                      **{"pass": {"all_finite": all(r.get("finite", False) for r in rows if "step_s" in r)}})
    except Exception as e:
        result.update(status="error", variants=rows, error=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exc()[-4000:])
        write_json(args.out, STEP, result)
        return 1
    write_json(args.out, STEP, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
