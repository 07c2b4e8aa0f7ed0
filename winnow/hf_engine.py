"""The transformers engine: batched sampling with a KV cache on any HF causal LM (CPU or GPU).

Our own decoding loop rather than ``model.generate`` so that what is recorded is exactly what
was sampled: at each step the next-token logits go through :func:`process_logprobs`
(temperature, top-k, top-p), one token is drawn from that distribution and its log-prob under
it is kept as the behaviour log-prob.

Per engine call, prompts are left-padded and prefilled once each; the KV cache is then
repeated ``n`` times (the n samples of a prompt share its prefill), and rows that have emitted
EOS are dropped from the batch as they finish. Calls with more than ``max_batch_sequences``
sequences are split into chunks of whole prompts.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from pathlib import Path
from typing import Any

import torch

from winnow.lora import ADAPTER_FILE, is_adapter_file
from winnow.numerics import resolve_attention, resolve_device, resolve_precision, torch_dtype
from winnow.sampling import (
    Completion,
    GenerationCancelled,
    SamplingConfig,
    WeightLoadError,
    process_logprobs,
    raise_on_mismatch,
    sample_tokens,
)

log = logging.getLogger(__name__)

def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The engine's weight dtype: ``numerics.precision`` resolved for ``device`` (see :mod:`winnow.numerics`). Not
    the learner's rule (``winnow.learner.model.resolve_dtype`` keeps fp32 master weights under "auto"): an engine
    samples in the precision, the learner trains in fp32."""
    return torch_dtype(resolve_precision(precision, device.type) if precision == "auto" else precision)


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS and the generation config's EOS id(s)."""
    ids: set[int] = set()
    for src in (
        getattr(tokenizer, "eos_token_id", None),
        getattr(model.generation_config, "eos_token_id", None),
    ):
        if src is None:
            continue
        ids.update([int(src)] if isinstance(src, int) else [int(x) for x in src])
    if not ids:
        raise ValueError("the tokenizer and model define no eos_token_id; cannot tell where completions end")
    return sorted(ids)


MIN_COMMON_PREFIX = 8
"""A prefix common to a batch's prompts is run once when it has at least this many tokens (the learner's
training forward does the same, :mod:`winnow.learner.prefix`)."""


def common_prefix_length(rows: list[list[int]]) -> int:
    """Length of the longest prefix common to every token list of ``rows``."""
    shortest = min(len(r) for r in rows)
    for i in range(shortest):
        tok = rows[0][i]
        if any(r[i] != tok for r in rows):
            return i
    return shortest


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raise :class:`WeightLoadError` unless ``state`` fits ``model`` exactly: same keys (a tied
    alias such as ``lm_head.weight`` may be absent when the tensor it shares is present), same
    shapes. Checked before any parameter is overwritten, so a bad file leaves the model intact."""
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    if missing:
        by_ptr: dict[int, set[str]] = {}
        for k, v in expected.items():
            by_ptr.setdefault(v.data_ptr(), set()).add(k)
        missing = [k for k in missing if not (by_ptr[expected[k].data_ptr()] - {k}) & set(state)]
    bad_shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    raise_on_mismatch(missing, unexpected, bad_shapes)


class HFEngine:
    """Sampling engine over a transformers causal LM (see the module docstring)."""

    def __init__(
        self, model: Any, tokenizer: Any, *, max_batch_sequences: int = 64, version: int = 0
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.version = version
        self.max_batch_sequences = max_batch_sequences
        self.device = next(model.parameters()).device
        self.eos_ids = eos_token_ids(model, tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else self.eos_ids[0]
        self._eos = torch.tensor(self.eos_ids, device=self.device)
        self._adapter: tuple | None = None  # the active LoRA adapter's config (see load_adapter)
        self._cancel = threading.Event()
        # transformers >= 5.2x names the KV-cache argument ``cache`` (``past_key_values`` before)
        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model  # a PeftModel
        params = inspect.signature(inner.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # older transformers
            return DynamicCache()

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        attention: str = "auto",
        max_batch_sequences: int = 64,
        version: int = 0,
    ) -> HFEngine:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        impl = resolve_attention(attention, dev.type)
        if impl:
            kwargs["attn_implementation"] = impl
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs).to(dev)
        log.info("loaded %s on %s as %s, attention %s", model_dir, dev, torch_dtype,
                 model.config._attn_implementation)
        return cls(model, tokenizer, max_batch_sequences=max_batch_sequences, version=version)

    # -- sampling ---------------------------------------------------------------------------

    def cancel(self) -> None:
        """Make the running and every later ``generate`` raise :class:`GenerationCancelled` (checked
        every decoding step) until :meth:`clear_cancel`. Thread-safe."""
        self._cancel.set()

    def clear_cancel(self) -> None:
        self._cancel.clear()

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        """``n`` completions for each prompt (see :class:`winnow.generator.engine.Engine`)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
        generator = None
        if sampling.seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(int(sampling.seed))
        per_chunk = max(1, self.max_batch_sequences // n)
        out: list[list[Completion]] = []
        for start in range(0, len(prompts), per_chunk):
            out.extend(self._generate_chunk(prompts[start : start + per_chunk], n, sampling, generator))
        return out

    @torch.inference_mode()
    def _generate_chunk(
        self, prompts: list[list[int]], n: int, sampling: SamplingConfig, generator: torch.Generator | None
    ) -> list[list[Completion]]:
        dev = self.device
        num_prompts = len(prompts)
        past = self._new_cache()  # updated in place by every forward
        logits, mask = self._prefill(prompts, past)
        if n > 1:  # the n samples of a prompt share its prefill
            past.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            mask = mask.repeat_interleave(n, dim=0)
        rows = num_prompts * n
        next_pos = mask.sum(-1)  # (rows,) position id of the next token
        active = torch.arange(rows, device=dev)  # original row of each batch row
        tokens: list[list[int]] = [[] for _ in range(rows)]
        logps: list[list[float]] = [[] for _ in range(rows)]
        finish = ["length"] * rows
        for step in range(sampling.max_new_tokens):
            if self._cancel.is_set():
                raise GenerationCancelled("generation cancelled")
            lp_all = process_logprobs(logits, sampling.temperature, sampling.top_k, sampling.top_p)
            tok = sample_tokens(lp_all, generator)
            lp = lp_all.gather(-1, tok[:, None]).squeeze(-1)
            done = torch.isin(tok, self._eos)
            for r, t, v in zip(active.tolist(), tok.tolist(), lp.tolist(), strict=True):
                tokens[r].append(t)
                logps[r].append(v)
            for r in active[done].tolist():
                finish[r] = "stop"
            if step == sampling.max_new_tokens - 1:
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(-1)
                if keep.numel() == 0:
                    break
                active, tok, mask, next_pos = active[keep], tok[keep], mask[keep], next_pos[keep]
                past.batch_select_indices(keep)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            out = self.model(
                input_ids=tok[:, None],
                attention_mask=mask,
                position_ids=next_pos[:, None],
                use_cache=True,
                **{self._cache_kwarg: past},
            )
            logits = out.logits[:, -1, :]
            next_pos = next_pos + 1
        completions = [
            Completion(
                token_ids=tokens[r],
                logprobs=logps[r],
                finish_reason=finish[r],
                text=self.tokenizer.decode(tokens[r], skip_special_tokens=True),
            )
            for r in range(rows)
        ]
        return [completions[i * n : (i + 1) * n] for i in range(num_prompts)]

    def _prefill(self, prompts: list[list[int]], past: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the prompts into ``past``; returns the last prompt token's logits ``(u, V)`` and the attention
        mask of the cached columns ``(u, w)``.

        A prefix common to the prompts (a system prompt, few-shot turns; at least ``MIN_COMMON_PREFIX``
        tokens) is run once (batch 1) and the prompts' own suffixes, right-padded, over its cache: the same
        keys and values as the left-padded prefill, without computing the shared part u times."""
        dev = self.device
        u = len(prompts)
        c = min(common_prefix_length(prompts), min(len(p) for p in prompts) - 1) if u > 1 else 0
        if c < MIN_COMMON_PREFIX:  # one left-padded batch: every prompt ends at the last column
            width = max(len(p) for p in prompts)
            input_ids = torch.full((u, width), self.pad_id, dtype=torch.long, device=dev)
            mask = torch.zeros((u, width), dtype=torch.long, device=dev)
            for i, p in enumerate(prompts):
                input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long, device=dev)
                mask[i, width - len(p) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             logits_to_keep=1, **{self._cache_kwarg: past})
            return out.logits[:, -1, :], mask
        self.model(input_ids=torch.tensor([prompts[0][:c]], dtype=torch.long, device=dev),
                   attention_mask=torch.ones((1, c), dtype=torch.long, device=dev),
                   position_ids=torch.arange(c, device=dev)[None], use_cache=True, logits_to_keep=1,
                   **{self._cache_kwarg: past})
        past.batch_repeat_interleave(u)
        sizes = [len(p) - c for p in prompts]
        width = max(sizes)
        ids = torch.full((u, width), self.pad_id, dtype=torch.long, device=dev)
        own = torch.zeros((u, width), dtype=torch.long, device=dev)
        for i, p in enumerate(prompts):
            ids[i, : sizes[i]] = torch.tensor(p[c:], dtype=torch.long, device=dev)
            own[i, : sizes[i]] = 1
        mask = torch.cat([torch.ones((u, c), dtype=torch.long, device=dev), own], dim=1)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(c, c + width, device=dev)
                         .repeat(u, 1), use_cache=True, logits_to_keep=width, **{self._cache_kwarg: past})
        last = torch.tensor(sizes, device=dev) - 1
        return out.logits[torch.arange(u, device=dev), last], mask  # logits (u, width, V): the suffix columns

    # -- weights ----------------------------------------------------------------------------

    def load_weights(self, path: str, version: int) -> None:
        """Load a full state dict from a safetensors file (strict: same keys and shapes, tied
        aliases may be omitted) and set ``version``. On a mismatch nothing is changed.

        A peft adapter version (``adapter_model.safetensors`` with ``adapter_config.json`` beside it, what a LoRA
        learner publishes) is loaded by :meth:`load_adapter` instead."""
        from safetensors.torch import load_file

        if is_adapter_file(path):
            return self.load_adapter(Path(path).parent, version)
        t0 = time.perf_counter()
        state = load_file(str(path), device="cpu")
        check_state_dict(self.model, state)
        self.model.load_state_dict(state, strict=False)
        self.version = version
        log.info("loaded weights version %d from %s in %.2fs", version, path, time.perf_counter() - t0)

    def load_adapter(self, folder: str | Path, version: int) -> None:
        """Activate the LoRA adapter in the peft folder ``folder`` over the base weights and set ``version``.

        The first adapter injects peft's LoRA layers into the model (``peft.inject_adapter_in_model``: the base
        weights stay as loaded, each targeted linear adds ``(alpha / r) * B (A x)``, as the learner computes); later
        versions only overwrite A and B. Strict: an adapter whose config (rank, alpha, targets) or tensors (names,
        shapes) differ from the active one is refused and nothing changes."""
        import peft
        from safetensors.torch import load_file

        t0 = time.perf_counter()
        folder = Path(folder)
        config = peft.LoraConfig.from_pretrained(str(folder))
        key = _adapter_key(config)
        state = {k.removeprefix("base_model.model."): v for k, v in load_file(str(folder / ADAPTER_FILE)).items()}
        if self._adapter is None:
            if any("lora_" in k for k in self.model.state_dict()):
                raise WeightLoadError("the model already has LoRA layers of its own; cannot load an adapter over it")
            if getattr(config, "use_dora", False):
                raise WeightLoadError(f"adapter {folder}: DoRA is not supported here (export it --merge)")
            peft.inject_adapter_in_model(config, self.model, adapter_name="default")
            self.model.eval()
            self._adapter = key
        elif key != self._adapter:
            raise WeightLoadError(f"adapter {folder}: config {key} differs from the active adapter's {self._adapter}")
        expected = {k: tuple(v.shape) for k, v in peft.get_peft_model_state_dict(self.model).items()}
        raise_on_mismatch(sorted(set(expected) - set(state)), sorted(set(state) - set(expected)),
                          [f"{k}: file {tuple(state[k].shape)} vs model {expected[k]}"
                           for k in sorted(set(state) & set(expected)) if tuple(state[k].shape) != expected[k]])
        peft.set_peft_model_state_dict(self.model, state)
        self.version = version
        log.info("loaded adapter version %d from %s in %.2fs", version, folder, time.perf_counter() - t0)



def _adapter_key(config: Any) -> tuple:
    """What must stay equal between adapter versions loaded into one engine."""
    targets = config.target_modules
    return (config.r, float(config.lora_alpha), tuple(sorted(targets)) if isinstance(targets, set | list) else targets,
            bool(getattr(config, "use_rslora", False)), bool(getattr(config, "use_dora", False)))
