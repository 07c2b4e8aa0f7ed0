"""GPU check, steps 0, 2, 3 and 5 (``scripts/gpu_check.sh``): the environment and the matmul rate, the transformers
engine's sampling speed, the sampler-vs-learner mismatch, publish + reload of 1 GB of weights.

    python benchmarks/gpu/engine_checks.py STEP --out DIR [--dry-run]      STEP: env | sampling | mismatch | publish

``env`` (``0_env.json``): versions, the GPU, and the **measured** bf16 matmul rate (8192^3, mean of 10 after 3
  warm-ups; 512^3 on a dry run): the denominator of every MFU in the check (``1_learner``).
``sampling`` (``2_sampling.json``): :class:`winnow.hf_engine.HFEngine` on a random Qwen2 with Qwen2.5-0.5B's shapes
  in bf16, ``--batches`` 32,128,512 sequences (prompts x n = 4), 64-token prompts, 128 new tokens (a random model
  rarely stops early): generated tokens/s per batch size.
``mismatch`` (``3_mismatch.json``): the engine samples in bf16 and reports behaviour log-probs ``mu``; the learner's
  view ``pi`` is a forward of the fp32 master weights under bf16 autocast (``learner.dtype: auto``) with the
  temperature applied and **no** top-k/top-p (what learner/step.py computes). Reported per sampling setting:
  ``learner_view`` (mu vs pi as the learner sees them: the mismatch_kl it logs) and ``same_processing`` (mu vs
  pi processed with the same top-k/top-p: kernels only). Untruncated (temperature 1) the two are equal; truncated
  (0.7, top-k 50, top-p 0.9) the first adds the truncation term -E[log Z_kept] (docs/generator.md).
``publish`` (``5_publish.json``): a ~1 GB bf16 state dict (Qwen2.5-0.5B shapes: 494M parameters, 0.99 GB) written
  by the learner's ``save_state_dict`` (atomic, sha256), then the sha256 check and ``HFEngine.load_weights`` the
  generator runs: seconds each.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import QWEN2_0_5B, TINY, build_model_dir, env_info, write_json  # noqa: E402

STEPS = {"env": "0_env", "sampling": "2_sampling", "mismatch": "3_mismatch", "publish": "5_publish"}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(dev: torch.device, n: int, reps: int = 10) -> float:
    """bf16 (n x n) @ (n x n) on random data: TFLOP/s, mean of ``reps`` after 3 warm-ups."""
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(dev)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def step_env(args, dev, work) -> dict[str, Any]:
    n = 512 if args.dry_run else 8192
    return {"matmul_bf16_tflops": round(matmul_tflops(dev, n), 2), "matmul_n": n}


def _engine(model_dir: str, dev, max_batch: int):
    from winnow.hf_engine import HFEngine

    return HFEngine.from_pretrained(model_dir, device=str(dev), dtype="bfloat16", max_batch_sequences=max_batch)


def step_sampling(args, dev, work) -> dict[str, Any]:
    from winnow.sampling import SamplingConfig

    model = build_model_dir(work / "model", TINY if args.dry_run else QWEN2_0_5B, init_device=dev)
    batches = [int(b) for b in args.batches.split(",")]
    new = 8 if args.dry_run else 128
    eng = _engine(str(work / "model"), dev, max(batches))
    g = torch.Generator().manual_seed(0)
    rows = []
    for b in batches:
        prompts = [torch.randint(3, 300, (64,), generator=g).tolist() for _ in range(max(1, b // 4))]
        s = SamplingConfig(max_new_tokens=new, seed=1)
        eng.generate(prompts[:1], 1, SamplingConfig(max_new_tokens=2, seed=0))  # warm-up
        sync(dev)
        t0 = time.perf_counter()
        out = eng.generate(prompts, 4, s)
        sync(dev)
        dt = time.perf_counter() - t0
        tokens = sum(len(c.token_ids) for grp in out for c in grp)
        rows.append({"batch_sequences": len(prompts) * 4, "new_tokens": tokens, "seconds": round(dt, 3),
                     "tokens_per_s": round(tokens / dt, 1)})
        print(rows[-1], flush=True)
    return {"model": model, "rows": rows}


def step_mismatch(args, dev, work) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    from winnow.learner.losses import mismatch_stats
    from winnow.sampling import SamplingConfig, process_logprobs

    model = build_model_dir(work / "model", TINY if args.dry_run else QWEN2_0_5B, init_device=dev)
    eng = _engine(str(work / "model"), dev, 256)
    learner = AutoModelForCausalLM.from_pretrained(str(work / "model"), dtype=torch.float32).to(dev).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 300, (32,), generator=g).tolist() for _ in range(4 if args.dry_run else 16)]
    settings = {"t1": SamplingConfig(max_new_tokens=16 if args.dry_run else 128, seed=1),
                "t0.7_k50_p0.9": SamplingConfig(max_new_tokens=16 if args.dry_run else 128, seed=2, temperature=0.7,
                                                top_k=50, top_p=0.9)}
    res: dict[str, Any] = {"model": model}
    for name, s in settings.items():
        out = eng.generate(prompts, 4, s)
        mu, pi_learner, pi_same = [], [], []
        for prompt, grp in zip(prompts, out, strict=True):
            for c in grp:
                if not c.token_ids:
                    continue
                ids = torch.tensor([prompt + c.token_ids], device=dev)
                with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
                    logits = learner(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
                tok = torch.tensor(c.token_ids, device=dev)[:, None]
                pi_learner.append(process_logprobs(logits, s.temperature, 0, 1.0).gather(-1, tok)[:, 0].cpu())
                pi_same.append(process_logprobs(logits, s.temperature, s.top_k, s.top_p).gather(-1, tok)[:, 0].cpu())
                mu.append(torch.tensor(c.logprobs, dtype=torch.float32))
        m = torch.cat(mu)
        row: dict[str, Any] = {"tokens": int(m.numel())}
        for view, pis in (("learner_view", pi_learner), ("same_processing", pi_same)):
            p = torch.cat(pis)
            finite = torch.isfinite(p) & torch.isfinite(m)
            st = mismatch_stats(p[None], m[None], finite[None].float())
            row[view] = {"mismatch_kl": float(st["mismatch_kl"]), "non_finite": int((~finite).sum()),
                         "mean_log_ratio": float((p - m)[finite].mean()),
                         "max_abs_diff": float((p - m)[finite].abs().max())}
        res[name] = row
        print(name, row, flush=True)
    return res


def step_publish(args, dev, work) -> dict[str, Any]:
    from winnow.learner.step import save_state_dict
    from winnow.weight_store import sha256_file

    arch = TINY if args.dry_run else QWEN2_0_5B
    model = build_model_dir(work / "model", arch, init_device=dev)
    eng = _engine(str(work / "model"), dev, 8)
    state = {k: v.detach() for k, v in eng.model.state_dict().items() if k != "lm_head.weight"}
    path = work / "v1" / "model.safetensors"
    t0 = time.perf_counter()
    sha = save_state_dict(state, path, dtype=torch.bfloat16, metadata={"version": "1"})
    publish_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    digest = sha256_file(path)  # what a generator does before loading
    sha_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    eng.load_weights(str(path), 1)
    sync(dev)
    load_s = time.perf_counter() - t0
    return {"model": model, "file_gb": round(path.stat().st_size / 1e9, 3), "publish_s": round(publish_s, 3),
            "sha256_s": round(sha_s, 3), "load_weights_s": round(load_s, 3),
            "publish_plus_reload_s": round(publish_s + sha_s + load_s, 3),
            "pass": {"sha256_equal": digest == sha, "version": eng.version == 1}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=sorted(STEPS))
    p.add_argument("--out", default="gpu_check_out")
    p.add_argument("--dry-run", action="store_true", help="tiny model on CPU")
    p.add_argument("--batches", default="32,128,512")
    args = p.parse_args(argv)
    if args.dry_run:
        args.batches = "4,8"
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    name = STEPS[args.step]
    result: dict[str, Any] = {"step": name, "env": env_info(), "dry_run": args.dry_run, "device": str(dev)}
    work = Path(tempfile.mkdtemp(prefix=f"winnow-gpu-{args.step}-"))
    t0 = time.perf_counter()
    try:
        result.update(globals()[f"step_{args.step}"](args, dev, work))
        result["status"] = "ok"
    except Exception as e:
        result.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:])
    result["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(args.out, name, result)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
