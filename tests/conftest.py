"""Shared fixtures: offline, tiny random models of three families, a scratch cache."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from remote_introspect import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return tiny_models.build_tiny_tokenizer()


@pytest.fixture(scope="session", params=list(tiny_models.FAMILIES))
def tiny_family(request):
    """(family, hf_model, tokenizer) for llama, gemma and qwen."""
    model, tok = tiny_models.build_tiny_model(request.param)
    return request.param, model, tok


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"
