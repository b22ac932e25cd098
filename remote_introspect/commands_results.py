"""CLI commands over the cache and graded results: grade, audit, report, export."""

from __future__ import annotations

from .cli import app  # noqa: F401  (commands register on the shared typer app)
