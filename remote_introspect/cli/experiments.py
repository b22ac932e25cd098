"""The run commands (`replicate-lindsey`, `run`) and `models`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from remote_introspect.cli.app import _fail, app, out
from remote_introspect.cli.options import ProtocolOpt, _run_options, _spec_overrides, experiment_command
from remote_introspect.cli.running import checked, finish, run_display
from remote_introspect.errors import UserError

if TYPE_CHECKING:
    from remote_introspect.execution.runner import RunOptions
    from remote_introspect.experiment.spec import ExperimentSpec


@app.command("replicate-lindsey")
@experiment_command
def replicate_lindsey(
    protocol: ProtocolOpt = None, *, spec_flags: dict[str, Any], run_flags: dict[str, Any]
) -> None:
    """Lindsey's injected-thought experiment: vectors, injected + control trials, grades, summary.

    Without --protocol: Lindsey's knobs on a small grid sized for a CPU (5 concepts × strengths
    2,8 × 2 samples + 4 controls). With --protocol: that protocol's published knobs and grid."""
    from remote_introspect.experiment.protocols import build_spec

    try:
        spec = build_spec(protocol, _spec_overrides(**spec_flags))
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    _run_spec(spec, _run_options(**run_flags))


@app.command("run")
@experiment_command
def run_file(
    experiment: Annotated[
        Path, typer.Argument(help="Experiment file (TOML), e.g. experiments/lindsey_8b.toml.")
    ],
    *,
    spec_flags: dict[str, Any],
    run_flags: dict[str, Any],
) -> None:
    """Run an experiment file; any flag overrides the file's value for that knob."""
    from remote_introspect.experiment.protocols import load_experiment_file

    try:
        spec = load_experiment_file(experiment, _spec_overrides(**spec_flags))
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    _run_spec(spec, _run_options(**run_flags))


def _run_spec(spec: ExperimentSpec, opts: RunOptions) -> None:
    from remote_introspect.execution import runner
    from remote_introspect.reporting.summary import render_summary

    checked(runner.validate, spec, opts)  # reject bad input before any display or write
    with run_display(opts.cache_root) as hooks:
        report = runner.run_with_grid(spec, opts, hooks)
    render_summary(report, out)
    excluded = len(report.excluded)
    finish(
        nonfinite=report.nonfinite_trials,
        integrity=(
            f"{excluded} integrity problem(s) in this run's trials: they were excluded from every count above "
            "(run `audit` for details)"
            if excluded
            else ""
        ),
        complete=report.complete,
        errors=report.errors,
    )


@app.command("models")
def models() -> None:
    """List the model presets."""
    from rich.table import Table

    from remote_introspect.models.presets import PRESETS

    table = Table(title="Model presets")
    for col in ("name", "repo id", "backend", "layers", "hidden", "description"):
        table.add_column(col)
    from remote_introspect.models.loading import resolve_model

    for name, p in PRESETS.items():
        ref = resolve_model(name)
        table.add_row(name, p.repo_id, p.backend, str(ref.num_layers), str(ref.hidden_size), p.description)
    out.print(table)
