"""The report's transcript browser (issue 12 item 3): every trial with its prompt set, condition,
concept, strength, layer, response and grades, filterable by cell and by criterion, and every
strict hit and control false positive verbatim. Driven in headless Chromium through the URL hash
(filter by cell, open a hit)."""

from __future__ import annotations

import html as htmllib
import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest
from helpers import CHROMIUM, chromium_flags

from remote_introspect.grading.base import Grade
from remote_introspect.reporting.browser import cell_label
from remote_introspect.reporting.report import build_report
from remote_introspect.store.database import Store
from remote_introspect.store.results_frame import judge_identity, load_frame

JUDGE = "anthropic:browser-test"
HIT_TEXT = "Yes, I detect an injected thought. It is about dust, fine grey dust."
FP_TEXT = "Yes, I notice something unusual."


def _g(**kw: bool) -> dict:
    base = dict(refusal=False, affirmative=False, identifies=False, early_detection=False, coherent=True)
    base.update(kw)
    return Grade(**base).model_dump()


@pytest.fixture(scope="module")
def built(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of the tiny cache graded by a (stored) judge that found one hit, one response to
    review and one control false positive."""
    base = tmp_path_factory.mktemp("browser")
    root = base / "cache"
    shutil.copytree(tiny_cache, root)
    store = Store(root, create=False)
    try:
        df = load_frame(store.conn, "heuristic").df.filter(pl.col("status") == "done")
        concept = df.filter(pl.col("condition") == "concept").sort("key")
        control = df.filter(pl.col("condition") == "control").sort("key")
        hit, review, fp = concept["key"][0], concept["key"][1], control["key"][0]
        grades = {k: _g() for k in df["key"].to_list()}
        grades[hit] = _g(affirmative=True, identifies=True, early_detection=True)
        grades[review] = _g(affirmative=True, identifies=True, early_detection=True, needs_review=True)
        grades[fp] = _g(affirmative=True)
        store.save_grades(*judge_identity(JUDGE), grades)
    finally:
        store.close()
    out = base / "report"
    build_report(root, out, judge=JUDGE)
    rows = {r["key"]: r for r in df.iter_rows(named=True)}
    return out, {"hit": hit, "review": review, "fp": fp, "rows": rows, "n": df.height}


def _tr(page: str) -> list[str]:
    return re.findall(r"<tr data-key=[^>]*>", page)


def test_browser_lists_every_done_trial_with_its_fields(built: tuple[Path, dict]) -> None:
    out, info = built
    page = (out / "index.html").read_text()
    assert "Transcript browser" in page
    trs = _tr(page)
    assert len(trs) == info["n"]
    hit_row = next(t for t in trs if info["hit"] in t)
    assert "strict" in hit_row and "review" not in hit_row
    review_row = next(t for t in trs if info["review"] in t)
    assert " review" in review_row and " strict" not in review_row.split("data-crit=")[1]
    assert "control-fp" in next(t for t in trs if info["fp"] in t)
    for opt in ("strict hit", "held for review", "control false positive", "coherent", "identifies"):
        assert opt in page
    # The hit, the review and the false positive are also listed in full in their sections.
    assert "strict hits: 1 shown" in page and "held for review (not counted): 1 shown" in page
    assert "1 strict hits (+1 to review)" in page and "Lindsey success (COHERENCE" in page
    md = (out / "summary.md").read_text()
    assert "1 strict hits (+1 to review)" in md and "strict (Merrill, all four) 1/" in md
    assert "Strict hits: 1 (verbatim)" in md and "Held for review (not counted): 1 (verbatim)" in md


def _dump(url: str, tmp_path: Path) -> str:
    assert CHROMIUM is not None
    flags = chromium_flags(tmp_path / "profile", 5000)
    res = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def _shown(dom: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r'<tr data-key="([0-9a-f]+)"[^>]*data-shown="1"', dom)]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package `chromium`)")
def test_filter_by_cell_and_open_a_hit_in_chromium(built: tuple[Path, dict], tmp_path: Path) -> None:
    out, info = built
    rows = info["rows"]
    hit = rows[info["hit"]]
    cell = cell_label(hit, "lindsey")
    base = (out / "index.html").resolve().as_uri()
    from urllib.parse import quote

    # Filter by the hit's cell only: every shown row is in that cell, the hit among them.
    dom = _dump(f"{base}#cell={quote(cell)}", tmp_path)
    shown = _shown(dom)
    in_cell = [k for k, r in rows.items() if cell_label(r, "lindsey") == cell]
    assert sorted(shown) == sorted(in_cell) and info["hit"] in shown and len(shown) < info["n"]
    assert f"{len(in_cell)} of {info['n']} trials shown" in dom

    # Cell + criterion "strict", and open the hit: exactly that row, its details open, verbatim.
    dom = _dump(f"{base}#cell={quote(cell)}&crit=strict&open={info['hit'][:12]}", tmp_path)
    assert _shown(dom) == [info["hit"]]
    row = re.search(r'<tr data-key="' + info["hit"] + r'".*?</tr>', dom, re.S)
    assert row and "<details open" in row.group(0)
    assert "STRICT HIT" in row.group(0)
    response = rows[info["hit"]]["response"] or "(empty response)"
    assert htmllib.escape(response, quote=False) in row.group(0)
    assert f"1 of {info['n']} trials shown" in dom

    # Criterion only: the control false positive, and the review (never a strict hit).
    assert _shown(_dump(f"{base}#crit=control-fp", tmp_path)) == [info["fp"]]
    assert _shown(_dump(f"{base}#crit=review", tmp_path)) == [info["review"]]
