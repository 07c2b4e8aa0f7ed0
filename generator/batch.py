"""One batch of prompt requests -> one ScoredGroup per request: format the prompts, sample (one engine call per
``(n, sampling)`` bucket, in a thread: the engine blocks), score every sample, build the groups. Weights never
change inside a batch: every token records the version loaded when the batch began."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from winnow import compute_thread
from winnow.generator.engine import Engine
from winnow.generator.metrics import GeneratorMetrics
from winnow.generator.scoring import Scorer
from winnow.generator.state import GeneratorState, buckets
from winnow.groups import build_group
from winnow.sampling import Completion
from winnow.verdict import Item

if TYPE_CHECKING:
    from winnow.v1.messages_pb2 import PromptRequest, ScoredGroup


async def generate_and_score(
    requests: Sequence[PromptRequest],
    *,
    engine: Engine,
    scorer: Scorer,
    formatter: Callable[[str, list[tuple[str, str]]], list[int]],
    state: GeneratorState,
    metrics: GeneratorMetrics,
    generator_id: str,
) -> list[ScoredGroup]:
    """Generate and score ``requests`` (``PromptRequest`` messages); one ScoredGroup per request, in order."""
    prompt_ids = [formatter(r.problem, [(m.role, m.content) for m in r.messages]) for r in requests]
    samplings = [state.request_sampling(r) for r in requests]
    version = engine.version
    completions: list[list[Completion] | None] = [None] * len(requests)
    gen_seconds = [0.0] * len(requests)
    for (n, _), idx in buckets(requests, samplings).items():
        t0 = time.perf_counter()
        outs = await compute_thread.run(engine.generate, [prompt_ids[i] for i in idx], n, samplings[idx[0]])
        dt = time.perf_counter() - t0
        metrics.generation_seconds.observe(dt)
        for i, out in zip(idx, outs, strict=True):
            completions[i] = out
            gen_seconds[i] = dt
            metrics.tokens.inc(sum(len(c.token_ids) for c in out))
    # Ids are unique by batch position: a request can sit in one batch twice (a re-release
    # after a learner restart redelivered next to the original record); the verifier API
    # refuses duplicate ids, and the learner drops the second group by its request id.
    items = [
        Item(id=f"{i}:{r.request_id}/{j}", response=c.text, gold=r.gold, task=r.task,
             options=dict(r.verifier_options), prompt=r.problem)
        for i, (r, comps) in enumerate(zip(requests, completions, strict=True))
        for j, c in enumerate(comps or [])
    ]
    t0 = time.perf_counter()
    verdicts = await scorer.score(items)
    score_s = time.perf_counter() - t0
    groups, k = [], 0
    for i, r in enumerate(requests):
        comps = completions[i] or []
        groups.append(build_group(r, prompt_ids[i], comps, verdicts[k : k + len(comps)], sampling=samplings[i],
                                  version=version, generator_id=generator_id, generation_seconds=gen_seconds[i],
                                  scoring_seconds=score_s))
        k += len(comps)
    return groups
