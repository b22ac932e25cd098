"""Command-line interface (typer). stdout carries results only; progress and logs go to stderr.

Never name an option `-v`/`--verbose`: nnsight switches into debug mode when it sees either in
sys.argv (NDIF.md).
"""

from __future__ import annotations

import logging
import os
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


@app.command("replicate-lindsey")
def replicate_lindsey(
    model: Annotated[
        str, typer.Option(help="Preset (see `models`), HF repo id, or local model directory.")
    ] = "gemma-270m",
    backend: Annotated[str | None, typer.Option(help="local | ndif (default: the preset's).")] = None,
    concepts: Annotated[
        str, typer.Option(help="N (the first N of Lindsey's list) or words: Dust,Oceans.")
    ] = "5",
    strengths: Annotated[str, typer.Option(help="Comma-separated strengths, e.g. 1,2,4,8.")] = "2,8",
    layers: Annotated[str | None, typer.Option(help="Absolute decoder layers, e.g. 12,14.")] = None,
    layer_fractions: Annotated[str | None, typer.Option(help="Fractions of depth, e.g. 0.67.")] = None,
    samples: Annotated[int, typer.Option(help="Trials per concept × strength × layer.")] = 2,
    controls: Annotated[int, typer.Option(help="No-injection trials (shared by all cells).")] = 4,
    seed: Annotated[int, typer.Option(help="Experiment seed (part of every trial key).")] = 0,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated per trial.")] = 100,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 1.0,
    prompt_set: Annotated[str, typer.Option(help="lindsey | merrill | thinking.")] = "lindsey",
    span: Annotated[str, typer.Option(help="from-trial | all | generated.")] = "from-trial",
    strength_mode: Annotated[
        str, typer.Option(help="absolute | norm-matched | mlp-norm-matched | relative.")
    ] = "absolute",
    cache: Annotated[Path, typer.Option(help="Cache directory (SQLite + safetensors).")] = Path("cache"),
    batch_size: Annotated[int | None, typer.Option(help="Rows per generate call (default: preset).")] = None,
    dtype: Annotated[
        str | None, typer.Option(help="fp32 | bf16 | fp16 (default: bf16 on GPU, fp32 on CPU).")
    ] = None,
    judge: Annotated[str, typer.Option(help="Grader: heuristic (offline, default).")] = "heuristic",
    ndif_host: Annotated[
        str | None,
        typer.Option(help="NDIF-compatible server URL (default: $NDIF_HOST or https://api.ndif.us)."),
    ] = None,
    tokenizer: Annotated[
        Path | None, typer.Option(help="Local tokenizer directory for a remote model (else the HF cache).")
    ] = None,
    max_attempts: Annotated[int, typer.Option(help="Attempts per remote request (transient errors).")] = 10,
    job_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for one remote job before resubmitting it.")
    ] = 3 * 3600.0,
    allow_version_mismatch: Annotated[
        bool, typer.Option(help="Run even if the server's nnsight version differs from ours.")
    ] = False,
) -> None:
    """Lindsey's injected-thought experiment: vectors, injected + control trials, grades, summary."""
    from .spec import ExperimentSpec, GenerationParams

    try:
        spec = ExperimentSpec(
            name="lindsey",
            model=model,
            concepts=_parse_concepts(concepts),
            strengths=_parse_floats(strengths, "--strengths"),
            layers=_parse_ints(layers, "--layers") if layers else None,
            layer_fractions=_parse_floats(layer_fractions, "--layer-fractions") if layer_fractions else None,
            samples=samples,
            controls=controls,
            seed=seed,
            generation=GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature),
            prompt_set=prompt_set,
            span=span,
            strength_mode=strength_mode,  # type: ignore[arg-type]
        )
    except ValidationError as exc:
        _fail(_validation_message(exc))
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    from .retry_policy import RetrySettings
    from .runner import RunOptions

    if max_attempts < 1:
        _fail("--max-attempts must be at least 1")
    if not job_timeout > 0:
        _fail("--job-timeout must be positive")
    opts = RunOptions(
        cache_root=cache,
        backend=backend,
        batch_rows=batch_size,
        dtype=dtype,
        judge=judge,
        ndif_host=ndif_host,
        tokenizer_dir=tokenizer,
        retry=RetrySettings(max_attempts=max_attempts),
        job_timeout_s=job_timeout,
        allow_version_mismatch=allow_version_mismatch,
    )
    _run_spec(spec, opts)


def _run_spec(spec, opts) -> None:  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from . import runner
    from .summary import render_summary

    try:
        runner.validate(spec, opts)  # reject bad input before any display or write
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
            report = runner.run(spec, opts, progress, notice, request_status)
        except ValidationError as exc:
            _fail(_validation_message(exc))
        except UserError as exc:
            _fail(str(exc), exc.exit_code)
    render_summary(report, out)
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
    app()
