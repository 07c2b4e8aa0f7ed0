"""``winnow export RUN_DIR [--version K] OUT_DIR``: a trained policy as a Hugging Face model folder.

The learner publishes bare ``model.safetensors`` files (``<weights.dir>/v<K>/``) and checkpoints
(``<checkpoint.dir>/step-<K>/trainer.pt``). An export combines one of them with the run's base
model (``learner-config.json``'s ``model``: its config, generation config and tokenizer) into an
ordinary folder::

    OUT_DIR/config.json  generation_config.json  model.safetensors  tokenizer.json ...
    OUT_DIR/winnow-export.json   (run, version, source file, its sha256, the chat format)

that ``AutoModelForCausalLM.from_pretrained(OUT_DIR)``, vLLM (``LLM(model=OUT_DIR)``), lm-eval and
``huggingface-cli upload`` take as it is.

A LoRA run (``learner.lora``) publishes peft adapter folders (``adapter_config.json`` + ``adapter_model.safetensors``)
and checkpoints the peft model. Its export is the adapter folder (with the tokenizer; ``PeftModel.from_pretrained``
over the base, vLLM's ``LoRARequest``), or with ``merge=True`` (``winnow export --merge``) a full model folder as
above, the adapters merged into the base weights (``W0 + (alpha / r) * B @ A``, peft's ``merge_and_unload``). The weights are loaded into the architecture of the
base config (every tensor must match; tied embeddings are re-tied) and written with
``save_pretrained``, so a missing or misnamed tensor is an error here, not a garbage model later.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from winnow.config import ConfigError
from winnow.weight_store import sha256_file

log = logging.getLogger(__name__)

_VERSION_DIR = re.compile(r"^v(\d{8,})$")
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


@dataclass(frozen=True)
class Exported:
    path: Path
    version: int
    source: Path


def _run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "learner-config.json"
    if not path.is_file():
        raise ConfigError(f"{path} not found: RUN_DIR must be a learner run directory (learner.run_dir)")
    return json.loads(path.read_text())


def _resolve_dir(name: str, run_dir: Path) -> Path:
    """A directory from the run's config: absolute, else relative to the current directory, else to RUN_DIR."""
    p = Path(name).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return run_dir / p


def available_versions(run_dir: str | Path) -> dict[int, Path]:
    """Version -> weight file, from the weight store and the checkpoints (the store wins on ties)."""
    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    found: dict[int, Path] = {}
    ckpt = _resolve_dir(cfg.get("checkpoint", {}).get("dir", "runs/checkpoints"), run_dir)
    if ckpt.is_dir():
        for p in ckpt.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and (p / "trainer.pt").is_file():
                found[int(m.group(1))] = p / "trainer.pt"
    store = _resolve_dir(cfg.get("weights", {}).get("dir", "runs/weights"), run_dir)
    if store.is_dir():
        for p in store.iterdir():
            m = _VERSION_DIR.match(p.name)
            if m and (p / "model.safetensors").is_file():
                found[int(m.group(1))] = p / "model.safetensors"
            elif m and (p / "adapter_model.safetensors").is_file() and (p / "adapter_config.json").is_file():
                found[int(m.group(1))] = p / "adapter_model.safetensors"
    return found


def _load_weights(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    version: int | None = None,
    dtype: str = "auto",
    force: bool = False,
    merge: bool = False,
) -> Exported:
    """Export ``version`` (default: the newest) of the run in ``run_dir`` to ``out_dir`` (see module doc)."""
    run_dir, out = Path(run_dir), Path(out_dir)
    cfg = _run_config(run_dir)
    versions = available_versions(run_dir)
    if not versions:
        raise ConfigError(f"{run_dir}: no published weights or checkpoints found (weights.dir, checkpoint.dir)")
    if version is None:
        version = max(versions)
    if version not in versions:
        raise ConfigError(f"--version {version} is not in {run_dir}; available: {sorted(versions)}")
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out} is not empty (use --force to overwrite)")
    source = versions[version]

    from winnow.models import resolve_model

    base = resolve_model(cfg.get("model", "smollm2-135m"))
    lora_run = source.name == "adapter_model.safetensors" or cfg.get("lora") is not None
    if lora_run:
        _export_lora(base, source, cfg.get("lora") or {}, out, dtype=dtype, merge=merge)
    else:  # full fine-tuning: the weights are the model (--merge has nothing to merge)
        write_hf_folder(base, _load_weights(source), out, dtype=dtype)
    (out / "winnow-export.json").write_text(
        json.dumps(
            {
                "run_dir": str(run_dir.resolve()),
                "version": version,
                "source": str(source.resolve()),
                "source_sha256": sha256_file(source),
                "base_model": cfg.get("model"),
                "algo": cfg.get("algo"),
                "chat": cfg.get("chat") or (cfg.get("eval") or {}).get("chat"),  # eval.chat: runs before the shared chat
                "lora": cfg.get("lora"),
                "merged": bool(lora_run and merge),
            },
            indent=2,
        )
    )
    log.info("exported version %d of %s to %s", version, run_dir, out)
    return Exported(out, version, source)


def _export_lora(base: str | Path, source: Path, lora: dict[str, Any], out: Path, *, dtype: str,
                 merge: bool) -> None:
    """A LoRA version (an adapter folder, or a checkpoint's peft state dict) as a merged full model folder, or as
    a peft adapter folder with the base's tokenizer."""
    from transformers import AutoTokenizer

    from winnow.lora import ADAPTER_FILE, load_peft

    if source.name == ADAPTER_FILE:
        model = load_peft(base, adapter=source.parent)
    else:
        model = load_peft(base, peft_state=_load_weights(source), lora=lora)
    if merge:
        merged = model.merge_and_unload()
        write_hf_folder(base, {k: v.detach() for k, v in merged.state_dict().items()}, out, dtype=dtype)
        return
    if out.exists():
        shutil.rmtree(out)
    if dtype != "auto":
        import torch

        model = model.to(getattr(torch, dtype))
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
    _readable(out)


def write_hf_folder(base: str | Path, state_dict: dict[str, Any], out: str | Path, *, dtype: str = "auto") -> Path:
    """Load ``state_dict`` into the architecture of ``base`` (a HF model folder or hub id) and save a
    complete HF folder (config, generation config, tokenizer, safetensors) to ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    config = AutoConfig.from_pretrained(str(base))
    floats = [t for t in state_dict.values() if t.is_floating_point()]
    stored = floats[0].dtype if floats else torch.float32
    target = stored if dtype == "auto" else getattr(torch, dtype)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=target)
    result = model.load_state_dict({k: v.to(target) for k, v in state_dict.items()}, strict=False, assign=True)
    missing = set(result.missing_keys)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
        missing -= {k for k in missing if k.endswith("lm_head.weight")}
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"the weights do not match {base}'s architecture: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(result.unexpected_keys)[:5]}"
        )
    model.config.use_cache = True
    try:
        model.generation_config = GenerationConfig.from_pretrained(str(base))
    except OSError:  # the base has none: the one derived from its config stays
        pass
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
    _readable(out)
    return out


def _readable(folder: Path) -> None:
    """Files as the umask allows (safetensors writes 0600 temp files): a server running as another user
    (a vLLM container) must read the export."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~umask)


def hf_template(folder: str | Path, model: Any, tokenizer: Any = None) -> Path:
    """Write ``model``'s config and generation config (and ``tokenizer``'s files, if given) into ``folder``
    (atomically): the side files that turn a bare ``model.safetensors`` folder into a Hugging Face model
    folder. Taken from the trained model object itself, so they always match its weights."""
    import os

    folder = Path(folder)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.use_cache = True
    config.save_pretrained(str(tmp))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(tmp))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    try:
        os.replace(tmp, folder)
    except OSError:  # an older template is there
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    return folder


def add_hf_files(template: str | Path, dest: str | Path) -> None:
    """Copy the template's side files (config, generation config, tokenizer) next to a published
    ``model.safetensors``, so the version folder loads with ``from_pretrained`` / vLLM as it is."""
    for f in Path(template).iterdir():
        if f.is_file():
            shutil.copy2(f, Path(dest) / f.name)
