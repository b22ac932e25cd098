"""`localize`: Godet's localization task and the position control (PROTOCOLS.md §5)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from remote_introspect.cli.app import _fail, app, err, out
from remote_introspect.cli.options import (
    AttemptsOpt,
    BackendOpt,
    BatchOpt,
    CacheOpt,
    ConceptsOpt,
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
    _parse_concepts,
    _parse_floats,
    _parse_ints,
    _run_options,
)
from remote_introspect.cli.running import checked, run_display
from remote_introspect.errors import UserError

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
def localize(
    experiment: FileArg = None,
    model: ModelOpt = None,
    regions: RegionsOpt = None,
    strengths: LocStrengthsOpt = None,
    layers: LayersOpt = None,
    layer_fractions: FractionsOpt = None,
    trials: TrialsOpt = None,
    concepts: ConceptsOpt = None,
    vectors: VectorsOpt = None,
    conditions: LocCondOpt = None,
    prefer: PreferOpt = True,
    strength_mode: ModeOpt = None,
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
    """Where is the injected thought? Five sentences (or two halves), the concept vector injected
    into one at a time; the answer is the argmax over the answer tokens after a prefilled turn (no
    sampling, no judge). Prints accuracy per layer × strength against chance, the prefer control
    beside it, and the confusion of steered vs predicted position."""
    from remote_introspect.experiment.localization import build_localization_spec

    try:
        over: dict[str, Any] = {
            "model": model,
            "regions": regions,
            "strengths": None if strengths is None else _parse_floats(strengths, "--strengths"),
            "layers": None if layers is None else _parse_ints(layers, "--layers"),
            "layer_fractions": None if layer_fractions is None else _parse_floats(layer_fractions, "--layer-fractions"),
            "trials": trials,
            "concepts": None if concepts is None else _parse_concepts(concepts),
            "recipe": None if vectors is None else {"kind": vectors, "normalize": vectors == "contrast-pairs"},
            "strength_mode": strength_mode,
            "seed": seed,
            "conditions": None if conditions is None else tuple(c.strip() for c in conditions.split(",") if c.strip()),
        }
        spec = build_localization_spec(experiment, over, prefer)
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    opts = _run_options(
        cache=cache, backend=backend, batch_size=batch_size, dtype=dtype, judge="heuristic", ndif_host=ndif_host,
        tokenizer=tokenizer, max_attempts=max_attempts, job_timeout=job_timeout, queue_timeout=queue_timeout,
        allow_version_mismatch=allow_version_mismatch, share_prefix=False,
    )  # fmt: skip
    _run(spec, opts)


def _run(spec: Any, opts: Any) -> None:
    from remote_introspect.execution import localization as loc
    from remote_introspect.reporting.localization import format_results, summarize
    from remote_introspect.store.results_frame import load_frame

    checked(loc.validate, spec, opts)
    with run_display(opts.cache_root) as hooks:
        report = loc.run_localization(spec, opts, hooks.progress, hooks.notice, hooks.request_status)
    from remote_introspect.store.results_frame import open_readonly

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
    problems = [p.line() for p in frame.problems]
    if report.nonfinite_trials:
        sys.stderr.write(
            f"error: {report.nonfinite_trials} row(s) failed with non-finite activations/logits "
            "(NaN/inf after steering: lower the strength); they are recorded failed, never scored\n"
        )
    if problems:
        _fail(f"{len(problems)} integrity problem(s) in this run's rows: excluded above (run `audit`)", 4)
    if not report.complete:
        for msg in sorted(set(report.errors))[:5]:
            err.print(f"[red]failed batch:[/] {msg}", highlight=False)
        err.print("[bold red]incomplete:[/] some rows failed or did not run; re-run the same command to retry them.")
        raise typer.Exit(1)
