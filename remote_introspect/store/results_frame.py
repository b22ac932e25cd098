"""The cache as a polars DataFrame: one row per trial, every row checked before anything uses it.

Shared by `audit`, `report`, `export` and a run's own summary, so they cannot disagree about what a
trial is, whether its stored result is intact, or which rows an analysis may count. Reading is
read-only (SQLite opened with `mode=ro`); nothing here writes to the cache. The checks themselves
are in `store.integrity`; statistics over the frame are in `stats.cells`.

A trial row failing any check has `integrity != "ok"` and `usable = False`, and no statistic in
this package counts it. `usable` = done ∧ intact ∧ graded by the chosen judge: the only rows rates
are computed from.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from remote_introspect.errors import UserError
from remote_introspect.grading.base import GRADE_CRITERIA, Grade
from remote_introspect.store.integrity import Problem, check_grade, check_trial

CRITERIA: tuple[str, ...] = (*GRADE_CRITERIA, "strict")
# Grade fields beside the criteria: a response held for review (never strict), Lindsey's own
# success criterion (COHERENCE ∧ AFFIRMATIVE+CORRECT-ID), the rubric, and Lindsey's two verdicts
# where the rubric's own differ (Merrill's).
GRADE_EXTRA: dict[str, pl.DataType] = {
    "needs_review": pl.Boolean(),
    "lindsey_success": pl.Boolean(),
    "rubric": pl.Utf8(),
    "lindsey_coherent": pl.Boolean(),
    "affirmative_correct_id": pl.Boolean(),
}
DIAGNOSTICS: dict[str, pl.DataType] = {
    "prompt_len": pl.Int64(),
    "start": pl.Int64(),
    "vector_norm": pl.Float64(),
    "resid_norm": pl.Float64(),
    "injected_norm": pl.Float64(),
    "ratio": pl.Float64(),
}

SCHEMA: dict[str, pl.DataType] = {
    "key": pl.Utf8(),
    "experiments": pl.List(pl.Utf8()),
    "trial_json": pl.Utf8(),
    # "introspection" (the graded trials) or another trial kind's name ("self-predict": scored by
    # exact parsing, never by a judge, so never "ungraded").
    "kind": pl.Utf8(),
    "status": pl.Utf8(),
    "condition": pl.Utf8(),
    "concept": pl.Utf8(),
    "layer": pl.Int64(),
    "strength": pl.Float64(),
    "strength_mode": pl.Utf8(),
    "span": pl.Utf8(),
    "sample": pl.Int64(),
    "seed": pl.Int64(),
    "prompt_set": pl.Utf8(),
    "prompt_ids_sha": pl.Utf8(),
    "recipe_id": pl.Utf8(),
    "model_repo_id": pl.Utf8(),
    "model_weights_id": pl.Utf8(),
    "model_dtype": pl.Utf8(),
    "model_tokenizer_sha": pl.Utf8(),
    "max_new_tokens": pl.Int64(),
    "temperature": pl.Float64(),
    "top_p": pl.Float64(),
    "backend": pl.Utf8(),
    "batch_id": pl.Utf8(),
    "attempts": pl.Int64(),
    "error_class": pl.Utf8(),
    "error": pl.Utf8(),
    "updated_at": pl.Utf8(),
    "response": pl.Utf8(),
    "response_ids": pl.List(pl.Int64()),
    "diagnostics_json": pl.Utf8(),
    "readout_json": pl.Utf8(),  # a readout trial's floats (localization, probes); null otherwise
    **{f"diag_{k}": v for k, v in DIAGNOSTICS.items()},
    "grader": pl.Utf8(),
    "grader_version": pl.Utf8(),
    **{c: pl.Boolean() for c in CRITERIA},
    **GRADE_EXTRA,
    "integrity": pl.Utf8(),
    "usable": pl.Boolean(),
}


@dataclass
class Experiment:
    id: str
    name: str
    created_at: str
    spec: dict[str, Any] | None
    keys: list[str]


@dataclass
class ResultsFrame:
    df: pl.DataFrame
    experiments: list[Experiment]
    problems: list[Problem] = field(default_factory=list)
    judge: tuple[str, str] = ("heuristic", "")
    grade_counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def for_experiment(self, experiment_id: str) -> pl.DataFrame:
        return self.df.filter(pl.col("experiments").list.contains(experiment_id))


# --------------------------------------------------------------------------- opening the cache


class CorruptDatabase(UserError):
    """The SQLite file itself cannot be read (truncated, overwritten, not a database)."""

    exit_code = 4


def open_readonly(root: Path) -> sqlite3.Connection:
    """The cache's SQLite database, read-only. UserError (one line) when there is no cache."""
    root = Path(root)
    db = root / "results.sqlite"
    if not root.exists():
        raise UserError(f"no cache at {root} (directory does not exist)")
    if not db.is_file():
        raise UserError(f"no cache at {root} (expected {db})")
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        # Damaged bytes inside a text column must surface as a hash mismatch naming the row, not
        # as a decode error that aborts the whole read.
        conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as err:
        # Let the caller name the corruption (audit reports it; others fail with one line).
        raise CorruptDatabase(f"{db}: {err}") from None
    if not {"trials", "experiments", "experiment_trials", "grades"} <= tables:
        conn.close()
        size = db.stat().st_size
        what = "is empty (0 bytes)" if size == 0 else "has no remote_introspect tables"
        raise CorruptDatabase(f"{db} {what}: truncated or overwritten; restore it from a copy")
    return conn


def judge_identity(judge: str) -> tuple[str, str]:
    """(grader name, version) of a judge spec, without building it (no API key needed)."""
    from remote_introspect.grading.heuristic import HeuristicGrader

    if judge == "heuristic":
        return HeuristicGrader.name, HeuristicGrader.version
    from remote_introspect.grading.llm_judge import parse_judge_spec

    spec = parse_judge_spec(judge)
    return spec.name, spec.version


# --------------------------------------------------------------------------- trial fields


def _typed(value: Any, kind: type) -> Any:
    """A JSON value as int/float/str, or None when absent or of the wrong kind."""
    if value is None or isinstance(value, bool):
        return None
    if kind is float and isinstance(value, int | float):
        return float(value)
    if kind is int and isinstance(value, int):
        return value
    if kind is str and isinstance(value, str):
        return value
    return None


def trial_fields(t: dict[str, Any]) -> dict[str, Any]:
    model = t.get("model") if isinstance(t.get("model"), dict) else {}
    gen = t.get("generation") if isinstance(t.get("generation"), dict) else {}
    return {
        "kind": _typed(t.get("kind"), str) or "introspection",
        "condition": _typed(t.get("condition"), str),
        "concept": _typed(t.get("concept"), str),
        "layer": _typed(t.get("layer"), int),
        "strength": _typed(t.get("strength"), float),
        "strength_mode": _typed(t.get("strength_mode"), str),
        "span": _typed(t.get("span"), str),
        "sample": _typed(t.get("sample"), int),
        "seed": _typed(t.get("seed"), int),
        "prompt_set": _typed(t.get("prompt_set"), str),
        "prompt_ids_sha": _typed(t.get("prompt_ids_sha"), str),
        "recipe_id": _typed(t.get("recipe_id"), str),
        "model_repo_id": _typed(model.get("repo_id"), str),
        "model_weights_id": _typed(model.get("weights_id"), str),
        "model_dtype": _typed(model.get("dtype"), str),
        "model_tokenizer_sha": _typed(model.get("tokenizer_sha"), str),
        "max_new_tokens": _typed(gen.get("max_new_tokens"), int),
        "temperature": _typed(gen.get("temperature"), float),
        "top_p": _typed(gen.get("top_p"), float),
    }


# --------------------------------------------------------------------------- the frame


def load_experiments(conn: sqlite3.Connection) -> list[Experiment]:
    members: dict[str, list[str]] = {}
    for r in conn.execute("SELECT experiment_id, trial_key FROM experiment_trials ORDER BY rowid"):
        members.setdefault(r[0], []).append(r[1])
    out = []
    for r in conn.execute("SELECT id, name, spec_json, created_at FROM experiments ORDER BY created_at, id"):
        try:
            spec = json.loads(r["spec_json"])
        except ValueError:
            spec = None
        out.append(Experiment(r["id"], r["name"], r["created_at"], spec, members.get(r["id"], [])))
    return out


def grade_sha_column(conn: sqlite3.Connection, alias: str = "") -> str:
    """`grade_sha`, or NULL for a cache written before grades were hashed (read-only: no migration)."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(grades)")}
    return f"{alias}grade_sha" if "grade_sha" in cols else "NULL"


def _chunks(keys: list[str], n: int = 500) -> Iterable[list[str]]:
    for i in range(0, len(keys), n):
        yield keys[i : i + n]


def load_frame(
    conn: sqlite3.Connection, judge: str = "heuristic", keys: Iterable[str] | None = None
) -> ResultsFrame:
    """Every trial in the cache (or only `keys`: a run's own trials), checked, with the grades
    of `judge` (its current version). The one place trial and grade rows are verified: `audit`,
    `report`, `export` and a run's own summary all count only what passes here."""
    name, version = judge_identity(judge)
    wanted = None if keys is None else list(dict.fromkeys(keys))
    wanted_set = set(wanted or ())
    experiments = load_experiments(conn)
    membership: dict[str, list[str]] = {}
    problems: list[Problem] = []
    for e in experiments:
        if e.spec is None:
            problems.append(
                Problem("experiment_spec_unreadable", "experiment", e.id, "spec JSON does not parse")
            )
        for k in e.keys:
            membership.setdefault(k, []).append(e.id)
    known = {e.id for e in experiments}
    for (eid,) in conn.execute("SELECT DISTINCT experiment_id FROM experiment_trials"):
        if eid not in known:
            problems.append(
                Problem(
                    "experiment_missing",
                    "experiment",
                    eid,
                    "trials are registered to an experiment whose row is gone: the experiments table was edited",
                )
            )

    sha_col = grade_sha_column(conn)
    grade_q = f"SELECT trial_key, grade_json, {sha_col} FROM grades WHERE grader=? AND grader_version=?"
    grade_rows: dict[str, tuple[str, str | None]] = {}
    if wanted is None:
        grade_rows = {r[0]: (r[1], r[2]) for r in conn.execute(grade_q, (name, version))}
    else:
        for chunk in _chunks(wanted):
            q = grade_q + f" AND trial_key IN ({','.join('?' * len(chunk))})"
            grade_rows.update({r[0]: (r[1], r[2]) for r in conn.execute(q, [name, version, *chunk])})
    grade_counts = Counter((r[0], r[1]) for r in conn.execute("SELECT grader, grader_version FROM grades"))

    def trial_rows() -> Iterable[sqlite3.Row]:
        if wanted is None:
            yield from conn.execute("SELECT * FROM trials ORDER BY rowid")
            return
        for chunk in _chunks(wanted):
            q = f"SELECT * FROM trials WHERE key IN ({','.join('?' * len(chunk))}) ORDER BY rowid"
            yield from conn.execute(q, chunk)

    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for r in trial_rows():
        key = r["key"]
        seen.add(key)
        trial, parsed, trial_problems = check_trial(r)
        if key not in membership:
            trial_problems.append(
                Problem(
                    "trial_unregistered",
                    "trial",
                    key,
                    "belongs to no experiment: its experiment rows were deleted",
                )
            )
        grade: Grade | None = None
        if key in grade_rows:
            text, stored = grade_rows[key]
            grade, gp = check_grade(
                key, name, version, text, stored_sha=stored, trial_result_sha=r["result_sha"]
            )
            if gp is not None:
                trial_problems.append(gp)
        problems.extend(trial_problems)
        diag = parsed["diagnostics"] or {}
        row: dict[str, Any] = {
            "key": key,
            "experiments": membership.get(key, []),
            "trial_json": r["trial_json"],
            "status": r["status"],
            "backend": r["backend"],
            "batch_id": r["batch_id"],
            "attempts": r["attempts"],
            "error_class": r["error_class"],
            "error": r["error"],
            "updated_at": r["updated_at"],
            "response": r["response"],
            "response_ids": parsed["response_ids"],
            "diagnostics_json": r["diagnostics_json"],
            "readout_json": r["readout_json"] if "readout_json" in r.keys() else None,
            "grader": name if grade is not None else None,
            "grader_version": version if grade is not None else None,
            "integrity": "ok" if not trial_problems else "; ".join(p.kind for p in trial_problems),
        }
        for k, dtype in DIAGNOSTICS.items():
            v = diag.get(k)
            row[f"diag_{k}"] = (
                (int(v) if dtype == pl.Int64() else float(v)) if isinstance(v, int | float) else None
            )
        row["kind"] = "introspection"
        if trial is not None:
            row.update(trial_fields(trial))
        for c in (*CRITERIA, *GRADE_EXTRA):
            row[c] = getattr(grade, c) if grade is not None else None
        # A readout trial is graded exactly by its stored floats (argmax), a self-prediction answer
        # by exact parsing: neither needs a judge's grade to be usable.
        exact = parsed["readout"] is not None or row["kind"] == "self-predict"
        row["usable"] = r["status"] == "done" and not trial_problems and (grade is not None or exact)
        rows.append(row)

    for e in experiments:
        for k in e.keys:
            if k not in seen and (wanted is None or k in wanted_set):
                problems.append(
                    Problem("trial_missing", "experiment", e.id, f"trial {k} is registered but has no row")
                )
    df = pl.DataFrame(rows, schema=SCHEMA) if rows else pl.DataFrame(schema=SCHEMA)
    return ResultsFrame(df, experiments, problems, (name, version), dict(grade_counts))


def all_grade_rows(conn: sqlite3.Connection) -> Iterable[sqlite3.Row]:
    """Every grade row of every judge, with its trial's result hash (NULL for a grade whose trial is
    gone): trial_key, grader, grader_version, grade_json, grade_sha, result_sha."""
    return conn.execute(
        "SELECT g.trial_key AS trial_key, g.grader AS grader, g.grader_version AS grader_version,"
        f" g.grade_json AS grade_json, {grade_sha_column(conn, 'g.')} AS grade_sha,"
        " t.result_sha AS result_sha FROM grades g LEFT JOIN trials t ON t.key = g.trial_key"
    )


def check_grade_row(r: sqlite3.Row) -> tuple[Grade | None, Problem | None]:
    """`integrity.check_grade` on one row of `all_grade_rows`."""
    return check_grade(
        r["trial_key"],
        r["grader"],
        r["grader_version"],
        r["grade_json"],
        stored_sha=r["grade_sha"],
        trial_result_sha=r["result_sha"],
    )


def load_all_grades(conn: sqlite3.Connection) -> pl.DataFrame:
    """Every intact grade row: trial_key, grader, grader_version and the six criteria."""
    rows = []
    for r in all_grade_rows(conn):
        grade, problem = check_grade_row(r)
        if grade is not None and problem is None:
            rows.append(
                {"trial_key": r["trial_key"], "grader": r["grader"], "grader_version": r["grader_version"]}
                | grade.model_dump()
            )
    schema = {
        "trial_key": pl.Utf8,
        "grader": pl.Utf8,
        "grader_version": pl.Utf8,
        **{c: pl.Boolean for c in CRITERIA},
    }
    return pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
