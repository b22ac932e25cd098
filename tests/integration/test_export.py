"""`export`: one parquet row per trial with its spec fields, response, grades, diagnostics, backend
and status — checked against the SQLite rows of a real tiny-model run; bad input writes nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import polars as pl
import pytest
from helpers import invoke

from remote_introspect.grading.heuristic import HeuristicGrader

_cli = invoke


def test_one_row_per_trial_matching_the_store(tiny_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.parquet"
    code, stdout, err = _cli("export", "--cache", tiny_cache, "--out", out)
    assert code == 0, err
    assert stdout.strip() == f"wrote 11 rows to {out} (11 usable, 0 flagged by integrity checks)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.parquet"]  # no temp file left
    df = pl.read_parquet(out)
    for col in (
        "key", "experiments", "trial_json", "status", "condition", "concept", "layer", "strength", "strength_mode",
        "span", "sample", "seed", "prompt_set", "model_repo_id", "model_dtype", "max_new_tokens", "temperature",
        "backend", "batch_id", "attempts", "error_class", "response", "response_ids", "diagnostics_json",
        "diag_ratio", "diag_resid_norm", "grader", "grader_version", "refusal", "affirmative", "identifies",
        "early_detection", "coherent", "strict", "integrity", "usable",
    ):  # fmt: skip
        assert col in df.columns, col
    assert df.height == 11 and df["key"].n_unique() == 11
    assert (
        set(df["status"]) == {"done"} and set(df["backend"]) == {"local"} and set(df["integrity"]) == {"ok"}
    )
    assert df["usable"].all()
    assert df.filter(pl.col("condition") == "concept").height == 8
    assert df.filter(pl.col("condition") == "control")["layer"].null_count() == 3
    assert df.filter(pl.col("condition") == "concept")["diag_ratio"].null_count() == 0
    h = HeuristicGrader()
    with sqlite3.connect(tiny_cache / "results.sqlite") as c:
        stored = {
            k: (r, json.loads(ids), json.loads(tj))
            for k, r, ids, tj in c.execute("SELECT key, response, response_ids, trial_json FROM trials")
        }
        grades = {
            k: json.loads(g)
            for k, g in c.execute(
                "SELECT trial_key, grade_json FROM grades WHERE grader='heuristic' AND grader_version=?",
                (h.version,),
            )
        }
        (exp_id,) = c.execute("SELECT id FROM experiments").fetchone()
    for row in df.iter_rows(named=True):
        resp, ids, trial = stored[row["key"]]
        assert row["response"] == resp and row["response_ids"] == ids
        assert row["concept"] == trial["concept"] and row["strength"] == trial["strength"]
        assert row["model_repo_id"] == trial["model"]["repo_id"]
        assert json.loads(row["trial_json"]) == trial
        assert {c: row[c] for c in grades[row["key"]]} == grades[row["key"]]
        assert row["experiments"] == [exp_id]
        assert (row["grader"], row["grader_version"]) == ("heuristic", h.version)


def test_judge_without_grades_gives_null_grades(
    tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)  # choosing whose grades to read needs no key
    out = tmp_path / "x.parquet"
    code, stdout, _ = _cli("export", "--cache", tiny_cache, "--out", out, "--judge", "anthropic:claude-x")
    assert code == 0 and "(0 usable" in stdout
    df = pl.read_parquet(out)
    assert df["strict"].null_count() == 11 and not df["usable"].any() and df["grader"].null_count() == 11


@pytest.mark.parametrize(
    "out,expected",
    [
        ("results.csv", "must end in .parquet"),
        ("missing-dir/results.parquet", "does not exist"),
        (".", "must end in .parquet"),
    ],
)
def test_bad_out_one_line_nothing_written(tiny_cache: Path, tmp_path: Path, out: str, expected: str) -> None:
    code, stdout, err = _cli("export", "--cache", tiny_cache, "--out", tmp_path / out)
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and expected in err
    assert list(tmp_path.iterdir()) == []


def test_missing_cache(tmp_path: Path) -> None:
    code, stdout, err = _cli("export", "--cache", tmp_path / "nope", "--out", tmp_path / "x.parquet")
    assert code == 2 and "no cache" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
