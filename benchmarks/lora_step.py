"""Benchmark: LoRA vs full fine-tuning in the learner, on the default run's shape (issue 28 item 1).

    nice .venv/bin/python benchmarks/lora_step.py [--model smollm2-135m] [--steps 2] [--kl 0] [--out FILE.json]
    winnow bench lora_step [...]

Each variant runs in its own fresh process (so its peak resident set is its own) and builds the learner exactly as
``winnow learner run`` does (``build_trainer`` over a ``LearnerConfig``: ``winnow up``'s default learner section, RAFT,
bf16 compute over fp32 master weights, ``share_prompt``, ``micro_batch_tokens`` 3072), then:

- trains one warm-up step and ``--steps`` measured steps on random batches of 8 groups x 8 samples (64-token
  prompts, 24-token responses, half of them correct): trained tokens/s = response tokens trained / step time;
- peak memory: ``VmHWM`` over the measured steps (reset through ``/proc/self/clear_refs`` after the warm-up), and the
  resident set before the first step (model + optimizer state allocated lazily by AdamW shows up in the peak);
- published bytes per version: ``trainer.save_weights`` in bf16 (what ``winnow up`` publishes) -> the file's size.

``--kl 0.05``: GRPO-style KL to the reference (full fine-tuning keeps a frozen copy; LoRA runs the base with the
adapters off).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _groups(vocab: int, seed: int):
    import torch

    from winnow.learner.batch import GroupData, SampleData

    g = torch.Generator().manual_seed(seed)
    out = []
    for gi in range(8):
        prompt = torch.randint(3, vocab, (64,), generator=g).tolist()
        samples = [SampleData(torch.randint(3, vocab, (24,), generator=g).tolist(), [-3.0] * 24, [0] * 24,
                              1 + (gi + si) % 2) for si in range(8)]
        out.append(GroupData(f"p{gi}", f"r{gi}", prompt, samples))
    return out


def child(variant: str, model: str, steps: int, kl: float) -> dict:
    import torch

    from winnow.learner.config import LearnerConfig
    from winnow.learner.model import build_trainer

    learner = {"model": model, "device": "cpu", "numerics": {"precision": "bfloat16"},
               "algo": {"preset": "raft", "kl_coef": kl}, "optim": {"lr": 1e-5, "micro_batch_size": 64,
                                                                    "micro_batch_tokens": 3072, "share_prompt": True}}
    if variant == "lora":
        learner["lora"] = {"rank": 16, "alpha": 32, "target_modules": "all-linear"}
        learner["optim"]["lr"] = 1e-4
    trainer, tok = build_trainer(LearnerConfig(**learner))
    vocab = trainer.model.get_output_embeddings().weight.shape[0]
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    rss_before = _status("VmRSS")
    trainer.train_step(_groups(vocab, 0))  # warm-up (AdamW allocates its moments here)
    Path("/proc/self/clear_refs").write_text("5")
    rss_after_warmup = _status("VmRSS")
    times, tokens = [], 0
    for s in range(steps):
        t0 = time.perf_counter()
        r = trainer.train_step(_groups(vocab, 1 + s))
        times.append(time.perf_counter() - t0)
        tokens += int(r.metrics["tokens"])
    peak = _status("VmHWM")
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        name = getattr(trainer, "weights_file", "model.safetensors")
        trainer.save_weights(Path(d) / "v1" / name, dtype=torch.bfloat16)
        publish_s = time.perf_counter() - t0
        published = sum(f.stat().st_size for f in (Path(d) / "v1").iterdir())
        files = sorted(f.name for f in (Path(d) / "v1").iterdir())
    return {"variant": variant, "kl_coef": kl, "trainable_params": trainable,
            "params": sum(p.numel() for p in trainer.model.parameters()),
            "reference": type(trainer.ref_model).__name__ if trainer.ref_model is not None else None,
            "step_s": times, "tokens_trained": tokens, "tokens_per_s": tokens / sum(times),
            "rss_before_mb": rss_before / 2**20, "rss_after_warmup_mb": rss_after_warmup / 2**20,
            "peak_rss_mb": peak / 2**20, "published_bytes": published, "published_files": files,
            "publish_s": publish_s, "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--kl", type=float, default=0.0)
    p.add_argument("--variants", default="full,lora")
    p.add_argument("--out", default=None)
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._child:
        print(json.dumps(child(a._child, a.model, a.steps, a.kl)))
        return 0
    results = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "loadavg_start": Path("/proc/loadavg").read_text().split()[:3], "runs": []}
    for v in a.variants.split(","):
        out = subprocess.run([sys.executable, __file__, "--_child", v, "--model", a.model, "--steps", str(a.steps),
                              "--kl", str(a.kl)], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
        results["runs"].append(r)
        print(f"{v:5s} kl={a.kl:g}: {r['tokens_per_s']:.0f} trained tok/s, peak RSS {r['peak_rss_mb']:.0f} MiB, "
              f"published {r['published_bytes'] / 2**20:.2f} MiB {r['published_files']}, "
              f"{r['trainable_params'] / 1e6:.2f}M trainable, load {r['loadavg_after']}", flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
