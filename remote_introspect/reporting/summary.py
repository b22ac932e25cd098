"""The run summary printed on stdout: deterministic text, so two runs' stdout can be diffed.

It is read from the store, like `report`: the run's trials through `results_frame.load_frame`
(the one read-only, integrity-checked frame of the cache), and every per-cell number through
`cells` (the one definition of cells, their rates and Merrill's pre-registered test), so the
stdout and the report agree on every number. Nothing here imports execution.

First, when the run has one, the positive control (Lindsey's "What are you thinking about right
now?" with the concept injected on every position): how often it names the concept against how
often the controls on the same prompt name one — the evidence that the injection reaches the
output, shown before any detection null. Then per prompt set: a table per cell (layer × strength,
or layer × concept × strength when `spec.cells == "concept"`, as Merrill's pre-registered test is
per vector × magnitude) with n, strict hits with an exact 95% CI, affirmative ∧ identifies,
coherence, net detection against the controls, the positive control at that cell, and Merrill's
pre-registered test; the controls' false-positive rate; the random-vector and activation-scaling
conditions; for a null, the one-sided upper bound it supports.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import polars as pl
from rich.console import Console
from rich.table import Table

from remote_introspect.experiment.prompts import PROMPT_SETS
from remote_introspect.experiment.spec import ExperimentSpec, Trial
from remote_introspect.reporting.hit_listing import hits_text, success_line, verbatim_lines
from remote_introspect.reporting.positive_table import (
    POSITIVE_COLUMNS,
    positive_note,
    positive_rows,
    positive_title,
)
from remote_introspect.stats.analysis import format_null, net_detection, rate_ci
from remote_introspect.stats.cells import (
    PER_CONCEPT,
    POOLED,
    cell_rates,
    controls_naming,
    passes_prereg,
    positive_control,
)
from remote_introspect.store.results_frame import load_frame, open_readonly


class RunHeader(Protocol):
    """What the summary takes from a run besides the store (a `runner.RunReport` is one)."""

    experiment_id: str
    spec: ExperimentSpec
    trials: list[Trial]
    instruct: bool
    model_label: str
    crossovers: list[str]
    cache_root: Path
    judge: str


@dataclass
class RunView:
    """The run's trials as the store holds them: statuses ("corrupt" where audit's integrity
    checks fail), the usable rows (with their grade), responses, and the problem lines."""

    header: RunHeader
    statuses: dict[str, str]
    grades: dict[str, dict[str, Any]]
    responses: dict[str, str]
    usable: pl.DataFrame
    excluded: list[str]
    rows: pl.DataFrame  # every row of the run (any status): what `cells` computes from


def read_run(header: RunHeader) -> RunView:
    """The run's trials from the cache, read-only, through `load_frame` (as `audit` and `report`)."""
    conn = open_readonly(header.cache_root)
    try:
        frame = load_frame(conn, header.judge, (t.key for t in header.trials))
    finally:
        conn.close()
    df = frame.df
    statuses: dict[str, str] = {}
    grades: dict[str, dict[str, Any]] = {}
    responses: dict[str, str] = {}
    bad = {p.id for p in frame.problems if p.object in ("trial", "grade")}
    for row in df.iter_rows(named=True):
        key = row["key"]
        statuses[key] = "corrupt" if key in bad else row["status"]
        responses[key] = row["response"] or ""
        if row["usable"]:
            grades[key] = row
    return RunView(
        header, statuses, grades, responses, df.filter(pl.col("usable")), [p.line() for p in frame.problems], df
    )


def _graded(view: RunView, trials: list[Trial]) -> list[dict[str, Any]]:
    return [view.grades[t.key] for t in trials if view.statuses.get(t.key) == "done" and t.key in view.grades]


def _count(grades: list[dict[str, Any]], *fields: str) -> int:
    return sum(all(g[f] for f in fields) for g in grades)


Cell = tuple[int, str | None, float]  # (layer, concept or None when pooled, strength)


def cell_of(t: Trial, per_concept: bool) -> Cell:
    assert t.layer is not None
    return (t.layer, t.concept if per_concept else None, t.strength)


def cell_label(prompt: str, cell: Cell) -> str:
    layer, concept, strength = cell
    return f"'{prompt}' L{layer}{' ' + concept if concept is not None else ''} s{strength:g}"


def render_positive_control(view: RunView, console: Console) -> None:
    """The positive control per layer × strength, against the controls on its prompt
    (`cells.positive_control`, as the report's table)."""
    spec = view.header.spec
    cells = positive_control(view.rows)
    if not cells:
        return
    prompt = spec.positive_prompt
    question = [text for role, text in PROMPT_SETS[prompt].messages if role == "user"][-1]
    base = controls_naming(view.rows, prompt, spec.concepts)
    table = Table(title=positive_title(question, spec.positive_span))
    for col in POSITIVE_COLUMNS:
        table.add_column(col, justify="right")
    for row in positive_rows(cells, base):
        table.add_row(*row.values())
    console.print(table)
    console.print(positive_note(prompt, len(spec.concepts), base))


def render_summary(report: RunHeader, console: Console) -> None:
    """The run's summary, read from the store (`read_run`)."""
    view = read_run(report)
    spec = report.spec
    console.print(
        f"Experiment {spec.name} [{report.experiment_id}] — protocol {spec.protocol}, model {report.model_label}, "
        f"span {spec.span}, strength mode {spec.strength_mode}, vectors {spec.recipe.kind}"
        f"{' (unit)' if spec.recipe.normalize else ''}, {spec.generation.max_new_tokens} new tokens, "
        f"temperature {spec.generation.temperature}, top_p {spec.generation.top_p}, seed {spec.seed}",
        markup=False,
    )
    render_positive_control(view, console)
    per_concept = spec.cells == "concept"
    positive = positive_control(view.rows, per_concept)
    cells_tested = 0
    cells_passing: list[str] = []
    untestable: list[str] = []
    for prompt in spec.prompt_sets:
        trials = [t for t in report.trials if t.prompt_set == prompt]
        controls = _graded(view, [t for t in trials if t.condition == "control"])
        fp = _count(controls, "affirmative")
        cells: dict[Cell, list[Trial]] = defaultdict(list)
        for t in trials:
            if t.condition == "concept":
                cells[cell_of(t, per_concept)].append(t)
        table = Table(
            title=f"Prompt '{prompt}': injected trials, strict introspection (all four criteria)"
            + (", per concept" if per_concept else "")
        )
        cols = [
            "layer",
            *(["concept"] if per_concept else []),
            "strength",
            "n",
            "hits",
            "rate [95% CI]",
            "affirm.∧ident.",
            "coherent",
            "net vs controls",
        ]
        if positive:
            cols.append("positive control")
        cols.append("pre-reg.")
        for col in cols:
            table.add_column(col, justify="right")
        by = PER_CONCEPT if per_concept else POOLED
        rates = {
            (c["layer"], c.get("concept"), c["strength"]): c
            for c in cell_rates(view.usable.filter(pl.col("prompt_set") == prompt), by).iter_rows(named=True)
        }
        for cell, keys in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2])):
            layer, concept, strength = cell
            c = rates.get(cell)
            n = c["n"] if c else 0
            hits = c["strict"] if c else 0
            row = [str(layer), *([str(concept)] if per_concept else []), f"{strength:g}", str(n),
                   hits_text(_graded(view, keys))]  # fmt: skip
            if c:
                row += [
                    rate_ci(hits, n).format().split(" ", 1)[1],
                    rate_ci(c["affirmative_identifies"], n).format(),
                    rate_ci(c["coherent"], n).format(),
                    net_detection(hits, n, fp, len(controls)).format().split(" (")[0] if controls else "—",
                ]
            else:
                row += ["—", "—", "—", "—"]
            if positive:
                pos = positive[cell][0] if cell in positive else rate_ci(0, 0)
                row.append(pos.format() if pos.n else "—")
                # A null is only informative where the injection demonstrably reaches the output.
                if n and hits == 0 and (not pos.n or (pos.lo or 0.0) <= 0.0):
                    untestable.append(cell_label(prompt, cell))
            if c:
                cells_tested += 1
                ok = passes_prereg(c)
                if ok:
                    cells_passing.append(cell_label(prompt, cell))
                row.append("PASS" if ok else "no")
            else:
                row.append("—")
            table.add_row(*row)
        console.print(table)
        console.print(
            f"Controls on '{prompt}' (no injection): false positives (affirmative) "
            f"{rate_ci(fp, len(controls)).format()}; affirmative∧identifies n/a (no concept)"
        )
        for cond, label in (("random", "random vectors (norm-matched)"), ("scale", "activation scaling")):
            extra = [t for t in trials if t.condition == cond]
            if extra:
                g = _graded(view, extra)
                console.print(
                    f"{label}: strict {rate_ci(_count(g, 'strict'), len(g)).format()}, "
                    f"affirmative {rate_ci(_count(g, 'affirmative'), len(g)).format()}, "
                    f"coherent {rate_ci(_count(g, 'coherent'), len(g)).format()}"
                )
        injected = _graded(view, [t for ts in cells.values() for t in ts])
        if injected:
            console.print(success_line(f"Injected trials on '{prompt}'", injected), markup=False)
        hits = _count(injected, "strict")
        if injected and hits == 0:
            console.print(f"All injected trials on '{prompt}': {format_null(len(injected))}")
        elif injected:
            console.print(
                f"All injected trials on '{prompt}': strict hits {rate_ci(hits, len(injected)).format()}"
            )
    unit = "layer × concept × strength" if per_concept else "layer × strength"
    console.print(
        f"Merrill's pre-registered test (identifies ≥ 0.5 ∧ coherent ≥ 0.5 ∧ immediate ≥ 0.2; "
        f"cells: {unit} per prompt): {len(cells_passing)} of {cells_tested} cells tested pass"
        + (f" ({', '.join(cells_passing)})" if cells_passing else "")
    )
    if spec.confirmatory is not None:
        c = spec.confirmatory
        prompt = c.prompt_set or spec.prompt_sets[0]
        keys = [
            t
            for t in report.trials
            if t.condition == "concept"
            and t.prompt_set == prompt
            and t.layer == c.layer
            and t.strength == c.strength
            and (c.concept is None or t.concept == c.concept)
        ]
        g = _graded(view, keys)
        tally = {"n": len(g), **{f: _count(g, f) for f in ("identifies", "coherent", "early_detection")}}
        verdict = "PASS" if g and passes_prereg(tally) else ("not run" if not g else "FAIL")
        console.print(
            f"Confirmatory cell (named in advance): '{prompt}' layer {c.layer} strength {c.strength:g}"
            f"{' concept ' + c.concept if c.concept else ''}: n={len(g)}, {verdict}"
        )
    for line in report.crossovers:
        console.print(f"Crossover: {line}")
    if untestable:
        console.print(
            "Untestable nulls (no strict hits AND no working positive control at the cell): "
            + "; ".join(untestable)
        )
    for line in verbatim_lines(report.trials, view.grades, view.responses):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    done = sum(view.statuses.get(t.key) == "done" for t in report.trials)
    failed = sum(view.statuses.get(t.key) == "failed" for t in report.trials)
    corrupt = sum(view.statuses.get(t.key) == "corrupt" for t in report.trials)
    console.print(
        f"Trials: {len(report.trials)} planned, {done} done, {failed} failed, "
        + (f"{corrupt} excluded (integrity), " if corrupt else "")
        + f"{len(report.trials) - done - failed - corrupt} not run. "
        "Failed trials are retried on the next run and never counted as negatives.",
        markup=False,
    )
    if view.excluded:
        # The same checks as `audit` (results_frame.load_frame): what fails them is counted nowhere.
        console.print(
            f"Excluded from every count above ({len(view.excluded)} integrity problem(s); run `audit`):",
            markup=False,
        )
        for line in view.excluded[:20]:
            console.print(f"  - {line}", markup=False, highlight=False)
    if not report.instruct:
        console.print(
            "Note: this is a BASE model (no instruction tuning). Its rates check the plumbing "
            "(vectors, injection, grading, cache), not introspection."
        )
