"""Publishing weights: safetensors into the weight store, then an announcement on Kafka.

Order matters: the file is written atomically and its sha256 computed *before* the
:class:`WeightAnnouncement` ``{version, uri, sha256, format}`` is produced (acks=all) on the
compacted weights topic, so a generator never sees an announcement for a file that is not
complete. The store keeps the newest ``keep`` versions; older folders are deleted after the new
announcement is acknowledged (a generator that is still loading an old version has ``keep - 1``
publications of slack). With ``keep_every`` K > 0 every version divisible by K is kept as well: the run's
policy every K steps, for evaluating it afterwards (``winnow eval``, benchmarks/experiment.py's learning curves).

With LoRA (``learner.lora``) a version is a peft adapter folder instead, ``<store>/v<version:08d>/`` with
``adapter_config.json`` and ``adapter_model.safetensors`` (the announced file; ``format: "peft_adapter"``), written
by :class:`winnow.learner.lora.LoraTrainer`; ``PeftModel.from_pretrained(base, folder)`` opens it.

Layout: ``<store>/v<version:08d>/model.safetensors``, next to the trained model's config, generation
config and tokenizer (``hf_model``, ``hf_tokenizer``; copied from ``<store>/.hf-template``), so each
version folder is a Hugging Face model folder that ``from_pretrained`` and vLLM load as it is. The announced URI is a ``file://`` URI of
the absolute path, or ``<uri_root>/v<version:08d>/model.safetensors`` when generators mount the
store somewhere else.

After writing a version the publisher measures how much of it changed since the previous one in the store
(:func:`changed_fraction`, ``winnow_learner_published_changed_ratio``): the learner trains float32 masters and
publishes (by default) bfloat16, and an update smaller than half a bf16 rounding step leaves a weight's published
value as it was, so at a small learning rate most of the policy the generators sample does not move from one
publication to the next even though the masters do.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from winnow.kafka import WeightAnnouncement, send

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_VERSION_DIR = re.compile(r"^v(\d{8,})$")


def version_dir(store: Path, version: int) -> Path:
    return store / f"v{version:08d}"


SAMPLE_ELEMENTS = 1 << 22
"""About how many elements :func:`changed_fraction` compares (rows of every tensor at one stride)."""


def changed_fraction(old: Path, new: Path, budget: int = SAMPLE_ELEMENTS) -> float | None:
    """Fraction of the weights of safetensors file ``new`` whose stored bytes differ from ``old``'s, estimated on about
    ``budget`` elements: every s-th row (first dimension) of each tensor, one stride s for all tensors, so each tensor
    counts in proportion to its size. Tensors only in one file, or with another shape or dtype, are skipped; None when
    no tensor is comparable. Reads only the sampled rows (memory-mapped), so it is cheap next to writing the file.
    The comparison is bitwise: a value that rounds to the same published number did not change."""
    import torch
    from safetensors import safe_open

    with safe_open(str(old), "pt") as fo, safe_open(str(new), "pt") as fn:
        common = []
        for name in fn.keys():
            if name not in fo.keys():
                continue
            a, b = fo.get_slice(name), fn.get_slice(name)
            if a.get_shape() == b.get_shape() and a.get_dtype() == b.get_dtype():
                common.append((name, a, b))
        total = sum(math.prod(b.get_shape()) for _, _, b in common)
        if total == 0:
            return None
        stride = max(1, total // max(1, budget))
        changed = compared = 0
        for name, a, b in common:
            if not b.get_shape():  # a scalar
                x, y = fo.get_tensor(name), fn.get_tensor(name)
            else:
                x, y = a[::stride], b[::stride]
            # row-major copies (a sliced one-element tensor keeps its stride through .contiguous())
            x = x.reshape(-1).clone(memory_format=torch.contiguous_format)
            y = y.reshape(-1).clone(memory_format=torch.contiguous_format)
            if x.numel() == 0:
                continue
            xb = x.view(torch.uint8).reshape(x.numel(), -1)
            yb = y.view(torch.uint8).reshape(y.numel(), -1)
            changed += int((xb != yb).any(dim=1).sum())
            compared += x.numel()
    return changed / compared if compared else None


def stored_versions(store: Path) -> list[tuple[int, Path]]:
    """``(version, folder)`` of every version folder in ``store``, oldest first."""
    found = []
    for p in store.iterdir() if store.is_dir() else ():
        m = _VERSION_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def previous_version(store: Path, version: int, file: str) -> Path | None:
    """The ``file`` of the newest version below ``version`` in ``store`` (None if there is none)."""
    earlier = [folder / file for v, folder in stored_versions(store) if v < version and (folder / file).is_file()]
    return earlier[-1] if earlier else None


class WeightSource(Protocol):
    """What :meth:`WeightPublisher.write` reads of a trainer: its version and how it writes its weights (every
    rank calls it under data parallelism). A LoRA trainer also names ``weights_format`` and ``weights_file``,
    read when present."""

    @property
    def version(self) -> int: ...

    def save_weights(self, path: str | Path, dtype: torch.dtype | None = None) -> str:
        """Write the weights to ``path`` (cast to ``dtype``), return the hex sha256 of the announced file."""
        ...


class WeightPublisher:
    """Writes ``trainer``'s weights to the store and announces them on ``topic`` via ``producer``."""

    def __init__(
        self,
        store_dir: str | Path,
        producer: Any,
        topic: str,
        *,
        keep: int = 3,
        keep_every: int = 0,
        uri_root: str = "",
        dtype: str | None = None,
        hf_model: Any = None,
        hf_tokenizer: Any = None,
    ) -> None:
        """``dtype``: "bfloat16" / "float32" to cast published tensors to, None or "auto" = as trained."""
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        if keep_every < 0:
            raise ValueError(f"keep_every must be >= 0, got {keep_every}")
        self.store = Path(store_dir).expanduser().resolve()
        self.store.mkdir(parents=True, exist_ok=True)
        self.producer = producer
        self.topic = topic
        self.keep = keep
        self.keep_every = keep_every
        self.uri_root = uri_root.rstrip("/")
        self.dtype = None
        if dtype not in (None, "auto"):
            from winnow.numerics import torch_dtype

            self.dtype = torch_dtype(dtype)
        self.last: WeightAnnouncement | None = None
        self.changed: float | None = None
        """:func:`changed_fraction` of the last written version against the one before it (None: no earlier one)."""
        # with hf_model (the trained model; its config) every version folder is also a Hugging Face folder
        self.hf_template = None
        if hf_model is not None and hasattr(hf_model, "config") and not hasattr(hf_model, "peft_config"):
            from winnow.export import hf_template

            self.hf_template = hf_template(self.store / ".hf-template", hf_model, hf_tokenizer)

    def uri_for(self, path: Path) -> str:
        if self.uri_root:
            return f"{self.uri_root}/{path.relative_to(self.store).as_posix()}"
        return path.as_uri()

    def write(self, trainer: WeightSource) -> WeightAnnouncement:
        """Write the weights of ``trainer.version`` (blocking; run it in a thread) and build the announcement."""
        version = int(trainer.version)
        fmt = getattr(trainer, "weights_format", "safetensors")  # a LoRA trainer: "peft_adapter"
        path = version_dir(self.store, version) / getattr(trainer, "weights_file", "model.safetensors")
        sha256 = trainer.save_weights(path, dtype=self.dtype)
        if fmt == "safetensors" and self.hf_template is not None and path.is_file():  # the rank that wrote them
            from winnow.export import add_hf_files

            add_hf_files(self.hf_template, path.parent)
        self.changed = None
        if path.is_file() and (before := previous_version(self.store, version, path.name)) is not None:
            try:
                self.changed = changed_fraction(before, path)
            except Exception as e:  # a measurement: never a reason not to publish
                log.warning("could not compare v%d's weights with %s: %s", version, before, e)
        return WeightAnnouncement(
            version=version,
            uri=self.uri_for(path),
            sha256=sha256,
            format=fmt,
            created_at=time.time(),
        )

    async def announce(self, ann: WeightAnnouncement) -> None:
        """Produce the announcement (acks=all), then prune old versions."""
        await send(self.producer, self.topic, ann)
        self.last = ann
        log.info("published weights v%d (%s, sha256 %s)", ann.version, ann.uri, ann.sha256[:12])
        self.prune(keep_version=ann.version)

    def prune(self, keep_version: int | None = None) -> list[Path]:
        """Delete all but the newest ``keep`` version folders (never ``keep_version``, nor a version divisible by
        ``keep_every`` when that is > 0)."""
        found = stored_versions(self.store)
        removed = []
        for version, p in found[: max(0, len(found) - self.keep)]:
            if version == keep_version or (self.keep_every and version % self.keep_every == 0):
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        return removed
