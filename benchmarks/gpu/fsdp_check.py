"""GPU check, step 4: the learner through the FSDP2 code path equals the single-process step.

    torchrun --nproc_per_node 1 benchmarks/gpu/fsdp_check.py --out DIR [--dry-run] [--size small|0.5b]
    torchrun --nproc_per_node 2 benchmarks/gpu/fsdp_check.py --out DIR --dry-run     # CPU, gloo, 2 ranks

Every rank builds the same random Qwen2 (fp32), keeps an unsharded copy, and shards another copy with
``winnow.learner.fsdp.shard_model`` (``fully_shard`` per decoder layer + root; NCCL on CUDA, gloo on
CPU). The reference model (GRPO with ``kl_coef`` 0.05) is sharded separately and passed in, as
docs/distributed.md prescribes. Rank ``r`` trains on ``groups[r::world]``; the unsharded Trainer on all
groups, in the same process (the single-process step). Compared:

1. ``forward_backward``: the loss summed over ranks vs the single-process loss; every parameter's
   gradient (``DTensor.full_tensor()``) vs the single-process gradient (max |diff|, max relative);
2. ``optimizer_step``: grad norm (clipping) and every updated parameter;
3. a second full ``train_step`` (the all-reduced metrics path): loss, tokens, parameters;
4. ``save_weights`` (the full-state-dict gather; rank 0 writes): the file's tensors vs the gathered
   parameters, and every parameter present (a tied ``lm_head.weight`` may be left out).

fp32 throughout (no mixed precision, TF32 off) so that equality is tight: losses, the grad norm and
gradients within ``--rtol`` (relative), each tensor's update within ``--step-tol`` of the single-process
update (norm-wise); the saved file exactly equal to the gathered shards. With one rank the two paths are bitwise equal on CPU; with two ranks the sums are split
differently, so they differ by rounding. Rank 0 writes the JSON. ``--dry-run``: the tiny model on CPU.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import QWEN2_0_5B, TINY, env_info, write_json  # noqa: E402

STEP = "4_fsdp"
LR = 1e-4
SMALL = dict(TINY, hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=2, vocab_size=32768)
"""The default GPU model: big enough for real kernels, small enough to compare every gradient in seconds."""


def make_groups(vocab: int, groups: int, n: int, seed: int = 0):
    """Groups with varied lengths and mixed statuses (so filters and advantages are non-trivial)."""
    from winnow.learner.batch import GroupData, SampleData

    g = torch.Generator().manual_seed(seed)
    out = []
    for gi in range(groups):
        prompt = torch.randint(3, vocab, (int(torch.randint(4, 24, (1,), generator=g)),), generator=g).tolist()
        samples = []
        for si in range(n):
            t = int(torch.randint(3, 40, (1,), generator=g))
            resp = torch.randint(3, vocab, (t,), generator=g).tolist()
            lp = (-torch.rand(t, generator=g) * 4).tolist()
            samples.append(SampleData(resp, lp, [0] * t, 1 + (gi * 7 + si * 3) % 3 % 2))
        out.append(GroupData(f"p{gi}", f"r{gi}", prompt, samples))
    return out


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if type(t).__name__ == "DTensor" else t


def max_diffs(pairs) -> dict[str, float]:
    """Largest |a - b| and largest |a - b| / (|b| max) over (name, a, b) pairs; the worst name."""
    worst_abs, worst_rel, worst_name = 0.0, 0.0, ""
    for name, a, b in pairs:
        d = float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max())
        scale = float(b.detach().float().abs().max()) or 1.0
        if d / scale > worst_rel:
            worst_rel, worst_name = d / scale, name
        worst_abs = max(worst_abs, d)
    return {"max_abs_diff": worst_abs, "max_rel_diff": worst_rel, "worst": worst_name}


def update_diffs(names, single_before, fsdp_before, single, sharded) -> dict[str, float]:
    """How far the FSDP update is from the single-process update, per tensor, in the norm:
    ``||dp_fsdp - dp_single|| / ||dp_single||`` (worst tensor). Element-wise comparisons of AdamW steps are
    ill-conditioned (it divides each gradient element by its own running scale, so an element whose
    gradient is mostly cancellation noise gets a full-size step either way)."""
    worst, worst_name = 0.0, ""
    for n, a0, b0, p, q in zip(names, single_before, fsdp_before, single.parameters(), sharded.parameters(),
                               strict=True):
        ds, df = (p.detach() - a0).float().cpu(), (full(q).detach() - b0).float().cpu()
        norm = float(ds.norm())
        if norm == 0.0:
            continue
        r = float((df - ds).norm()) / norm
        if r > worst:
            worst, worst_name = r, n
    return {"max_rel_update_diff": worst, "worst_update": worst_name}


def snapshot(model) -> list[torch.Tensor]:
    return [full(p).detach().clone() for p in model.parameters()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check_out")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--size", choices=("small", "0.5b"), default="small")
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=3)
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="loss, grad norm, gradients: max relative difference (per tensor, to its max) that counts as equal")
    p.add_argument("--step-tol", type=float, default=5e-3,
                   help="parameter update of a step: max ||diff|| / ||single-process update|| per tensor")
    args = p.parse_args(argv)
    if args.dry_run:
        args.groups, args.n = 2, 3

    import torch.distributed as dist
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from winnow.learner.algo import AlgoConfig
    from winnow.learner.fsdp import init_distributed, shard_model
    from winnow.learner.step import OptimConfig, Trainer

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rank, world, dev = init_distributed()
    if args.dry_run and dev.type == "cuda":
        dev = torch.device("cpu")  # pragma: no cover - a dry run is a CPU run
    result: dict[str, Any] = {"step": STEP, "env": env_info(), "dry_run": args.dry_run, "args": vars(args),
                              "world_size": world, "backend": dist.get_backend(), "device": str(dev)}
    code = 0
    try:
        arch = TINY if args.dry_run else (QWEN2_0_5B if args.size == "0.5b" else SMALL)
        result["model"] = {"kind": "random Qwen2", "arch": arch}
        torch.manual_seed(0)
        with torch.device(dev):
            base = Qwen2ForCausalLM(Qwen2Config(**arch, use_cache=False))
        single = copy.deepcopy(base)
        ref = shard_model(copy.deepcopy(base).requires_grad_(False))
        sharded = shard_model(copy.deepcopy(base))
        del base
        algo = AlgoConfig.from_preset("grpo", kl_coef=0.05)
        # eps 1e-6: the random model's gradients have elements near 1e-12, where AdamW's per-element
        # normalisation turns summation-order noise into a visible share of a step
        optim = OptimConfig(lr=LR, eps=1e-6, micro_batch_size=args.micro_batch, max_grad_norm=1.0)
        # the single-process step: a one-rank group of its own, so none of the data-parallel hooks apply
        own = [dist.new_group([r]) for r in range(world)][rank]
        t_single = Trainer(single, algo, optim, pad_token_id=0, ref_model="copy", logprob_mode="logits",
                           autocast_dtype=None, dp_group=own)
        assert t_single.world_size == 1
        t_fsdp = Trainer(sharded, algo, optim, pad_token_id=0, ref_model=ref, autocast_dtype=None)
        result["fsdp_logprob_mode"] = t_fsdp.logprob_mode
        groups = make_groups(arch["vocab_size"], args.groups, args.n)
        mine = groups[rank::world]

        # 1. forward + backward
        t0 = time.perf_counter()
        m_single = t_single.forward_backward(groups)
        m_fsdp = t_fsdp.forward_backward(mine)
        loss = torch.tensor([m_fsdp["loss"]], dtype=torch.float64, device=dev)
        dist.all_reduce(loss)
        names = [n for n, _ in single.named_parameters()]
        grads = max_diffs(
            (n, full(q.grad), p.grad)
            for n, p, q in zip(names, single.parameters(), sharded.parameters(), strict=True)
        )
        step1 = {"loss_single": m_single["loss"], "loss_fsdp": float(loss[0]),
                 "tokens_single": m_single["tokens"], "grads": grads}
        # 2. the optimizer step
        before_s, before_f = snapshot(single), snapshot(sharded)
        gn_single, _ = t_single.optimizer_step()
        gn_fsdp, _ = t_fsdp.optimizer_step()
        params = max_diffs(
            (n, full(q), p) for n, p, q in zip(names, single.parameters(), sharded.parameters(), strict=True)
        )
        params.update(update_diffs(names, before_s, before_f, single, sharded))
        step1.update(grad_norm_single=gn_single, grad_norm_fsdp=gn_fsdp, params_after_step=params)
        # 3. a full train_step (metrics all-reduced across ranks)
        groups2 = make_groups(arch["vocab_size"], args.groups, args.n, seed=1)
        before_s, before_f = snapshot(single), snapshot(sharded)
        s2 = t_single.train_step(groups2)
        f2 = t_fsdp.train_step(groups2[rank::world])
        params2 = max_diffs(
            (n, full(q), p) for n, p, q in zip(names, single.parameters(), sharded.parameters(), strict=True)
        )
        params2.update(update_diffs(names, before_s, before_f, single, sharded))
        step2 = {"loss_single": s2["loss"], "loss_fsdp": f2["loss"], "tokens_single": s2["tokens"],
                 "tokens_fsdp": f2["tokens"], "grad_norm_single": s2["grad_norm"],
                 "grad_norm_fsdp": f2["grad_norm"], "params_after_step": params2}
        # 4. save_weights: gathered by every rank, written by rank 0
        tmp = Path(tempfile.mkdtemp(prefix="winnow-fsdp-")) if rank == 0 else None
        box = [str(tmp) if tmp else ""]
        dist.broadcast_object_list(box, src=0)
        digest = t_fsdp.save_weights(Path(box[0]) / "model.safetensors")
        full_params = snapshot(sharded)  # a collective under FSDP: every rank
        saved: dict[str, Any] = {"sha256_on_every_rank": digest}
        if rank == 0:
            from safetensors.torch import load_file

            state = load_file(str(tmp / "model.safetensors"))
            ref_state = dict(zip(names, full_params, strict=True))  # the gathered file = the shards
            saved["tensors"] = len(state)
            # a tied head is one parameter (named once); a gathered state dict may still hold both names
            saved["tied_head_written_twice"] = "lm_head.weight" in state and "lm_head.weight" not in ref_state
            if saved["tied_head_written_twice"]:
                ref_state["lm_head.weight"] = ref_state["model.embed_tokens.weight"]
            saved.update(max_diffs((k, v, ref_state[k]) for k, v in state.items()))
        elapsed = time.perf_counter() - t0

        def rel(a: float, b: float) -> float:
            return abs(a - b) / max(abs(b), 1e-12)

        checks = {
            "loss_equal": rel(step1["loss_fsdp"], step1["loss_single"]) <= args.rtol,
            "grads_equal": grads["max_rel_diff"] <= args.rtol,
            "grad_norm_equal": rel(gn_fsdp, gn_single) <= args.rtol,
            "update_equal": params["max_rel_update_diff"] <= args.step_tol,
            "train_step_loss_equal": rel(step2["loss_fsdp"], step2["loss_single"]) <= args.rtol,
            "train_step_tokens_equal": step2["tokens_fsdp"] == step2["tokens_single"],
            "train_step_update_equal": params2["max_rel_update_diff"] <= args.step_tol,
        }
        if rank == 0:
            checks["saved_weights_equal"] = saved["max_abs_diff"] == 0.0
            checks["saved_weights_complete"] = set(state) | {"lm_head.weight"} >= set(names)
            checks["tied_head_written_once"] = not saved["tied_head_written_twice"]
        result.update(status="ok", forward_backward_and_step=step1, train_step=step2, save_weights=saved,
                      seconds=round(elapsed, 2), **{"pass": checks, "all_pass": all(checks.values())})
        if not result["all_pass"]:
            code = 1
    except Exception as e:
        result.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:])
        code = 1
    if rank == 0:
        write_json(args.out, STEP + (f"_world{world}" if world > 1 else ""), result)
    elif code:
        print(result.get("traceback", result), file=sys.stderr, flush=True)
    dist.destroy_process_group()
    return code


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
