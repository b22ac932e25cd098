"""The e2e layer's one Gemma conversion: the README's first command runs once per session in a
fresh cache (converting the PyPI GGUF, as a user's first run does); the other Gemma tests link
that converted model into their own caches instead of converting it again (~1 min each)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import GEMMA_FIRST_RUN, run_cli

from remote_introspect.models.loading import GEMMA_DIR_NAME


@pytest.fixture(scope="session")
def gemma_first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """(cache, result) of `GEMMA_FIRST_RUN` in a fresh cache: the session's one GGUF conversion."""
    cwd = tmp_path_factory.mktemp("gemma-first-run")
    cache = cwd / "cache"
    return cache, run_cli([*GEMMA_FIRST_RUN, "--cache", str(cache)], cwd, timeout=1200)


@pytest.fixture
def gemma_cache(gemma_first_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> Path:
    """A fresh cache directory holding (a link to) the session's converted Gemma and nothing else."""
    converted = gemma_first_run[0] / "models" / GEMMA_DIR_NAME
    assert (converted / "model.safetensors").is_file(), gemma_first_run[1].stderr[-3000:]
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / GEMMA_DIR_NAME).symlink_to(converted, target_is_directory=True)
    return cache
