"""`self-predict` end to end on the real Gemma 3 270M beside the tiny model, via the CLI, offline:
the table prints, every trial is stored and audited, and a rerun does no model work (same stdout)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from helpers import run_cli

pytestmark = pytest.mark.slow


def test_self_predict_gemma_and_tiny(tmp_path: Path, gemma_cache: Path) -> None:
    cache = gemma_cache  # the session's converted Gemma, linked in
    args = ["self-predict", "--models", "gemma-270m,tiny", "--tasks", "numbers,choices", "--n", "4",
            "--cache", str(cache)]  # fmt: skip
    first = run_cli(args, tmp_path, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout
    assert "target gemma-270m" in out and "target tiny" in out
    assert "cross tiny predicts gemma-270m" in out and "cross gemma-270m predicts tiny" in out
    assert "self − best cross" in out and "numbers/even_odd" in out
    with sqlite3.connect(cache / "results.sqlite") as c:
        rows = [(json.loads(t), s) for t, s in c.execute("SELECT trial_json, status FROM trials")]
    # Per model: 8 object prompts; hypothetical: numbers 4 properties, choices 4 properties.
    assert len(rows) == 2 * (8 + 4 * 4 + 4 * 4) and all(s == "done" for _, s in rows)
    assert {t["kind"] for t, _ in rows} == {"self-predict"}
    audit = run_cli(["audit", "--cache", str(cache)], tmp_path)
    assert audit.returncode == 0 and "Verdict: CLEAN" in audit.stdout, audit.stdout[-2000:]
    again = run_cli(args, tmp_path, timeout=1200)
    assert again.returncode == 0 and again.stdout == out
    assert "generating" not in again.stderr  # nothing left to generate
