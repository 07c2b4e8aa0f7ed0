"""Fixtures of the generator tests: the tiny random Qwen2 + tokenizer from winnow.learner.tiny."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer): tiny random Qwen2 (fp32, tied embeddings) and its ChatML BPE tokenizer."""
    from winnow.learner.tiny import build_tiny_model_and_tokenizer

    return build_tiny_model_and_tokenizer(seed=0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    """A saved tiny model directory (fp32)."""
    from winnow.learner.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)
