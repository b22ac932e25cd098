"""`compare`: two experiments of one cache, knob by knob and cell by cell.

Reads through the one analysis path: `results_frame.load_frame` (every row checked) and
`stats.cells` (what a cell is and what is counted in it). Cells are matched on prompt × layer ×
strength (× concept for per-concept experiments): an axis whose values are equal matches by value;
one whose values differ but have as many entries matches by position only when the knob that makes
its values incomparable changed (strengths: vectors or strength semantics, e.g. a ladder rung whose
strengths were re-chosen to match the previous rung's injected norm; layers: the model; prompts:
the prompt knob); otherwise only the values both have are compared.

Judge rubric: a grade is stored per trial and grader, whatever rubric graded it, so two
experiments that share trials but not their rubric (a ladder's rubric rung) would read the same
grades. Each experiment's rows are therefore graded under its own rubric: rows whose stored grade
used another rubric are regraded in memory by the offline grader (the same grader and version,
deterministic, nothing written); with an LLM judge they are left out and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from remote_introspect.errors import UserError
from remote_introspect.experiment.knobs import STRENGTH_SEMANTICS, KnobChange, spec_diff
from remote_introspect.stats.analysis import RateCI, rate_ci
from remote_introspect.stats.cells import cell_keys
from remote_introspect.stats.comparison import (
    CellComparison,
    ExactTest,
    compare_counts,
    compare_paired,
    with_holm,
)
from remote_introspect.store.results_frame import Experiment, ResultsFrame

METRICS: dict[str, str] = {
    "affirmative_identifies": "affirmative ∧ identifies",
    "lindsey_success": "Lindsey success",
    "strict": "strict (all four)",
    "affirmative": "affirmative",
    "identifies": "identifies",
    "coherent": "coherent",
}
_GRADE_COLUMNS = (
    "refusal", "affirmative", "identifies", "early_detection", "coherent", "strict", "needs_review",
    "lindsey_success", "rubric", "lindsey_coherent", "affirmative_correct_id",
)  # fmt: skip


# --------------------------------------------------------------------------- which experiment


def resolve_experiment(frame: ResultsFrame, ref: str, what: str = "experiment") -> Experiment:
    """An experiment by id (or a unique id prefix of at least 6 characters) or by experiment file
    (the stored spec equal to the file's)."""
    exps = frame.experiments
    exact = [e for e in exps if e.id == ref]
    if exact:
        return exact[0]
    path = Path(ref)
    if path.suffix == ".toml" or path.is_file():
        from remote_introspect.experiment.protocols import load_experiment_file

        want = load_experiment_file(path).model_dump(mode="json")
        found = [e for e in exps if e.spec == want]
        if not found:
            raise UserError(f"{what} {ref}: no experiment in this cache was run from that file's spec (run it first)")
        if len(found) > 1:
            ids = ", ".join(e.id[:12] for e in found)
            raise UserError(f"{what} {ref}: the file matches {len(found)} experiments ({ids}); pass an id")
        return found[0]
    prefixed = [e for e in exps if len(ref) >= 6 and e.id.startswith(ref)]
    if len(prefixed) == 1:
        return prefixed[0]
    if len(prefixed) > 1:
        raise UserError(f"{what} {ref!r} is ambiguous: {len(prefixed)} experiment ids start with it")
    raise UserError(f"{what} {ref!r} is neither an experiment id in this cache nor an experiment file")


# --------------------------------------------------------------------------- rows under a rubric


@dataclass
class ExperimentRows:
    exp: Experiment
    rows: pl.DataFrame  # usable rows, graded under the experiment's own rubric
    regraded: int = 0  # rows regraded in memory under this experiment's rubric
    left_out: int = 0  # rows graded under another rubric by an LLM judge (not counted)


def experiment_rows(frame: ResultsFrame, exp: Experiment, judge: str = "heuristic") -> ExperimentRows:
    from remote_introspect.grading.base import rubric_for

    spec = exp.spec or {}
    protocol = spec.get("protocol")
    df = frame.for_experiment(exp.id).filter(pl.col("usable"))
    if not df.height:
        return ExperimentRows(exp, df)
    want = [rubric_for(protocol, ps) for ps in df["prompt_set"].to_list()]
    df = df.with_columns(pl.Series("_want", want, dtype=pl.Utf8))
    other = df.filter(pl.col("rubric").fill_null("lindsey") != pl.col("_want"))
    same = df.filter(pl.col("rubric").fill_null("lindsey") == pl.col("_want")).drop("_want")
    if not other.height:
        return ExperimentRows(exp, same)
    if judge != "heuristic":
        return ExperimentRows(exp, same, left_out=other.height)
    from remote_introspect.grading.heuristic import HeuristicGrader
    from remote_introspect.grading.service import grade_rows

    rows = other.drop("_want").to_dicts()
    outcome = grade_rows(HeuristicGrader(), rows, lambda r: protocol)
    for r, g in zip(rows, outcome.grades, strict=True):
        assert g is not None  # the offline grader grades every row
        d = g.model_dump()
        for c in _GRADE_COLUMNS:
            r[c] = d.get(c)
    regraded = pl.DataFrame(rows, schema=same.schema)
    return ExperimentRows(exp, pl.concat([same, regraded]), regraded=len(rows))


# --------------------------------------------------------------------------- matching cells


def _axis(a: list[Any], b: list[Any], ordered: bool = False, positional: bool = True) -> list[tuple[Any, Any]]:
    """Matched values of one cell axis. Equal values match by value; differing values with as many
    entries match by position only when `positional` (the knob that makes the values
    incomparable changed: strength semantics for strengths, the model for layers, the prompt
    knob for prompts); otherwise only the values both have are compared, so A's strength 2 is
    never set against B's strength 8 when both ran 8."""
    a_s = list(dict.fromkeys(a)) if ordered else sorted(set(a))
    b_s = list(dict.fromkeys(b)) if ordered else sorted(set(b))
    if a_s == b_s:
        return [(v, v) for v in a_s]
    if positional and len(a_s) == len(b_s):
        return list(zip(a_s, b_s, strict=True))
    return [(v, v) for v in a_s if v in set(b_s)]


def _metric_expr(metric: str) -> pl.Expr:
    if metric == "affirmative_identifies":
        return (pl.col("affirmative") & pl.col("identifies")).fill_null(False)
    return pl.col(metric).fill_null(False)


def _count(df: pl.DataFrame, metric: str) -> int:
    return int(df.select(_metric_expr(metric).cast(pl.Int64).sum()).item() or 0) if df.height else 0


@dataclass
class CellRow:
    cell: dict[str, Any]  # prompt, layer, strength (A → B where they differ), concept
    cmp: CellComparison


@dataclass
class Comparison:
    a: ExperimentRows
    b: ExperimentRows
    knobs: list[KnobChange]
    metric: str
    test: str
    cells: list[CellRow] = field(default_factory=list)
    controls: list[CellRow] = field(default_factory=list)  # false positives (affirmative) per prompt
    pooled: tuple[RateCI, RateCI] | None = None


def _cell(ga: pl.DataFrame, gb: pl.DataFrame, metric: str, test: ExactTest) -> CellComparison:
    """Both arms' counts compared: paired (exact McNemar) when they hold the same trials — graded
    twice, under A's and B's rubric — else as independent samples."""
    if ga.height == gb.height and sorted(ga["key"].to_list()) == sorted(gb["key"].to_list()):
        ha = dict(zip(ga["key"].to_list(), ga.select(_metric_expr(metric)).to_series().to_list(), strict=True))
        hb = dict(zip(gb["key"].to_list(), gb.select(_metric_expr(metric)).to_series().to_list(), strict=True))
        order = sorted(ha)
        return compare_paired([bool(ha[k]) for k in order], [bool(hb[k]) for k in order])
    return compare_counts(_count(ga, metric), ga.height, _count(gb, metric), gb.height, test)


def _label(x: Any, y: Any) -> str:
    fx = f"{x:g}" if isinstance(x, float) else str(x)
    fy = f"{y:g}" if isinstance(y, float) else str(y)
    return fx if fx == fy else f"{fx}→{fy}"


def compare(
    frame: ResultsFrame,
    a: Experiment,
    b: Experiment,
    judge: str = "heuristic",
    metric: str = "affirmative_identifies",
    test: ExactTest = "fisher",
) -> Comparison:
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    for tag, e in (("A", a), ("B", b)):
        if (e.spec or {}).get("protocol") == "localization":
            raise UserError(
                f"{tag} ({e.name} [{e.id[:12]}]) is a localization experiment: compare reads generation "
                "experiments; localization accuracy is in `audit` and `report`"
            )
    ra, rb = experiment_rows(frame, a, judge), experiment_rows(frame, b, judge)
    out = Comparison(ra, rb, spec_diff(a.spec or {}, b.spec or {}), metric, test)
    by = [c for c in cell_keys(a.spec) if c in ("concept",)]
    ia = ra.rows.filter(pl.col("condition") == "concept")
    ib = rb.rows.filter(pl.col("condition") == "concept")
    pa = [p for p in (a.spec or {}).get("prompt_sets", []) if p in set(ia["prompt_set"].to_list())]
    pb = [p for p in (b.spec or {}).get("prompt_sets", []) if p in set(ib["prompt_set"].to_list())]
    changed = {k.knob for k in out.knobs}
    by_prompt = "prompt" in changed
    by_layer = "model" in changed
    by_strength = bool(changed & STRENGTH_SEMANTICS)
    cells: list[CellRow] = []
    for p_a, p_b in _axis(pa, pb, ordered=True, positional=by_prompt):
        sa, sb = ia.filter(pl.col("prompt_set") == p_a), ib.filter(pl.col("prompt_set") == p_b)
        for l_a, l_b in _axis(sa["layer"].to_list(), sb["layer"].to_list(), positional=by_layer):
            la, lb = sa.filter(pl.col("layer") == l_a), sb.filter(pl.col("layer") == l_b)
            for s_a, s_b in _axis(la["strength"].to_list(), lb["strength"].to_list(), positional=by_strength):
                xa, xb = la.filter(pl.col("strength") == s_a), lb.filter(pl.col("strength") == s_b)
                groups = (
                    [(c,) for c in sorted(set(xa["concept"].to_list()) & set(xb["concept"].to_list()))]
                    if by
                    else [()]
                )
                for g in groups:
                    ga = xa.filter(pl.col("concept") == g[0]) if g else xa
                    gb = xb.filter(pl.col("concept") == g[0]) if g else xb
                    if not ga.height or not gb.height:
                        continue
                    cell = {"prompt": _label(p_a, p_b), "layer": _label(l_a, l_b), "strength": _label(s_a, s_b)}
                    if g:
                        cell["concept"] = g[0]
                    cmp_ = _cell(ga, gb, metric, test)
                    cells.append(CellRow(cell, cmp_))
    adjusted = with_holm([c.cmp for c in cells])
    out.cells = [CellRow(c.cell, adj) for c, adj in zip(cells, adjusted, strict=True)]
    ca = ra.rows.filter(pl.col("condition") == "control")
    cb = rb.rows.filter(pl.col("condition") == "control")
    ctl: list[CellRow] = []
    for p_a, p_b in _axis(pa, pb, ordered=True, positional=by_prompt):
        xa, xb = ca.filter(pl.col("prompt_set") == p_a), cb.filter(pl.col("prompt_set") == p_b)
        if xa.height and xb.height:
            ctl.append(
                CellRow(
                    {"prompt": _label(p_a, p_b)},
                    _cell(xa, xb, "affirmative", test),
                )
            )
    out.controls = [CellRow(c.cell, adj) for c, adj in zip(ctl, with_holm([c.cmp for c in ctl]), strict=True)]
    out.pooled = (rate_ci(_count(ia, metric), ia.height), rate_ci(_count(ib, metric), ib.height))
    return out


# --------------------------------------------------------------------------- rendering


def _p(x: float | None) -> str:
    if x is None:
        return "-"
    return "<0.0001" if x < 1e-4 else f"{x:.4f}"


def _rows(cells: list[CellRow]) -> list[dict[str, str]]:
    out = []
    for c in cells:
        d = c.cmp.diff
        out.append(
            {
                **{k: str(v) for k, v in c.cell.items()},
                "A": c.cmp.a.format(),
                "B": c.cmp.b.format(),
                "B − A [95% Newcombe]": f"{d.net * 100:+.1f}% [{d.lo * 100:+.1f}%, {d.hi * 100:+.1f}%]",
                "p": _p(c.cmp.p) + ("*" if c.cmp.test == "mcnemar" else ""),
                "p (Holm)": _p(c.cmp.p_holm),
            }
        )
    return out


def text_table(rows: list[dict[str, str]]) -> list[str]:
    if not rows:
        return ["  (no cells)"]
    cols = list(rows[0])
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = ["  " + "  ".join(c.ljust(width[c]) for c in cols)]
    lines += ["  " + "  ".join(r[c].ljust(width[c]) for c in cols) for r in rows]
    return lines


def _who(e: ExperimentRows) -> str:
    return f"{e.exp.name} [{e.exp.id[:12]}]"


def format_comparison(c: Comparison) -> list[str]:
    test = "Fisher's exact test" if c.test == "fisher" else "Barnard's exact test"
    lines = [f"A = {_who(c.a)}", f"B = {_who(c.b)}", "", "knobs that differ (A → B):"]
    lines += [f"  {k.line()}" for k in c.knobs] or ["  none: the two specs ask for the same trials"]
    for e, tag in ((c.a, "A"), (c.b, "B")):
        if e.regraded:
            lines.append(f"  ({tag}: {e.regraded} shared trial(s) regraded in memory under {tag}'s rubric)")
        if e.left_out:
            lines.append(f"  ({tag}: {e.left_out} trial(s) graded under another rubric by the judge are not counted)")
    lines += [
        "",
        f"injected trials, per shared cell: {METRICS[c.metric]} (two-sided {test}; Holm over "
        f"{len(c.cells)} cell(s))",
        *text_table(_rows(c.cells)),
    ]
    if c.pooled is not None:
        lines.append(f"  pooled over all injected trials: A {c.pooled[0].format()}; B {c.pooled[1].format()}")
    lines += ["", f"controls: false positives (affirmative) per prompt (Holm over {len(c.controls)})"]
    lines += text_table(_rows(c.controls))
    if _paired(c):
        lines += ["", PAIRED_NOTE]
    return lines


PAIRED_NOTE = (
    "* the same trials in A and B (graded under each side's rubric): paired, so the exact McNemar "
    "test and its exact conditional interval for B − A, not Fisher/Barnard and Newcombe"
)


def _paired(c: Comparison) -> bool:
    return any(r.cmp.test == "mcnemar" for r in (*c.cells, *c.controls))


def markdown_comparison(c: Comparison) -> str:
    def md(rows: list[dict[str, str]]) -> list[str]:
        if not rows:
            return ["(no cells)"]
        cols = list(rows[0])
        return [
            "| " + " | ".join(cols) + " |",
            "|" + "---|" * len(cols),
            *("| " + " | ".join(r[k] for k in cols) + " |" for r in rows),
        ]

    lines = [f"## Comparison: {_who(c.a)} vs {_who(c.b)}", "", "Knobs that differ (A → B):", ""]
    lines += [f"- {k.line()}" for k in c.knobs] or ["- none"]
    lines += ["", f"Injected trials, {METRICS[c.metric]}, per shared cell ({c.test}, Holm-corrected):", ""]
    lines += md(_rows(c.cells))
    lines += ["", "Controls, false positives (affirmative):", ""] + md(_rows(c.controls))
    if _paired(c):
        lines += ["", PAIRED_NOTE.replace("*", "\\*", 1)]
    return "\n".join(lines) + "\n"


def compare_cache(
    root: Path,
    a_ref: str,
    b_ref: str,
    judge: str = "heuristic",
    metric: str = "affirmative_identifies",
    test: ExactTest = "fisher",
) -> Comparison:
    """`compare` on the cache at `root`: both experiments' trials, checked (read-only)."""
    from remote_introspect.store.results_frame import load_experiments, load_frame, open_readonly

    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if test not in ("fisher", "barnard"):
        raise UserError(f"unknown exact test {test!r}; choose fisher or barnard")
    conn = open_readonly(Path(root))
    try:
        exps = ResultsFrame(pl.DataFrame(), load_experiments(conn))
        a = resolve_experiment(exps, a_ref, "A")
        b = resolve_experiment(exps, b_ref, "B")
        frame = load_frame(conn, judge, [*a.keys, *b.keys])
    finally:
        conn.close()
    return compare(frame, a, b, judge, metric, test)
