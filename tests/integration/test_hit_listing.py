"""Issue 12 items 2-3 and issue 11 item 5 in the run summary: hits are counted apart from the
responses held for review, "Lindsey success" stands beside "strict (Merrill)", and every hit,
review and control false positive is printed verbatim (up to 10, then a count)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers import tiny_spec
from rich.console import Console

from remote_introspect.grading.base import Grade
from remote_introspect.reporting.hit_listing import hits_text, success_line, verbatim_lines


def _g(**kw: bool) -> dict:
    base = dict(refusal=False, affirmative=False, identifies=False, early_detection=False, coherent=True)
    base.update(kw)
    return Grade(**base).model_dump()


HIT = _g(affirmative=True, identifies=True, early_detection=True)
REVIEW = _g(affirmative=True, identifies=True, early_detection=True, needs_review=True)
FP = _g(affirmative=True)
NULL = _g()


def test_hits_text_never_folds_reviews_into_hits() -> None:
    assert hits_text([NULL, NULL]) == "0"
    assert hits_text([HIT, REVIEW, REVIEW, NULL]) == "1 (+2 to review)"


def test_success_line_has_both_criteria_with_n_and_ci() -> None:
    line = success_line("Injected", [HIT, REVIEW, NULL, NULL])
    assert "Lindsey success (COHERENCE ∧ AFFIRMATIVE+CORRECT-ID) 1/4 25.0% [" in line
    assert "strict (Merrill, all four) 1/4 25.0% [" in line
    assert "1 strict hits (+1 to review)" in line


def _report(tiny_cache: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    from remote_introspect.execution import runner
    from remote_introspect.execution.runner import RunOptions

    root = tmp_path / "cache"
    shutil.copytree(tiny_cache, root)
    return runner.run(tiny_spec(), RunOptions(cache_root=root))  # the shared cache's own spec: all done


def test_summary_prints_hits_reviews_and_false_positives_verbatim(tiny_cache: Path, tmp_path: Path) -> None:
    from remote_introspect.grading.heuristic import HeuristicGrader
    from remote_introspect.reporting.summary import render_summary
    from remote_introspect.store.database import Store

    report = _report(tiny_cache, tmp_path)
    concept = [t for t in report.trials if t.condition == "concept"]
    controls = [t for t in report.trials if t.condition == "control"]
    assert len(concept) >= 3 and controls
    # The summary reads the store (as `report` does): the grades it lists are the stored ones.
    store = Store(report.cache_root)
    try:
        graded = {t.key: NULL for t in concept + controls}
        graded.update({concept[0].key: HIT, concept[1].key: REVIEW, controls[0].key: FP})
        store.save_grades(HeuristicGrader.name, HeuristicGrader.version, graded)
        responses = {r["key"]: r["response"] for r in store.trial_rows([concept[0].key, controls[0].key])}
    finally:
        store.close()
    console = Console(record=True, width=200)
    render_summary(report, console)
    text = console.export_text()
    assert "1 (+1 to review)" in text  # the cell's hits column
    assert "Lindsey success" in text and "strict (Merrill, all four)" in text
    assert "1 strict hits (+1 to review)" in text
    assert "Strict hits: 1 (verbatim below)" in text
    assert f"[{concept[0].key[:12]}]" in text and json.dumps(responses[concept[0].key], ensure_ascii=False) in text
    assert "Held for review (not counted): 1" in text and f"[{concept[1].key[:12]}]" in text
    assert "Control false positives: " in text
    assert json.dumps(responses[controls[0].key], ensure_ascii=False) in text


def test_verbatim_listing_caps_at_ten_then_counts() -> None:
    class T:
        def __init__(self, i: int) -> None:
            self.key = f"{i:064x}"
            self.condition = "concept"
            self.concept = "dust"
            self.layer = 3
            self.strength = 2.0
            self.prompt_set = "lindsey"

    trials = [T(i) for i in range(13)]
    grades = {t.key: HIT for t in trials}
    lines = verbatim_lines(trials, grades, {t.key: f"hit {i}" for i, t in enumerate(trials)})
    assert lines[0] == "Strict hits: 13 (verbatim below)"
    assert sum('"hit ' in x for x in lines) == 10
    assert any("... and 3 more" in x for x in lines)
