"""The report's transcript browser and its verbatim hit listing (issue 12 item 3).

Every done trial of the cache is one row: experiment, prompt set, condition, concept, strength,
layer, its grades and its full response (in a `<details>` element that opens on click). Two
selects filter the rows in the page: by cell (experiment · prompt set · condition · concept ·
layer · strength) and by criterion (strict hit, to review, control false positive, each criterion
and its negation). The filter state lives in the URL hash (`#cell=...&crit=...&open=KEY`), so a
link can point at one hit, and a headless browser test can drive the page without a driver.

Plain HTML + a few lines of JavaScript, no external assets: the report opens from disk.
"""

from __future__ import annotations

import html
import json
from typing import Any

import polars as pl

from remote_introspect.grading.base import GRADE_CRITERIA

_CRIT_LABELS: tuple[tuple[str, str], ...] = (
    ("strict", "strict hit (all four, not held for review)"),
    ("review", "held for review (never counted)"),
    ("control-fp", "control false positive (affirmative)"),
    ("lindsey_success", "Lindsey success"),
    ("affirmative", "affirmative"),
    ("identifies", "identifies"),
    ("early_detection", "early detection"),
    ("coherent", "coherent"),
    ("refusal", "refusal"),
    ("not-affirmative", "not affirmative"),
    ("not-coherent", "not coherent"),
    ("ungraded", "ungraded"),
)

_JS = """
(function () {
  function state() {
    var out = {};
    location.hash.replace(/^#/, '').split('&').forEach(function (kv) {
      if (!kv) { return; }
      var i = kv.indexOf('=');
      out[decodeURIComponent(kv.slice(0, i))] = decodeURIComponent(kv.slice(i + 1));
    });
    return out;
  }
  function apply() {
    var cell = document.getElementById('tb-cell').value;
    var crit = document.getElementById('tb-crit').value;
    var rows = document.querySelectorAll('#tb tbody tr');
    var shown = 0;
    rows.forEach(function (r) {
      var ok = (!cell || r.getAttribute('data-cell') === cell) &&
               (!crit || (' ' + r.getAttribute('data-crit') + ' ').indexOf(' ' + crit + ' ') >= 0);
      r.hidden = !ok;
      r.setAttribute('data-shown', ok ? '1' : '0');
      if (ok) { shown += 1; }
    });
    document.getElementById('tb-count').textContent = shown + ' of ' + rows.length + ' trials shown';
  }
  function fromHash() {
    var s = state();
    if (s.cell !== undefined) { document.getElementById('tb-cell').value = s.cell; }
    if (s.crit !== undefined) { document.getElementById('tb-crit').value = s.crit; }
    apply();
    if (s.open) {
      var row = document.querySelector('#tb tbody tr[data-key^="' + s.open + '"]');
      if (row) { row.querySelector('details').open = true; row.scrollIntoView(); }
    }
  }
  window.addEventListener('DOMContentLoaded', function () {
    ['tb-cell', 'tb-crit'].forEach(function (id) {
      document.getElementById(id).addEventListener('change', apply);
    });
    window.addEventListener('hashchange', fromHash);
    fromHash();
  });
})();
"""

CSS = """
#tb td{vertical-align:top;text-align:left} #tb details summary{cursor:pointer}
#tb pre{margin:0.3em 0} .g-y{color:#060} .g-n{color:#999} .g-hit{color:#a00;font-weight:bold}
.g-rev{color:#b60;font-weight:bold}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any) -> str:
    return "-" if x is None else (f"{x:g}" if isinstance(x, float) else str(x))


def cell_label(r: dict[str, Any], exp_name: str) -> str:
    """The cell a trial belongs to, as shown in the browser's cell filter."""
    return " · ".join(
        [
            exp_name,
            r.get("prompt_set") or "-",
            r.get("condition") or "-",
            r.get("concept") or "-",
            f"L{_num(r.get('layer'))}",
            f"s{_num(r.get('strength'))}",
        ]
    )


def row_tags(r: dict[str, Any]) -> list[str]:
    """The criterion tags a row answers to in the filter."""
    if r.get("strict") is None:
        return ["ungraded"]
    tags = [c for c in (*GRADE_CRITERIA, "lindsey_success") if r.get(c)]
    if r.get("strict"):
        tags.append("strict")
    if r.get("needs_review"):
        tags.append("review")
    if r.get("condition") == "control" and r.get("affirmative"):
        tags.append("control-fp")
    if not r.get("affirmative"):
        tags.append("not-affirmative")
    if not r.get("coherent"):
        tags.append("not-coherent")
    return tags


def _grades_text(r: dict[str, Any]) -> str:
    if r.get("strict") is None:
        return "<span class='g-n'>ungraded</span>"
    parts = []
    if r.get("strict"):
        parts.append("<span class='g-hit'>STRICT HIT</span>")
    if r.get("needs_review"):
        parts.append("<span class='g-rev'>TO REVIEW</span>")
    for c in GRADE_CRITERIA:
        cls = "g-y" if r.get(c) else "g-n"
        parts.append(f"<span class='{cls}'>{_e(c)}={'Y' if r.get(c) else 'N'}</span>")
    if r.get("lindsey_success") is not None:
        parts.append(f"lindsey_success={'Y' if r.get('lindsey_success') else 'N'}")
    return " ".join(parts)


def browser_html(frame_df: pl.DataFrame, experiments: list[dict[str, Any]]) -> str:
    """The transcript browser section: every done trial of the listed experiments."""
    names = {e["id"]: e["name"] for e in experiments}
    rows_html: list[str] = []
    cells: dict[str, None] = {}
    df = frame_df.filter(pl.col("status") == "done")
    for r in df.iter_rows(named=True):
        exp_ids = [x for x in (r.get("experiments") or []) if x in names] or ["-"]
        exp_name = names.get(exp_ids[0], "-")
        cell = cell_label(r, exp_name)
        cells[cell] = None
        resp = r.get("response") or ""
        one_line = " ".join(resp.split())
        summary = one_line if len(one_line) <= 90 else one_line[:87] + "..."
        rows_html.append(
            f"<tr data-key='{_e(r['key'])}' data-cell='{_e(cell)}' data-crit='{_e(' '.join(row_tags(r)))}'>"
            f"<td>{_e(exp_name)}</td><td>{_e(r.get('prompt_set') or '-')}</td><td>{_e(r.get('condition') or '-')}</td>"
            f"<td>{_e(r.get('concept') or '-')}</td><td>{_e(_num(r.get('strength')))}</td><td>{_e(_num(r.get('layer')))}</td>"
            f"<td>{_grades_text(r)}</td>"
            f"<td><details><summary><code>{_e(r['key'][:12])}</code> {_e(summary) or '(empty response)'}</summary>"
            f"<pre class='tb-response'>{_e(resp) if resp else '(empty response)'}</pre></details></td></tr>"
        )
    cell_opts = "".join(f"<option value='{_e(c)}'>{_e(c)}</option>" for c in sorted(cells))
    crit_opts = "".join(f"<option value='{_e(v)}'>{_e(label)}</option>" for v, label in _CRIT_LABELS)
    return "\n".join(
        [
            "<h2 id='transcripts'>Transcript browser</h2>",
            "<p>Every done trial: what produced each number. Filter by cell and by criterion; click a "
            "response to read it whole. Links may carry the filter: "
            "<code>#cell=…&amp;crit=strict&amp;open=KEY</code>.</p>",
            f"<style>{CSS}</style>",
            "<p><label>Cell <select id='tb-cell'><option value=''>all cells</option>"
            f"{cell_opts}</select></label> <label>Criterion <select id='tb-crit'><option value=''>any</option>"
            f"{crit_opts}</select></label> <span id='tb-count'></span></p>",
            "<table id='tb'><thead><tr><th>experiment</th><th>prompt set</th><th>condition</th><th>concept</th>"
            "<th>strength</th><th>layer</th><th>grades</th><th class='l'>response</th></tr></thead><tbody>",
            *rows_html,
            "</tbody></table>",
            f"<script>{_JS}</script>",
        ]
    )


def verbatim_listing(usable: pl.DataFrame, limit: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every strict hit, every control false positive and every response held for review, with
    its full response (`limit` caps each list; None = all)."""

    def rows(df: pl.DataFrame) -> list[dict[str, Any]]:
        df = df if limit is None else df.head(limit)
        return [
            {
                "key": r["key"][:12],
                "prompt": r.get("prompt_set"),
                "layer": r["layer"],
                "strength": r["strength"],
                "concept": r["concept"],
                "response": r["response"] or "",
            }
            for r in df.iter_rows(named=True)
        ]

    review = pl.col("needs_review").fill_null(False) if "needs_review" in usable.columns else pl.lit(False)
    return {
        "strict hits": rows(usable.filter((pl.col("condition") == "concept") & pl.col("strict"))),
        "held for review (not counted)": rows(usable.filter(review)),
        "control false positives": rows(
            usable.filter((pl.col("condition") == "control") & pl.col("affirmative"))
        ),
    }


def json_rows(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, ensure_ascii=False)
