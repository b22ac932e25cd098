"""`scale`: one experiment on several models (`--models`), one row per model and a scaling plot."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from remote_introspect.cli.app import _fail, app, err, out
from remote_introspect.cli.options import ProtocolOpt, _run_options, _spec_overrides, experiment_command
from remote_introspect.cli.running import run_display
from remote_introspect.errors import UserError

ModelsOpt = Annotated[
    str,
    typer.Option(
        help="Comma-separated models, each anything --model accepts (preset, HF repo id, local "
        "directory), optionally MODEL@local or MODEL@ndif; e.g. gemma-270m,1b,3b,8b,70b,405b."
    ),
]
PlotOpt = Annotated[
    Path | None, typer.Option(help="Where to write the scaling PNG (default: CACHE/scaling.png).")
]
ExperimentArg = Annotated[
    Path | None,
    typer.Argument(
        help="Optional experiment file (e.g. experiments/scaling_llama.toml); --models replaces its model."
    ),
]


@app.command("scale")
@experiment_command
def scale(
    experiment: ExperimentArg = None,
    models: ModelsOpt = "",
    protocol: ProtocolOpt = None,
    plot: PlotOpt = None,
    *,
    spec_flags: dict[str, Any],
    run_flags: dict[str, Any],
) -> None:
    """The same experiment on each of --models (run, or reused from the cache): a table with one
    row per model (n, Lindsey success, strict, affirmative∧identifies, control FP, net detection,
    refusals; and with refusals excluded) and a plot of net detection vs parameter count beside the
    published Qwen2.5 and Llama-3.1-405B numbers. A model that cannot run here gets a row saying why.
    Every flag of replicate-lindsey applies to every model."""
    from remote_introspect.execution.scale import parse_models, run_scale
    from remote_introspect.experiment.protocols import build_spec, load_experiment_file
    from remote_introspect.reporting.scaling import ScalePoint, plot_scaling, render_scale_tables

    if spec_flags["model"] is not None:
        _fail("scale takes --models (comma-separated), not --model")
    if experiment is not None and protocol is not None:
        _fail("give an experiment file or --protocol, not both (the file names its protocol)")
    opts = _run_options(**run_flags)
    plot_path = plot if plot is not None else opts.cache_root / "scaling.png"
    if plot is not None and not plot.parent.is_dir():
        _fail(f"--plot: directory {plot.parent} does not exist")
    try:
        entries = parse_models(models)
        overrides = _spec_overrides(**spec_flags)
    except UserError as exc:
        _fail(str(exc), exc.exit_code)

    def build(model: str) -> Any:
        o = {**overrides, "model": model}
        return load_experiment_file(experiment, o) if experiment is not None else build_spec(protocol, o)


    with run_display(opts.cache_root) as hooks:
        outcomes = run_scale(entries, build, opts, hooks.progress, hooks.notice)
    first = outcomes[0].spec
    title = f"{first.name}, prompt '{first.prompt_sets[0]}'"
    points = [
        ScalePoint(
            o.entry.label, o.params, o.backend, o.row,
            f"unavailable: {o.unavailable}" if o.unavailable else ("" if o.status == "done" else o.status),
        )
        for o in outcomes
    ]  # fmt: skip
    render_scale_tables(points, title, out)
    if any(o.report is not None and o.report.instruct is False for o in outcomes):
        names = ", ".join(
            o.entry.label for o in outcomes if o.report is not None and o.report.instruct is False
        )
        out.print(f"Base models ({names}): their rates test the plumbing, not introspection.", markup=False)
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    plot_scaling(points, plot_path, title)
    out.print(f"scaling plot: {plot_path}", markup=False, highlight=False)
    nonfinite = sum(o.report.nonfinite_trials for o in outcomes if o.report is not None)
    if nonfinite:
        sys.stderr.write(
            f"error: {nonfinite} trial(s) failed with non-finite activations/logits (NaN/inf after steering: "
            "lower the strength); they are recorded failed, never graded\n"
        )
    if any(o.status == "integrity problems" for o in outcomes):
        _fail(
            "integrity problems in some models' trials: they were excluded from every count (run `audit`)", 4
        )
    if any(o.status == "incomplete" for o in outcomes):
        err.print(
            "[bold red]incomplete:[/] some trials failed or did not run; re-run the same command to retry them."
        )
        raise typer.Exit(1)
