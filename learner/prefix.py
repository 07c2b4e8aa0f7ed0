"""Prompt sharing in the training forward: the n samples of a group share their prompt, so run it once.

A scored group is one prompt and n responses. The plain forward (:func:`winnow.learner.model.response_hidden`)
runs the decoder over ``prompt + response`` for every sample, so a prompt of P tokens is processed n
times. With few-shot demonstrations the prompt is most of the sequence (SmolLM2 with the default
chat format: ~150 prompt tokens against ~20 response tokens), and most of the training compute is
spent re-encoding the same prompt.

:func:`shared_prompt_hidden` runs the prompt once (batch 1) with a KV cache, repeats the cache for
the b rows and runs only the response columns against it. Gradients flow through the cache (the
repeat's backward sums the rows' contributions), so the result and its gradient equal the plain
forward's up to floating-point reassociation: the same keys, values, positions and masks, in a
different batching. Used when ``OptimConfig.share_prompt`` is on; micro-batches then hold rows of one
group (see :func:`group_micro_batches`).

Left out: sharing across groups (different prompts), models without a KV cache, and
gradient checkpointing (which needs ``use_cache=False``).
"""

from __future__ import annotations

import torch


def shared_prompt_hidden(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    prompt_width: int,
    response_width: int,
) -> torch.Tensor:
    """Final hidden states ``(b, t, H)`` at the columns that predict the response tokens, as
    :func:`~winnow.learner.model.response_hidden`, for rows whose prompt columns are identical.

    ``input_ids``, ``attention_mask``, ``position_ids``: ``(b, p + t)`` laid out ``[pad.. prompt |
    response ..pad]`` with the same first ``p = prompt_width`` columns in every row (one group).
    Columns ``p-1 .. p+t-2`` predict the response: column ``p-1`` comes from the prompt pass (the
    same for every row), columns ``p .. p+t-2`` from the response pass over the cached prompt.
    """
    from transformers import DynamicCache

    b, width = input_ids.shape
    p, t = prompt_width, response_width
    if width != p + t:
        raise ValueError(f"input width {width} != prompt {p} + response {t}")
    if b > 1 and not bool((input_ids[:, :p] == input_ids[:1, :p]).all()):
        raise ValueError("shared_prompt_hidden needs rows with identical prompt columns (one group per call)")
    decoder = model.get_decoder()
    cache_arg = _cache_kwarg(decoder)
    cache = DynamicCache(config=getattr(model, "config", None))
    prompt = decoder(
        input_ids=input_ids[:1, :p],
        attention_mask=attention_mask[:1, :p],
        position_ids=position_ids[:1, :p],
        use_cache=True,
        **{cache_arg: cache},
    )
    last_prompt = prompt.last_hidden_state[:, -1:].expand(b, 1, -1)  # (b, 1, H) predicts response token 0
    if t == 1:
        return last_prompt
    if b > 1:
        cache.batch_repeat_interleave(b)
    rest = decoder(
        input_ids=input_ids[:, p : p + t - 1],
        attention_mask=attention_mask[:, : p + t - 1],
        position_ids=position_ids[:, p : p + t - 1],
        use_cache=True,
        **{cache_arg: cache},
    )
    return torch.cat([last_prompt, rest.last_hidden_state], dim=1)  # (b, t, H)


def _cache_kwarg(decoder: torch.nn.Module) -> str:
    """The decoder's name for the KV cache argument: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def group_micro_batches(order: torch.Tensor, group_index: torch.Tensor, size: int) -> list[torch.Tensor]:
    """``order (r,)`` row indices -> chunks of at most ``size`` rows, each from one group (by group index,
    rows in their order within the group). ``group_index (B,)``: the group of every row of the batch."""
    groups: dict[int, list[int]] = {}
    for row in order.tolist():
        groups.setdefault(int(group_index[row]), []).append(row)
    out = []
    for rows in groups.values():
        t = torch.tensor(rows, dtype=torch.long, device=order.device)
        out += list(torch.split(t, size))
    return out
