"""Integrity checks of stored bytes: each re-verifies one stored object against the hash or key it
was written with, and names what fails as a `Problem` (a stable `kind`; docs/audit_json.md lists
them all). Pure checks: nothing here decides what a failure means for a statistic (`results_frame`
marks such rows unusable; `audit` turns problems into its exit status).

- a trial row: its key is recomputed from its stored `trial_json`; a `done` row's result is re-hashed
  (`keys.result_sha` over key, token ids, text, diagnostics);
- a grade row: it must parse as a `Grade` whose stored `strict` equals its criteria, and match its
  `keys.grade_sha` (with its trial's result hash and the grader identity);
- the vector files: re-hashed against their index rows, each row re-checked against its tensor;
- the database file: SQLite's own page-level check.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from remote_introspect import keys
from remote_introspect.grading.base import Grade
from remote_introspect.keys import grade_sha, result_sha
from remote_introspect.store.database import file_sha


@dataclass(frozen=True)
class Problem:
    """One integrity failure. `kind` is a stable identifier (docs/audit_json.md lists them all)."""

    kind: str
    object: str  # database | experiment | trial | grade | vector | vector_file
    id: str  # trial key, experiment id, vector file name, ... (what to look up)
    detail: str  # one line for humans

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def line(self) -> str:
        return f"{self.kind}: {self.object} {self.id}: {self.detail}"


def database_check(conn: sqlite3.Connection) -> str:
    """SQLite's own page-level check ("ok" or its first complaints, joined on one line)."""
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
    except sqlite3.Error as err:
        return f"unreadable: {err}"
    return "ok" if rows == ["ok"] else "; ".join(rows)


# --------------------------------------------------------------------------- trial and grade rows


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def check_trial(row: sqlite3.Row) -> tuple[dict[str, Any] | None, dict[str, Any], list[Problem]]:
    """Parse one trials row and re-verify it: (trial dict or None, parsed result fields, problems).

    The key is recomputed from the stored JSON itself (sha256 of its canonical form, which is how
    `Trial.key` is defined), not through today's `Trial` model: a field added to the model later
    must not make every older row look edited.
    """
    key = row["key"]
    problems: list[Problem] = []
    trial: dict[str, Any] | None = None
    try:
        loaded = json.loads(row["trial_json"])
        if not isinstance(loaded, dict):
            raise ValueError("not a JSON object")
        trial = loaded
    except (ValueError, TypeError) as err:
        first = str(err).splitlines()[0][:200]
        problems.append(
            Problem("trial_json_unreadable", "trial", key, f"stored trial JSON does not parse: {first}")
        )
    if trial is not None:
        recomputed = keys.trial_key(trial)
        if recomputed != key:
            problems.append(
                Problem(
                    "trial_key_mismatch",
                    "trial",
                    key,
                    f"trial JSON hashes to {recomputed[:16]}…, not its key: the trial row was edited",
                )
            )
    parsed: dict[str, Any] = {"response_ids": None, "diagnostics": None, "readout": None}
    readout_text = row["readout_json"] if "readout_json" in row.keys() else None
    if row["status"] == "done":
        missing = [
            c for c in ("response_ids", "response", "diagnostics_json", "result_sha") if row[c] is None
        ]
        if missing:
            problems.append(
                Problem("result_incomplete", "trial", key, f"done but {', '.join(missing)} missing")
            )
        else:
            try:
                ids = _loads(row["response_ids"])
                diag = _loads(row["diagnostics_json"])
                if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                    raise ValueError("response_ids is not a list of integers")
                if not isinstance(diag, dict):
                    raise ValueError("diagnostics is not an object")
                readout = _loads(readout_text)
                if readout is not None and not isinstance(readout, dict):
                    raise ValueError("readout is not an object")
            except ValueError as err:
                problems.append(Problem("result_unreadable", "trial", key, str(err).splitlines()[0][:200]))
            else:
                parsed = {"response_ids": ids, "diagnostics": diag, "readout": readout}
                if result_sha(key, ids, row["response"], diag, readout) != row["result_sha"]:
                    problems.append(
                        Problem(
                            "result_sha_mismatch",
                            "trial",
                            key,
                            "stored response/token ids/diagnostics do not match their sha256: edited or truncated",
                        )
                    )
    return trial, parsed, problems


def check_grade(
    trial_key: str,
    grader: str,
    version: str,
    grade_json: str,
    *,
    stored_sha: str | None,
    trial_result_sha: str | None,
) -> tuple[Grade | None, Problem | None]:
    """Parse a grade row and verify its hash (`store.grade_sha`: the grade's JSON text with its
    trial's result hash and the grader identity). Any edit of `grade_json` is caught."""
    try:
        raw = json.loads(grade_json)
        grade = Grade.model_validate({k: v for k, v in raw.items() if k != "strict"})
        if "strict" in raw and bool(raw["strict"]) != grade.strict:
            raise ValueError("stored 'strict' disagrees with its four criteria")
    except (ValueError, ValidationError, AttributeError) as err:
        detail = f"grade by {grader} {version} unreadable: {str(err).splitlines()[0][:160]}"
        return None, Problem("grade_unreadable", "grade", trial_key, detail)
    if stored_sha is None:
        return None, Problem(
            "grade_unhashed",
            "grade",
            trial_key,
            f"grade by {grader} {version} has no hash (written before grades were hashed, or the hash was "
            "removed); open the cache with a run or `grade --cache` to migrate it",
        )
    if grade_sha(trial_key, trial_result_sha, grader, version, grade_json) != stored_sha:
        return None, Problem(
            "grade_sha_mismatch",
            "grade",
            trial_key,
            f"grade by {grader} {version} does not match its sha256 (with the trial's result and the "
            "grader): the grade or its trial's result was edited",
        )
    return grade, None


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


def vector_model_key(row: dict[str, Any]) -> str:
    # The same key runner.run gives the stored vectors of a model (sha of the ModelIdentity).
    identity = {
        "repo_id": row["model_repo_id"],
        "weights_id": row["model_weights_id"],
        "dtype": row["model_dtype"],
        "tokenizer_sha": row["model_tokenizer_sha"],
    }
    return keys.model_key(identity)
