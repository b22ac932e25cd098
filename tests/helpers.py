"""Helpers the test layers share (imported as `helpers`: tests/ is on sys.path via conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from remote_introspect.cli import app
from remote_introspect.experiment.spec import ExperimentSpec, GenerationParams

# The API key of the loopback LLM-judge server (`judge_server` in conftest.py): tests assert it
# never reaches the cache, stdout or stderr.
JUDGE_KEY = "fake-judge-KEY-do-not-leak-7f3a9c"


def invoke(*args: object) -> tuple[int, str, str]:
    """The CLI in-process (typer's runner): (exit code, stdout, stderr)."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: `python -m remote_introspect ARGS` in `cwd`, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "remote_introspect", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_spec(**fields: Any) -> ExperimentSpec:
    """The tests' small experiment (the shared `tiny_cache`'s): the tiny model, Dust and Oceans at
    strengths 2 and 8, 2 samples each, 3 controls, up to 4 new tokens. `fields` override any spec
    field; `max_new_tokens` and `temperature` override the generation's."""
    gen = {k: fields.pop(k) for k in ("max_new_tokens", "temperature") if k in fields}
    base: dict[str, Any] = {
        "model": "tiny",
        "concepts": ("Dust", "Oceans"),
        "strengths": (2.0, 8.0),
        "samples": 2,
        "controls": 3,
        "generation": GenerationParams(**{"max_new_tokens": 4, **gen}),
    }
    return ExperimentSpec(**{**base, **fields})
