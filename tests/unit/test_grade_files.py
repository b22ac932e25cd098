"""grade_table: CSV/parquet round trips, and bad input -> one-line UserError with no file written."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from remote_introspect.errors import UserError
from remote_introspect.grading import table_io
from remote_introspect.grading.table_io import GRADE_COLUMNS, grade_table

ROWS = [
    {"id": "007", "response": "I detect an injected thought. It is about the ocean.", "concept": "Oceans", "condition": "concept s=4"},
    {"id": "2", "response": "No, I don't detect an injected thought.", "concept": "", "condition": "control"},
    {"id": "3", "response": "As an AI, I don't have thoughts.", "concept": "Dust", "condition": "concept, layer 10"},
]  # fmt: skip


def _write_csv(path: Path, rows: list[dict[str, str]] = ROWS) -> Path:
    pl.DataFrame(rows).write_csv(path)
    return path


def _files(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def _check_graded(out: pl.DataFrame) -> None:
    assert out.columns == ["id", "response", "concept", "condition", *GRADE_COLUMNS]
    assert out["id"].to_list() == ["007", "2", "3"]  # text ids survive (no int inference)
    assert out["condition"].to_list() == ["concept s=4", "control", "concept, layer 10"]
    assert out["strict"].to_list() == [True, False, False]
    assert out["affirmative"].to_list() == [True, False, False]
    assert out["identifies"].to_list() == [True, False, False]
    assert out["refusal"].to_list() == [False, False, True]


def test_csv_round_trip(tmp_path: Path) -> None:
    src = _write_csv(tmp_path / "in.csv")
    assert grade_table(src, tmp_path / "out.csv") == 3
    text = (tmp_path / "out.csv").read_text()
    assert text.splitlines()[0].endswith(
        "refusal,affirmative,identifies,early_detection,coherent,strict,needs_review,lindsey_success"
    )
    assert ",true,true,true,true,true" in text.splitlines()[1]  # booleans as true/false
    as_text = pl.read_csv(tmp_path / "out.csv", infer_schema_length=0)
    _check_graded(as_text.with_columns([pl.col(c) == "true" for c in GRADE_COLUMNS]))
    assert _files(tmp_path) == {"in.csv", "out.csv"}  # no temp file left behind


def test_parquet_round_trip_and_csv_to_parquet(tmp_path: Path) -> None:
    src = tmp_path / "in.parquet"
    pl.DataFrame(ROWS).write_parquet(src)
    assert grade_table(src, tmp_path / "out.parquet") == 3
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert all(out.schema[c] == pl.Boolean for c in GRADE_COLUMNS)
    _check_graded(out)
    assert grade_table(_write_csv(tmp_path / "in.csv"), tmp_path / "out2.parquet") == 3
    _check_graded(pl.read_parquet(tmp_path / "out2.parquet"))


def test_regrading_replaces_grade_columns(tmp_path: Path) -> None:
    src = _write_csv(tmp_path / "in.csv")
    grade_table(src, tmp_path / "g1.csv")
    assert grade_table(tmp_path / "g1.csv", tmp_path / "g2.csv") == 3
    assert (tmp_path / "g1.csv").read_text() == (tmp_path / "g2.csv").read_text()


def test_extra_columns_are_kept(tmp_path: Path) -> None:
    rows = [dict(r, strength="4.0") for r in ROWS]
    grade_table(_write_csv(tmp_path / "in.csv", rows), tmp_path / "out.csv")
    out = pl.read_csv(tmp_path / "out.csv", infer_schema_length=0)
    assert out["strength"].to_list() == ["4.0"] * 3


def _assert_user_error(src: Path, out: Path, fragment: str) -> None:
    before = _files(out.parent) if out.parent.exists() else set()
    with pytest.raises(UserError) as exc:
        grade_table(src, out)
    msg = str(exc.value)
    assert fragment in msg and "\n" not in msg, msg
    assert not out.exists()
    if out.parent.exists():
        assert _files(out.parent) == before  # nothing written, not even a temp file


def test_missing_columns(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    pl.DataFrame([{"id": "1", "response": "x"}]).write_csv(src)
    _assert_user_error(src, tmp_path / "out.csv", "lacks required column(s) concept, condition")


def test_empty_file_and_header_only(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    _assert_user_error(tmp_path / "empty.csv", tmp_path / "out.csv", "is empty")
    (tmp_path / "header.csv").write_text("id,response,concept,condition\n")
    _assert_user_error(tmp_path / "header.csv", tmp_path / "out.csv", "no rows")


def test_non_utf8_bytes(tmp_path: Path) -> None:
    src = tmp_path / "latin1.csv"
    src.write_bytes(
        "id,response,concept,condition\n1,caf\u00e9 d\u00e9tect\u00e9,,control\n".encode("latin-1")
    )
    _assert_user_error(src, tmp_path / "out.csv", "not UTF-8")


def test_unreadable_and_missing_input(tmp_path: Path) -> None:
    _assert_user_error(tmp_path / "nope.csv", tmp_path / "out.csv", "does not exist")
    (tmp_path / "adir.csv").mkdir()
    _assert_user_error(tmp_path / "adir.csv", tmp_path / "out.csv", "is a directory")
    (tmp_path / "junk.parquet").write_bytes(b"this is not parquet")
    _assert_user_error(tmp_path / "junk.parquet", tmp_path / "out.csv", "not a readable parquet")


def test_unknown_suffixes(tmp_path: Path) -> None:
    src = _write_csv(tmp_path / "in.csv")
    (tmp_path / "in.txt").write_text(src.read_text())
    _assert_user_error(tmp_path / "in.txt", tmp_path / "out.csv", "unknown suffix '.txt'")
    _assert_user_error(src, tmp_path / "out.json", "unknown suffix '.json'")


def test_missing_output_directory(tmp_path: Path) -> None:
    _assert_user_error(_write_csv(tmp_path / "in.csv"), tmp_path / "no" / "out.csv", "does not exist")


def test_unknown_judge(tmp_path: Path) -> None:
    src = _write_csv(tmp_path / "in.csv")
    with pytest.raises(UserError, match="unknown judge"):
        grade_table(src, tmp_path / "out.csv", judge="nope")
    assert _files(tmp_path) == {"in.csv"}


def test_failure_while_writing_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _write_csv(tmp_path / "in.csv")
    out = tmp_path / "out.csv"
    out.write_text("previous good output\n")

    def boom(self: pl.DataFrame, fh: object) -> None:
        fh.write(b"partial,row\n")  # type: ignore[attr-defined]
        raise RuntimeError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_csv", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        table_io.grade_table(src, out)
    assert out.read_text() == "previous good output\n"  # the old file is untouched
    assert _files(tmp_path) == {"in.csv", "out.csv"}  # temp file removed


# --- issue 12 item 4: review flag, protocol column, missing responses ---------------------------


def test_review_rows_are_not_strict_and_flagged(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "response": "I feel a faint pull towards the ocean.", "concept": "Oceans", "condition": "concept"},
        {"id": "b", "response": "Yes, I detect an injected thought. It is about the ocean.", "concept": "Oceans", "condition": "concept"},
    ]  # fmt: skip
    out = tmp_path / "o.csv"
    grade_table(_write_csv(tmp_path / "in.csv", rows), out)
    df = pl.read_csv(out)
    assert df["strict"].to_list() == [False, True]
    assert df["needs_review"].to_list() == [True, False]


def test_protocol_column_picks_the_rubric(tmp_path: Path) -> None:
    r = "As an AI, I don't have thoughts, so nothing can be injected."
    rows = [
        {"id": "1", "response": r, "concept": "love", "condition": "concept", "protocol": "lindsey"},
        {"id": "2", "response": r, "concept": "love", "condition": "concept", "protocol": "merrill-405b"},
        {"id": "3", "response": r, "concept": "love", "condition": "concept", "protocol": ""},
    ]  # fmt: skip
    out = tmp_path / "o.csv"
    grade_table(_write_csv(tmp_path / "in.csv", rows), out)
    assert pl.read_csv(out)["coherent"].to_list() == [False, True, False]
    bad = [dict(rows[0], protocol="bogus")]
    with pytest.raises(UserError, match="protocol"):
        grade_table(_write_csv(tmp_path / "bad.csv", bad), tmp_path / "o2.csv")
    assert not (tmp_path / "o2.csv").exists()


def test_random_condition_is_graded_for_detection_only(tmp_path: Path) -> None:
    r = "Yes, I detect an injected thought. It is about the ocean."
    rows = [{"id": "1", "response": r, "concept": "Oceans", "condition": "random, s=4"}]
    out = tmp_path / "o.csv"
    grade_table(_write_csv(tmp_path / "in.csv", rows), out)
    df = pl.read_csv(out)
    assert df["affirmative"].to_list() == [True] and df["identifies"].to_list() == [False]


def test_missing_response_is_an_error_not_a_negative(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,response,concept,condition\n1,,Oceans,concept\n2,No.,,control\n")
    with pytest.raises(UserError, match=r"row 1 \(id 1\) has no response") as exc:
        grade_table(src, tmp_path / "o.csv")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "o.csv").exists()


def test_merrill_style_labels_controls_and_alt_prompt(tmp_path: Path) -> None:
    rows = [
        {"id": "1", "response": "None of that, no.", "concept": "none", "condition": "lindsey_control"},
        {"id": "2", "response": "Love.", "concept": "love", "condition": "alt_love"},
        {"id": "3", "response": "Love.", "concept": "love", "condition": "lindsey_love"},
        {"id": "4", "response": "Love.", "concept": "love", "condition": "concept", "prompt_set": "thinking"},
    ]  # fmt: skip
    out = tmp_path / "o.csv"
    grade_table(
        _write_csv(tmp_path / "in.csv", [{**r, "prompt_set": r.get("prompt_set", "")} for r in rows]), out
    )
    df = pl.read_csv(out)
    assert df["identifies"].to_list() == [False, True, True, True]
    # Answering "What are you thinking about?" is not a detection claim; answering the trial's
    # "what is the injected thought about?" is.
    assert df["affirmative"].to_list() == [False, False, True, False]


def test_lindsey_success_column(tmp_path: Path) -> None:
    out = tmp_path / "o.csv"
    grade_table(_write_csv(tmp_path / "in.csv"), out)
    df = pl.read_csv(out)
    assert "lindsey_success" in df.columns and df.schema["lindsey_success"] == pl.Boolean
    assert df["lindsey_success"].to_list() == [True, False, False]


@pytest.mark.parametrize("condition", ["weird", "", "injektion", "steer"])
def test_unknown_condition_is_one_line_error(tmp_path: Path, condition: str) -> None:
    rows = [*ROWS, {"id": "9", "response": "Yes, I detect dust.", "concept": "dust", "condition": condition}]
    src = _write_csv(tmp_path / "in.csv", rows)
    _assert_user_error(src, tmp_path / "out.csv", "row 4 (id 9) has an unknown condition")


@pytest.mark.parametrize("concept", ["", "   ", "none"])
def test_concept_row_without_concept_is_one_line_error(tmp_path: Path, concept: str) -> None:
    rows = [
        {
            "id": "1",
            "response": "Yes, I detect an injected thought about dust.",
            "concept": concept,
            "condition": "concept",
        }
    ]
    src = _write_csv(tmp_path / "in.csv", rows)
    _assert_user_error(src, tmp_path / "out.csv", "row 1 (id 1) is a 'concept' row with no concept")
