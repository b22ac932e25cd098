"""Helpers the test layers share (imported as `helpers`: tests/ is on sys.path via conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from remote_introspect.cli import app


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
