"""CLI commands over the cache and graded results: grade, audit, report, export.

stdout carries results only; progress goes to stderr; bad input is one `error:` line on stderr with
a non-zero exit and nothing written.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer

from remote_introspect.cli.app import _fail, app, progress_bar
from remote_introspect.errors import UserError

JUDGE_HELP = "heuristic (offline, default) | anthropic:MODEL[@BASE_URL] | openai:MODEL@BASE_URL"


# --------------------------------------------------------------------------- grading the cache


@dataclass
class CacheGradeResult:
    judge: str
    version: str
    graded: int = 0
    already: int = 0
    failed: int = 0
    skipped_integrity: int = 0
    calls_made: int = 0
    calls_cached: int = 0
    failures: list[str] = field(default_factory=list)
    agreement: list[dict[str, Any]] = field(default_factory=list)
    disagreements: list[dict[str, Any]] = field(default_factory=list)


def grade_cache(
    root: Path,
    judge: str,
    *,
    concurrency: int = 8,
    progress: Any = None,
    judge_kwargs: dict[str, Any] | None = None,
) -> CacheGradeResult:
    """(Re)grade every done, intact trial of the cache that `judge` (at its current version) has
    not graded. A trial the judge could not grade stays ungraded (visible in `audit`)."""
    from remote_introspect.grading.llm_judge import LLMJudge
    from remote_introspect.grading.service import close_grader, grade_rows, make_grader
    from remote_introspect.reporting.judge_agreement import judge_agreement
    from remote_introspect.store.results_frame import (
        judge_identity,
        load_all_grades,
        load_experiments,
        load_frame,
    )

    def protocol_of_experiments(store: Any) -> dict[str, str | None]:
        return {k: (e.spec or {}).get("protocol") for e in load_experiments(store.conn) for k in e.keys}

    from remote_introspect.store.database import Store

    root = Path(root)
    judge_identity(judge)  # bad spec -> UserError before anything is touched
    if not (root / "results.sqlite").is_file():
        raise UserError(f"no cache at {root} (expected {root / 'results.sqlite'})")
    # Built before the store is opened: a missing key fails with nothing written.
    grader: Any = make_grader(
        judge, call_cache=root / "judge_calls.sqlite", concurrency=concurrency, **(judge_kwargs or {})
    )
    result = CacheGradeResult(grader.name, grader.version)
    store = Store(root, create=False)
    try:
        frame = load_frame(store.conn, judge)
        df = frame.df
        done = df.filter(pl.col("status") == "done")
        # Only introspection trials are judged (self-prediction answers are parsed exactly).
        intact = done.filter((pl.col("integrity") == "ok") & (pl.col("kind") == "introspection"))
        result.skipped_integrity = done.height - intact.height
        todo = intact.filter(pl.col("strict").is_null())
        result.already = intact.height - todo.height
        if todo.height:
            rows = todo.select("key", "response", "concept", "prompt_set", "condition").to_dicts()
            protocol_of = protocol_of_experiments(store)
            outcome = grade_rows(grader, rows, lambda r: protocol_of.get(r["key"]), progress)
            result.failures = outcome.failures
            result.calls_made, result.calls_cached = outcome.calls_made, outcome.calls_cached
            ok = {r["key"]: g.model_dump() for r, g in zip(rows, outcome.grades, strict=True) if g is not None}
            if ok:
                store.save_grades(grader.name, grader.version, ok)
            result.graded = len(ok)
            result.failed = len(rows) - len(ok)
        if isinstance(grader, LLMJudge):
            result.disagreements = _offline_vs_judge(store, intact, grader, protocol_of_experiments(store))
        keys = set(df.filter(pl.col("integrity") == "ok")["key"].to_list())
        result.agreement = [
            p
            for p in judge_agreement(load_all_grades(store.conn), keys)
            if (grader.name, grader.version)
            in ((p["a"]["grader"], p["a"]["version"]), (p["b"]["grader"], p["b"]["version"]))
        ]
    finally:
        store.close()
        close_grader(grader)
    return result


def _offline_vs_judge(
    store: Any, intact: pl.DataFrame, judge: Any, protocol_of: dict[str, str | None]
) -> list[dict[str, Any]]:
    """Grade every intact trial the LLM judge graded with the offline grader too (stored, so the
    agreement table below covers them) and return the trials where the two disagree on any
    criterion: key, condition, concept, strength, the differing criteria (offline -> judge), the
    response."""
    from remote_introspect.grading.heuristic import HeuristicGrader
    from remote_introspect.grading.service import grade_rows
    from remote_introspect.store.results_frame import CRITERIA, load_all_grades

    offline = HeuristicGrader()
    grades = load_all_grades(store.conn)
    by = {
        (r["trial_key"], r["grader"], r["grader_version"]): r
        for r in grades.iter_rows(named=True)
        if (r["grader"], r["grader_version"])
        in ((offline.name, offline.version), (judge.name, judge.version))
    }
    rows = [r for r in intact.iter_rows(named=True) if (r["key"], judge.name, judge.version) in by]
    missing = [r for r in rows if (r["key"], offline.name, offline.version) not in by]
    if missing:
        graded = grade_rows(offline, missing, lambda r: protocol_of.get(r["key"])).grades
        new = {r["key"]: g.model_dump() for r, g in zip(missing, graded, strict=True) if g is not None}
        store.save_grades(offline.name, offline.version, new)
        for k, g in new.items():
            by[(k, offline.name, offline.version)] = g
    out = []
    for r in rows:
        a, b = by[(r["key"], offline.name, offline.version)], by[(r["key"], judge.name, judge.version)]
        diff = [c for c in CRITERIA if bool(a.get(c)) != bool(b.get(c))]
        if diff:
            out.append(
                {
                    "key": r["key"],
                    "condition": r.get("condition"),
                    "concept": r.get("concept"),
                    "strength": r.get("strength"),
                    "criteria": {c: (bool(a.get(c)), bool(b.get(c))) for c in diff},
                    "offline_review": bool(a.get("needs_review")),
                    "response": r.get("response") or "",
                }
            )
    return out


def format_disagreements(rows: list[dict[str, Any]], limit: int = 20) -> list[str]:
    """One line per disagreement (offline -> judge), the response quoted on one line."""
    out = []
    for d in rows[:limit]:
        crit = ", ".join(
            f"{c} {'Y' if a else 'N'}->{'Y' if b else 'N'}" for c, (a, b) in d["criteria"].items()
        )
        resp = " ".join(d["response"].split())
        resp = resp if len(resp) <= 160 else resp[:157] + "..."
        where = (
            f"{d['condition']} {d['concept'] or '-'} s={d['strength'] if d['strength'] is not None else '-'}"
        )
        review = " [offline: to review]" if d["offline_review"] else ""
        out.append(f"{d['key'][:12]} {where}: {crit}{review} | {json.dumps(resp, ensure_ascii=False)}")
    if len(rows) > limit:
        out.append(f"... and {len(rows) - limit} more")
    return out


def _write(text: str) -> None:
    # Plain stdout (not rich): deterministic, no markup interpretation of "[...]" in the text.
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command("grade")
def grade(
    input: Annotated[
        Path | None, typer.Option("--input", help="CSV/parquet: id, response, concept, condition.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Graded copy of --input (.csv or .parquet).")
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="Grade the cached trials of this cache directory.")
    ] = None,
    judge: Annotated[str, typer.Option(help=JUDGE_HELP)] = "heuristic",
    calibrate: Annotated[
        bool, typer.Option("--calibrate", help="Agreement with the shipped LLM-judge labels.")
    ] = False,
    concurrency: Annotated[int, typer.Option(help="Parallel requests to an LLM judge.")] = 8,
) -> None:
    """Grade responses: a table file (--input/--output), the cached trials (--cache), or --calibrate."""
    modes = [calibrate, input is not None or output is not None, cache is not None]
    if sum(modes) != 1:
        _fail("choose one of: --input F --output F, --cache DIR, or --calibrate")
    try:
        if calibrate:
            from remote_introspect.grading import get_grader
            from remote_introspect.grading.calibration import (
                calibration_table,
                format_calibration_table,
                rubric_reference_line,
            )

            grader = get_grader(judge) if judge != "heuristic" else None
            _write(format_calibration_table(calibration_table(grader=grader)))
            if grader is None:
                _write(rubric_reference_line(calibration_table(rubric="lindsey", n_boot=200), "lindsey"))
            return
        if input is not None or output is not None:
            if input is None or output is None:
                _fail("--input and --output go together")
            from remote_introspect.grading.table_io import grade_table

            assert input is not None and output is not None
            n = grade_table(input, output, judge)
            _write(f"graded {n} rows with {judge} -> {output}")
            return
        assert cache is not None
        res = _grade_cache_cli(cache, judge, concurrency)
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    _write(
        f"graded {res.graded} trials with {res.judge} {res.version}: {res.already} already graded, "
        f"{res.failed} could not be graded, {res.skipped_integrity} skipped (integrity failure; run audit)"
        + (
            f"; judge calls: {res.calls_made} made, {res.calls_cached} answered from cache"
            if res.calls_made or res.calls_cached
            else ""
        )
    )
    from remote_introspect.reporting.judge_agreement import format_agreement_rows

    for pair in res.agreement:
        _write(
            f"agreement {pair['a']['grader']} {pair['a']['version']} vs {pair['b']['grader']} {pair['b']['version']} "
            f"on {pair['n']} trials:"
        )
        for line in format_agreement_rows(pair):
            _write("  " + line)
    if res.disagreements or res.agreement:
        _write(
            f"disagreements offline heuristic -> {res.judge} (offline -> judge): {len(res.disagreements)} trial(s)"
        )
        for line in format_disagreements(res.disagreements):
            _write("  " + line)
    if res.failed:
        _fail(
            f"{res.failed} trial(s) could not be graded (first: {res.failures[0] if res.failures else 'unknown'}); re-run to retry",
            1,
        )


def _grade_cache_cli(cache: Path, judge: str, concurrency: int) -> CacheGradeResult:
    with progress_bar("judge calls", transient=True) as bar:
        task = bar.add_task("judge", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=max(total, 1))

        return grade_cache(cache, judge, concurrency=concurrency, progress=progress)


# --------------------------------------------------------------------------- audit / report / export


@app.command("audit")
def audit(
    cache: Annotated[Path, typer.Option(help="Cache directory.")] = Path("cache"),
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object (docs/audit_json.md).")] = False,
    judge: Annotated[str, typer.Option(help=f"Whose grades count as 'graded': {JUDGE_HELP}")] = "heuristic",
) -> None:
    """What was run, what is missing, what failed, whether the stored bytes are intact; exit 0 only when clean."""
    from remote_introspect.reporting.audit import run_audit
    from remote_introspect.reporting.audit_text import format_audit

    try:
        result = run_audit(cache, judge)
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    _write(
        json.dumps(result, indent=2, ensure_ascii=False, allow_nan=False)
        if json_out
        else format_audit(result)
    )
    raise typer.Exit(result["exit_code"])


@app.command("report")
def report(
    out: Annotated[Path, typer.Option("--out", help="Output directory (index.html, summary.md, PNGs).")],
    cache: Annotated[Path, typer.Option(help="Cache directory.")] = Path("cache"),
    judge: Annotated[str, typer.Option(help=JUDGE_HELP)] = "heuristic",
    compare: Annotated[
        list[str] | None, typer.Option(help="Two experiments (ids or files), each after --compare: adds `compare A B`.")
    ] = None,
) -> None:
    """HTML report with plots and a markdown summary, written atomically to --out."""
    from remote_introspect.reporting.report import build_report

    if compare is not None and len(compare) != 2:
        _fail(f"--compare takes exactly two experiments (give it twice), got {len(compare)}")
    try:
        res = build_report(cache, out, judge, (compare[0], compare[1]) if compare else None)
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    plots = [f for f in res.files if f.endswith(".png")]
    _write(
        f"wrote {res.out_dir}/index.html, summary.md and {len(plots)} plot(s) for {res.experiments} experiment(s); "
        f"{res.excluded} trial(s) not usable (failed, unrun, ungraded or corrupt) are excluded from every statistic"
    )


@app.command("export")
def export(
    out: Annotated[Path, typer.Option("--out", help="Parquet file to write.")],
    cache: Annotated[Path, typer.Option(help="Cache directory.")] = Path("cache"),
    judge: Annotated[str, typer.Option(help=f"Whose grades to include: {JUDGE_HELP}")] = "heuristic",
) -> None:
    """One row per trial (spec fields, response, grades, diagnostics, backend, status) as parquet."""
    from remote_introspect.reporting.export import export_cache

    try:
        res = export_cache(cache, out, judge)
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    _write(
        f"wrote {res.rows} rows to {res.path} ({res.usable} usable, {res.flagged} flagged by integrity checks)"
    )
    if res.flagged:
        sys.stderr.write(
            f"warning: {res.flagged} row(s) failed integrity checks (column `integrity`); run `audit` for details\n"
        )
