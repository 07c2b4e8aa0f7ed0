"""Prompt sources: problems with gold answers, addressed by a position so training can resume. Shared, not
the learner's: the learner trains on them, ``winnow eval`` (:mod:`winnow.evaluation`) evaluates on them.

Every source is a finite, deterministic list of ``N`` rows behind one interface,
:class:`PromptSource`:

- ``len(source)`` is ``N``, the number of rows in the selected split;
- ``source.get(i)`` / ``source[i]`` is the :class:`Problem` at *position* ``i`` for any ``i >= 0``.
  Positions past the end cycle through epochs: position ``i`` is row ``i % N`` of epoch
  ``i // N``. With ``shuffle`` each epoch visits the rows in its own seeded permutation, so the
  same ``(seed, i)`` always gives the same problem, and a learner that checkpoints the next
  position resumes the data stream exactly;
- ``source.iter_from(i)`` yields ``(position, problem)`` forever from ``i``.

Kinds (``make_source(cfg)`` builds one from a typed config, discriminated on ``kind``):

- ``reasoning_gym``: procedural problems from ``reasoning_gym.create_dataset`` (offline,
  deterministic per seed, difficulty set by the generator's config, mixtures through
  ``mixture``). Task name ``rg/<dataset>``; golds are reasoning-gym's answer strings.
  reasoning-gym builds item ``i`` from ``Random(seed + i)``, so seeds ``s`` and ``s + 1`` would give
  the same stream shifted by one: the configured seed is mixed first (:func:`mixed_seed`, sha256 of
  the seed and the dataset name), so every seed gets an independent stream.
- ``jsonl`` / ``parquet``: a file with one problem per row (``problem``/``question`` field,
  ``answer`` field). GSM8K-style answers ending in ``#### 42`` become gold ``42``. File and ``hf``
  sources shuffle by default (each epoch its own order, seeded by ``shuffle_seed``), so two seeds
  train on different streams; ``shuffle: false`` keeps the file's order.
- ``hf``: a Hugging Face ``datasets`` dataset (needs the ``datasets`` package and hub access,
  imported only when used).

Held-out evaluation: ``holdout = k`` sets aside ``k`` rows chosen by a permutation of the whole
file/dataset seeded by ``holdout_seed`` (default: ``shuffle_seed``); ``split: eval`` selects them,
``split: train`` (the default) the others, so the two never overlap, for every seed. Give runs that
must evaluate on the same rows one ``holdout_seed`` and each its own ``shuffle_seed``. ``prompt_id`` is ``<name>/<row>`` with the row index in the full dataset,
stable across splits and epochs.
"""

from __future__ import annotations

import hashlib
import json
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import Field, TypeAdapter, model_validator

from winnow.config import ConfigError, Model


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem: ``prompt_id`` (stable, e.g. ``gsm8k/17``), the text, the gold answer, the task
    name used for verifier routing."""

    prompt_id: str
    problem: str
    gold: str
    task: str
    messages: tuple[tuple[str, str], ...] | None = None
    """The row's chat prompt as ``(role, content)`` turns when the dataset gives one (``problem`` is then
    its last user turn); None for a plain-text problem. See winnow.datasets."""


class ProblemSource(Protocol):
    """What the learner service reads of a prompt source (``LearnerService(source=...)``): the problem at a
    position, positions released in order from the checkpointed one. Every :class:`PromptSource` is one."""

    def get(self, index: int) -> Problem:
        """The problem at position ``index``."""
        ...


class PromptSourceError(ConfigError):
    """A prompt source cannot be built or read (the message names the file, row or field)."""


# ---------------------------------------------------------------------------------------------
# configs


class _SourceBase(Model):
    shuffle: bool = False
    """Visit the rows of each epoch in a seeded random order (a different order every epoch)."""
    shuffle_seed: int = 0
    """Seed of the per-epoch order (and of the held-out selection unless ``holdout_seed`` is set)."""
    holdout: int = Field(default=0, ge=0)
    """Rows set aside for evaluation (chosen by a seeded permutation; never in the train split)."""
    holdout_seed: int | None = None
    """Seed of the held-out selection (None = ``shuffle_seed``): runs that set one ``holdout_seed`` and
    different ``shuffle_seed`` s hold out the same rows and train on them in different orders."""
    split: Literal["train", "eval"] = "train"
    """Which part to serve: "train" (all rows but the held-out ones) or "eval" (the held-out rows)."""
    limit: int | None = Field(default=None, ge=1)
    """Use only the first ``limit`` rows of the file/dataset (before the split)."""


class ReasoningGymSpec(Model):
    """One reasoning-gym dataset in a mixture."""

    name: str = Field(min_length=1)
    """reasoning-gym dataset name (e.g. "basic_arithmetic", "gsm_symbolic")."""
    weight: float = Field(default=1.0, gt=0.0)
    """Relative frequency in the mixture."""
    config: dict[str, Any] = Field(default_factory=dict)
    """The dataset's own options (difficulty: e.g. min_terms, max_digits)."""


class ReasoningGymSourceConfig(_SourceBase):
    """Procedural problems from reasoning-gym (offline, deterministic per seed)."""

    kind: Literal["reasoning_gym"] = "reasoning_gym"
    name: str = "basic_arithmetic"
    """reasoning-gym dataset name, or "composite" with ``mixture``."""
    size: int = Field(default=1000, ge=1, le=10_000_000)
    """Number of problems generated (rows)."""
    seed: int = 42
    """Generator seed: the same seed gives the same problems, and different seeds independent streams (the
    seed is mixed with the dataset name by sha256 before reasoning-gym sees it; see ``raw_seed``)."""
    raw_seed: bool = False
    """Pass ``seed`` to reasoning-gym unmixed. reasoning-gym builds item i from Random(seed + i), so seeds s and
    s + 1 then share all but one problem: only to reproduce runs made before seeds were mixed."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Options passed to the dataset (difficulty knobs, e.g. {"min_terms": 2, "max_terms": 2})."""
    mixture: list[ReasoningGymSpec] = Field(default_factory=list)
    """Datasets to mix (builds reasoning-gym's "composite" dataset); each item keeps its own task name."""
    task: str = ""
    """Task name for verifier routing ("" = "rg/<dataset>" per item)."""

    @model_validator(mode="after")
    def _check(self) -> ReasoningGymSourceConfig:
        if self.name == "composite" and not self.mixture:
            raise ValueError("name 'composite' needs a non-empty mixture")
        return self


class _RowFields(_SourceBase):
    """How a row becomes a problem (winnow.datasets; docs/datasets.md)."""

    shuffle: bool = True
    """Visit the rows of each epoch in an order seeded by ``shuffle_seed`` (a different order every epoch), so
    two seeds train on different streams; false = the file's own order, every epoch."""

    problem_field: str = ""
    """Field holding the prompt: a string or a chat message list; dotted paths reach nested fields
    ("" = the first of problem, question, prompt, query, input)."""
    answer_field: str = ""
    """Field holding the gold (a string or a number; dotted paths, e.g. reward_model.ground_truth;
    "" = the first of answer, ground_truth, reward_model.ground_truth, solution, final_answer, target)."""
    answer_format: Literal["auto", "gsm8k", "boxed", "plain"] = "auto"
    """"gsm8k": the gold is what follows the last "####"; "boxed": the last \\boxed{} (MATH solutions);
    "plain": the field as is; "auto": gsm8k if the gold has "####", else boxed if it has \\boxed, else plain."""
    task_field: str = ""
    """Field holding a per-row task name for verifier routing (e.g. verl's data_source); rows without it
    use ``task``. "" = every row uses ``task``."""


class _FileSourceConfig(_RowFields):
    path: str = Field(min_length=1)
    """Path of the file."""
    id_field: str = ""
    """Field holding a stable id ("" = the row index)."""
    name: str = ""
    """Prefix of prompt ids ("" = the file's stem, e.g. "train")."""
    task: str = "math"
    """Task name for verifier routing."""


class JsonlSourceConfig(_FileSourceConfig):
    """A JSON-lines file, one problem per line."""

    kind: Literal["jsonl"] = "jsonl"


class ParquetSourceConfig(_FileSourceConfig):
    """A Parquet file (needs pyarrow)."""

    kind: Literal["parquet"] = "parquet"


class HFSourceConfig(_RowFields):
    """A Hugging Face ``datasets`` dataset (needs the datasets package and hub or cache access)."""

    kind: Literal["hf"] = "hf"
    dataset: str = Field(min_length=1)
    """Dataset id (e.g. "openai/gsm8k"), a folder written by ``Dataset.save_to_disk``, or a local
    .parquet / .jsonl / .json file."""
    subset: str | None = None
    """Configuration name, e.g. "main"."""
    hf_split: str = "train"
    """The dataset's own split."""
    name: str = ""
    """Prefix of prompt ids ("" = the dataset id's last part)."""
    task: str = "math"
    """Task name for verifier routing."""


PromptSourceConfig = Annotated[
    ReasoningGymSourceConfig | JsonlSourceConfig | ParquetSourceConfig | HFSourceConfig,
    Field(discriminator="kind"),
]
"""Typed config of a prompt source, discriminated on ``kind``."""

_SOURCE_ADAPTER: TypeAdapter[PromptSourceConfig] = TypeAdapter(PromptSourceConfig)


def parse_source_config(data: dict[str, Any]) -> PromptSourceConfig:
    """Validate a plain dict (e.g. from YAML) into the right source config."""
    return _SOURCE_ADAPTER.validate_python(data)


# ---------------------------------------------------------------------------------------------
# sources


class PromptSource(ABC):
    """A finite deterministic list of problems addressed by position (see the module docstring)."""

    name: str

    def __init__(self, rows: int, base: _SourceBase) -> None:
        if rows <= 0:
            raise PromptSourceError(f"prompt source {self.name!r} has no rows")
        if base.holdout >= rows and base.split == "train":
            raise PromptSourceError(
                f"{self.name}: holdout={base.holdout} leaves no training rows out of {rows}"
            )
        if base.split == "eval" and base.holdout == 0:
            raise PromptSourceError(
                f"{self.name}: split 'eval' needs holdout > 0 (the number of held-out rows)"
            )
        self._shuffle = base.shuffle
        self._seed = base.shuffle_seed
        self._rows: range | list[int] = range(rows)
        if base.holdout:
            perm = list(range(rows))
            random.Random(f"holdout:{self._seed if base.holdout_seed is None else base.holdout_seed}").shuffle(perm)
            held = set(perm[: base.holdout])
            self._rows = [r for r in range(rows) if (r in held) == (base.split == "eval")]
        self._epoch_cache: tuple[int, list[int]] | None = None

    @abstractmethod
    def _row(self, row: int) -> Problem:
        """The problem at ``row`` of the full (unsplit) data."""

    def __len__(self) -> int:
        return len(self._rows)

    def row_of(self, index: int) -> int:
        """Row of the full data served at position ``index``."""
        if index < 0:
            raise IndexError(f"position must be >= 0, got {index}")
        n = len(self._rows)
        epoch, offset = divmod(index, n)
        if not self._shuffle:
            return self._rows[offset]
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            order = list(self._rows)
            random.Random(f"epoch:{self._seed}:{epoch}").shuffle(order)
            self._epoch_cache = (epoch, order)
        return self._epoch_cache[1][offset]

    def get(self, index: int) -> Problem:
        """The problem at position ``index`` (cycling through epochs past ``len``)."""
        return self._row(self.row_of(index))

    def __getitem__(self, index: int) -> Problem:
        return self.get(index)

    def epoch_of(self, index: int) -> int:
        return index // len(self._rows)

    def iter_from(self, start: int = 0) -> Iterator[tuple[int, Problem]]:
        """``(position, problem)`` from ``start`` on, forever."""
        i = start
        while True:
            yield i, self.get(i)
            i += 1

    def __iter__(self) -> Iterator[Problem]:
        """One epoch, in position order."""
        for i in range(len(self)):
            yield self.get(i)


def mixed_seed(seed: int, name: str, size: int, spare: int = 0) -> int:
    """The reasoning-gym seed for the configured ``seed`` of dataset ``name``: the first 8 bytes of
    sha256("winnow/reasoning_gym:<name>:<seed>") reduced to ``[0, 2^32 - size - spare)``.

    reasoning-gym builds item i from ``Random(seed + i)`` (some datasets from ``np.random.seed(seed + i)``,
    which needs ``seed + i < 2^32``; a composite gives its k-th part ``seed + k + 1``: ``spare`` >= k + 1), so
    unmixed seeds s and s + 1 share all but one item. Mixed, two seeds' streams overlap only when their
    mixed values fall within ``size`` of each other: probability about ``2 * size / 2^32`` (2e-6 for 5,000
    problems)."""
    digest = hashlib.sha256(f"winnow/reasoning_gym:{name}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**32 - size - spare)


class ReasoningGymSource(PromptSource):
    """reasoning-gym problems; task ``rg/<dataset>`` (or the configured task)."""

    def __init__(self, cfg: ReasoningGymSourceConfig) -> None:
        try:
            import reasoning_gym
        except ImportError as e:  # pragma: no cover - it is a cpu-extra dependency
            raise PromptSourceError("reasoning_gym source needs the reasoning-gym package") from e
        self.name = f"rg/{cfg.name}"
        self._task = cfg.task
        seed = cfg.seed if cfg.raw_seed else mixed_seed(cfg.seed, cfg.name, cfg.size, spare=len(cfg.mixture) + 2)
        try:
            if cfg.mixture:
                from reasoning_gym.composite import DatasetSpec

                specs = [
                    DatasetSpec(name=m.name, weight=m.weight, config=dict(m.config)) for m in cfg.mixture
                ]
                self._ds = reasoning_gym.create_dataset(
                    "composite", size=cfg.size, seed=seed, datasets=specs
                )
            else:
                self._ds = reasoning_gym.create_dataset(cfg.name, size=cfg.size, seed=seed, **cfg.config)
        except (ValueError, TypeError, KeyError, AssertionError) as e:
            raise PromptSourceError(
                f"reasoning_gym dataset {cfg.name!r} with config {cfg.config}: {e}"
            ) from e
        rows = len(self._ds) if cfg.limit is None else min(cfg.limit, len(self._ds))
        super().__init__(rows, cfg)

    def _row(self, row: int) -> Problem:
        entry = self._ds[row]
        source = (entry.get("metadata") or {}).get("source_dataset") or self.name.removeprefix("rg/")
        return Problem(
            prompt_id=f"{self.name}/{row}",
            problem=str(entry["question"]),
            gold=str(entry["answer"]),
            task=self._task or f"rg/{source}",
        )


class _RecordSource(PromptSource):
    """Rows held in memory as dicts (JSONL, Parquet, HF)."""

    def __init__(self, records: list[dict[str, Any]], cfg: _FileSourceConfig | HFSourceConfig, where: str) -> None:
        self._cfg = cfg
        self._where = where
        if cfg.limit is not None:
            records = records[: cfg.limit]
        if not records:
            raise PromptSourceError(f"{where}: no rows")
        from winnow.datasets import ANSWER_FIELDS, PROBLEM_FIELDS, DatasetError, pick_field

        try:
            self._pfield = pick_field(records[0], cfg.problem_field, PROBLEM_FIELDS, "problem_field", where)
            self._afield = pick_field(records[0], cfg.answer_field, ANSWER_FIELDS, "answer_field", where)
        except DatasetError as e:
            raise PromptSourceError(str(e)) from None
        self._records = records
        super().__init__(len(records), cfg)

    def _row(self, row: int) -> Problem:
        from winnow.datasets import DatasetError, get_path, row_problem

        rec = self._records[row]
        cfg = self._cfg
        try:
            rp = row_problem(rec, problem_field=self._pfield, answer_field=self._afield,
                             answer_format=cfg.answer_format, task_field=cfg.task_field, where=self._where,
                             index=row)
            id_field = getattr(cfg, "id_field", "")  # files have one, HF datasets not
            rid = str(get_path(rec, id_field)) if id_field else str(row)
        except DatasetError as e:
            raise PromptSourceError(str(e)) from None
        except KeyError as e:
            raise PromptSourceError(f"{self._where}: row {row} has no field {e.args[0]!r}") from None
        texts = {"problem": rp.problem, "answer": rp.gold, "id": rid,
                 **{f"messages[{i}]": c for i, (_, c) in enumerate(rp.messages or ())}}
        for name, text in texts.items():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:  # a lone surrogate ("\ud800" in JSON): no tokenizer can encode it
                raise PromptSourceError(
                    f"{self._where}: row {row}, {name}: invalid Unicode {text[e.start:e.end]!r} at character {e.start} "
                    "(a lone surrogate); fix or drop the row"
                ) from None
        return Problem(prompt_id=f"{self.name}/{rid}", problem=rp.problem, gold=rp.gold,
                       task=rp.task or cfg.task, messages=rp.messages)


def source_path_problem(cfg: PromptSourceConfig) -> str | None:
    """What is wrong with a file source's ``path`` (``"path: ..."``, one line naming the fix), or None: a jsonl or
    parquet source whose path is missing, or is a folder (a dataset saved by ``datasets``, or a folder of files:
    ``kind: hf`` reads those)."""
    if not isinstance(cfg, JsonlSourceConfig | ParquetSourceConfig):
        return None
    path = Path(cfg.path).expanduser()
    if path.is_file():
        return None
    if path.is_dir():
        return (f"path: {path} is a folder, and kind {cfg.kind} reads one file: for a dataset folder (save_to_disk, "
                f"or a folder of data files) set kind: hf and dataset: {path}; else point path at the .{cfg.kind} file")
    return f"path: {cfg.kind} prompt file not found: {path}"


class JsonlSource(_RecordSource):
    """A JSON-lines file (GSM8K's ``{"question", "answer": "... #### 72"}`` works as is)."""

    def __init__(self, cfg: JsonlSourceConfig) -> None:
        path = Path(cfg.path).expanduser()
        if problem := source_path_problem(cfg):
            raise PromptSourceError(problem)
        self.name = cfg.name or path.stem
        records = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PromptSourceError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
                if not isinstance(rec, dict):
                    raise PromptSourceError(
                        f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}"
                    )
                records.append(rec)
        super().__init__(records, cfg, str(path))


class ParquetSource(_RecordSource):
    """A Parquet file, read with pyarrow."""

    def __init__(self, cfg: ParquetSourceConfig) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise PromptSourceError(
                "parquet prompt sources need pyarrow, which is not installed (pip install pyarrow), "
                "or convert the file to JSONL and use kind: jsonl"
            ) from None
        path = Path(cfg.path).expanduser()
        if problem := source_path_problem(cfg):
            raise PromptSourceError(problem)
        self.name = cfg.name or path.stem
        super().__init__(pq.read_table(path).to_pylist(), cfg, str(path))


class HFDatasetSource(_RecordSource):
    """A Hugging Face dataset (``datasets.load_dataset(dataset, subset, split=hf_split)``)."""

    def __init__(self, cfg: HFSourceConfig) -> None:
        try:
            import datasets
        except ImportError:
            raise PromptSourceError(
                "hf prompt sources need the 'datasets' package (pip install datasets) and access to the "
                "Hugging Face hub or a local datasets cache; offline, use kind: jsonl or reasoning_gym"
            ) from None
        self.name = cfg.name or Path(cfg.dataset.rstrip("/")).stem
        local = Path(cfg.dataset).expanduser()
        try:
            if local.is_dir() and ((local / "dataset_info.json").is_file() or (local / "dataset_dict.json").is_file()):
                ds = datasets.load_from_disk(str(local))  # written by save_to_disk
                if isinstance(ds, datasets.DatasetDict):
                    ds = ds[cfg.hf_split]
            elif local.is_file():  # a local data file: the builder named by its suffix
                builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(
                    local.suffix, local.suffix.lstrip(".")
                )
                ds = datasets.load_dataset(builder, data_files=str(local), split="train")
            else:
                ds = datasets.load_dataset(cfg.dataset, cfg.subset, split=cfg.hf_split)
        except Exception as e:  # network/hub errors come in many types; report them as config errors
            raise PromptSourceError(
                f"could not load HF dataset {cfg.dataset!r} ({cfg.subset}, {cfg.hf_split}): {e}"
            ) from e
        n = len(ds) if cfg.limit is None else min(cfg.limit, len(ds))
        super().__init__([ds[i] for i in range(n)], cfg, f"hf:{cfg.dataset}")


def make_source(
    cfg: PromptSourceConfig | dict[str, Any], split: Literal["train", "eval"] | None = None
) -> PromptSource:
    """Build the prompt source a config describes; ``split`` overrides ``cfg.split`` (e.g. to build
    the held-out eval source from the training config)."""
    if isinstance(cfg, dict):
        cfg = parse_source_config(cfg)
    if split is not None and split != cfg.split:
        cfg = cfg.model_copy(update={"split": split})
    if isinstance(cfg, ReasoningGymSourceConfig):
        return ReasoningGymSource(cfg)
    if isinstance(cfg, JsonlSourceConfig):
        return JsonlSource(cfg)
    if isinstance(cfg, ParquetSourceConfig):
        return ParquetSource(cfg)
    if isinstance(cfg, HFSourceConfig):
        return HFDatasetSource(cfg)
    raise PromptSourceError(f"unknown prompt source config {type(cfg).__name__}")
