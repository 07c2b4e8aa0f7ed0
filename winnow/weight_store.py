"""The weight store's file protocol, shared by its writer (the learner), its readers (the generators) and
``winnow export``: the sha256 a ``WeightAnnouncement`` carries and the resolution of its URI.

A file's sha256 is the hex digest of its bytes (:func:`sha256_file`); the learner computes it on the
written file before announcing it, a generator recomputes it before loading, ``winnow export`` records it.
An announced URI is a plain path (a relative one against the store's root) or a ``file://`` URI, and must
name a file inside the store (:func:`resolve_weight_uri`). No torch here: the learner's writer
(``learner/step.save_state_dict``) does the atomic safetensors write and hashes the temporary file with
:func:`sha256_file` before renaming it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

CHUNK_BYTES = 1 << 22
"""Bytes read at a time while hashing (4 MiB)."""


def sha256_file(path: str | Path, *, fsync: bool = False, chunk: int = CHUNK_BYTES) -> str:
    """Hex sha256 of the file at ``path``; with ``fsync`` the file is also flushed to disk (the writer hashes a
    temporary file this way just before renaming it into place)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest()


def resolve_weight_uri(uri: str, root: str = "") -> Path:
    """The local path a weight URI names inside the weight store ``root`` ("" = the current directory): a
    plain path (a relative one against ``root``) or a ``file://`` URI, with symlinks and ``..`` resolved.
    ValueError for a path outside the store (``/etc/passwd``, ``../x``, a symlink leading out) and for other
    schemes (object stores are not supported yet)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"unsupported weight URI scheme {parsed.scheme!r} in {uri!r} (use a path or file://)")
    if "\0" in uri:
        raise ValueError(f"weight URI {uri!r} contains a NUL byte")
    store = Path(root or ".").resolve()
    path = (store / Path(unquote(parsed.path) if parsed.scheme == "file" else uri)).resolve()
    if not path.is_relative_to(store):
        raise ValueError(f"weight URI {uri!r} names {path}, outside the weight store {store} (weights.root)")
    return path
