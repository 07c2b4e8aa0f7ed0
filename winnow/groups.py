"""The scored group protocol: how a generator builds a ``ScoredGroup`` and the one check every reader applies.

:func:`build_group` is the generators' writer. :func:`check_group` is the one validator, with the limits as
parameters; its callers choose how much they know:

- the Kafka codec (:func:`winnow.kafka.validate`, on every encode and decode) checks the structure any consumer
  relies on: request and prompt ids set (``ids=True``), at least one sample, one behaviour log-prob per response
  token, one policy version per token or none (none: the group's ``policy_version``);
- the learner (:func:`winnow.learner.batch.group_from_proto`, :func:`~winnow.learner.batch.collate`) adds its
  limits: ``n`` samples, a non-empty prompt of at most ``max_prompt_tokens`` tokens, at most
  ``max_response_tokens`` response tokens, token ids inside ``vocab_size``, and the values (``values=True``):
  a verifier ``Status``, a finite score, finite log-probs <= 0.

It reads a ``ScoredGroup`` message and the learner's ``GroupData`` alike (the same field names). On a message an
empty ``policy_versions`` means the group's version; the learner's ``GroupData`` always carries versions, one per
token or a single one for all. ``ValueError`` names ``where`` and the problem; :class:`ShapeMismatch` (a
``ValueError``) is the part that depends on the request the group answers (its ``n``, its ``max_new_tokens``), so
a group of another configuration's request (a learner resumed with another ``n``) can be told from a broken one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from winnow.sampling import Completion, SamplingConfig, sampling_to_wire
from winnow.verdict import Status, Verdict

if TYPE_CHECKING:
    from winnow.v1 import messages_pb2, verifier_pb2

_STATUSES = frozenset(int(x) for x in Status)
LOGPROB_TOLERANCE = 1e-4
"""A behaviour log-prob above this is not a log-probability (rounding leaves tiny positive values)."""


class ShapeMismatch(ValueError):
    """The group does not answer a request of the reader's configuration: another number of samples, or more response
    tokens than it asks for. Generators follow the request they read, so such a group answers a request made with
    other settings (an earlier lineage's, before the learner was resumed with a new ``n`` or ``max_new_tokens``)."""


def check_sizes(where: str, samples: int, prompt_tokens: int, response_tokens: Sequence[int], *, n: int | None = None,
                min_prompt_tokens: int = 1, max_prompt_tokens: int | None = None,
                max_response_tokens: int | None = None) -> None:
    """The counts of a group against their bounds (no values read): what must hold before anything is
    allocated for it."""
    if not samples:
        raise ValueError(f"{where}: group has no samples")
    if n is not None and samples != n:
        raise ShapeMismatch(f"{where}: group has {samples} samples, expected n={n}")
    if prompt_tokens < min_prompt_tokens:
        raise ValueError(f"{where}: prompt_token_ids is empty")
    if max_prompt_tokens is not None and prompt_tokens > max_prompt_tokens:
        raise ValueError(f"{where}: {prompt_tokens} prompt tokens, more than the {max_prompt_tokens} allowed "
                         "(max_prompt_tokens)")
    if max_response_tokens is not None:
        for i, r in enumerate(response_tokens):
            if r > max_response_tokens:
                raise ShapeMismatch(f"{where} sample {i}: {r} response tokens, more than the {max_response_tokens} "
                                    "allowed")


def check_group(
    g: Any,
    n: int | None = None,
    *,
    where: str = "",
    ids: bool = False,
    values: bool = True,
    min_prompt_tokens: int = 1,
    vocab_size: int | None = None,
    max_response_tokens: int | None = None,
    max_prompt_tokens: int | None = None,
) -> None:
    """The one check of a scored group's shape and values (a ``ScoredGroup`` or a ``GroupData``); ``ValueError``
    naming ``where`` and the problem. See the module docstring for who passes which limits.

    ``ids``: request and prompt ids must be set. ``n``: that many samples (any number >= 1 when None).
    ``min_prompt_tokens``/``max_prompt_tokens``/``max_response_tokens``: token counts. ``values``: statuses are
    ``Status`` values, scores finite, behaviour log-probs finite and <= 0, token ids in ``[0, vocab_size)``
    (``vocab_size`` None: any id >= 0). Always: as many behaviour log-probs as response tokens, and one policy version
    per response token or, on a message, none, on a ``GroupData``, a single one.
    """
    wire = hasattr(g, "DESCRIPTOR")  # a protobuf message (else the learner's GroupData)
    where = where or f"group request_id={g.request_id!r} (prompt_id={g.prompt_id!r})"
    if ids:
        for name in ("request_id", "prompt_id"):
            if not getattr(g, name):
                raise ValueError(f"{where}: {name} is empty")
    check_sizes(where, len(g.samples), len(g.prompt_token_ids), [len(s.response_token_ids) for s in g.samples],
                n=n, min_prompt_tokens=min_prompt_tokens, max_prompt_tokens=max_prompt_tokens,
                max_response_tokens=max_response_tokens)
    hi = vocab_size if vocab_size is not None else float("inf")
    if values and any(t < 0 or t >= hi for t in g.prompt_token_ids):
        raise ValueError(f"{where}: prompt token id outside the vocabulary [0, {vocab_size})")
    for i, s in enumerate(g.samples):
        r = len(s.response_token_ids)
        if values and int(s.status) not in _STATUSES:
            raise ValueError(f"{where} sample {i}: status {s.status} is not a verifier Status")
        if values and s.score is not None and not math.isfinite(s.score):
            raise ValueError(f"{where} sample {i}: score {s.score} is not finite")
        if len(s.behaviour_logprobs) != r:
            raise ValueError(
                f"{where} sample {i}: behaviour_logprobs has {len(s.behaviour_logprobs)} entries "
                f"but response_token_ids has {r}"
            )
        versions = len(s.policy_versions)
        if (versions not in (r, 0)) if wire else (versions not in (r, 1) or versions == 0):
            expected = "or none (the group's)" if wire else "or a single version"
            raise ValueError(
                f"{where} sample {i}: policy_versions has {versions} entries; "
                f"expected one per response token ({r}) {expected}"
            )
        if not values:
            continue
        if any(not math.isfinite(x) or x > LOGPROB_TOLERANCE for x in s.behaviour_logprobs):
            bad = next(x for x in s.behaviour_logprobs if not math.isfinite(x) or x > LOGPROB_TOLERANCE)
            raise ValueError(f"{where} sample {i}: behaviour_logprobs must be finite and <= 0, got {bad}")
        if any(t < 0 or t >= hi for t in s.response_token_ids):
            raise ValueError(f"{where} sample {i}: token id outside the vocabulary [0, {vocab_size})")


def check_wire_group(msg: Any) -> None:
    """The structure every consumer of a ``ScoredGroup`` relies on (what the Kafka codec checks)."""
    check_group(msg, where=f"{msg.DESCRIPTOR.name} {msg.request_id!r}", ids=True, values=False, min_prompt_tokens=0)


def build_group(
    request: Any,
    prompt_ids: Sequence[int],
    completions: Sequence[Completion],
    verdicts: Sequence[Verdict],
    *,
    sampling: SamplingConfig,
    version: int,
    generator_id: str,
    generation_seconds: float,
    scoring_seconds: float,
) -> messages_pb2.ScoredGroup:
    """One ScoredGroup for the ``PromptRequest`` ``request``: every sample with its tokens, behaviour log-probs,
    per-token policy version, finish reason, text, status and extracted answer. The generator reports statuses, not
    rewards: the one status -> reward map is the learner's ``algo`` config (``Sample.reward`` stays 0); a
    verifier's scalar score travels unchanged in ``Sample.score``."""
    from winnow.v1 import messages_pb2

    if len(completions) != len(verdicts):
        raise ValueError(f"{len(completions)} completions but {len(verdicts)} verdicts")
    samples = []
    for c, v in zip(completions, verdicts, strict=True):
        if len(c.token_ids) != len(c.logprobs):
            raise ValueError(f"completion has {len(c.token_ids)} tokens but {len(c.logprobs)} log-probs")
        samples.append(
            messages_pb2.Sample(
                response_token_ids=c.token_ids,
                behaviour_logprobs=c.logprobs,
                policy_versions=[version] * len(c.token_ids),
                finish_reason=c.finish_reason,
                text=c.text,
                status=cast("verifier_pb2.Status", int(Status(int(v.status)))),  # the same numbers on the wire
                extracted=v.extracted,
                score=v.score,  # the verifier's scalar score, or unset
            )
        )
    return messages_pb2.ScoredGroup(
        prompt_id=request.prompt_id,
        request_id=request.request_id,
        prompt_token_ids=list(prompt_ids),
        samples=samples,
        sampling=sampling_to_wire(sampling),
        generator_id=generator_id,
        policy_version=version,
        task=request.task,
        created_at=time.time(),
        generation_seconds=generation_seconds,
        scoring_seconds=scoring_seconds,
        problem=request.problem,
        gold=request.gold,
    )
