"""The vLLM engine's reload-path choice, seeds and co-location defaults against a stub ``vllm`` (no vLLM needed:
runs in the main environment). The stubs copy the worker signatures of real vLLM versions: the older V1
``reload_weights(self)``, today's ``Worker.reload_weights(self, *args, **kwargs)`` forwarding to
``GPUModelRunner.reload_weights(self, weights_iterator=None, weights_path=None, is_checkpoint_format=True)``.
"""

from __future__ import annotations

import random
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from winnow.generator.vllm_reload import (
    choose_reload_path,
    judge_self_test,
    perturbed_weights,
    request_seeds,
    worker_reload_support,
)
from winnow.sampling import SamplingConfig, WeightLoadError


class Model:
    def __init__(self):
        self.loaded: list[list[str]] = []

    def load_weights(self, weights):
        self.loaded.append([k for k, _ in weights])
        return {k for k, _ in weights}


class NewRunner:
    def __init__(self):
        self.model = Model()
        self.reloaded: list[list[str]] = []

    def reload_weights(self, weights_iterator=None, weights_path=None, is_checkpoint_format=True):
        self.reloaded.append([k for k, _ in weights_iterator])


class NewWorker:  # vLLM >= 0.11: forwards *args, **kwargs to the runner
    def __init__(self):
        self.model_runner = NewRunner()

    def reload_weights(self, *args, **kwargs):
        self.model_runner.reload_weights(*args, **kwargs)


class OldWorker:  # an older V1 worker: reload_weights(self) reloads from the model's own path
    def __init__(self, with_model: bool = True):
        self.model_runner = types.SimpleNamespace(model=Model()) if with_model else types.SimpleNamespace()

    def reload_weights(self):
        pass


def test_worker_signatures():
    assert worker_reload_support(NewWorker())["reload_weights"] == "weights_iterator"
    old = worker_reload_support(OldWorker())
    assert old["reload_weights"] == "no_arguments" and old["model_load_weights"] and old["signature"] == "()"
    assert choose_reload_path([worker_reload_support(NewWorker())] * 2) == "reload_weights"
    assert choose_reload_path([worker_reload_support(OldWorker())]) == "model_load_weights"
    # one worker of two lacks every path: refused, naming what was found
    with pytest.raises(WeightLoadError, match="neither reload_weights"):
        choose_reload_path([worker_reload_support(OldWorker()), worker_reload_support(OldWorker(with_model=False))])
    with pytest.raises(WeightLoadError):
        choose_reload_path([])


def test_request_seeds():
    # seeded: prompt i gets seed + i * n, and vLLM seeds its n samples seed + j: 10..13, 14..17, 18..21 are distinct
    assert request_seeds(10, 3, 4, random.Random(0)) == [10, 14, 18]
    s = request_seeds(None, 64, 4, random.Random(0))
    assert all(isinstance(x, int) and 0 <= x < 2**31 for x in s) and len(set(s)) == 64


def test_perturbed_weights_moves_matrices_only_and_is_deterministic():
    state = [("w", torch.ones(4, 4, dtype=torch.bfloat16) + torch.arange(16.0).view(4, 4).bfloat16()),
             ("norm", torch.ones(4))]
    a, b = dict(perturbed_weights(state)), dict(perturbed_weights(state))
    assert torch.equal(a["w"], b["w"]) and a["w"].dtype == torch.bfloat16 and not torch.equal(a["w"], state[0][1])
    assert torch.equal(a["norm"], state[1][1])


def test_judge_self_test_hand_values():
    old = torch.tensor([-1.0, -2.0, -3.0])
    new = torch.tensor([-2.0, -1.0, -3.5])  # perturbation: mean(1, 1, 0.5) = 0.8333
    ok = judge_self_test("p", start=old, after=new + 0.01, restored=old, ref_old=old, ref_new=new)
    assert ok.passed and ok.new_vs_recompute == pytest.approx(0.01) and ok.perturbation == pytest.approx(0.8333, abs=1e-4)
    # a stale head: halfway between old and new -> 0.4167 > max(0.05, 0.1 x 0.8333)
    half = judge_self_test("p", start=old, after=(old + new) / 2, restored=old, ref_old=old, ref_new=new)
    assert not half.passed and "wrong outputs" in half.reason
    # a no-op reload: equal to the old weights
    assert not judge_self_test("p", start=old, after=old, restored=old, ref_old=old, ref_new=new).passed
    back = judge_self_test("p", start=old, after=new, restored=old + 0.2, ref_old=old, ref_new=new)
    assert not back.passed and "restoring" in back.reason
    tiny = judge_self_test("p", start=old, after=old, restored=old, ref_old=old, ref_new=old + 0.01)
    assert not tiny.passed and tiny.reason.startswith("inconclusive")


# -- the engine over a stub vllm -----------------------------------------------------------------


class StubLLM:
    worker_factory = NewWorker
    built: list[dict] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.worker = type(self).worker_factory()
        self.params: list = []
        StubLLM.built.append(kwargs)

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        fn = getattr(self.worker, method) if isinstance(method, str) else (lambda *a, **k: method(self.worker, *a, **k))
        return [fn(*args, **(kwargs or {}))]

    def reset_prefix_cache(self):
        return True

    def generate(self, inputs, params, use_tqdm=False, lora_request=None):
        self.params.append(params)
        comp = types.SimpleNamespace(token_ids=[7, 8], logprobs=[{7: -0.5}, {8: -0.25}], finish_reason="length",
                                     text="ab")
        n = params[0].n if isinstance(params, list) else params.n
        return [types.SimpleNamespace(outputs=[comp] * n) for _ in inputs]


class StubSamplingParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.fixture
def stub_vllm(monkeypatch, tmp_path):
    from winnow.learner.tiny import save_tiny

    mod = types.ModuleType("vllm")
    mod.__version__ = "0.0-stub"
    mod.LLM, mod.SamplingParams = StubLLM, StubSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.delenv("VLLM_USE_FLASHINFER_SAMPLER", raising=False)
    StubLLM.built = []
    return save_tiny(tmp_path / "tiny", seed=0, dtype=torch.bfloat16)


def _weights(model_dir, tmp_path):
    from safetensors.torch import load_file

    path = tmp_path / "v1.safetensors"
    save_file(load_file(f"{model_dir}/model.safetensors"), str(path))
    return str(path)


def test_old_worker_signature_loads_through_model_load_weights(stub_vllm, tmp_path, monkeypatch):
    """reload_weights(self) would raise TypeError on the weights (counted, then v0 forever): the engine uses
    collective_rpc(load_into_model) instead, and the stub model receives every tensor."""
    from winnow.generator.vllm_engine import VLLMEngine

    monkeypatch.setattr(StubLLM, "worker_factory", OldWorker)
    eng = VLLMEngine(stub_vllm, reload="inplace", self_test=False)
    assert eng.reload_path == "model_load_weights" and eng.reload_info["workers"][0]["reload_weights"] == "no_arguments"
    eng.load_weights(_weights(stub_vllm, tmp_path), 1)
    (loaded,) = eng.llm.worker.model_runner.model.loaded
    assert "model.embed_tokens.weight" in loaded and eng.version == 1


def test_new_worker_signature_uses_reload_weights(stub_vllm, tmp_path):
    from winnow.generator.vllm_engine import VLLMEngine

    eng = VLLMEngine(stub_vllm, reload="inplace", self_test=False)
    assert eng.reload_path == "reload_weights"
    eng.load_weights(_weights(stub_vllm, tmp_path), 1)
    assert eng.llm.worker.model_runner.reloaded and not eng.llm.worker.model_runner.model.loaded


def test_no_inplace_path_fails_loudly_or_falls_back(stub_vllm, monkeypatch, caplog):
    from winnow.generator import vllm_engine
    from winnow.generator.vllm_engine import VLLMEngine

    monkeypatch.setattr(StubLLM, "worker_factory", lambda: OldWorker(with_model=False))
    with pytest.raises(WeightLoadError, match="cannot load weights in place"):
        VLLMEngine(stub_vllm, reload="inplace", self_test=False)
    # auto on CUDA (faked): restart per version, said in the log and in reload_info (the generator's metric)
    monkeypatch.setattr(vllm_engine, "_cuda_available", lambda: True)
    eng = VLLMEngine(stub_vllm, reload="auto", self_test=False)
    assert eng.reload == "restart" and eng.reload_info["fallback"] and "cannot load" in eng.reload_info["reason"]
    assert any("falling back to restart-per-version" in r.message for r in caplog.records)


def test_generator_metrics_show_the_fallback(stub_vllm, monkeypatch):
    from winnow.generator import vllm_engine
    from winnow.generator.config import GeneratorConfig
    from winnow.generator.service import GeneratorService

    monkeypatch.setattr(StubLLM, "worker_factory", lambda: OldWorker(with_model=False))
    monkeypatch.setattr(vllm_engine, "_cuda_available", lambda: True)
    svc = GeneratorService(GeneratorConfig(), vllm_engine.VLLMEngine(stub_vllm, self_test=False))
    assert svc.registry.get_sample_value("winnow_generator_weight_reload_fallback") == 1
    assert svc.registry.get_sample_value("winnow_generator_weight_reload_inplace") == 0


def test_colocation_defaults_on_cuda(stub_vllm, monkeypatch):
    from winnow.generator import vllm_engine

    monkeypatch.setattr(vllm_engine, "_cuda_available", lambda: True)
    vllm_engine.VLLMEngine(stub_vllm, self_test=False)
    kw = StubLLM.built[-1]
    assert kw["gpu_memory_utilization"] == vllm_engine.COLOCATED_GPU_MEMORY_UTILIZATION == 0.4
    assert kw["enforce_eager"] is False  # CUDA graphs on
    vllm_engine.VLLMEngine(stub_vllm, self_test=False, gpu_memory_utilization=0.8, enforce_eager=True)
    assert StubLLM.built[-1]["gpu_memory_utilization"] == 0.8 and StubLLM.built[-1]["enforce_eager"] is True
    monkeypatch.setattr(vllm_engine, "_cuda_available", lambda: False)
    vllm_engine.VLLMEngine(stub_vllm)
    assert StubLLM.built[-1]["enforce_eager"] is True and "gpu_memory_utilization" not in StubLLM.built[-1]


def test_unseeded_truncated_request_carries_seeds(stub_vllm):
    """The request FlashInfer's sampler asserts on (processed log-probs, top-k/top-p, no seed) is never sent."""
    import os

    from winnow.generator.vllm_engine import VLLMEngine

    eng = VLLMEngine(stub_vllm)
    assert os.environ["VLLM_USE_FLASHINFER_SAMPLER"] == "0"
    eng.generate([[5, 6], [5, 6], [9]], 4, SamplingConfig(top_p=0.9, top_k=20, max_new_tokens=2))
    (params,) = eng.llm.params
    seeds = [p.seed for p in params]
    assert len(params) == 3 and None not in seeds and len(set(seeds)) == 3  # the repeated prompt too
    assert all(p.top_p == 0.9 and p.top_k == 20 and p.logprobs == 0 for p in params)
    eng.generate([[5, 6], [9]], 2, SamplingConfig(seed=100, max_new_tokens=2))
    assert [p.seed for p in eng.llm.params[-1]] == [100, 102]
