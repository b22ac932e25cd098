"""`probe-report`: probe–report coupling (Martorell & Bianchi; PROTOCOLS.md §6)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from remote_introspect.cli.app import _fail, _validation_message, app, err, out
from remote_introspect.cli.options import (
    AttemptsOpt,
    BackendOpt,
    BatchOpt,
    CacheOpt,
    DtypeOpt,
    FractionsOpt,
    HostOpt,
    JobTimeoutOpt,
    LayersOpt,
    MismatchOpt,
    ModelOpt,
    QueueTimeoutOpt,
    SeedOpt,
    TokOpt,
    _parse_floats,
    _parse_ints,
    _run_options,
)
from remote_introspect.cli.running import run_display
from remote_introspect.errors import UserError

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
def probe_report(
    model: ModelOpt = None,
    concepts: ProbeConceptsOpt = None,
    layers: LayersOpt = None,
    layer_fractions: FractionsOpt = None,
    strengths: ProbeStrengthsOpt = None,
    strength_mode: ProbeModeOpt = None,
    seed: SeedOpt = None,
    backend: BackendOpt = None,
    cache: CacheOpt = Path("cache"),
    batch_size: BatchOpt = None,
    dtype: DtypeOpt = None,
    ndif_host: HostOpt = None,
    tokenizer: TokOpt = None,
    max_attempts: AttemptsOpt = 10,
    job_timeout: JobTimeoutOpt = 4200.0,
    queue_timeout: QueueTimeoutOpt = 7200.0,
    allow_version_mismatch: MismatchOpt = False,
) -> None:
    """Probe–report coupling: a linear probe per concept on residual activations (shipped contrastive
    statements, seeded held-out split), steering along it at a grid of strengths, and per trial the
    probe's readout and the model's 0–9 self-report (probability-weighted mean digit, one forward
    pass); per concept Spearman ρ and isotonic R² with bootstrap CIs, the causal slope and its sign,
    beside the published numbers. Cached and audited like every trial."""

    from remote_introspect.execution.probe_report import run_probe_report
    from remote_introspect.experiment.probe_spec import ProbeReportSpec
    from remote_introspect.reporting.probe_report import render_probe_report

    opts = _run_options(
        cache=cache, backend=backend, batch_size=batch_size, dtype=dtype, judge="heuristic", ndif_host=ndif_host,
        tokenizer=tokenizer, max_attempts=max_attempts, job_timeout=job_timeout, queue_timeout=queue_timeout,
        allow_version_mismatch=allow_version_mismatch, share_prefix=False,
    )  # fmt: skip
    fields: dict[str, object] = {}
    try:
        if model is not None:
            fields["model"] = model
        if concepts is not None:
            fields["concepts"] = tuple(c for c in concepts.split(",") if c.strip())
        if layers is not None:
            fields["layers"] = _parse_ints(layers, "--layers")
        if layer_fractions is not None:
            fields["layer_fractions"] = _parse_floats(layer_fractions, "--layer-fractions")
        if strengths is not None:
            fields["strengths"] = _parse_floats(strengths, "--strengths")
        if strength_mode is not None:
            fields["strength_mode"] = strength_mode
        if seed is not None:
            fields["seed"] = seed
        spec = ProbeReportSpec(**fields)  # type: ignore[arg-type]
    except ValidationError as exc:
        _fail(_validation_message(exc))
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    with run_display(opts.cache_root) as hooks:
        result = run_probe_report(spec, opts, hooks.progress, hooks.notice)
    render_probe_report(
        result.rows, result.model_label, result.instruct, spec.strengths, spec.strength_mode, out
    )
    if result.nonfinite:
        sys.stderr.write(
            f"error: {result.nonfinite} trial(s) failed with non-finite activations/logits (lower the strength); "
            "they are recorded failed, never counted\n"
        )
    if result.excluded:
        _fail(
            f"{len(result.excluded)} integrity problem(s): excluded from every count above (run `audit`)", 4
        )
    if not result.complete:
        for msg in sorted(set(result.errors))[:5]:
            err.print(f"[red]failed batch:[/] {msg}", highlight=False)
        err.print("[bold red]incomplete:[/] some trials failed; re-run the same command to retry them.")
        raise typer.Exit(1)
