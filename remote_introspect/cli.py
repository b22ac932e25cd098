"""Command-line interface (typer). stdout carries results only; progress and logs go to stderr.

Never name an option `-v`/`--verbose`: nnsight switches into debug mode when it sees either in
sys.argv (NDIF.md).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
out = Console(soft_wrap=True, width=160)
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    # Plain write, not rich: the message must stay ONE line whatever the terminal width.
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    raise typer.Exit(code)


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def _parse_floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None


def _parse_concepts(text: str) -> tuple[str, ...]:
    from .prompts import CONCEPT_WORDS

    text = text.strip()
    if text.isdigit():
        n = int(text)
        if not 1 <= n <= len(CONCEPT_WORDS):
            raise UserError(f"--concepts N must be between 1 and {len(CONCEPT_WORDS)}, got {n}")
        return CONCEPT_WORDS[:n]
    return tuple(w.strip() for w in text.split(",") if w.strip())


def _setup_logging() -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=os.environ.get("REMOTE_INTROSPECT_LOG", "WARNING").upper(),
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False)],
    )
    # HF/nnsight chatter goes to stderr only, and only what matters.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


# -- options shared by the run commands ----------------------------------------------------------

ModelOpt = Annotated[
    str | None, typer.Option(help="Preset (see `models`), HF repo id, or local model directory.")
]
ProtocolOpt = Annotated[
    str | None, typer.Option(help="lindsey | merrill-405b | ndif-405b: the published knobs and grid.")
]
BackendOpt = Annotated[str | None, typer.Option(help="local | ndif (default: the preset's).")]
ConceptsOpt = Annotated[
    str | None, typer.Option(help="N (the first N of Lindsey's list) or words: Dust,Oceans.")
]
StrengthsOpt = Annotated[str | None, typer.Option(help="Comma-separated strengths (1,2,4,8) or auto.")]
LayersOpt = Annotated[str | None, typer.Option(help="Absolute decoder layers, e.g. 12,14.")]
FractionsOpt = Annotated[str | None, typer.Option(help="Fractions of depth, e.g. 0.55,0.67.")]
SamplesOpt = Annotated[int | None, typer.Option(help="Trials per concept × strength × layer [× prompt].")]
ControlsOpt = Annotated[
    int | None, typer.Option(help="No-injection trials per prompt (shared by all cells).")
]
SeedOpt = Annotated[int | None, typer.Option(help="Experiment seed (part of every trial key).")]
TokensOpt = Annotated[int | None, typer.Option(help="Tokens generated per trial.")]
TempOpt = Annotated[float | None, typer.Option(help="Sampling temperature (0 = greedy).")]
TopPOpt = Annotated[float | None, typer.Option(help="Nucleus sampling top_p.")]
PromptOpt = Annotated[
    str | None, typer.Option(help="Prompt sets, comma-separated: lindsey, merrill, thinking.")
]
SpanOpt = Annotated[str | None, typer.Option(help="from-trial | all | generated.")]
ModeOpt = Annotated[str | None, typer.Option(help="absolute | norm-matched | mlp-norm-matched | relative.")]
RecipeOpt = Annotated[str | None, typer.Option(help="Concept vectors: mean-baseline | contrast-pairs.")]
PairsOpt = Annotated[str | None, typer.Option(help="Contrast pairs JSON (default: Merrill's, shipped).")]
CondOpt = Annotated[str | None, typer.Option(help="Extra conditions: control,random,scale,positive or all.")]
ScaleOpt = Annotated[str | None, typer.Option(help="Activation-scaling factors for the scale condition.")]
DenseOpt = Annotated[
    bool | None, typer.Option("--dense-grid/--no-dense-grid", help="Coarse grid → crossover → dense grid.")
]
DensePointsOpt = Annotated[int | None, typer.Option(help="Points in the dense grid (8-12 recommended).")]
CrossModeOpt = Annotated[str | None, typer.Option(help="Crossover definition: rise-through | threshold.")]
CacheOpt = Annotated[Path, typer.Option(help="Cache directory (SQLite + safetensors).")]
BatchOpt = Annotated[int | None, typer.Option(help="Rows per generate call / request (default: preset).")]
DtypeOpt = Annotated[str | None, typer.Option(help="fp32 | bf16 | fp16 (default: bf16 on GPU, fp32 on CPU).")]
JudgeOpt = Annotated[str, typer.Option(help="Grader: heuristic (offline, default).")]
HostOpt = Annotated[
    str | None, typer.Option(help="NDIF-compatible server URL (default: $NDIF_HOST or https://api.ndif.us).")
]
TokOpt = Annotated[
    Path | None, typer.Option(help="Local tokenizer directory for a remote model (else the HF cache).")
]
AttemptsOpt = Annotated[int, typer.Option(help="Attempts per remote request (transient errors).")]
JobTimeoutOpt = Annotated[
    float,
    typer.Option(
        help="Seconds a remote job may stay RUNNING before it counts as lost and is resubmitted "
        "(NDIF kills jobs at 3600 s; time queued does not count)."
    ),
]
QueueTimeoutOpt = Annotated[
    float,
    typer.Option(
        help="Seconds a remote job may sit queued with no change before the server is asked about "
        "it; resubmitted only if the server no longer knows it or no longer hosts the model, or "
        "once it has sat unchanged for --queue-timeout + --job-timeout (a status frozen by a restart)."
    ),
]
MismatchOpt = Annotated[
    bool, typer.Option(help="Run even if the server's nnsight version differs from ours.")
]
ShareOpt = Annotated[
    bool,
    typer.Option(
        "--share-prefix/--no-share-prefix",
        help="NDIF: prefill the prompt prefix all rows share once per request (a 2-trace session). "
        "Off by default: unverified on the real service (the cache argument's name is chosen by the "
        "client's transformers). Local runs always share.",
    ),
]


def _spec_overrides(**flags: object) -> dict[str, object]:
    """CLI flags → ExperimentSpec fields (None = not given, so the protocol/file value stands)."""
    o: dict[str, object] = {}
    if flags["model"] is not None:
        o["model"] = flags["model"]
    if flags["concepts"] is not None:
        o["concepts"] = _parse_concepts(str(flags["concepts"]))
    if flags["strengths"] is not None:
        text = str(flags["strengths"]).strip()
        o["strengths"] = "auto" if text == "auto" else _parse_floats(text, "--strengths")
    if flags["layers"] is not None:
        o["layers"] = _parse_ints(str(flags["layers"]), "--layers")
    if flags["layer_fractions"] is not None:
        o["layer_fractions"] = _parse_floats(str(flags["layer_fractions"]), "--layer-fractions")
    for name in ("samples", "controls", "seed", "span", "strength_mode", "dense_points", "crossover_mode"):
        if flags[name] is not None:
            o[name] = flags[name]
    if flags["dense_grid"] is not None:
        o["dense_grid"] = flags["dense_grid"]
    gen = {
        k: flags[f]
        for k, f in (("max_new_tokens", "max_new_tokens"), ("temperature", "temperature"), ("top_p", "top_p"))
        if flags[f] is not None
    }
    if gen:
        o["generation"] = gen
    if flags["prompt_set"] is not None:
        o["prompt_sets"] = tuple(p.strip() for p in str(flags["prompt_set"]).split(",") if p.strip())
    recipe = {}
    if flags["vectors"] is not None:
        recipe["kind"] = flags["vectors"]
        recipe["normalize"] = flags["vectors"] == "contrast-pairs"
    if flags["pairs"] is not None:
        recipe["pairs"] = flags["pairs"]
    if recipe:
        o["recipe"] = recipe
    if flags["conditions"] is not None:
        o["conditions"] = tuple(c.strip() for c in str(flags["conditions"]).split(",") if c.strip())
    if flags["scale_factors"] is not None:
        o["scale_factors"] = _parse_floats(str(flags["scale_factors"]), "--scale-factors")
    return o


def _run_options(**f: object) -> object:
    from .retry_policy import RetrySettings
    from .runner import RunOptions

    if int(f["max_attempts"]) < 1:  # type: ignore[call-overload]
        _fail("--max-attempts must be at least 1")
    if not float(f["job_timeout"]) > 0:  # type: ignore[arg-type]
        _fail("--job-timeout must be positive")
    if not float(f["queue_timeout"]) > 0:  # type: ignore[arg-type]
        _fail("--queue-timeout must be positive")
    return RunOptions(
        cache_root=f["cache"],  # type: ignore[arg-type]
        backend=f["backend"],  # type: ignore[arg-type]
        batch_rows=f["batch_size"],  # type: ignore[arg-type]
        dtype=f["dtype"],  # type: ignore[arg-type]
        judge=f["judge"],  # type: ignore[arg-type]
        ndif_host=f["ndif_host"],  # type: ignore[arg-type]
        tokenizer_dir=f["tokenizer"],  # type: ignore[arg-type]
        retry=RetrySettings(max_attempts=int(f["max_attempts"])),  # type: ignore[call-overload]
        job_timeout_s=float(f["job_timeout"]),  # type: ignore[arg-type]
        queue_timeout_s=float(f["queue_timeout"]),  # type: ignore[arg-type]
        allow_version_mismatch=bool(f["allow_version_mismatch"]),
        share_prefix=bool(f["share_prefix"]),
    )


_SPEC_FLAGS = (
    "model concepts strengths layers layer_fractions samples controls seed max_new_tokens temperature top_p "
    "prompt_set span strength_mode vectors pairs conditions scale_factors dense_grid dense_points crossover_mode"
).split()
_RUN_FLAGS = (
    "cache backend batch_size dtype judge ndif_host tokenizer max_attempts job_timeout queue_timeout "
    "allow_version_mismatch "
    "share_prefix"
).split()


@app.command("replicate-lindsey")
def replicate_lindsey(
    model: ModelOpt = None,
    protocol: ProtocolOpt = None,
    backend: BackendOpt = None,
    concepts: ConceptsOpt = None,
    strengths: StrengthsOpt = None,
    layers: LayersOpt = None,
    layer_fractions: FractionsOpt = None,
    samples: SamplesOpt = None,
    controls: ControlsOpt = None,
    seed: SeedOpt = None,
    max_new_tokens: TokensOpt = None,
    temperature: TempOpt = None,
    top_p: TopPOpt = None,
    prompt_set: PromptOpt = None,
    span: SpanOpt = None,
    strength_mode: ModeOpt = None,
    vectors: RecipeOpt = None,
    pairs: PairsOpt = None,
    conditions: CondOpt = None,
    scale_factors: ScaleOpt = None,
    dense_grid: DenseOpt = None,
    dense_points: DensePointsOpt = None,
    crossover_mode: CrossModeOpt = None,
    cache: CacheOpt = Path("cache"),
    batch_size: BatchOpt = None,
    dtype: DtypeOpt = None,
    judge: JudgeOpt = "heuristic",
    ndif_host: HostOpt = None,
    tokenizer: TokOpt = None,
    max_attempts: AttemptsOpt = 10,
    job_timeout: JobTimeoutOpt = 4200.0,
    queue_timeout: QueueTimeoutOpt = 7200.0,
    allow_version_mismatch: MismatchOpt = False,
    share_prefix: ShareOpt = False,
) -> None:
    """Lindsey's injected-thought experiment: vectors, injected + control trials, grades, summary.

    Without --protocol: Lindsey's knobs on a small grid sized for a CPU (5 concepts × strengths
    2,8 × 2 samples + 4 controls). With --protocol: that protocol's published knobs and grid."""
    from .protocols import build_spec

    flags = dict(locals())
    try:
        spec = build_spec(protocol, _spec_overrides(**{k: flags[k] for k in _SPEC_FLAGS}))
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    _run_spec(spec, _run_options(**{k: flags[k] for k in _RUN_FLAGS}))


@app.command("run")
def run_file(
    experiment: Annotated[
        Path, typer.Argument(help="Experiment file (TOML), e.g. experiments/lindsey_8b.toml.")
    ],
    model: ModelOpt = None,
    backend: BackendOpt = None,
    concepts: ConceptsOpt = None,
    strengths: StrengthsOpt = None,
    layers: LayersOpt = None,
    layer_fractions: FractionsOpt = None,
    samples: SamplesOpt = None,
    controls: ControlsOpt = None,
    seed: SeedOpt = None,
    max_new_tokens: TokensOpt = None,
    temperature: TempOpt = None,
    top_p: TopPOpt = None,
    prompt_set: PromptOpt = None,
    span: SpanOpt = None,
    strength_mode: ModeOpt = None,
    vectors: RecipeOpt = None,
    pairs: PairsOpt = None,
    conditions: CondOpt = None,
    scale_factors: ScaleOpt = None,
    dense_grid: DenseOpt = None,
    dense_points: DensePointsOpt = None,
    crossover_mode: CrossModeOpt = None,
    cache: CacheOpt = Path("cache"),
    batch_size: BatchOpt = None,
    dtype: DtypeOpt = None,
    judge: JudgeOpt = "heuristic",
    ndif_host: HostOpt = None,
    tokenizer: TokOpt = None,
    max_attempts: AttemptsOpt = 10,
    job_timeout: JobTimeoutOpt = 4200.0,
    queue_timeout: QueueTimeoutOpt = 7200.0,
    allow_version_mismatch: MismatchOpt = False,
    share_prefix: ShareOpt = False,
) -> None:
    """Run an experiment file; any flag overrides the file's value for that knob."""
    from .protocols import load_experiment_file

    flags = dict(locals())
    try:
        spec = load_experiment_file(experiment, _spec_overrides(**{k: flags[k] for k in _SPEC_FLAGS}))
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    _run_spec(spec, _run_options(**{k: flags[k] for k in _RUN_FLAGS}))


def _run_spec(spec, opts) -> None:  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from . import runner
    from .summary import render_summary

    try:
        runner.validate(spec, opts)  # reject bad input before any display or write
    except ValidationError as exc:
        _fail(_validation_message(exc))
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=max(total, 1))
            bar.update(tasks[stage], completed=done, total=max(total, 1))

        request_task: list[int] = []

        def request_status(state: str) -> None:
            if not request_task:
                request_task.append(bar.add_task("remote request", total=None))
            bar.update(request_task[0], description=f"remote request: {state}")

        def notice(line: str) -> None:
            bar.console.print(line, highlight=False, markup=False)

        try:
            report = runner.run_with_grid(spec, opts, progress, notice, request_status)
        except ValidationError as exc:
            _fail(_validation_message(exc))
        except UserError as exc:
            _fail(str(exc), exc.exit_code)
        except (sqlite3.DatabaseError, OSError) as exc:
            # Disk full, damaged pages, permissions: one line, never a traceback.
            from .store import cache_error

            line = cache_error(exc, opts.cache_root)
            _fail(str(line), line.exit_code)
    render_summary(report, out)
    if report.nonfinite_trials:
        sys.stderr.write(
            f"error: {report.nonfinite_trials} trial(s) failed with non-finite activations/logits "
            "(NaN/inf after steering: lower the strength); they are recorded failed, never graded\n"
        )
    if report.excluded:
        _fail(
            f"{len(report.excluded)} integrity problem(s) in this run's trials: they were excluded from every "
            "count above (run `audit` for details)",
            4,
        )
    if not report.complete:
        for msg in sorted(set(report.errors))[:5]:
            err.print(f"[red]failed batch:[/] {msg}", highlight=False)
        err.print(
            "[bold red]incomplete:[/] some trials failed or did not run; re-run the same command to retry them."
        )
        raise typer.Exit(1)


@app.command("models")
def models() -> None:
    """List the model presets."""
    from rich.table import Table

    from .presets import PRESETS

    table = Table(title="Model presets")
    for col in ("name", "repo id", "backend", "layers", "hidden", "description"):
        table.add_column(col)
    from .model_loading import resolve_model

    for name, p in PRESETS.items():
        ref = resolve_model(name)
        table.add_row(name, p.repo_id, p.backend, str(ref.num_layers), str(ref.hidden_size), p.description)
    out.print(table)


# Commands that read the cache (grade, audit, report, export) live in their own module.
from . import commands_results as _commands_results  # noqa: E402,F401


def main() -> None:
    if any(a in ("-v", "--verbose") for a in sys.argv[1:]):
        # nnsight reads sys.argv at import and turns on debug mode for these (NDIF.md).
        sys.stderr.write("error: -v/--verbose is not an option here; set REMOTE_INTROSPECT_LOG=INFO\n")
        raise SystemExit(2)
    # Offline first (DESIGN.md invariant 9): nothing is fetched from a hub unless asked for.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _setup_logging()
    try:  # typer >= 0.2x vendors click as typer._click; older typer uses click itself
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover
        from click import exceptions as click_exc

    try:
        rc = app(standalone_mode=False)
    except click_exc.NoArgsIsHelpError as exc:
        sys.stderr.write(exc.format_message().rstrip() + "\n")
        raise SystemExit(2) from None
    except click_exc.UsageError as exc:
        # One line, never a rich box: "error: <what>" plus where to look.
        cmd = exc.ctx.command_path if exc.ctx is not None else "remote_introspect"
        sys.stderr.write(f"error: {' '.join(exc.format_message().split())} (see `{cmd} --help`)\n")
        raise SystemExit(exc.exit_code) from None
    except click_exc.ClickException as exc:
        sys.stderr.write(f"error: {' '.join(exc.format_message().split())}\n")
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        sys.stderr.write("error: aborted\n")
        raise SystemExit(130) from None
    except sqlite3.DatabaseError as exc:  # any command: a damaged or unwritable cache database
        sys.stderr.write(
            f"error: cache database error: {' '.join(str(exc).split())}; run `audit` for details\n"
        )
        raise SystemExit(4) from None
    except OSError as exc:
        import errno

        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS, errno.EACCES):
            raise
        sys.stderr.write(f"error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}\n")
        raise SystemExit(1) from None
    raise SystemExit(rc if isinstance(rc, int) else 0)
