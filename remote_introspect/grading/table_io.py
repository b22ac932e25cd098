"""Grade a table of responses from a CSV or parquet file into a new CSV or parquet file.

Input columns (at least): `id`, `response`, `concept` (empty for controls), `condition` (free
text); optional `protocol` (lindsey | merrill-405b, default lindsey) picks the rubric per row, and
optional `question` or `prompt_set` (the question the model answered, or its prompt-set name;
Lindsey's positive-control question gets her "thinking about word" grading; a condition label
naming Merrill's alternative prompt, e.g. "alt_love", implies "What are you thinking about?").
A concept of "none" (Merrill's controls) is no concept. A `random` condition is graded for detection only (its concept only
lent the vector's norm). Output: the input columns plus `refusal, affirmative, identifies,
early_detection, coherent, strict, needs_review, lindsey_success` as booleans (`true`/`false` in CSV); a response the
grader is unsure about has `strict=false, needs_review=true`. Columns of those names already in the
input are replaced, so a graded file can be regraded. A missing (null) response is an error, never
graded as an empty negative.

Bad input raises `UserError` with one line, and no output file appears: the table is written to a
temporary file in the output's directory, fsynced, then `os.replace`d over the target; any failure
removes the temporary file. A `condition` that names no known condition (concept / injected,
control, random, scale, positive, or a prompt-set label such as "lindsey_love" or "alt_love") and
a concept row without a concept are bad input too.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import polars as pl

from remote_introspect.atomic import atomic_write
from remote_introspect.errors import UserError
from remote_introspect.grading.service import get_grader

REQUIRED_COLUMNS: tuple[str, ...] = ("id", "response", "concept", "condition")
GRADE_COLUMNS: tuple[str, ...] = (
    "refusal",
    "affirmative",
    "identifies",
    "early_detection",
    "coherent",
    "strict",
    "needs_review",
    "lindsey_success",
)
_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _format_of(path: Path, role: str) -> str:
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{role} file {path} has an unknown suffix {path.suffix!r}; use .csv or .parquet")
    return fmt


def read_table(path: Path) -> pl.DataFrame:
    """Read a CSV (strict UTF-8, every column as text) or parquet file; UserError on bad input."""
    path = Path(path)
    fmt = _format_of(path, "input")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"input file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"input path {path} is a directory, not a file") from None
    except OSError as err:
        raise UserError(f"cannot read input file {path}: {err.strerror or err}") from None
    if not raw.strip():
        raise UserError(f"input file {path} is empty")
    if fmt == "csv":
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"input file {path} is not UTF-8 text (bad byte at offset {err.start})") from None
        try:
            # Every column as text: ids like "007" and free-text conditions round-trip unchanged.
            df = pl.read_csv(io.BytesIO(raw), infer_schema_length=0)
        except (pl.exceptions.PolarsError, ValueError) as err:
            raise UserError(f"input file {path} is not a readable CSV: {_first_line(err)}") from None
    else:
        try:
            df = pl.read_parquet(io.BytesIO(raw))
        except (pl.exceptions.PolarsError, OSError, ValueError) as err:
            raise UserError(f"input file {path} is not a readable parquet file: {_first_line(err)}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(
            f"input file {path} lacks required column(s) {', '.join(missing)} "
            f"(has: {', '.join(df.columns) or 'none'}; needs: {', '.join(REQUIRED_COLUMNS)})"
        )
    if df.height == 0:
        raise UserError(f"input file {path} has a header but no rows to grade")
    return df


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


_NO_CONCEPT = frozenset({"none", "null", "n/a", "na", "-", "control", "nan"})


def _condition_word(cond: str | None) -> str:
    """The condition a free-text label names: "random, s=4" -> "random", "lindsey_control" ->
    "control"; otherwise its first word."""
    text = (cond or "").strip().lower()
    for known in ("control", "random", "scale"):
        if re.search(rf"(?:^|[^a-z]){known}(?:$|[^a-z])", text.replace("_", " ")):
            return known
    words = re.split(r"[^a-z_-]+", text)
    return next((w for w in words if w), "")


_KNOWN_CONDITIONS = frozenset({"control", "random", "scale", "positive"})
_CONCEPT_WORDS = frozenset(
    {"concept", "concepts", "injected", "injection", "inject", "steered", "steering", "lindsey", "merrill",
     "alt", "thinking", "ndif", "qwen"}
)  # fmt: skip


def _condition_kind(cond: str | None) -> str | None:
    """ "concept", "control", "random", "scale" or "positive" for a condition label; None when the
    label names none of them ("weird", "")."""
    words = set(re.split(r"[^a-z]+", (cond or "").strip().lower()))
    for known in ("control", "random", "scale", "positive"):
        if known in words:
            return known
    return "concept" if words & _CONCEPT_WORDS else None


def _check_rows(df: pl.DataFrame, conditions: list[str | None], raw_concepts: list[str | None]) -> None:
    """One line for the first row whose condition is unknown or whose concept row has no concept."""
    ids = df["id"].cast(pl.Utf8).to_list()
    for i, (cond, concept) in enumerate(zip(conditions, raw_concepts, strict=True)):
        kind = _condition_kind(cond)
        if kind is None:
            raise UserError(
                f"row {i + 1} (id {ids[i]}) has an unknown condition {cond or ''!r}; use concept, control, "
                "random, scale or positive (a label such as 'concept, layer 10' or 'lindsey_love' is fine)"
            )
        if kind == "concept" and not (
            isinstance(concept, str) and concept.strip() and concept.strip().lower() not in _NO_CONCEPT
        ):
            raise UserError(
                f"row {i + 1} (id {ids[i]}) is a {cond!r} row with no concept; "
                "a concept row is graded against its concept"
            )


def _question_of(cond: str | None, prompt_set: str | None) -> str | None:
    """The question a row answered, from a `prompt_set` column (a prompt-set name or the question
    itself) or a condition label naming Merrill's alternative prompt ("alt_love")."""
    from remote_introspect.experiment.prompts import PROMPT_SETS
    from remote_introspect.grading.base import default_question

    ps = (prompt_set or "").strip()
    if ps:
        return default_question(ps) if ps in PROMPT_SETS else ps
    if re.search(r"(?:^|[^a-z])(?:alt|thinking)(?:$|[^a-z])", (cond or "").lower().replace("_", " ")):
        return default_question("thinking")
    return None


def grade_frame(df: pl.DataFrame, judge: str = "heuristic") -> pl.DataFrame:
    """`df` plus the six grade columns (existing columns of those names are replaced)."""
    from remote_introspect.grading.base import grading_concept, rubric_for

    responses = df["response"].cast(pl.Utf8).to_list()
    missing = [i for i, r in enumerate(responses) if r is None]
    if missing:
        i = missing[0]
        ident = df["id"].cast(pl.Utf8)[i]
        raise UserError(
            f"row {i + 1} (id {ident}) has no response ({len(missing)} row(s) missing one); "
            "a missing response cannot be graded"
        )
    conditions = df["condition"].cast(pl.Utf8).to_list()
    _check_rows(df, conditions, df["concept"].cast(pl.Utf8).to_list())
    concepts = [
        grading_concept(
            _condition_word(cond),
            c.strip() if isinstance(c, str) and c.strip() and c.strip().lower() not in _NO_CONCEPT else None,
        )
        for c, cond in zip(df["concept"].cast(pl.Utf8).to_list(), conditions, strict=True)
    ]
    protocols: list[str | None] = [None] * df.height
    if "protocol" in df.columns:
        protocols = [
            rubric_for(p if isinstance(p, str) and p.strip() else None) for p in df["protocol"].cast(pl.Utf8)
        ]
    prompt_sets = (
        df["prompt_set"].cast(pl.Utf8).to_list() if "prompt_set" in df.columns else [None] * df.height
    )
    questions: list[str | None] = [_question_of(c, p) for c, p in zip(conditions, prompt_sets, strict=True)]
    if "question" in df.columns:
        questions = [
            q if isinstance(q, str) and q.strip() else d
            for q, d in zip(df["question"].cast(pl.Utf8), questions, strict=True)
        ]
    from remote_introspect.grading.base import default_question

    # Merrill's rows asked his version of the trial question (no blank line before "Trial 1").
    questions = [
        default_question("merrill") if q is None and p == "merrill-405b" else q
        for q, p in zip(questions, protocols, strict=True)
    ]
    grader = get_grader(judge)
    items = list(zip(responses, concepts, strict=True))
    grades = grader.grade_many(items, questions=questions, protocols=protocols)
    base = df.drop([c for c in GRADE_COLUMNS if c in df.columns])
    return base.with_columns(
        [
            pl.Series(name, [bool(getattr(g, name)) for g in grades], dtype=pl.Boolean)
            for name in GRADE_COLUMNS
        ]
    )


def _write_atomic(df: pl.DataFrame, output_path: Path, fmt: str) -> None:
    parent = output_path.parent
    if not parent.is_dir():
        raise UserError(f"output directory {parent} does not exist")
    try:
        atomic_write(output_path, df.write_csv if fmt == "csv" else df.write_parquet)
    except OSError as err:
        raise UserError(f"cannot write output file {output_path}: {err.strerror or err}") from None


def grade_table(input_path: Path, output_path: Path, judge: str = "heuristic") -> int:
    """Grade every row of `input_path` into `output_path`; returns the number of rows graded."""
    input_path, output_path = Path(input_path), Path(output_path)
    out_fmt = _format_of(output_path, "output")  # fail before any work on a bad output name
    df = read_table(input_path)
    graded = grade_frame(df, judge)
    _write_atomic(graded, output_path, out_fmt)
    return graded.height
