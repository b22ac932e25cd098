"""The run summary printed on stdout: deterministic text, so two runs' stdout can be diffed."""

from __future__ import annotations

from collections import defaultdict

from rich.console import Console
from rich.table import Table

from .analysis import format_null, net_detection, rate_ci
from .runner import RunReport


def _cells(report: RunReport) -> dict[tuple[int, float], list[str]]:
    cells: dict[tuple[int, float], list[str]] = defaultdict(list)
    for t in report.trials:
        if t.condition == "concept":
            assert t.layer is not None
            cells[(t.layer, t.strength)].append(t.key)
    return cells


def render_summary(report: RunReport, console: Console) -> None:
    spec = report.spec
    grades = report.grades
    done = [t for t in report.trials if report.statuses.get(t.key) == "done"]
    failed = [t for t in report.trials if report.statuses.get(t.key) == "failed"]
    controls = [t.key for t in report.trials if t.condition == "control"]
    ctrl_done = [k for k in controls if report.statuses.get(k) == "done" and k in grades]
    fp = sum(grades[k]["affirmative"] for k in ctrl_done)
    fp_ci = rate_ci(fp, len(ctrl_done))

    console.print(
        f"Experiment {spec.name} [{report.experiment_id}] — model {report.model_label}, "
        f"prompt {spec.prompt_set}, span {spec.span}, strength mode {spec.strength_mode}, "
        f"vectors {spec.recipe.kind}, {spec.generation.max_new_tokens} new tokens, "
        f"temperature {spec.generation.temperature}, seed {spec.seed}",
        markup=False,
    )
    table = Table(title="Injected trials: strict introspection (all four criteria)", show_lines=False)
    for col in (
        "layer",
        "strength",
        "n",
        "hits",
        "rate [95% CI]",
        "affirm.∧ident.",
        "coherent",
        "net vs controls",
    ):
        table.add_column(col, justify="right")
    for (layer, strength), keys in sorted(_cells(report).items()):
        graded = [k for k in keys if report.statuses.get(k) == "done" and k in grades]
        hits = sum(grades[k]["strict"] for k in graded)
        ai = sum(grades[k]["affirmative"] and grades[k]["identifies"] for k in graded)
        coh = sum(grades[k]["coherent"] for k in graded)
        rate = rate_ci(hits, len(graded))
        net = net_detection(hits, len(graded), fp, len(ctrl_done)) if graded and ctrl_done else None
        table.add_row(
            str(layer),
            f"{strength:g}",
            str(len(graded)),
            str(hits),
            rate.format().split(" ", 1)[1] if graded else "—",
            rate_ci(ai, len(graded)).format() if graded else "—",
            rate_ci(coh, len(graded)).format() if graded else "—",
            net.format().split(" (")[0] if net else "—",
        )
    console.print(table)
    console.print(f"Controls (no injection): false positives (affirmative) {fp_ci.format()}")
    injected = [t.key for t in done if t.condition == "concept" and t.key in grades]
    total_hits = sum(grades[k]["strict"] for k in injected)
    if injected and total_hits == 0:
        console.print(f"All injected trials: {format_null(len(injected))}")
    elif injected:
        console.print(f"All injected trials: strict hits {rate_ci(total_hits, len(injected)).format()}")
    console.print(
        f"Trials: {len(report.trials)} planned, {len(done)} done, {len(failed)} failed, "
        f"{len(report.trials) - len(done) - len(failed)} not run. "
        "Failed trials are retried on the next run and never counted as negatives."
    )
    if not report.instruct:
        console.print(
            "Note: this is a BASE model (no instruction tuning). Its rates check the plumbing "
            "(vectors, injection, grading, cache), not introspection."
        )
