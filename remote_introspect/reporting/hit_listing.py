"""The run summary's hit accounting and verbatim listing (issue 12 items 2-3, issue 11 item 5).

- "k strict hits (+m to review)": a response the grader is unsure about is never folded into a
  rate; it is counted beside the hits, for a human to read.
- "Lindsey success" (COHERENCE ∧ AFFIRMATIVE+CORRECT-ID) beside Merrill's four-boolean "strict
  (Merrill)", each with its n and exact 95% CI.
- Every strict hit, every response held for review and every control false positive verbatim (up
  to 10 each, then a count), so a reader sees what produced each number.
"""

from __future__ import annotations

import json
from typing import Any

from remote_introspect.stats.analysis import rate_ci

SHOWN = 10


def hits_text(grades: list[dict[str, Any]]) -> str:
    """ "k" or "k (+m to review)" for the strict hits among `grades`."""
    k = sum(bool(g.get("strict")) for g in grades)
    m = sum(bool(g.get("needs_review")) for g in grades)
    return f"{k} (+{m} to review)" if m else str(k)


def success_line(label: str, grades: list[dict[str, Any]]) -> str:
    """Lindsey success beside strict (Merrill), each k/n with its exact 95% CI, plus reviews."""
    n = len(grades)
    ls = sum(bool(g.get("lindsey_success", g.get("strict"))) for g in grades)
    st = sum(bool(g.get("strict")) for g in grades)
    m = sum(bool(g.get("needs_review")) for g in grades)
    return (
        f"{label}: Lindsey success (COHERENCE ∧ AFFIRMATIVE+CORRECT-ID) {rate_ci(ls, n).format()}; "
        f"strict (Merrill, all four) {rate_ci(st, n).format()}; {st} strict hits (+{m} to review)"
        + ("; reviews are never counted in a rate" if m else "")
    )


def verbatim_lines(
    trials: list[Any], grades: dict[str, dict[str, Any]], responses: dict[str, str], shown: int = SHOWN
) -> list[str]:
    """Every strict hit, review and control false positive, verbatim (up to `shown` each)."""
    groups: dict[str, list[Any]] = {
        "Strict hits": [],
        "Held for review (not counted)": [],
        "Control false positives": [],
    }
    for t in trials:
        g = grades.get(t.key)
        if not g:
            continue
        if g.get("strict") and t.condition != "control":
            groups["Strict hits"].append(t)
        if g.get("needs_review"):
            groups["Held for review (not counted)"].append(t)
        if t.condition == "control" and g.get("affirmative"):
            groups["Control false positives"].append(t)
    lines = []
    for label, ts in groups.items():
        lines.append(f"{label}: {len(ts)}" + (" (verbatim below)" if ts else ""))
        for t in ts[:shown]:
            where = (
                f"'{t.prompt_set}' {t.condition}"
                + (f" {t.concept}" if t.concept else "")
                + (f" L{t.layer}" if t.layer is not None else "")
                + f" s{t.strength:g}"
            )
            resp = json.dumps(responses.get(t.key, ""), ensure_ascii=False)
            lines.append(f"  [{t.key[:12]}] {where}: {resp}")
        if len(ts) > shown:
            lines.append(f"  ... and {len(ts) - shown} more (see the report's transcript browser)")
    return lines
