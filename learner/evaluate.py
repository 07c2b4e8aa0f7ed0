"""Held-out evaluation inside the learner: greedy accuracy and mean@k with the policy being trained.

Every ``eval.every`` steps the learner formats ``eval.prompts`` held-out problems exactly as the
generators do (:class:`~winnow.generator.config.ChatFormat`), decodes greedily with the
generators' own transformers engine at the trainer's compute precision (``numerics.precision``:
the dtype the generators sample in, see :mod:`winnow.numerics`), scores the answers with the
sandboxed :class:`~winnow.verifier.engine.MathVerifier` and reports
``accuracy = #CORRECT / #prompts`` as ``winnow_learner_eval_accuracy{set}``. With ``eval.k > 0`` it
also samples k responses per problem at ``eval.temperature`` and reports
``mean@k = #CORRECT samples / (k * #prompts)`` as ``winnow_learner_eval_mean_at_k{set}``. The problems are
the first ``eval.prompts`` positions of the eval source, the same ones every time, so the curve
is comparable across steps.

Not implemented here: pass@k, several eval sets per run (one ``set`` label).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from winnow.chat import ChatFormat, PromptFormatter
from winnow.verdict import Item, Status

log = logging.getLogger(__name__)


class Evaluator:
    """``evaluator(trainer) -> accuracy`` on a fixed list of problems; call :meth:`close` at the end."""

    def __init__(
        self,
        tokenizer: Any,
        problems: list[Any],
        *,
        chat: ChatFormat | None = None,
        max_new_tokens: int = 128,
        batch_size: int = 8,
        verifier: Any = None,
        k: int = 0,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> None:
        if not problems:
            raise ValueError("evaluation needs at least one problem")
        self.tokenizer = tokenizer
        self.problems = problems
        self.format = PromptFormatter(tokenizer, chat or ChatFormat())
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self._verifier = verifier
        self._own_verifier = verifier is None
        self.k = k
        self.temperature = temperature
        self.seed = seed
        self.last_responses: list[str] = []
        self.last_mean_at_k: float | None = None
        self._copy: Any = None  # the weights in the compute dtype, when the master weights are not

    def _get_verifier(self):
        if self._verifier is None:
            from winnow.scoring import in_process_verifier

            self._verifier = in_process_verifier(workers=1, timeout_s=2.0)
        return self._verifier

    def generate(self, trainer: Any, k: int = 0) -> list[str]:
        """Greedy responses to every problem, or with ``k > 0`` k sampled responses per problem
        (problem-major order), decoded by the generators' engine at the trainer's compute precision.

        The model is used as is when its parameters already are in that dtype, else a copy in that
        dtype holds the current weights (as a generator holds the published ones). The trainer's model
        is put back in train mode afterwards."""
        import torch

        from winnow.hf_engine import HFEngine
        from winnow.sampling import SamplingConfig

        model = trainer.model
        was_training = model.training
        dtype = trainer.compute_dtype
        if next(model.parameters()).dtype == dtype:
            policy = model
        else:
            if self._copy is None or next(self._copy.parameters()).dtype != dtype:
                self._copy = copy.deepcopy(model).to(dtype)
                for p in self._copy.parameters():
                    p.requires_grad_(False)
            else:
                with torch.no_grad():
                    self._copy.load_state_dict(model.state_dict())
            policy = self._copy
        if k > 0:
            sampling = SamplingConfig(temperature=self.temperature, max_new_tokens=self.max_new_tokens, seed=self.seed)
        else:
            sampling = SamplingConfig(temperature=0.0, max_new_tokens=self.max_new_tokens)
        prompts = [self.format(p.problem, p.messages) for p in self.problems]
        try:
            engine = HFEngine(policy, self.tokenizer, max_batch_sequences=self.batch_size * max(1, k))
            groups = engine.generate(prompts, max(1, k), sampling)
        finally:
            model.train(was_training)
        return [c.text for group in groups for c in group]

    def score(self, responses: list[str]) -> float:
        """Fraction of ``responses`` the verifier judges CORRECT against the problems' golds
        (``len(responses)`` a multiple of the problems: k responses per problem, problem-major)."""
        per = len(responses) // len(self.problems)
        if per < 1 or per * len(self.problems) != len(responses):
            raise ValueError(f"{len(responses)} responses for {len(self.problems)} problems")
        items = [
            Item(id=str(i), response=r, gold=self.problems[i // per].gold, task=self.problems[i // per].task)
            for i, r in enumerate(responses)
        ]
        verdicts = self._get_verifier().verify_batch(items)
        return sum(v.status == Status.CORRECT for v in verdicts) / len(items)

    def __call__(self, trainer: Any) -> float:
        """Greedy accuracy (returned); mean@k, when ``k > 0``, lands in :attr:`last_mean_at_k`."""
        self.last_responses = self.generate(trainer)
        accuracy = self.score(self.last_responses)
        if self.k > 0:
            self.last_mean_at_k = self.score(self.generate(trainer, self.k))
            log.info("eval at version %d: mean@%d %.3f", trainer.version, self.k, self.last_mean_at_k)
        log.info(
            "eval at version %d: accuracy %.3f on %d problems", trainer.version, accuracy, len(self.problems)
        )
        return accuracy

    def close(self) -> None:
        if self._own_verifier and self._verifier is not None:
            self._verifier.close()
            self._verifier = None


def build_evaluator(cfg: Any, tokenizer: Any) -> Evaluator | None:
    """The evaluator a :class:`~winnow.learner.config.LearnerConfig` asks for, or None (``eval.every = 0``)."""
    from winnow.prompts import make_source

    if not cfg.eval.every:
        return None
    if cfg.eval.source is not None:
        source = make_source(cfg.eval.source)
    else:
        source = make_source(cfg.prompts, split="eval")
    count = min(cfg.eval.prompts, len(source))
    problems = [source.get(i) for i in range(count)]
    return Evaluator(
        tokenizer,
        problems,
        chat=cfg.eval.chat,
        max_new_tokens=cfg.eval.max_new_tokens,
        k=cfg.eval.k,
        temperature=cfg.eval.temperature,
        seed=cfg.seed,
    )
