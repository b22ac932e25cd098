"""Runs are cached and idempotent: a re-run does no model work, a changed knob runs only new
trials, a failure is recorded as failed (never a negative) and retried next time."""

from __future__ import annotations

import json
import sqlite3
from functools import partial
from pathlib import Path

import pytest
from helpers import run_cli_forked, tiny_spec

from remote_introspect.execution import runner
from remote_introspect.execution.backends.local import LocalExecutor
from remote_introspect.execution.runner import RunOptions

_spec = partial(tiny_spec, max_new_tokens=5)


def test_rerun_does_no_model_work_and_same_results(cache_dir: Path, count_generate: list[int]) -> None:
    opts = RunOptions(cache_root=cache_dir, batch_rows=7)
    first = runner.run(_spec(), opts)
    assert first.complete
    assert sum(count_generate) == len(first.trials) == 2 * 2 * 2 + 3
    assert len(count_generate) == 2  # 11 rows in batches of 7: batched, not one call per trial
    count_generate.clear()
    second = runner.run(_spec(), opts)
    assert count_generate == []  # nothing re-executed
    assert second.grades == first.grades
    with sqlite3.connect(cache_dir / "results.sqlite") as c:
        assert c.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 11
        assert c.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 2  # 2 concepts × 1 layer


def test_changing_one_knob_runs_only_new_trials(cache_dir: Path, count_generate: list[int]) -> None:
    opts = RunOptions(cache_root=cache_dir)
    runner.run(_spec(), opts)
    count_generate.clear()
    rep = runner.run(_spec(strengths=(2.0, 8.0, 4.0)), opts)
    assert rep.complete
    assert sum(count_generate) == 2 * 2  # only the new strength's 2 concepts × 2 samples
    count_generate.clear()
    runner.run(_spec(strengths=(2.0, 8.0, 4.0), layers=(1,)), opts)
    # A new layer needs its own vectors and trials; controls are shared, so not rerun.
    assert sum(count_generate) == 2 * 3 * 2


def test_same_command_twice_in_fresh_caches_gives_identical_outputs(tmp_path: Path) -> None:
    a = runner.run(_spec(), RunOptions(cache_root=tmp_path / "a"))
    b = runner.run(_spec(), RunOptions(cache_root=tmp_path / "b"))
    ra = {
        r[0]: r[1]
        for r in sqlite3.connect(tmp_path / "a" / "results.sqlite").execute(
            "SELECT key, response_ids FROM trials"
        )
    }
    rb = {
        r[0]: r[1]
        for r in sqlite3.connect(tmp_path / "b" / "results.sqlite").execute(
            "SELECT key, response_ids FROM trials"
        )
    }
    assert ra == rb and len(ra) == len(a.trials) == len(b.trials)


def test_failed_batch_is_recorded_as_failed_not_negative(cache_dir: Path, monkeypatch) -> None:
    real = LocalExecutor.generate
    state = {"n": 0}

    def flaky(self, batch, on_submitted):
        state["n"] += 1
        if state["n"] == 1:
            on_submitted(None)
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(self, batch, on_submitted)

    monkeypatch.setattr(LocalExecutor, "generate", flaky)
    opts = RunOptions(cache_root=cache_dir, batch_rows=4)
    rep = runner.run(_spec(), opts)
    assert not rep.complete and rep.failed_batches == 1
    failed = [k for k, s in rep.statuses.items() if s == "failed"]
    assert len(failed) == 4
    assert not set(failed) & set(rep.grades), "a failed trial must never be graded (or counted)"
    with sqlite3.connect(cache_dir / "results.sqlite") as c:
        errs = c.execute("SELECT DISTINCT error_class, error FROM trials WHERE status='failed'").fetchall()
    assert errs == [("RuntimeError", "RuntimeError: CUDA out of memory (simulated)")]
    again = runner.run(_spec(), opts)
    assert again.complete and set(failed) <= set(again.grades)


def test_diagnostics_are_recorded_per_trial(cache_dir: Path) -> None:
    rep = runner.run(_spec(), RunOptions(cache_root=cache_dir))
    rows = (
        sqlite3.connect(cache_dir / "results.sqlite")
        .execute("SELECT trial_json, diagnostics_json FROM trials")
        .fetchall()
    )
    for trial_json, diag_json in rows:
        trial, diag = json.loads(trial_json), json.loads(diag_json)
        if trial["condition"] == "concept":
            assert diag["resid_norm"] > 0 and diag["injected_norm"] > 0
            assert diag["ratio"] == pytest.approx(diag["injected_norm"] / diag["resid_norm"], rel=1e-3)
            assert diag["injected_norm"] == pytest.approx(trial["strength"] * diag["vector_norm"], rel=1e-3)
        else:
            assert "resid_norm" not in diag
    assert rep.complete


def test_cli_stdout_identical_on_rerun_and_exit_zero(tmp_path: Path, fresh_forks) -> None:
    cmd = ["replicate-lindsey", "--model", "tiny", "--max-new-tokens", "4", "--concepts", "Dust,Oceans",
           "--cache", str(tmp_path / "c")]  # fmt: skip
    a = run_cli_forked(fresh_forks, cmd, tmp_path)
    b = run_cli_forked(fresh_forks, cmd, tmp_path)
    assert a.returncode == 0 and b.returncode == 0, a.stderr
    assert a.stdout == b.stdout
    assert "strict" in a.stdout and "Controls" in a.stdout and "0 failed" in a.stdout
