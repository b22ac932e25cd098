"""`self-predict`: Binder et al.'s self- vs cross-prediction on untrained models (PROTOCOLS.md §7)."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Annotated

import typer

from remote_introspect.cli.app import _fail, app, err, out
from remote_introspect.cli.options import (
    AttemptsOpt,
    BackendOpt,
    BatchOpt,
    CacheOpt,
    DtypeOpt,
    HostOpt,
    JobTimeoutOpt,
    MismatchOpt,
    QueueTimeoutOpt,
    TokOpt,
    _run_options,
)
from remote_introspect.errors import UserError


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(x.strip() for x in text.split(",") if x.strip())


@app.command("self-predict")
def self_predict(
    models: Annotated[str, typer.Option(help="Comma-separated models, each anything --model accepts.")],
    tasks: Annotated[
        str | None, typer.Option(help="Tasks: animals,countries,sentences,choices,numbers (default: all).")
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Prompts per task (chosen by --seed; up to 240; 200 for a real run).")] = 20,
    properties: Annotated[
        str | None,
        typer.Option(help="first_word,second_character,ends_with_vowel,even_odd,option (default: all that apply)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Which prompts are drawn per task (not in any trial key: decoding is greedy).")
    ] = None,
    backend: BackendOpt = None,
    ndif_host: HostOpt = None,
    cache: CacheOpt = Path("cache"),
    batch_size: BatchOpt = None,
    dtype: DtypeOpt = None,
    tokenizer: TokOpt = None,
    max_attempts: AttemptsOpt = 10,
    job_timeout: JobTimeoutOpt = 4200.0,
    queue_timeout: QueueTimeoutOpt = 7200.0,
    allow_version_mismatch: MismatchOpt = False,
) -> None:
    """Each model answers each prompt (object level) and predicts a property of its own answer
    (hypothetical level); prints self-, cross- and mode-baseline accuracy per target model."""
    from remote_introspect.execution import self_prediction as run_sp
    from remote_introspect.experiment.self_prediction import TASKS
    from remote_introspect.reporting import self_prediction as rep
    from remote_introspect.store.results_frame import open_readonly

    opts = _run_options(
        cache=cache, backend=backend, batch_size=batch_size, dtype=dtype, judge="heuristic", ndif_host=ndif_host,
        tokenizer=tokenizer, max_attempts=max_attempts, job_timeout=job_timeout, queue_timeout=queue_timeout,
        allow_version_mismatch=allow_version_mismatch, share_prefix=False,
    )  # fmt: skip
    config = run_sp.SelfPredictConfig(
        models=_names(models) or (),
        tasks=_names(tasks) or TASKS,
        n=n,
        seed=0 if seed is None else seed,
        properties=_names(properties),
    )

    def progress(stage: str, done: int, total: int) -> None:
        err.print(f"{stage}: {done}/{total}", highlight=False)

    def notice(line: str) -> None:
        err.print(line, highlight=False, markup=False)

    try:
        run_sp.validate(config, opts)
        result = run_sp.run(config, opts, progress, notice)
        conn = open_readonly(opts.cache_root)
        try:
            answers = rep.load_answers(conn, [(r.entry, [t.key for t in r.trials]) for r in result.runs])
        finally:
            conn.close()
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
        return
    except (sqlite3.DatabaseError, OSError) as exc:
        from remote_introspect.store.database import cache_error

        line = cache_error(exc, opts.cache_root)
        _fail(str(line), line.exit_code)
        return
    out.print("\n".join(rep.format_table(answers, rep.score_all(answers))), highlight=False, markup=False)
    if not result.complete:
        for msg in sorted(set(result.errors))[:5]:
            sys.stderr.write(f"failed batch: {msg}\n")
        sys.stderr.write(
            "incomplete: some trials failed or did not run (left out of every score, never counted wrong); "
            "re-run the same command to retry them\n"
        )
        raise typer.Exit(1)
