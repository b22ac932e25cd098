"""`scale --models tiny,gemma-270m` and `probe-report --model gemma-270m` end to end through the
CLI, offline, on the real Gemma 3 270M (base model), sharing one cache (one GGUF conversion): the
scaling table has a row per model and the plot is written; the probe–report table has its row,
with the report's probability mass mostly on the digits."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_cli
from PIL import Image

pytestmark = pytest.mark.slow


def test_scale_tiny_and_gemma_270m(tmp_path: Path, gemma_cache: Path) -> None:
    cache = gemma_cache  # the session's converted Gemma, linked in
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

    # probe-report on the same cache (the converted model is reused): one concept, small grid.
    res = run_cli(["probe-report", "--model", "gemma-270m", "--concepts", "wellbeing", "--strengths", "-0.2,0.2",
                   "--cache", str(cache)], tmp_path, timeout=1200)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "gemma-270m is a BASE model" in res.stdout and "mean validated R² 0.12" in res.stdout
    (row,) = [ln.split() for ln in res.stdout.splitlines() if ln.strip().startswith("wellbeing ")]
    # concept layer n contexts acc auc ρ [lo, hi] R² [lo, hi] slope [lo, hi] sign mass range
    assert row[1] == "9" and row[2] == "24" and row[3] == "8"
    assert float(row[-2]) > 0.3  # the base model does answer with a digit after "My rating:"
