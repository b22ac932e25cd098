"""`ladder FILE`: from one recipe to another one knob at a time; a table row per rung."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from remote_introspect.cli.app import _fail, app
from remote_introspect.cli.options import _run_options, _spec_overrides, experiment_command
from remote_introspect.cli.running import run_display
from remote_introspect.errors import UserError


@app.command("ladder")
@experiment_command
def ladder_command(
    ladder_file: Annotated[Path, typer.Argument(help="Ladder file (TOML), e.g. experiments/ladder_405b.toml.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and its cost; send and run nothing.")] = False,
    *,
    spec_flags: dict[str, Any],
    run_flags: dict[str, Any],
) -> None:
    """Run a ladder file's rungs in order (each an ordinary cached experiment), then print one row
    per rung and `compare` between adjacent rungs. The grid flags (--model, --layers, --samples,
    --controls, --max-new-tokens, ...) override the file for every rung; knobs are the file's."""
    from remote_introspect.execution.ladder import format_plan, plan_ladder
    from remote_introspect.experiment.ladder import load_ladder

    try:
        ladder = load_ladder(ladder_file, _spec_overrides(**spec_flags))
        opts = _run_options(**run_flags)
        plan = plan_ladder(ladder, opts)
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    for line in format_plan(plan, ladder):
        typer.echo(line)
    if dry_run:
        typer.echo("dry run: nothing was sent, loaded or written")
        return
    _run(ladder, opts)


def _run(ladder: Any, opts: Any) -> None:
    from remote_introspect.execution.ladder import run_ladder, rung_summary
    from remote_introspect.reporting.ladder import format_ladder, ladder_rows, rung_experiments
    from remote_introspect.store.results_frame import load_frame, open_readonly

    with run_display(opts.cache_root) as hooks:
        result = run_ladder(ladder, opts, hooks.progress, hooks.notice)
    summary = rung_summary(result)
    for s in summary:
        if s["matching"]:
            typer.echo(f"rung {s['index']} ({s['knob']}): {s['matching']}")
    conn = open_readonly(opts.cache_root)
    try:
        keys = [t.key for r in result.runs for t in r.report.trials]
        frame = load_frame(conn, opts.judge, keys)
    finally:
        conn.close()
    rows, comps = ladder_rows(frame, rung_experiments(frame, summary), opts.judge)
    typer.echo("\n".join(format_ladder(rows, comps)))
    excluded = [p for r in result.runs for p in r.report.excluded]
    if excluded:
        _fail(f"{len(excluded)} integrity problem(s) in the ladder's trials were excluded (run `audit`)", 4)
    if not result.complete:
        sys.stderr.write(
            f"error: the ladder stopped after {len(result.runs)} of {len(ladder.rungs)} rung(s): some trials failed "
            "or did not run; re-run the same command to resume\n"
        )
        raise typer.Exit(1)
