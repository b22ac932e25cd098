"""`probe-report`: probe–report coupling (Martorell & Bianchi; PROTOCOLS.md §6)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from remote_introspect.cli.app import app, out
from remote_introspect.cli.options import (
    _grid_fields,
    run_command,
)
from remote_introspect.cli.running import checked, finish, run_display

if TYPE_CHECKING:
    from remote_introspect.execution.runner import RunOptions

ProbeConceptsOpt = Annotated[
    str | None,
    typer.Option(help="Concepts with shipped probe prompts: wellbeing,interest,focus,impulsivity."),
]
ProbeStrengthsOpt = Annotated[
    str | None,
    typer.Option(help="Signed steering strengths along the probe direction (0 is always added); default "
                 "-0.4,-0.2,-0.1,0,0.1,0.2,0.4 (relative: multiples of the span's mean residual norm)."),
]  # fmt: skip
ProbeModeOpt = Annotated[str | None, typer.Option(help="relative (default) | norm-matched | absolute.")]


@app.command("probe-report")
@run_command("model", "layers", "layer_fractions", "seed")
def probe_report(
    concepts: ProbeConceptsOpt = None,
    strengths: ProbeStrengthsOpt = None,
    strength_mode: ProbeModeOpt = None,
    *,
    fields: dict[str, Any],
    opts: RunOptions,
) -> None:
    """Probe–report coupling: a linear probe per concept on residual activations (shipped contrastive
    statements, seeded held-out split), steering along it at a grid of strengths, and per trial the
    probe's readout and the model's 0–9 self-report (probability-weighted mean digit, one forward
    pass); per concept Spearman ρ and isotonic R² with bootstrap CIs, the causal slope and its sign,
    beside the published numbers. Cached and audited like every trial."""
    from remote_introspect.execution.probe_report import run_probe_report
    from remote_introspect.experiment.probe_spec import ProbeReportSpec
    from remote_introspect.reporting.probe_report import render_probe_report

    def build() -> ProbeReportSpec:
        given = fields | _grid_fields(strengths=strengths, strength_mode=strength_mode)
        if concepts is not None:  # the probe concepts by name (not Lindsey's list)
            given["concepts"] = tuple(c for c in concepts.split(",") if c.strip())
        return ProbeReportSpec(**given)

    spec = checked(build)
    with run_display(opts.cache_root) as hooks:
        result = run_probe_report(spec, opts, hooks)
    render_probe_report(
        result.rows, result.model_label, result.instruct, spec.strengths, spec.strength_mode, out
    )
    excluded = len(result.excluded)
    finish(
        nonfinite=result.nonfinite,
        never="counted",
        integrity=f"{excluded} integrity problem(s): excluded from every count above (run `audit`)" if excluded else "",
        complete=result.complete,
        errors=result.errors,
        incomplete="some trials failed; re-run the same command to retry them.",
    )
