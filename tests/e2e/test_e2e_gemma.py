"""End to end on the real embedded default: the PyPI Gemma 3 270M, on CPU, offline, via the CLI.

Slow (the first load converts the GGUF: ~1 min), so it runs a small grid; it is the test that
the README's first command works on a real model.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from helpers import GEMMA_FIRST_RUN, run_cli

pytestmark = pytest.mark.slow


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(args, cwd, timeout=1200)


def test_gemma_270m_end_to_end(gemma_first_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    cache, first = gemma_first_run  # a fresh cache: this run converted the GGUF
    tmp_path = cache.parent
    args = [*GEMMA_FIRST_RUN, "--cache", str(cache)]
    assert first.returncode == 0, first.stderr[-3000:]
    assert "BASE model" in first.stdout and "strict" in first.stdout
    assert "0 failed" in first.stdout
    # Lindsey's positive control is part of the embedded default, shown before the detection table.
    out = first.stdout
    assert out.index("Positive control (Lindsey)") < out.index("Prompt 'lindsey': injected trials")
    db = cache / "results.sqlite"
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT trial_json, response, diagnostics_json FROM trials").fetchall()
        n_vectors = c.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
    # concept 2 × 2 + 2 controls on Lindsey's prompt; positive 2 × 2 + 2 controls on "right now?"
    assert len(rows) == 2 * 2 + 2 + 2 * 2 + 2 and n_vectors == 2
    assert (cache / "models" / "gemma-3-270m-q4_k_m-safetensors" / "model.safetensors").exists()
    injected = [
        (json.loads(t), r, json.loads(d)) for t, r, d in rows if json.loads(t)["condition"] == "concept"
    ]
    controls = [r for t, r, _ in rows if json.loads(t)["condition"] == "control"]
    positive = [
        (json.loads(t), r, json.loads(d)) for t, r, d in rows if json.loads(t)["condition"] == "positive"
    ]
    assert {(t["prompt_set"], t["span"], d["start"]) for t, _, d in positive} == {
        ("lindsey-thinking", "all", 0)
    }
    # The positive control names the injected word; no control names any.
    assert sum(t["concept"][:4] in r.lower() for t, r, _ in positive) >= 2, [r for _, r, _ in positive]
    # The injection reaches the output of a real model: at strength 8 (greedy) the concept shows up
    # in the steered answers and not in the unsteered ones.
    named = [r for t, r, _ in injected if t["concept"][:4].lower() in r.lower()]
    assert len(named) >= 2, [r for _, r, _ in injected]
    assert not any(w in r.lower() for r in controls for w in ("dust", "trump"))
    for _t, _, d in injected:
        assert d["start"] < d["prompt_len"] and d["resid_norm"] > 0
        assert d["injected_norm"] == pytest.approx(8 * d["vector_norm"], rel=1e-3)
    # Same command again: no model work, the same stdout.
    second = _cli(args, tmp_path)
    assert second.returncode == 0 and second.stdout == first.stdout
    assert "generating" not in second.stderr
