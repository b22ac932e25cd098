"""`scale --models tiny,gemma-270m` end to end through the installed CLI, offline, on the real
Gemma 3 270M (base model): the table has a row per model and the scaling plot is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_cli
from PIL import Image

pytestmark = pytest.mark.slow


def test_scale_tiny_and_gemma_270m(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = ["scale", "--models", "tiny,gemma-270m", "--concepts", "Dust", "--strengths", "8", "--samples", "2",
            "--controls", "2", "--max-new-tokens", "16", "--conditions", "control", "--cache", str(cache)]  # fmt: skip
    res = run_cli(args, tmp_path, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    rows: dict[str, str] = {}
    for ln in res.stdout.splitlines():  # the first table's rows (the second repeats the models)
        if ln.strip().startswith(("tiny ", "gemma-270m ")):
            rows.setdefault(ln.split()[0], ln)
    assert set(rows) == {"tiny", "gemma-270m"}
    assert " 2/2 " in rows["gemma-270m"] and "268M" in rows["gemma-270m"] and "done" in rows["gemma-270m"]
    assert "Base models (gemma-270m)" in res.stdout
    png = cache / "scaling.png"
    assert "Net detection vs parameters" in Image.open(png).info["Title"]
