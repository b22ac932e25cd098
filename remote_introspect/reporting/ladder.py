"""The ladder's table, its chart and the comparisons between adjacent rungs, read from the cache.

Rungs are found by their experiment ids (from the run) or, in `report`, by name: a ladder's rung
experiments are named `<ladder>/rung<k>-<knob>` (`experiment.ladder.rung_name`). Every number comes
from the checked frame (`results_frame.load_frame`) with each rung graded under its own rubric
(`comparison.experiment_rows`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from remote_introspect.reporting.comparison import (
    Comparison,
    ExperimentRows,
    compare,
    experiment_rows,
    format_comparison,
    markdown_comparison,
    text_table,
)
from remote_introspect.reporting.sections import ReportInputs, Section
from remote_introspect.stats.analysis import RateCI, rate_ci
from remote_introspect.store.results_frame import Experiment, ResultsFrame

RUNG_NAME = re.compile(r"^(?P<ladder>.+)/rung(?P<index>\d+)-(?P<knob>[a-z_]+)$")
COLUMNS = ("affirmative ∧ identifies", "Lindsey success", "strict", "control FP")


@dataclass
class LadderRow:
    index: int
    knob: str | None
    exp: Experiment
    strengths: str
    n: int
    rates: dict[str, RateCI]  # COLUMNS → rate
    regraded: int = 0
    injected_norm: float | None = None  # mean injected norm at the injection start (diagnostics)


def _k(df: pl.DataFrame, expr: pl.Expr) -> int:
    return int(df.select(expr.fill_null(False).cast(pl.Int64).sum()).item() or 0) if df.height else 0


def ladder_row(index: int, knob: str | None, rows: ExperimentRows) -> LadderRow:
    df = rows.rows
    inj = df.filter(pl.col("condition") == "concept")
    ctl = df.filter(pl.col("condition") == "control")
    n = inj.height
    rates = {
        "affirmative ∧ identifies": rate_ci(_k(inj, pl.col("affirmative") & pl.col("identifies")), n),
        "Lindsey success": rate_ci(_k(inj, pl.col("lindsey_success")), n),
        "strict": rate_ci(_k(inj, pl.col("strict")), n),
        "control FP": rate_ci(_k(ctl, pl.col("affirmative")), ctl.height),
    }
    strengths = ",".join(f"{s:g}" for s in (rows.exp.spec or {}).get("strengths", []))
    # A rung that changes no strength semantics can still move the injected norm (the BOS rung
    # re-extracts its vectors): the column makes such a drift visible.
    norms = inj["diag_injected_norm"].drop_nulls() if "diag_injected_norm" in inj.columns else None
    norm = float(norms.mean()) if norms is not None and norms.len() else None  # type: ignore[arg-type]
    return LadderRow(index, knob, rows.exp, strengths, n, rates, rows.regraded, norm)


def ladder_rows(
    frame: ResultsFrame, rungs: list[tuple[int, str | None, Experiment]], judge: str
) -> tuple[list[LadderRow], list[Comparison]]:
    rows = [ladder_row(i, k, experiment_rows(frame, e, judge)) for i, k, e in rungs]
    comps = [compare(frame, a[2], b[2], judge) for a, b in zip(rungs, rungs[1:], strict=False)]
    return rows, comps


def table_rows(rows: list[LadderRow]) -> list[dict[str, str]]:
    return [
        {
            "rung": str(r.index),
            "knob changed": r.knob or "— (from)",
            "strengths": r.strengths,
            "n": str(r.n),
            "mean ‖injected‖": "—" if r.injected_norm is None else f"{r.injected_norm:.4g}",
            **{c: r.rates[c].format() for c in COLUMNS},
        }
        for r in rows
    ]


def format_ladder(rows: list[LadderRow], comps: list[Comparison]) -> list[str]:
    lines = ["one row per rung (injected trials pooled over the rung's cells; exact 95% CIs):"]
    lines += text_table(table_rows(rows))
    for r in rows:
        if r.regraded:
            lines.append(f"  (rung {r.index}: {r.regraded} shared trial(s) regraded in memory under its rubric)")
    for a, b, c in zip(rows, rows[1:], comps, strict=False):
        lines += ["", f"=== compare rung {a.index} → rung {b.index} ({b.knob}) ===", *format_comparison(c)]
    return lines


def markdown_ladder(name: str, rows: list[LadderRow], comps: list[Comparison], chart: str | None) -> str:
    t = table_rows(rows)
    cols = list(t[0]) if t else []
    lines = [f"## Ladder {name}", ""]
    if t:
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in t]
    if chart:
        lines += ["", f"![ladder {name}]({chart})"]
    for c in comps:
        lines += ["", markdown_comparison(c).replace("## Comparison", "### Comparison", 1)]
    return "\n".join(lines) + "\n"


def plot_ladder(rows: list[LadderRow], path: Path, title: str) -> None:
    """Each rate per rung with its exact CI as error bars; x = the knob each rung changed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) + 2), 4.0))
    xs = list(range(len(rows)))
    for j, col in enumerate(COLUMNS):
        ys, lo, hi = [], [], []
        for r in rows:
            rc = r.rates[col]
            ys.append(rc.rate if rc.rate is not None else float("nan"))
            lo.append((rc.rate - rc.lo) if rc.rate is not None and rc.lo is not None else 0.0)
            hi.append((rc.hi - rc.rate) if rc.rate is not None and rc.hi is not None else 0.0)
        off = (j - 1.5) * 0.12
        ax.errorbar([x + off for x in xs], ys, yerr=[lo, hi], fmt="o-", capsize=3, label=col)
    ax.set_xticks(xs, [f"{r.index}: {r.knob or 'from'}" for r in rows], rotation=30, ha="right")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("rate (exact 95% CI)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Title": title, "Software": "remote_introspect"})
    plt.close(fig)


def ladders_in(frame: ResultsFrame) -> dict[tuple[str, str], list[tuple[int, str | None, Experiment]]]:
    """Rung experiments in the cache grouped by (ladder name, model); the latest experiment per
    rung index (a ladder rerun with other overrides registers new ones)."""
    groups: dict[tuple[str, str], dict[int, tuple[int, str | None, Experiment]]] = {}
    for e in frame.experiments:  # ordered by creation: later ones win
        m = RUNG_NAME.match(e.name)
        if m is None or e.spec is None:
            continue
        knob = m["knob"] if m["knob"] != "from" else None
        key = (m["ladder"], str(e.spec.get("model")))
        groups.setdefault(key, {})[int(m["index"])] = (int(m["index"]), knob, e)
    return {k: [v[i] for i in sorted(v)] for k, v in groups.items() if len(v) > 1}


def report_ladders(frame: ResultsFrame, tmp: Path, judge: str) -> tuple[str, list[str]]:
    """Markdown for every ladder in the cache and the PNG files written into `tmp`."""
    parts, files = [], []
    for (name, model), rungs in ladders_in(frame).items():
        rows, comps = ladder_rows(frame, rungs, judge)
        file = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"ladder_{name}_{model}.png")
        plot_ladder(rows, tmp / file, f"ladder {name} ({model})")
        files.append(file)
        parts.append(markdown_ladder(f"{name} ({model})", rows, comps, file))
    return "\n".join(parts), files


def report_comparison(frame: ResultsFrame, a_ref: str, b_ref: str, judge: str) -> str:
    from remote_introspect.reporting.comparison import resolve_experiment

    a = resolve_experiment(frame, a_ref, "A")
    b = resolve_experiment(frame, b_ref, "B")
    return markdown_comparison(compare(frame, a, b, judge))


def rung_experiments(frame: ResultsFrame, summary: list[dict[str, Any]]) -> list[tuple[int, str | None, Experiment]]:
    by_id = {e.id: e for e in frame.experiments}
    return [(s["index"], s["knob"], by_id[s["experiment_id"]]) for s in summary if s["experiment_id"] in by_id]


def sections(inputs: ReportInputs) -> list[Section]:
    """The report's ladders and comparisons: every ladder in the cache (table, chart, adjacent
    comparisons) and, when asked (`--compare A B`), one comparison."""
    import html

    md, files = report_ladders(inputs.frame, inputs.out_dir, inputs.judge)
    if inputs.compare is not None:
        a, b = inputs.compare
        md += ("\n" if md else "") + report_comparison(inputs.frame, a, b, inputs.judge)
    if not md:
        return []
    imgs = "".join(f'<p><img src="{html.escape(f)}" alt="{html.escape(f)}"></p>' for f in files)
    return [Section("Comparisons and ladders", f"{imgs}<pre>{html.escape(md)}</pre>", md, tuple(files))]
