"""Held-out evaluation inside the learner: greedy accuracy and mean@k with the policy being trained.

Every ``eval.every`` steps the learner formats ``eval.prompts`` held-out problems exactly as the
generators do (:class:`~winnow.generator.config.ChatFormat`), decodes greedily with the
generators' own transformers engine at the trainer's compute precision (``numerics.precision``:
the dtype the generators sample in, see :mod:`winnow.numerics`), scores each answer through its task's route
(``eval.verifier_endpoints``, as the generators route; other tasks: the sandboxed in-process
:class:`~winnow.verifier.engine.MathVerifier`) and reports
``accuracy = #CORRECT / #prompts`` as ``winnow_learner_eval_accuracy{set}``. With ``eval.k > 0`` it
also samples k responses per problem at ``eval.temperature`` and reports
``mean@k = #CORRECT samples / (k * #prompts)`` as ``winnow_learner_eval_mean_at_k{set}``. The problems are
the first ``eval.prompts`` positions of the eval source, the same ones every time, so the curve
is comparable across steps.

Several named sets (``eval.sets: [{name, source, prompts}]``) are decoded together (one batch stream) and
scored per set: each set is exported under its own label, and the call returns an :class:`EvalScores` (the
first set's accuracy, as a float, carrying every set's scores) that
:meth:`~winnow.learner.metrics.LearnerMetrics.observe_eval` exports set by set.

Not implemented here: pass@k (``winnow eval`` computes it after a run, winnow/evaluation.py).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from winnow.chat import ChatFormat, PromptFormatter
from winnow.scoring import Verifier
from winnow.verdict import Item, Status

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class EvalView(Protocol):
    """What the evaluation reads of a trainer (``trainer.eval_view()``): the policy, the precision the generators
    sample in and the version. A :class:`~winnow.learner.step.Trainer` is its own view; the sharded learner's
    rank 0 gathers an unsharded replica (:class:`~winnow.learner.distributed.ShardedTrainer`)."""

    @property
    def model(self) -> torch.nn.Module: ...

    @property
    def compute_dtype(self) -> torch.dtype: ...

    @property
    def version(self) -> int: ...


class Evaluate(Protocol):
    """The held-out evaluation the learner service runs every ``eval.every`` steps (:class:`Evaluator`):
    ``evaluate(view) -> accuracy`` (an :class:`EvalScores` for several sets), the first set's mean@k of that call
    in ``last_mean_at_k`` (None without ``eval.k``)."""

    @property
    def last_mean_at_k(self) -> float | None: ...

    def __call__(self, trainer: EvalView) -> float: ...


@dataclass(frozen=True)
class SetScore:
    """One eval set's result: greedy accuracy, mean@k (None without k), problems."""

    accuracy: float
    mean_at_k: float | None
    problems: int


class EvalScores(float):
    """The scores of every eval set of one evaluation. Its float value is the first set's greedy accuracy (what
    the service's ``evaluate(trainer) -> accuracy`` contract returns); ``sets`` maps name -> :class:`SetScore`."""

    sets: dict[str, SetScore]

    def __new__(cls, sets: dict[str, SetScore]) -> EvalScores:
        if not sets:
            raise ValueError("EvalScores needs at least one set")
        obj = super().__new__(cls, next(iter(sets.values())).accuracy)
        obj.sets = dict(sets)
        return obj


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
        verifier: Verifier | None = None,
        k: int = 0,
        temperature: float = 1.0,
        seed: int = 0,
        endpoints: dict[str, str] | None = None,
        sets: list[tuple[str, int]] | None = None,
    ) -> None:
        """``sets``: ``(name, count)`` in order, partitioning ``problems`` into named sets (None = one set,
        ``heldout``)."""
        if not problems:
            raise ValueError("evaluation needs at least one problem")
        self.sets = sets or [("heldout", len(problems))]
        if sum(n for _, n in self.sets) != len(problems) or any(n < 1 for _, n in self.sets):
            raise ValueError(f"sets {self.sets} do not partition {len(problems)} problems")
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
        self.endpoints = dict(endpoints or {})  # task pattern -> verifier host:port; others in-process
        self.last_responses: list[str] = []
        self.last_mean_at_k: float | None = None
        self._copy: Any = None  # the weights in the compute dtype, when the master weights are not

    def _get_verifier(self) -> Verifier:
        if self._verifier is None:
            from winnow.scoring import routed_verifier

            self._verifier = routed_verifier(self.endpoints, workers=1, timeout_s=2.0)
        return self._verifier

    def generate(self, trainer: EvalView, k: int = 0) -> list[str]:
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

    def correct(self, responses: list[str]) -> list[bool]:
        """Whether the verifier judges each response CORRECT against its problem's gold (``len(responses)`` a
        multiple of the problems: k responses per problem, problem-major)."""
        per = len(responses) // len(self.problems)
        if per < 1 or per * len(self.problems) != len(responses):
            raise ValueError(f"{len(responses)} responses for {len(self.problems)} problems")
        items = [
            Item(id=str(i), response=r, gold=self.problems[i // per].gold, task=self.problems[i // per].task,
                 prompt=self.problems[i // per].problem)
            for i, r in enumerate(responses)
        ]
        return [v.status == Status.CORRECT for v in self._get_verifier().verify_batch(items)]

    def score(self, responses: list[str]) -> float:
        """Fraction of ``responses`` the verifier judges CORRECT (see :meth:`correct`)."""
        ok = self.correct(responses)
        return sum(ok) / len(ok)

    def _per_set(self, ok: list[bool]) -> list[float]:
        """Mean of ``ok`` (problem-major, any number of responses per problem) over each set's problems."""
        per = len(ok) // len(self.problems)
        out, start = [], 0
        for _, n in self.sets:
            part = ok[start * per:(start + n) * per]
            out.append(sum(part) / len(part))
            start += n
        return out

    def __call__(self, trainer: EvalView) -> EvalScores:
        """Every set's greedy accuracy (and mean@k when ``k > 0``) as :class:`EvalScores`: a float equal to the
        first set's accuracy; the first set's mean@k also lands in :attr:`last_mean_at_k`."""
        self.last_responses = self.generate(trainer)
        accuracy = self._per_set(self.correct(self.last_responses))
        mean_at_k: list[float | None] = [None] * len(self.sets)
        if self.k > 0:
            mean_at_k = list(self._per_set(self.correct(self.generate(trainer, self.k))))
            self.last_mean_at_k = mean_at_k[0]
        scores = EvalScores({name: SetScore(acc, mak, n)
                             for (name, n), acc, mak in zip(self.sets, accuracy, mean_at_k, strict=True)})
        for name, s in scores.sets.items():
            log.info("eval at version %d: set %s accuracy %.3f on %d problems%s", trainer.version, name, s.accuracy,
                     s.problems, "" if s.mean_at_k is None else f", mean@{self.k} {s.mean_at_k:.3f}")
        return scores

    def close(self) -> None:
        if self._own_verifier and self._verifier is not None:
            self._verifier.close()
            self._verifier = None


def build_evaluator(cfg: Any, tokenizer: Any) -> Evaluator | None:
    """The evaluator a :class:`~winnow.learner.config.LearnerConfig` asks for, or None (``eval.every = 0``)."""
    from winnow.prompts import make_source

    if not cfg.eval.every:
        return None
    problems: list[Any] = []
    sets: list[tuple[str, int]] = []
    for spec in cfg.eval.resolved_sets():  # eval.sets, or the single set of set_name / source / prompts
        source = make_source(spec.source) if spec.source is not None else make_source(cfg.prompts, split="eval")
        count = min(spec.prompts, len(source))
        if count < 1:
            from winnow.config import ConfigError

            raise ConfigError(f"eval set {spec.name}: its source has no rows (a training source needs "
                              "prompts.holdout > 0)")
        problems += [source.get(i) for i in range(count)]
        sets.append((spec.name, count))
    return Evaluator(
        tokenizer,
        problems,
        chat=cfg.eval.chat,
        max_new_tokens=cfg.eval.max_new_tokens,
        k=cfg.eval.k,
        temperature=cfg.eval.temperature,
        seed=cfg.seed,
        endpoints=cfg.eval.verifier_endpoints,
        sets=sets,
    )
