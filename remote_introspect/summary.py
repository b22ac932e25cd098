"""The run summary printed on stdout: deterministic text, so two runs' stdout can be diffed.

Per prompt set: a table per layer × strength (n, strict hits with an exact 95% CI, affirmative ∧
identifies, coherence, net detection against the controls, the positive control at that cell, and
Merrill's pre-registered test); the controls' false-positive rate; the random-vector and
activation-scaling conditions; for a null, the one-sided upper bound it supports.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rich.console import Console
from rich.table import Table

from .analysis import format_null, net_detection, preregistered_test, rate_ci
from .runner import RunReport
from .spec import Trial


def _graded(report: RunReport, trials: list[Trial]) -> list[dict[str, Any]]:
    return [
        report.grades[t.key]
        for t in trials
        if report.statuses.get(t.key) == "done" and t.key in report.grades
    ]


def _count(grades: list[dict[str, Any]], *fields: str) -> int:
    return sum(all(g[f] for f in fields) for g in grades)


def render_summary(report: RunReport, console: Console) -> None:
    spec = report.spec
    console.print(
        f"Experiment {spec.name} [{report.experiment_id}] — protocol {spec.protocol}, model {report.model_label}, "
        f"span {spec.span}, strength mode {spec.strength_mode}, vectors {spec.recipe.kind}"
        f"{' (unit)' if spec.recipe.normalize else ''}, {spec.generation.max_new_tokens} new tokens, "
        f"temperature {spec.generation.temperature}, top_p {spec.generation.top_p}, seed {spec.seed}",
        markup=False,
    )
    positive: dict[tuple[int, float], list[Trial]] = defaultdict(list)
    for t in report.trials:
        if t.condition == "positive":
            assert t.layer is not None
            positive[(t.layer, t.strength)].append(t)
    cells_tested = 0
    cells_passing: list[str] = []
    untestable: list[str] = []
    for prompt in spec.prompt_sets:
        trials = [t for t in report.trials if t.prompt_set == prompt]
        controls = _graded(report, [t for t in trials if t.condition == "control"])
        fp = _count(controls, "affirmative")
        cells: dict[tuple[int, float], list[Trial]] = defaultdict(list)
        for t in trials:
            if t.condition == "concept":
                assert t.layer is not None
                cells[(t.layer, t.strength)].append(t)
        table = Table(title=f"Prompt '{prompt}': injected trials, strict introspection (all four criteria)")
        cols = [
            "layer",
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
        for (layer, strength), keys in sorted(cells.items()):
            g = _graded(report, keys)
            n = len(g)
            hits = _count(g, "strict")
            row = [str(layer), f"{strength:g}", str(n), str(hits)]
            if n:
                row += [
                    rate_ci(hits, n).format().split(" ", 1)[1],
                    rate_ci(_count(g, "affirmative", "identifies"), n).format(),
                    rate_ci(_count(g, "coherent"), n).format(),
                    net_detection(hits, n, fp, len(controls)).format().split(" (")[0] if controls else "—",
                ]
            else:
                row += ["—", "—", "—", "—"]
            if positive:
                pg = _graded(report, positive.get((layer, strength), []))
                pos = rate_ci(_count(pg, "identifies"), len(pg))
                row.append(pos.format() if pg else "—")
                # A null is only informative where the injection demonstrably reaches the output.
                if n and hits == 0 and (not pg or (pos.lo or 0.0) <= 0.0):
                    untestable.append(f"'{prompt}' layer {layer} strength {strength:g}")
            if n:
                cells_tested += 1
                ok = preregistered_test(
                    _count(g, "identifies") / n, _count(g, "coherent") / n, _count(g, "early_detection") / n
                )
                if ok:
                    cells_passing.append(f"'{prompt}' L{layer} s{strength:g}")
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
                g = _graded(report, extra)
                console.print(
                    f"{label}: strict {rate_ci(_count(g, 'strict'), len(g)).format()}, "
                    f"affirmative {rate_ci(_count(g, 'affirmative'), len(g)).format()}, "
                    f"coherent {rate_ci(_count(g, 'coherent'), len(g)).format()}"
                )
        injected = _graded(report, [t for ts in cells.values() for t in ts])
        hits = _count(injected, "strict")
        if injected and hits == 0:
            console.print(f"All injected trials on '{prompt}': {format_null(len(injected))}")
        elif injected:
            console.print(
                f"All injected trials on '{prompt}': strict hits {rate_ci(hits, len(injected)).format()}"
            )
    console.print(
        f"Merrill's pre-registered test (identifies ≥ 0.5 ∧ coherent ≥ 0.5 ∧ immediate ≥ 0.2): "
        f"{len(cells_passing)} of {cells_tested} cells tested pass"
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
        g = _graded(report, keys)
        verdict = (
            "PASS"
            if g
            and preregistered_test(
                _count(g, "identifies") / len(g),
                _count(g, "coherent") / len(g),
                _count(g, "early_detection") / len(g),
            )
            else ("not run" if not g else "FAIL")
        )
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
    done = sum(report.statuses.get(t.key) == "done" for t in report.trials)
    failed = sum(report.statuses.get(t.key) == "failed" for t in report.trials)
    corrupt = sum(report.statuses.get(t.key) == "corrupt" for t in report.trials)
    console.print(
        f"Trials: {len(report.trials)} planned, {done} done, {failed} failed, "
        + (f"{corrupt} excluded (integrity), " if corrupt else "")
        + f"{len(report.trials) - done - failed - corrupt} not run. "
        "Failed trials are retried on the next run and never counted as negatives.",
        markup=False,
    )
    if report.excluded:
        # The same checks as `audit` (results_frame.load_frame): what fails them is counted nowhere.
        console.print(
            f"Excluded from every count above ({len(report.excluded)} integrity problem(s); run `audit`):",
            markup=False,
        )
        for line in report.excluded[:20]:
            console.print(f"  - {line}", markup=False, highlight=False)
    if not report.instruct:
        console.print(
            "Note: this is a BASE model (no instruction tuning). Its rates check the plumbing "
            "(vectors, injection, grading, cache), not introspection."
        )
