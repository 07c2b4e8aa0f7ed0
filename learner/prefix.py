"""Prompt sharing in the training forward: the n samples of a group share their prompt, so run it once.

A scored group is one prompt and n responses. The plain forward (:func:`winnow.learner.model.response_hidden`)
runs the decoder over ``prompt + response`` for every sample, so a prompt of P tokens is processed n
times. With few-shot demonstrations the prompt is most of the sequence (SmolLM2 with the default
chat format: ~150 prompt tokens against ~20 response tokens), and most of the training compute is
spent re-encoding the same prompt.

:func:`shared_prompt_hidden` runs each distinct prompt of a micro-batch once (rows with identical prompt
columns share it), gathers the KV cache to the b rows and runs only the response columns against it.
Gradients flow through the cache (the gather's backward sums the rows' contributions), so the result and
its gradient equal the plain forward's up to floating-point reassociation: the same keys, values,
positions and masks, in a different batching. Used when ``OptimConfig.share_prompt`` is on; micro-batches
then keep a group's rows together and pack several groups while they fit (see
:func:`group_micro_batches`), so a step has as many micro-batches as without sharing.

Left out: sharing a prefix between different prompts (the few-shot turns), models without a KV cache,
and gradient checkpointing (which needs ``use_cache=False``).
"""

from __future__ import annotations

import torch

from winnow.hf_engine import MIN_COMMON_PREFIX, common_prefix_length


def shared_prompt_hidden(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    prompt_width: int,
    response_width: int,
) -> torch.Tensor:
    """Final hidden states ``(b, t, H)`` at the columns that predict the response tokens, as
    :func:`~winnow.learner.model.response_hidden`, with every distinct prompt run once.

    ``input_ids``, ``attention_mask``, ``position_ids``: ``(b, p + t)`` laid out ``[pad.. prompt |
    response ..pad]`` (``p = prompt_width``). Rows with identical prompt columns share one prompt pass,
    and a prefix common to all the distinct prompts (a system prompt, few-shot turns; at least
    :data:`MIN_COMMON_PREFIX` tokens) is run once for all of them: the prompt is processed as ``prefix``
    (batch 1) then the prompts' right-padded ``suffixes`` (batch u) over the prefix's cache. Column
    ``p-1``'s hidden state (it predicts response token 0) comes from the prompt pass, columns
    ``p .. p+t-2`` from the response pass over the cache gathered to the b rows.
    """
    from transformers import DynamicCache

    b, width = input_ids.shape
    p, t = prompt_width, response_width
    dev = input_ids.device
    if width != p + t:
        raise ValueError(f"input width {width} != prompt {p} + response {t}")
    # rows with the same prompt columns (ids and mask) share one prompt pass; ``inverse`` (b,) maps a row
    # to its distinct prompt, ``first`` (u,) a distinct prompt to its first row
    key = torch.cat([input_ids[:, :p], attention_mask[:, :p].to(input_ids.dtype)], dim=1)
    distinct, inverse = torch.unique(key, dim=0, return_inverse=True)
    u = distinct.shape[0]
    first = torch.full((u,), b, dtype=torch.long, device=dev)
    first = first.scatter_reduce(0, inverse, torch.arange(b, device=dev), reduce="amin")
    decoder = model.get_decoder()
    cache_arg = _cache_kwarg(decoder)
    cache = DynamicCache(config=getattr(model, "config", None))
    lengths = [int(n) for n in attention_mask[first, :p].sum(1).tolist()]  # real prompt tokens (left padded)
    c = 0
    if u > 1:
        c = min(common_prefix_length([input_ids[r, p - n : p].tolist() for r, n in zip(first.tolist(), lengths, strict=True)]),
                min(lengths) - 1)  # every prompt keeps >= 1 suffix token: its last hidden state
    if c >= MIN_COMMON_PREFIX:
        r0, n0 = int(first[0]), lengths[0]
        decoder(input_ids=input_ids[r0 : r0 + 1, p - n0 : p - n0 + c],
                attention_mask=attention_mask[r0 : r0 + 1, p - n0 : p - n0 + c],
                position_ids=position_ids[r0 : r0 + 1, p - n0 : p - n0 + c], use_cache=True, **{cache_arg: cache})
        cache.batch_repeat_interleave(u)
        sizes = [n - c for n in lengths]
        width_s = max(sizes)
        ids = input_ids.new_zeros((u, width_s))
        mask = attention_mask.new_zeros((u, width_s))
        pos = torch.arange(c, c + width_s, device=dev).repeat(u, 1)
        for g, (r, n) in enumerate(zip(first.tolist(), sizes, strict=True)):  # suffixes right-padded
            ids[g, :n], mask[g, :n], pos[g, :n] = input_ids[r, p - n : p], 1, position_ids[r, p - n : p]
        prompt_mask = torch.cat([mask.new_ones((u, c)), mask], dim=1)  # (u, c + width_s)
        out = decoder(input_ids=ids, attention_mask=prompt_mask, position_ids=pos, use_cache=True,
                      **{cache_arg: cache})
        last = out.last_hidden_state[torch.arange(u, device=dev), torch.tensor(sizes, device=dev) - 1]  # (u, H)
    else:
        out = decoder(input_ids=input_ids[first, :p], attention_mask=attention_mask[first, :p],
                      position_ids=position_ids[first, :p], use_cache=True, **{cache_arg: cache})
        last = out.last_hidden_state[:, -1]
        prompt_mask = attention_mask[first, :p]
    last_prompt = last.index_select(0, inverse)[:, None]  # (b, 1, H) predicts response token 0
    if t == 1:
        return last_prompt
    if u != b or bool((inverse != torch.arange(b, device=dev)).any()):
        cache.reorder_cache(inverse)  # (u, ...) -> (b, ...) by index_select: the backward sums the rows
    rest = decoder(
        input_ids=input_ids[:, p : p + t - 1],
        attention_mask=torch.cat([prompt_mask.index_select(0, inverse), attention_mask[:, p : p + t - 1]], dim=1),
        position_ids=position_ids[:, p : p + t - 1],
        use_cache=True,
        **{cache_arg: cache},
    )
    return torch.cat([last_prompt, rest.last_hidden_state], dim=1)  # (b, t, H)


def _cache_kwarg(decoder: torch.nn.Module) -> str:
    """The decoder's name for the KV cache argument: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def pack_micro_batches(
    order: torch.Tensor,
    group_index: torch.Tensor,
    prompt_lengths: torch.Tensor,
    response_lengths: torch.Tensor,
    *,
    max_rows: int,
    max_tokens: int | None = None,
    share_prompt: bool = False,
) -> list[torch.Tensor]:
    """``order (r,)`` row indices -> micro-batches of at most ``max_rows`` rows and ``max_tokens`` padded
    tokens, rows in the order given (a micro-batch is closed when the next row does not fit).

    ``group_index``, ``prompt_lengths``, ``response_lengths``: ``(B,)`` per row of the batch. Padded tokens
    of a micro-batch: ``rows * max(prompt + response)``, or with ``share_prompt`` (see
    :func:`shared_prompt_hidden`) ``rows * max(response) + groups * max(prompt)``, and then a group's
    rows are kept together: groups are taken in the order of their first row in ``order``, and a group
    is split only when it alone exceeds a limit. A row over ``max_tokens`` by itself gets its own."""
    rows = order.tolist()
    if share_prompt:
        groups: dict[int, list[int]] = {}
        for row in rows:
            groups.setdefault(int(group_index[row]), []).append(row)
        rows = [r for g in groups.values() for r in g]
    plen, rlen, gidx = prompt_lengths.tolist(), response_lengths.tolist(), group_index.tolist()

    def cost(chunk: list[int]) -> int:
        if share_prompt:
            return len(chunk) * max(rlen[r] for r in chunk) + len({gidx[r] for r in chunk}) * max(
                plen[r] for r in chunk)
        return len(chunk) * max(plen[r] + rlen[r] for r in chunk)

    out: list[list[int]] = []
    current: list[int] = []
    for i, row in enumerate(rows):
        if current:
            trial = current + [row]
            too_big = len(trial) > max_rows or (max_tokens is not None and cost(trial) > max_tokens)
            # keep a group together: close the chunk at a group boundary if the whole next group does not fit
            if not too_big and share_prompt and gidx[row] != gidx[current[-1]]:
                rest = [r for r in rows[i:] if gidx[r] == gidx[row]]
                whole = current + rest
                too_big = len(whole) > max_rows or (max_tokens is not None and cost(whole) > max_tokens)
                too_big = too_big and (len(rest) <= max_rows and (max_tokens is None or cost(rest) <= max_tokens))
            if too_big:
                out.append(current)
                current = []
        current.append(row)
    if current:
        out.append(current)
    return [torch.tensor(c, dtype=torch.long, device=order.device) for c in out]
