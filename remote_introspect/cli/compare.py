"""`compare A B`: the knobs two experiments differ in, and their rates cell by cell."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from remote_introspect.cli.app import _fail, app
from remote_introspect.cli.options import CacheOpt, JudgeOpt
from remote_introspect.errors import UserError

MetricOpt = Annotated[
    str,
    typer.Option(help="Per-cell rate: affirmative_identifies | lindsey_success | strict | affirmative | identifies | coherent."),
]
TestOpt = Annotated[str, typer.Option("--test", help="Exact test per cell: fisher | barnard.")]


@app.command("compare")
def compare_command(
    a: Annotated[str, typer.Argument(help="Experiment A: an id (or unique id prefix) or an experiment file.")],
    b: Annotated[str, typer.Argument(help="Experiment B: an id (or unique id prefix) or an experiment file.")],
    cache: CacheOpt = Path("cache"),
    judge: JudgeOpt = "heuristic",
    metric: MetricOpt = "affirmative_identifies",
    test: TestOpt = "fisher",
) -> None:
    """Knobs that differ (A → B), then per shared cell both rates with exact CIs, B − A with a
    Newcombe CI, and an exact test with Holm's correction across cells. Reads only."""
    from remote_introspect.reporting.comparison import compare_cache, format_comparison

    try:
        result = compare_cache(cache, a, b, judge, metric, test)  # type: ignore[arg-type]
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    typer.echo("\n".join(format_comparison(result)))
