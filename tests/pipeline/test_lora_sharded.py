"""The sharded learner with LoRA (issue 28 item 1): 2 gloo ranks under torchrun, FSDP2 over a peft model.

One script per rank builds the learner exactly as ``winnow learner run`` does under torchrun
(:func:`winnow.learner.distributed.build_sharded_trainer` with ``learner.lora``), trains two steps on the same
batch, publishes the adapters (a collective) and gathers the evaluation replica; rank 0 reports what it saw."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import json, sys, torch
from winnow.learner.batch import GroupData, SampleData
from winnow.learner.config import LearnerConfig
from winnow.learner.distributed import _Replica, build_sharded_trainer, train_share

model_dir, out = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
cfg = LearnerConfig(model=model_dir, device="cpu", numerics={"precision": "float32"},
                    algo={"preset": "grpo", "kl_coef": 0.05}, optim={"lr": 1e-2, "micro_batch_size": 4},
                    lora={"rank": 4, "alpha": 8})
trainer, tok = build_sharded_trainer(cfg)
g = torch.Generator().manual_seed(0)
groups = [GroupData(f"p{i}", f"r{i}", torch.randint(3, 300, (6,), generator=g).tolist(),
                    [SampleData(torch.randint(3, 300, (5,), generator=g).tolist(), [-5.0] * 5, [0] * 5, 1 + (i + s) % 2)
                     for s in range(4)]) for i in range(4)]
first = train_share(trainer, groups)
second = train_share(trainer, groups)
digest = trainer.save_weights(f"{out}/v2/adapter_model.safetensors")
full = trainer.full_state_dict()
replica = _Replica(trainer, full)
if torch.distributed.get_rank() == 0:
    trained = sorted({type(p).__name__ for p in trainer.model.parameters() if p.requires_grad})
    frozen = [n for n, p in trainer.model.named_parameters() if not p.requires_grad and "lora_" in n]
    json.dump({"kl0": first.metrics["kl"], "kl1": second.metrics["kl"], "loss": second.metrics["loss"],
               "digest": digest, "trained_types": trained, "frozen_lora": frozen,
               "optim_params": sum(len(gr["params"]) for gr in trainer.optimizer.param_groups),
               "lora_params": sum(1 for n, _ in trainer.model.named_parameters() if "lora_" in n)},
              open(f"{out}/rank0.json", "w"))
    torch.save({k: v for k, v in full.items()}, f"{out}/full.pt")
    ids = torch.tensor([groups[0].prompt_token_ids + groups[0].samples[0].response_token_ids])
    with torch.no_grad():
        torch.save(replica.model(input_ids=ids).logits, f"{out}/replica_logits.pt")
    torch.save(ids, f"{out}/ids.pt")
torch.distributed.destroy_process_group()
'''


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_gloo_ranks_train_lora_and_publish_the_adapter(tmp_path):
    import hashlib

    from peft import PeftModel

    from winnow.brokers import free_port
    from winnow.learner.tiny import build_tiny_model_and_tokenizer, save_tiny

    model_dir = save_tiny(tmp_path / "tiny")
    script = tmp_path / "rank.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{free_port()}", str(script), str(model_dir), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    seen = json.loads((out / "rank0.json").read_text())
    assert seen["kl0"] == 0.0 and seen["kl1"] > 0  # the reference is the base: adapters off
    assert seen["trained_types"] == ["DTensor"] and not seen["frozen_lora"]  # sharded adapters, all trained
    assert seen["optim_params"] == seen["lora_params"]  # AdamW over the adapters only
    adapter = out / "v2"
    assert seen["digest"] == hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
    # the base weights did not move; the published adapter over the base gives the replica's logits
    base, _ = build_tiny_model_and_tokenizer(seed=0)
    full = torch.load(out / "full.pt", weights_only=True)
    prefix = "base_model.model."
    for name, p in base.state_dict().items():
        key = prefix + name.replace(".weight", ".base_layer.weight") if prefix + name not in full else prefix + name
        if key in full:
            assert torch.equal(full[key], p), name
    ids = torch.load(out / "ids.pt")
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        opened = PeftModel.from_pretrained(base, str(adapter)).eval()  # injects the adapters into base
        assert torch.allclose(opened(input_ids=ids).logits, torch.load(out / "replica_logits.pt"), atol=1e-5)
        assert not torch.allclose(opened(input_ids=ids).logits, base_logits, atol=1e-4)
