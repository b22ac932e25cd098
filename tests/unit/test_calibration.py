"""Agreement with the shipped LLM-judge labels; prints the table (see it with `pytest -s`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from remote_introspect.grading.calibration import (
    bootstrap_kappa_ci,
    calibration_table,
    cohen_kappa,
    default_data_dir,
    format_calibration_table,
    pooled_bars_met,
)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return calibration_table()


def test_shipped_data_and_licence_present() -> None:
    d = default_data_dir()
    assert {p.name for p in d.glob("*.csv")} == {"1B.csv", "8B.csv", "70B.csv"}
    assert "MIT License" in (d / "LICENSE-llama-introspection").read_text()


def test_cohen_kappa_known_values() -> None:
    a = np.array([1, 1, 0, 0, 1, 0, 1, 0], bool)
    assert cohen_kappa(a, a) == 1.0
    assert cohen_kappa(a, ~a) == -1.0
    # 2x2 table [[20, 5], [10, 15]]: po = 0.7, pe = 0.5 -> kappa = 0.4
    x = np.array([1] * 25 + [0] * 25, bool)
    y = np.array([1] * 20 + [0] * 5 + [1] * 10 + [0] * 15, bool)
    assert math.isclose(cohen_kappa(x, y), 0.4)
    assert math.isnan(cohen_kappa(np.zeros(5, bool), np.zeros(5, bool)))  # undefined, not 1 or 0


def test_bootstrap_ci_is_reproducible_and_brackets_kappa() -> None:
    rng = np.random.default_rng(1)
    a = rng.random(300) < 0.3
    b = a ^ (rng.random(300) < 0.1)
    ci1, ci2 = bootstrap_kappa_ci(a, b, seed=7), bootstrap_kappa_ci(a, b, seed=7)
    assert ci1 == ci2
    assert ci1[0] < cohen_kappa(a, b) < ci1[1]


def test_table_shape(rows: list[dict]) -> None:
    crits = {r["criterion"] for r in rows}
    assert crits == {"refusal", "affirmative", "identifies", "early_detection", "coherent", "strict"}
    scopes = {r["scope"] for r in rows}
    assert {"1B", "8B", "70B", "1B+8B", "pooled"} <= scopes
    assert {r["split"] for r in rows if r["scope"] == "70B"} == {"held-out"}
    pooled_id = next(r for r in rows if r["criterion"] == "identifies" and r["scope"] == "pooled")
    assert 200 < pooled_id["n"] < 865  # only rows with a concept and a judge label


def test_print_table_and_pooled_bars(rows: list[dict]) -> None:
    text = format_calibration_table(rows)
    print("\n" + text)
    assert "pooled" in text and "held-out" in text
    for crit in ("affirmative", "identifies"):
        r = next(r for r in rows if r["criterion"] == crit and r["scope"] == "pooled")
        assert r["kappa"] >= 0.7, (crit, r)
        assert r["agreement"] >= 0.90, (crit, r)
    assert pooled_bars_met(rows) == {"affirmative": True, "identifies": True}


def test_table_from_an_explicit_dir(tmp_path: Path) -> None:
    src = default_data_dir() / "8B.csv"
    (tmp_path / "8B.csv").write_bytes(src.read_bytes())
    rows = calibration_table(tmp_path, n_boot=50)
    assert {r["scope"] for r in rows} == {"8B", "pooled"}


def test_strict_rows_and_false_strict_hits_line(rows: list[dict]) -> None:
    strict = [r for r in rows if r["criterion"] == "strict"]
    assert {r["scope"] for r in strict} >= {"1B", "8B", "70B", "pooled"}
    pooled = next(r for r in strict if r["scope"] == "pooled")
    assert pooled["n"] > 200 and pooled["false_strict"] <= 3
    text = format_calibration_table(rows)
    assert "false strict hits (ours strict, judge not): " in text and "held for review" in text
    assert f"pooled {pooled['false_strict']} of {pooled['n']}" in text
