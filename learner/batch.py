"""Scored groups -> padded training tensors.

A :class:`GroupData` is one prompt and its n scored samples (the learner's view of a
``ScoredGroup`` message). :func:`collate` turns G groups into one :class:`TrainBatch` of
B = G*n sequences.

Layout: each row is ``[left-padded prompt | right-padded response]``, so every response starts
at the same column ``P`` (``prompt_width``). The logits that predict the response tokens are
then the fixed slice ``[P-1, P+T-1)`` of every row, and the model's LM head is evaluated only on
those T positions (``logits_to_keep``), never on the prompt: for long prompts and large
vocabularies this is most of the logits memory. ``position_ids`` count real tokens only
(``cumsum(attention_mask) - 1``), as in generation, so the recomputed log-probs are those of
each sequence on its own, whatever the padding.

Response-aligned tensors are (B, T) with T the longest response: ``targets`` (token ids, pad
where masked), ``response_mask``, ``behaviour_logprobs`` (log mu from the generator) and
``policy_versions`` (the weight version that produced each token).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from winnow.groups import check_group, check_sizes


@dataclass
class SampleData:
    """One sampled response of a group, as the generator reported it."""

    response_token_ids: list[int]
    """Generated token ids only (including EOS when generated)."""
    behaviour_logprobs: list[float]
    """log mu(a_t | x, a_<t) per response token, under the sampling distribution."""
    policy_versions: list[int]
    """Weight version that produced each token (one entry per token, or a single entry for all)."""
    status: int
    """``winnow.verdict.Status`` value from the verifier (CORRECT = 1, WRONG = 2, ...)."""
    finish_reason: str = "stop"
    """"stop" (EOS or stop string) or "length" (hit max_new_tokens)."""
    score: float | None = None
    """The verifier's scalar score (``Sample.score``), None when it only judged: the reward when present."""


@dataclass
class GroupData:
    """One prompt and its n scored samples: the unit of training data."""

    prompt_id: str
    request_id: str
    prompt_token_ids: list[int]
    samples: list[SampleData]

    @property
    def policy_version(self) -> int:
        """The oldest weight version that contributed a token (min over all samples' versions)."""
        versions = [v for s in self.samples for v in s.policy_versions]
        if not versions:
            raise ValueError(f"group {self.request_id!r}: no policy_versions in any sample")
        return min(versions)


@dataclass
class TrainBatch:
    """G groups x n samples as padded tensors (B = G*n rows, row b = group b // n, sample b % n)."""

    input_ids: torch.Tensor
    """(B, L) long: ``[pad.. prompt | response ..pad]``, L = P + T."""
    attention_mask: torch.Tensor
    """(B, L) long: 1 on real prompt and response tokens."""
    position_ids: torch.Tensor
    """(B, L) long: index among the row's real tokens (0 on padding)."""
    prompt_width: int
    """P: the column of the first response token (longest prompt in the batch)."""
    targets: torch.Tensor
    """(B, T) long: response token ids, ``pad_id`` where ``response_mask`` is 0."""
    response_mask: torch.Tensor
    """(B, T) bool: True on real response tokens."""
    behaviour_logprobs: torch.Tensor
    """(B, T) float32: log mu per response token, 0 where masked."""
    policy_versions: torch.Tensor
    """(B, T) long: version that produced each response token, 0 where masked."""
    statuses: torch.Tensor
    """(G, n) long: verifier status of each sample."""
    group_index: torch.Tensor
    """(B,) long: the group of each row."""
    prompt_lengths: torch.Tensor
    """(B,) long."""
    response_lengths: torch.Tensor
    """(B,) long."""
    group_policy_versions: torch.Tensor
    """(G,) long: ``GroupData.policy_version`` of each group."""
    request_ids: list[str] = field(default_factory=list)
    """(G,) request id of each group."""
    finish_reasons: list[str] = field(default_factory=list)
    """(B,) finish reason of each row."""
    pad_id: int = 0
    scores: torch.Tensor | None = None
    """(G, n) float32: the verifier's scalar score of each sample, NaN where it sent none; None when no sample
    of the batch has one (the status -> reward map alone)."""

    @property
    def num_groups(self) -> int:
        return self.statuses.shape[0]

    @property
    def group_size(self) -> int:
        return self.statuses.shape[1]

    @property
    def num_sequences(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_width(self) -> int:
        """T: the longest response in the batch."""
        return self.targets.shape[1]

    @property
    def num_response_tokens(self) -> int:
        return int(self.response_lengths.sum())

    def to(self, device: torch.device | str) -> TrainBatch:
        """A copy with every tensor on ``device``."""
        kw: dict[str, Any] = {
            k: (v.to(device) if isinstance(v, torch.Tensor) else v)
            for k, v in self.__dict__.items()  # dataclass fields, shallow
        }
        return TrainBatch(**kw)

    def rows(self, index: torch.Tensor | Sequence[int]) -> MicroBatch:
        """The rows ``index`` with their padding trimmed to the subset (for one micro-batch forward)."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.input_ids.device)
        if idx.numel() == 0:
            raise ValueError("rows(): empty index")
        plen = self.prompt_lengths.index_select(0, idx)
        rlen = self.response_lengths.index_select(0, idx)
        p = int(plen.max())
        t = max(int(rlen.max()), 1)
        cols = slice(self.prompt_width - p, self.prompt_width + t)
        return MicroBatch(
            rows=idx,
            input_ids=self.input_ids.index_select(0, idx)[:, cols],
            attention_mask=self.attention_mask.index_select(0, idx)[:, cols],
            position_ids=self.position_ids.index_select(0, idx)[:, cols],
            prompt_width=p,
            targets=self.targets.index_select(0, idx)[:, :t],
            response_mask=self.response_mask.index_select(0, idx)[:, :t],
            behaviour_logprobs=self.behaviour_logprobs.index_select(0, idx)[:, :t],
        )


@dataclass
class MicroBatch:
    """A subset of a batch's rows, padding trimmed: what one forward pass sees."""

    rows: torch.Tensor
    """(b,) long: row indices into the parent TrainBatch."""
    input_ids: torch.Tensor
    """(b, p + t) long."""
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    prompt_width: int
    """p: column of the first response token in this micro-batch."""
    targets: torch.Tensor
    """(b, t) long."""
    response_mask: torch.Tensor
    """(b, t) bool."""
    behaviour_logprobs: torch.Tensor
    """(b, t) float32."""

    @property
    def response_width(self) -> int:
        return self.targets.shape[1]


def group_from_proto(msg: Any, n: int, *, vocab_size: int | None = None, max_response_tokens: int | None = None,
                     max_prompt_tokens: int | None = None) -> GroupData:
    """A ``ScoredGroup`` message -> a checked :class:`GroupData` (see :func:`check_group`); a sample without
    per-token versions gets the group's ``policy_version``.

    The counts (samples, prompt and response tokens) are checked on the message before anything is copied
    out of it, so a hostile group costs no more than its record's bytes; ``ValueError`` (the caller
    dead-letters the record) names the request id and the bound."""
    where = f"group {msg.request_id!r} from {msg.generator_id or '?'}"
    check_sizes(where, len(msg.samples), len(msg.prompt_token_ids), [len(s.response_token_ids) for s in msg.samples],
                n=n, max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens)
    group = GroupData(
        prompt_id=msg.prompt_id,
        request_id=msg.request_id,
        prompt_token_ids=list(msg.prompt_token_ids),
        samples=[
            SampleData(
                response_token_ids=list(s.response_token_ids),
                behaviour_logprobs=list(s.behaviour_logprobs),
                policy_versions=list(s.policy_versions) or [int(msg.policy_version)],
                status=int(s.status),
                finish_reason=s.finish_reason or "stop",
                score=s.score if s.HasField("score") else None,
            )
            for s in msg.samples
        ],
    )
    check_group(group, n, where=where, vocab_size=vocab_size, max_response_tokens=max_response_tokens,
                max_prompt_tokens=max_prompt_tokens)
    return group


def collate(groups: list[GroupData], pad_id: int) -> TrainBatch:
    """Pad G groups of n samples into one :class:`TrainBatch` (see the module docstring for the layout).

    Raises ``ValueError`` naming the group's ``request_id`` when a group is malformed: no samples,
    an n different from the first group's, an empty prompt, ``behaviour_logprobs`` or
    ``policy_versions`` whose length does not match the response, non-finite or positive log-probs.
    """
    if not groups:
        raise ValueError("collate: no groups")
    n = len(groups[0].samples)
    for g in groups:
        check_group(g, n)
    G = len(groups)
    B = G * n
    P = max(len(g.prompt_token_ids) for g in groups)
    T = max(1, max(len(s.response_token_ids) for g in groups for s in g.samples))
    L = P + T

    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.long)
    targets = torch.full((B, T), pad_id, dtype=torch.long)
    response_mask = torch.zeros((B, T), dtype=torch.bool)
    behaviour = torch.zeros((B, T), dtype=torch.float32)
    versions = torch.zeros((B, T), dtype=torch.long)
    statuses = torch.empty((G, n), dtype=torch.long)
    prompt_lengths = torch.empty(B, dtype=torch.long)
    response_lengths = torch.empty(B, dtype=torch.long)
    finish_reasons: list[str] = []

    for gi, g in enumerate(groups):
        prompt = torch.as_tensor(g.prompt_token_ids, dtype=torch.long)
        p = prompt.numel()
        for si, s in enumerate(g.samples):
            b = gi * n + si
            r = len(s.response_token_ids)
            input_ids[b, P - p : P] = prompt
            attention_mask[b, P - p : P + r] = 1
            if r:
                resp = torch.as_tensor(s.response_token_ids, dtype=torch.long)
                input_ids[b, P : P + r] = resp
                targets[b, :r] = resp
                response_mask[b, :r] = True
                behaviour[b, :r] = torch.as_tensor(s.behaviour_logprobs, dtype=torch.float32)
                versions[b, :r] = torch.as_tensor(
                    s.policy_versions, dtype=torch.long
                )  # broadcasts a single one
            statuses[gi, si] = int(s.status)
            prompt_lengths[b] = p
            response_lengths[b] = r
            finish_reasons.append(s.finish_reason)

    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    scores = None
    if any(s.score is not None for g in groups for s in g.samples):
        scores = torch.tensor([[math.nan if s.score is None else float(s.score) for s in g.samples] for g in groups],
                              dtype=torch.float32)
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        prompt_width=P,
        targets=targets,
        response_mask=response_mask,
        behaviour_logprobs=behaviour,
        policy_versions=versions,
        statuses=statuses,
        group_index=torch.arange(G).repeat_interleave(n),
        prompt_lengths=prompt_lengths,
        response_lengths=response_lengths,
        group_policy_versions=torch.tensor([g.policy_version for g in groups], dtype=torch.long),
        request_ids=[g.request_id for g in groups],
        finish_reasons=finish_reasons,
        pad_id=pad_id,
        scores=scores,
    )


def vocab_size(model: Any) -> int | None:
    """Rows of the model's input embedding (None for a model without ``get_input_embeddings``)."""
    emb = getattr(model, "get_input_embeddings", lambda: None)()
    return int(emb.weight.shape[0]) if emb is not None else None
