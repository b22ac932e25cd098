"""`audit`: the books of a cache — what was run, what is missing, what failed, whether every stored
byte is still what was written, and what the numbers say with how much certainty.

`run_audit(root, judge)` returns one JSON-ready dict (field names are stable and documented in
docs/audit_json.md); `format_audit` renders the same content as text; `exit_code` maps it to the
process exit status: 0 clean, 1 incomplete (trials not done, ungraded, or remote jobs never
collected), 4 an integrity failure (corrupt database, edited or truncated row, missing or altered
vector file), which takes precedence. Read-only: the cache is opened with SQLite `mode=ro`.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

from remote_introspect import keys
from remote_introspect.stats.analysis import kappa_bootstrap_ci, raw_agreement
from remote_introspect.stats.cells import experiment_results
from remote_introspect.store.database import file_sha
from remote_introspect.store.results_frame import (
    CRITERIA,
    CorruptDatabase,
    Problem,
    ResultsFrame,
    check_grade,
    database_check,
    grade_sha_column,
    load_all_grades,
    load_frame,
    open_readonly,
    status_counts,
)

SCHEMA_ID = "remote_introspect.reporting.audit/1"
EXIT_CLEAN, EXIT_INCOMPLETE, EXIT_CORRUPT = 0, 1, 4
KAPPA_BOOT = 1000
# analysis.kappa_bootstrap_ci draws an (n_boot × n) index matrix; past ~5M cells (200 resamples
# of 25k trials) fewer resamples keep memory bounded. The count used is reported.
KAPPA_BOOT_CELLS = 5_000_000
KAPPA_BOOT_MIN = 200


def _clean_json(obj: Any) -> Any:
    """nan/inf -> None, tuples -> lists: the JSON stays strict (no NaN tokens)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean_json(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- vectors


def check_vectors(conn: sqlite3.Connection, root: Path) -> tuple[dict[str, Any], list[Problem]]:
    """Re-hash every vector file against its index rows and re-check each row against its file."""
    from safetensors import SafetensorError, safe_open

    rows = list(conn.execute("SELECT * FROM vectors ORDER BY file, tensor_name"))
    problems: list[Problem] = []
    by_file: dict[str, list[sqlite3.Row]] = {}
    for r in rows:
        by_file.setdefault(r["file"], []).append(r)
        vid = keys.vector_id(r["model_key"], r["recipe_id"], r["layer"], r["concept"])
        if vid != r["id"] or r["tensor_name"] != f"L{r['layer']}/{r['concept']}":
            problems.append(
                Problem(
                    "vector_row_edited",
                    "vector",
                    r["id"],
                    f"index row for {r['tensor_name']} no longer matches its id",
                )
            )
        if keys.recipe_id(r["recipe_json"]) != r["recipe_id"]:
            problems.append(
                Problem(
                    "vector_recipe_mismatch",
                    "vector",
                    r["id"],
                    f"recipe JSON does not hash to recipe id {r['recipe_id']}",
                )
            )
    directory = root / "vectors"
    for name, frows in sorted(by_file.items()):
        path = directory / name
        what = f"holds {len(frows)} indexed vector(s)"
        if not path.is_file():
            problems.append(Problem("vector_file_missing", "vector_file", name, f"file is gone; it {what}"))
            continue
        if len({r["file_sha"] for r in frows}) != 1:
            problems.append(
                Problem(
                    "vector_row_edited", "vector_file", name, "its index rows disagree on the file's sha256"
                )
            )
        digest = file_sha(path)
        if digest != frows[0]["file_sha"]:
            size = path.stat().st_size
            problems.append(
                Problem(
                    "vector_file_sha_mismatch",
                    "vector_file",
                    name,
                    f"sha256 {digest[:12]}… != recorded {frows[0]['file_sha'][:12]}… ({size} bytes): truncated or edited; it {what}",
                )
            )
            continue
        try:
            with safe_open(str(path), framework="pt") as f:
                names = set(f.keys())
                meta = f.metadata() or {}
                for r in frows:
                    if r["tensor_name"] not in names:
                        problems.append(
                            Problem(
                                "vector_tensor_missing",
                                "vector",
                                r["id"],
                                f"{name} has no tensor {r['tensor_name']}",
                            )
                        )
                        continue
                    norm = float(f.get_tensor(r["tensor_name"]).float().norm())
                    if not math.isclose(norm, float(r["norm"]), rel_tol=1e-4, abs_tol=1e-6):
                        problems.append(
                            Problem(
                                "vector_norm_mismatch",
                                "vector",
                                r["id"],
                                f"{r['tensor_name']}: stored norm {r['norm']:.6g} != tensor norm {norm:.6g}",
                            )
                        )
                if meta.get("recipe") not in (None, frows[0]["recipe_json"]):
                    problems.append(
                        Problem(
                            "vector_recipe_mismatch",
                            "vector_file",
                            name,
                            "file metadata recipe differs from its index",
                        )
                    )
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            problems.append(
                Problem("vector_file_unreadable", "vector_file", name, str(err).splitlines()[0][:200])
            )
    indexed = set(by_file)
    extra = (
        sorted(p.name for p in directory.glob("*.safetensors") if p.name not in indexed)
        if directory.is_dir()
        else []
    )
    temps = sorted(p.name for p in directory.glob(".*.tmp")) if directory.is_dir() else []
    summary = {"rows": len(rows), "files": len(by_file), "unindexed_files": extra, "temp_files": temps}
    return summary, problems


def _model_key(row: dict[str, Any]) -> str:
    # The same key runner.run gives the stored vectors of a model (sha of the ModelIdentity).
    identity = {
        "repo_id": row["model_repo_id"],
        "weights_id": row["model_weights_id"],
        "dtype": row["model_dtype"],
        "tokenizer_sha": row["model_tokenizer_sha"],
    }
    return keys.model_key(identity)


# --------------------------------------------------------------------------- agreement


def judge_agreement(grades: pl.DataFrame, keys: set[str] | None = None) -> list[dict[str, Any]]:
    """Cohen's kappa (bootstrap 95% CI) and raw agreement per criterion for every pair of judges
    (grader, version) that graded the same trials; `keys` restricts to those trials."""
    if keys is not None:
        grades = grades.filter(pl.col("trial_key").is_in(list(keys)))
    judges = sorted({(g, v) for g, v in grades.select("grader", "grader_version").iter_rows()})
    out = []
    for a, b in itertools.combinations(judges, 2):
        ga = grades.filter((pl.col("grader") == a[0]) & (pl.col("grader_version") == a[1]))
        gb = grades.filter((pl.col("grader") == b[0]) & (pl.col("grader_version") == b[1]))
        joined = ga.join(gb, on="trial_key", suffix="_b").sort("trial_key")
        if joined.height == 0:
            continue
        per: dict[str, Any] = {}
        n_boot = max(KAPPA_BOOT_MIN, min(KAPPA_BOOT, KAPPA_BOOT_CELLS // joined.height))
        for c in CRITERIA:
            x = joined[c].to_numpy().astype(bool)
            y = joined[f"{c}_b"].to_numpy().astype(bool)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # undefined kappa is reported as null
                k = kappa_bootstrap_ci(x, y, n_boot=n_boot, seed=0)
            per[c] = {
                "raw_agreement": raw_agreement(x, y),
                "kappa": k.kappa,
                "kappa_lo": k.lo,
                "kappa_hi": k.hi,
                "a_positive": int(x.sum()),
                "b_positive": int(y.sum()),
                "bootstrap_resamples": n_boot,
            }
        out.append(
            {
                "a": {"grader": a[0], "version": a[1]},
                "b": {"grader": b[0], "version": b[1]},
                "n": joined.height,
                "criteria": per,
            }
        )
    return _clean_json(out)  # an undefined kappa is None, here and in the JSON


# --------------------------------------------------------------------------- the audit


def _empty_result(root: Path, judge: tuple[str, str], db_status: str) -> dict[str, Any]:
    return {
        "schema": SCHEMA_ID,
        "cache": str(root),
        "judge": {"grader": judge[0], "version": judge[1]},
        "status": "corrupt",
        "exit_code": EXIT_CORRUPT,
        "complete": False,
        "intact": False,
        "database": {"path": str(root / "results.sqlite"), "ok": False, "check": db_status},
        "totals": None,
        "experiments": [],
        "unregistered_trials": 0,
        "failures_by_class": {},
        "integrity": {
            "ok": False,
            "trials_checked": 0,
            "results_rehashed": 0,
            "grades_checked": 0,
            "vectors": None,
            "problems": [
                {
                    "kind": "database_corrupt",
                    "object": "database",
                    "id": "results.sqlite",
                    "detail": db_status,
                }
            ],
        },
        "orphan_jobs": [],
        "interrupted_batches": [],
        "judges": [],
        "agreement": [],
    }


def run_audit(root: Path, judge: str = "heuristic") -> dict[str, Any]:
    """Audit the cache at `root` (see docs/audit_json.md for every field)."""
    return audit_with_frame(root, judge)[0]


def audit_with_frame(root: Path, judge: str = "heuristic") -> tuple[dict[str, Any], ResultsFrame | None]:
    """The audit and the checked frame it was computed from (None when the database is unreadable),
    so `report` reads the cache once."""
    from remote_introspect.store.results_frame import judge_identity

    root = Path(root)
    judge_id = judge_identity(judge)  # a bad judge spec fails here, before reading anything
    try:
        conn = open_readonly(root)
    except CorruptDatabase as err:
        return _clean_json(_empty_result(root, judge_id, f"unreadable: {err}")), None
    try:
        try:
            frame = load_frame(conn, judge)
            return _clean_json(_audit(conn, root, frame, judge_id)), frame
        except sqlite3.DatabaseError as err:
            # Page-level damage can surface only when a damaged page is read.
            return _clean_json(
                _empty_result(root, judge_id, f"{database_check(conn)}; read failed: {err}")
            ), None
    finally:
        conn.close()


def _audit(
    conn: sqlite3.Connection, root: Path, frame: ResultsFrame, judge_id: tuple[str, str]
) -> dict[str, Any]:
    db_status = database_check(conn)
    df = frame.df
    problems = list(frame.problems)

    # Grades of every judge (the chosen one was checked in load_frame).
    trial_keys = set(df["key"].to_list())
    grades_checked = 0
    orphan_grades: Counter[tuple[str, str]] = Counter()
    q = (
        f"SELECT g.trial_key, g.grader, g.grader_version, g.grade_json, {grade_sha_column(conn, 'g.')},"
        " t.result_sha FROM grades g LEFT JOIN trials t ON t.key = g.trial_key"
    )
    for r in conn.execute(q):
        grades_checked += 1
        if r[0] not in trial_keys:
            orphan_grades[(r[1], r[2])] += 1
        elif (r[1], r[2]) != judge_id:
            _, p = check_grade(r[0], r[1], r[2], r[3], stored_sha=r[4], trial_result_sha=r[5])
            if p is not None:
                problems.append(p)
    for (g, v), n in sorted(orphan_grades.items()):
        problems.append(
            Problem("grade_orphan", "grade", f"{g} {v}", f"{n} grade(s) for trials that are not in the cache")
        )

    vec_summary, vec_problems = check_vectors(conn, root)
    problems.extend(vec_problems)
    # Which done trials were produced with a vector that no longer verifies (their results are
    # intact and still counted; the vector must be re-extracted before new trials can use it).
    bad_vector_ids = {p.id for p in vec_problems if p.object == "vector"}
    bad_files = {p.id for p in vec_problems if p.object == "vector_file"}
    if bad_vector_ids or bad_files:
        bad_refs = set()
        for r in conn.execute("SELECT id, model_key, recipe_id, layer, concept, file FROM vectors"):
            if r["id"] in bad_vector_ids or r["file"] in bad_files:
                bad_refs.add((r["model_key"], r["recipe_id"], r["layer"], r["concept"]))
        affected = 0
        for row in df.filter((pl.col("status") == "done") & pl.col("recipe_id").is_not_null()).iter_rows(
            named=True
        ):
            if (_model_key(row), row["recipe_id"], row["layer"], row["concept"]) in bad_refs:
                affected += 1
        vec_summary["done_trials_using_bad_vectors"] = affected
    else:
        vec_summary["done_trials_using_bad_vectors"] = 0

    if db_status != "ok":
        problems.insert(0, Problem("database_corrupt", "database", "results.sqlite", db_status))

    # Batches: remote jobs submitted and never collected; local batches left mid-flight.
    orphan_jobs, interrupted = [], []
    for b in conn.execute("SELECT * FROM batches WHERE status='submitted' ORDER BY created_at"):
        n = len(_json_list(b["trial_keys"]))
        item = {
            "batch_id": b["id"],
            "job_id": b["job_id"],
            "backend": b["backend"],
            "trials": n,
            "attempts": b["attempts"],
            "submitted_at": b["updated_at"],
        }
        (orphan_jobs if b["job_id"] is not None else interrupted).append(item)

    bad_trials = {p.id for p in problems if p.object in ("trial", "grade") and p.id in trial_keys}
    experiments = []
    for e in frame.experiments:
        sub = frame.for_experiment(e.id)
        st = status_counts(sub)
        registered = len(set(e.keys))
        corrupt = int(sub.filter(pl.col("key").is_in(list(bad_trials))).height)
        done_ok = sub.filter((pl.col("status") == "done") & (pl.col("integrity") == "ok"))
        # Readout trials (localization, probes) are graded by their stored floats, not a judge.
        ungraded = int(done_ok.filter(pl.col("strict").is_null() & pl.col("readout_json").is_null()).height)
        failed = sub.filter(pl.col("status") == "failed")
        by_class = dict(Counter(c or "unknown" for c in failed["error_class"].to_list()))
        missing_rows = registered - sub.height
        counts = {
            "planned": registered,
            "done": st["done"],
            "failed": st["failed"],
            "in_flight": st["submitted"],
            "never_run": st["planned"],
            "missing_rows": missing_rows,
            "ungraded": ungraded,
            "corrupt": corrupt,
            "usable": int(sub["usable"].sum()) if sub.height else 0,
        }
        spec = e.spec or {}
        concepts = list(spec.get("concepts") or [])
        usable = sub.filter(pl.col("usable") & pl.col("readout_json").is_null())
        model = sub["model_repo_id"].drop_nulls().unique().sort().to_list()
        experiments.append(
            {
                "id": e.id,
                "name": e.name,
                "created_at": e.created_at,
                "model": spec.get("model"),
                "model_repo_ids": model,
                "concepts": concepts,
                "layers": sorted(int(x) for x in sub["layer"].drop_nulls().unique().to_list()),
                "strengths": sorted(
                    float(x)
                    for x in sub.filter(pl.col("condition") != "control")["strength"]
                    .drop_nulls()
                    .unique()
                    .to_list()
                ),
                "trials": counts,
                "complete": counts["done"] == registered
                and ungraded == 0
                and corrupt == 0
                and missing_rows == 0,
                "failures_by_class": dict(sorted(by_class.items())),
                "prompt_sets": sorted(set(sub["prompt_set"].drop_nulls().to_list())),
                "results": experiment_results(usable, concepts),
            }
        )

    failed_all = df.filter(pl.col("status") == "failed")
    failures: dict[str, dict[str, Any]] = {}
    for cls, msg in failed_all.select("error_class", "error").iter_rows():
        f = failures.setdefault(cls or "unknown", {"count": 0, "example": msg})
        f["count"] += 1
    st_all = status_counts(df)
    done_ok_all = df.filter((pl.col("status") == "done") & (pl.col("integrity") == "ok"))
    totals = {
        "trials": df.height,
        "done": st_all["done"],
        "failed": st_all["failed"],
        "in_flight": st_all["submitted"],
        "never_run": st_all["planned"],
        "ungraded": int(done_ok_all.filter(pl.col("strict").is_null() & pl.col("readout_json").is_null()).height),
        "corrupt": len(bad_trials),
        "usable": int(df["usable"].sum()) if df.height else 0,
        "experiments": len(frame.experiments),
    }
    unregistered = int(df.filter(pl.col("experiments").list.len() == 0).height)
    judges = [
        {"grader": g, "version": v, "graded": n, "chosen": (g, v) == judge_id}
        for (g, v), n in sorted(frame.grade_counts.items())
    ]
    intact_keys = set(df.filter(pl.col("integrity") == "ok")["key"].to_list())
    agreement = judge_agreement(load_all_grades(conn), intact_keys)

    intact = not problems
    complete = (
        all(x["complete"] for x in experiments)
        and not orphan_jobs
        and not interrupted
        and totals["ungraded"] == 0
        and st_all["done"] == df.height
    )
    code = EXIT_CORRUPT if not intact else (EXIT_CLEAN if complete else EXIT_INCOMPLETE)
    return {
        "schema": SCHEMA_ID,
        "cache": str(root),
        "judge": {"grader": judge_id[0], "version": judge_id[1]},
        "status": {EXIT_CLEAN: "clean", EXIT_INCOMPLETE: "incomplete", EXIT_CORRUPT: "corrupt"}[code],
        "exit_code": code,
        "complete": complete,
        "intact": intact,
        "database": {"path": str(root / "results.sqlite"), "ok": db_status == "ok", "check": db_status},
        "totals": totals,
        "experiments": experiments,
        "unregistered_trials": unregistered,
        "failures_by_class": dict(sorted(failures.items())),
        "integrity": {
            "ok": intact,
            "trials_checked": df.height,
            "results_rehashed": st_all["done"],
            "grades_checked": grades_checked,
            "vectors": vec_summary,
            "problems": [p.as_dict() for p in problems],
        },
        "orphan_jobs": orphan_jobs,
        "interrupted_batches": interrupted,
        "judges": judges,
        "agreement": agreement,
    }


def _json_list(text: str | None) -> list[Any]:
    import json

    try:
        out = json.loads(text or "[]")
    except ValueError:
        return []
    return out if isinstance(out, list) else []


# --------------------------------------------------------------------------- text


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def fmt_rate(r: dict[str, Any] | None) -> str:
    """ "k/n rate [lo, hi]" (exact 95%), "0/0 —" when there is nothing to count."""
    if r is None or not r["n"]:
        return "0/0 —"
    return f"{r['k']}/{r['n']} {_pct(r['rate'])} [{_pct(r['lo'])}, {_pct(r['hi'])}]"


def fmt_net(d: dict[str, Any] | None) -> str:
    if d is None:
        return "— (needs injected and control trials)"
    return f"{100 * d['net']:+.1f}% [{100 * d['lo']:+.1f}%, {100 * d['hi']:+.1f}%]"


def format_results(res: dict[str, Any], indent: str = "  ") -> list[str]:
    inj, ctl = res["injected"], res["controls"]
    lines = [
        f"{indent}injected: strict hits {fmt_rate(inj['strict'])}; affirmative∧identifies {fmt_rate(inj['affirmative_identifies'])}",
        f"{indent}          identifies {fmt_rate(inj['identifies'])}; coherent {fmt_rate(inj['coherent'])}; refusals {fmt_rate(inj['refusal'])}",
        f"{indent}controls: false positives (affirmative) {fmt_rate(ctl['false_positive_affirmative'])}; "
        f"(affirmative∧names a concept) {fmt_rate(ctl['false_positive_affirmative_identifies'])}; refusals {fmt_rate(ctl['refusal'])}",
        f"{indent}net detection (strict − affirmative FP): {fmt_net(res['net_strict'])}",
        f"{indent}net detection (affirmative∧identifies, both arms): {fmt_net(res['net_affirmative_identifies'])}",
    ]
    rx = res.get("refusal_excluded")
    if rx:
        lines.append(
            f"{indent}refusals excluded: strict {fmt_rate(rx['strict'])}; FP {fmt_rate(rx['false_positive_affirmative'])}; "
            f"net {fmt_net(rx['net_strict'])}"
        )
    for cond, r in (res.get("other_conditions") or {}).items():
        lines.append(
            f"{indent}{cond} trials: strict {fmt_rate(r['strict'])}; affirmative {fmt_rate(r['affirmative'])}; "
            f"identifies {fmt_rate(r['identifies'])}; coherent {fmt_rate(r['coherent'])}"
        )
    null = res.get("null")
    if null:
        need = ", ".join(f"{100 * t['true_rate']:g}% → {t['n']}" for t in null["trials_needed"])
        lines.append(f"{indent}null: {null['text']}")
        lines.append(
            f"{indent}trials needed to detect a true rate (power 80%, one-sided α 5%, no false positives): {need}"
        )
    return lines


def format_audit(a: dict[str, Any]) -> str:
    out: list[str] = []
    j = a["judge"]
    out.append(f"Cache {a['cache']} — audit against judge {j['grader']} {j['version']}")
    db = a["database"]
    if not db["ok"] and a["totals"] is None:
        out.append(f"DATABASE CORRUPT: {db['check']}")
        for p in a["integrity"]["problems"]:
            out.append(f"  - {p['kind']}: {p['object']} {p['id']}: {p['detail']}")
        out.append("Nothing in this cache can be trusted until the database is restored from a copy.")
        out.append(f"Verdict: CORRUPT (exit {a['exit_code']})")
        return "\n".join(out)
    t = a["totals"]
    out.append(
        f"{t['experiments']} experiment(s), {t['trials']} trials: {t['done']} done, {t['failed']} failed, "
        f"{t['in_flight']} in flight, {t['never_run']} never run; {t['ungraded']} done but ungraded; "
        f"{t['corrupt']} corrupt; {t['usable']} usable"
    )
    for e in a["experiments"]:
        c = e["trials"]
        out.append("")
        out.append(
            f"Experiment {e['name']} [{e['id']}] — model {e['model']} ({', '.join(e['model_repo_ids']) or '?'}), "
            f"prompt(s) {', '.join(e['prompt_sets']) or '—'}, created {e['created_at']}"
        )
        layers = ",".join(str(x) for x in e["layers"]) or "—"
        strengths = ",".join(f"{x:g}" for x in e["strengths"]) or "—"
        out.append(f"  grid: {len(e['concepts'])} concept(s), layers {layers}, strengths {strengths}")
        missing = f", {c['missing_rows']} registered but missing" if c["missing_rows"] else ""
        out.append(
            f"  trials: {c['planned']} planned, {c['done']} done, {c['failed']} failed, {c['in_flight']} in flight, "
            f"{c['never_run']} never run{missing}; {c['ungraded']} done but ungraded; {c['corrupt']} corrupt"
            f" — {'complete' if e['complete'] else 'INCOMPLETE'}"
        )
        if e["failures_by_class"]:
            out.append(
                "  failures by class: " + ", ".join(f"{k} {v}" for k, v in e["failures_by_class"].items())
            )
        out.append(
            f"  results over {c['usable']} usable trials (exact 95% CIs; failed/ungraded/corrupt trials excluded):"
        )
        if not e["results"]:
            out.append("    (no usable trials)")
        for res in e["results"]:
            out.append(f"    prompt {res['prompt_set']}:")
            out.extend(format_results(res, "      "))
    out.append("")
    if a["failures_by_class"]:
        out.append("Failures by class (failed trials are retried by re-running; never counted as negatives):")
        for cls, f in a["failures_by_class"].items():
            out.append(f"  {cls}: {f['count']} trial(s), e.g. {f['example']}")
    else:
        out.append("Failures: none")
    integ = a["integrity"]
    v = integ["vectors"] or {}
    out.append(
        f"Integrity: database check {db['check']}; {integ['trials_checked']} trial keys recomputed, "
        f"{integ['results_rehashed']} results re-hashed, {integ['grades_checked']} grades checked, "
        f"{v.get('rows', 0)} vectors in {v.get('files', 0)} file(s) re-hashed"
    )
    if integ["problems"]:
        out.append(
            f"  {len(integ['problems'])} PROBLEM(S); damaged trial rows are excluded from every statistic:"
        )
        for p in integ["problems"]:
            out.append(f"  - {p['kind']}: {p['object']} {p['id']}: {p['detail']}")
        if v.get("done_trials_using_bad_vectors"):
            out.append(
                f"  {v['done_trials_using_bad_vectors']} done trial(s) were generated with a vector that no longer "
                "verifies; their stored results are intact, but that vector must be re-extracted before new trials."
            )
    if v.get("unindexed_files") or v.get("temp_files"):
        out.append(
            f"  note: {len(v.get('unindexed_files', []))} unindexed vector file(s), "
            f"{len(v.get('temp_files', []))} temp file(s) from interrupted writes (harmless)"
        )
    if a["orphan_jobs"]:
        out.append(f"Orphan remote jobs (submitted, never collected): {len(a['orphan_jobs'])}")
        for b in a["orphan_jobs"]:
            out.append(
                f"  - job {b['job_id']} on {b['backend']}: batch {b['batch_id'][:16]}…, {b['trials']} trials, "
                f"submitted {b['submitted_at']} (re-run the experiment to reattach)"
            )
    else:
        out.append("Orphan remote jobs: none")
    if a["interrupted_batches"]:
        out.append(
            f"Interrupted local batches (killed mid-run; re-run to finish): {len(a['interrupted_batches'])}, "
            f"{sum(b['trials'] for b in a['interrupted_batches'])} trials"
        )
    if a["unregistered_trials"]:
        out.append(f"Trials in no experiment: {a['unregistered_trials']}")
    if a["judges"]:
        out.append(
            "Judges: "
            + "; ".join(
                f"{x['grader']} {x['version']} ({x['graded']} trials{', chosen' if x['chosen'] else ''})"
                for x in a["judges"]
            )
        )
    for pair in a["agreement"]:
        out.append(
            f"Agreement {pair['a']['grader']} {pair['a']['version']} vs {pair['b']['grader']} {pair['b']['version']} "
            f"on {pair['n']} trials:"
        )
        out.extend("  " + line for line in format_agreement_rows(pair))
    verdict = a["status"].upper()
    out.append(f"Verdict: {verdict} (exit {a['exit_code']})")
    return "\n".join(out)


def format_agreement_rows(pair: dict[str, Any]) -> list[str]:
    rows = []
    for crit, s in pair["criteria"].items():
        kappa = (
            "kappa undefined (both constant)"
            if s["kappa"] is None
            else f"kappa {s['kappa']:.2f}"
            + (f" [{s['kappa_lo']:.2f}, {s['kappa_hi']:.2f}]" if s["kappa_lo"] is not None else "")
        )
        rows.append(
            f"{crit:<16} raw {100 * s['raw_agreement']:.1f}%  {kappa}  (positives {s['a_positive']} vs {s['b_positive']})"
        )
    return rows
