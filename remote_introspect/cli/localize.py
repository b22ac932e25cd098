"""`localize`: Godet's localization task and the position control (PROTOCOLS.md §5)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from remote_introspect.cli.app import _fail, app, out
from remote_introspect.cli.options import _grid_fields, run_command
from remote_introspect.cli.running import checked, finish, run_display
from remote_introspect.errors import UserError

if TYPE_CHECKING:
    from remote_introspect.execution.runner import RunOptions

FileArg = Annotated[
    Path | None,
    typer.Argument(help="Experiment file (TOML), e.g. experiments/localization_405b.toml; flags override it."),
]
RegionsOpt = Annotated[
    str | None, typer.Option(help="sentences (five sentences, chance 20%) | halves (position control, 50%).")
]
TrialsOpt = Annotated[
    int | None, typer.Option(help="Trials per layer × strength; each injects into every region in turn.")
]
VectorsOpt = Annotated[
    str | None, typer.Option(help="Concept vectors: mean-baseline (Lindsey's; the only recipe localization takes).")
]
LocCondOpt = Annotated[
    str | None, typer.Option(help="Extra conditions: random (norm-matched random vectors). prefer is on unless --no-prefer.")
]
PreferOpt = Annotated[
    bool, typer.Option("--prefer/--no-prefer", help="The 'Which sentence do you prefer?' control (default on).")
]
ModeOpt = Annotated[str | None, typer.Option(help="absolute | norm-matched | relative.")]
LocStrengthsOpt = Annotated[str | None, typer.Option(help="Comma-separated strengths, e.g. 4,16.")]


@app.command("localize")
@run_command("model", "layers", "layer_fractions", "concepts", "seed")
def localize(
    experiment: FileArg = None,
    regions: RegionsOpt = None,
    strengths: LocStrengthsOpt = None,
    trials: TrialsOpt = None,
    vectors: VectorsOpt = None,
    conditions: LocCondOpt = None,
    prefer: PreferOpt = True,
    strength_mode: ModeOpt = None,
    *,
    fields: dict[str, Any],
    opts: RunOptions,
) -> None:
    """Where is the injected thought? Five sentences (or two halves), the concept vector injected
    into one at a time; the answer is the argmax over the answer tokens after a prefilled turn (no
    sampling, no judge). Prints accuracy per layer × strength against chance, the prefer control
    beside it, and the confusion of steered vs predicted position."""
    from remote_introspect.experiment.localization import build_localization_spec

    try:
        over = fields | _grid_fields(
            regions=regions, strengths=strengths, trials=trials, vectors=vectors, strength_mode=strength_mode,
            conditions=conditions,
        )
        spec = build_localization_spec(experiment, over, prefer)
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    _run(spec, opts)


def _run(spec: Any, opts: RunOptions) -> None:
    from remote_introspect.execution import localization as loc
    from remote_introspect.reporting.localization import format_results, summarize
    from remote_introspect.store.results_frame import load_frame, open_readonly

    checked(loc.validate, spec, opts)  # reject bad input before any display or write
    with run_display(opts.cache_root) as hooks:
        report = loc.run_localization(spec, opts, hooks)
    conn = open_readonly(opts.cache_root)
    try:
        frame = load_frame(conn, keys=report.keys)
    finally:
        conn.close()
    base = "" if report.instruct else " (a base model: this checks the plumbing, not introspection)"
    out.print(f"{spec.name}: {report.model_label}{base}, layers {', '.join(map(str, report.layers))}", highlight=False)
    for res in summarize(frame.df):
        for line in format_results(res):
            out.print(line, highlight=False, markup=False)
    problems = len(frame.problems)
    finish(
        nonfinite=report.nonfinite_trials,
        unit="row",
        never="scored",
        integrity=f"{problems} integrity problem(s) in this run's rows: excluded above (run `audit`)" if problems else "",
        complete=report.complete,
        errors=report.errors,
        incomplete="some rows failed or did not run; re-run the same command to retry them.",
    )
