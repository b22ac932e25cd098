"""`self-predict`: Binder et al.'s self- vs cross-prediction on untrained models (PROTOCOLS.md §7)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from remote_introspect.cli.app import app, err, out
from remote_introspect.cli.options import run_command
from remote_introspect.cli.running import finish, one_line_errors

if TYPE_CHECKING:
    from remote_introspect.execution.runner import RunOptions


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(x.strip() for x in text.split(",") if x.strip())


@app.command("self-predict")
@run_command()
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
    *,
    opts: RunOptions,
) -> None:
    """Each model answers each prompt (object level) and predicts a property of its own answer
    (hypothetical level); prints self-, cross- and mode-baseline accuracy per target model."""
    from remote_introspect.execution import self_prediction as run_sp
    from remote_introspect.experiment.self_prediction import TASKS
    from remote_introspect.reporting import self_prediction as rep
    from remote_introspect.store.results_frame import open_readonly

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

    with one_line_errors(opts.cache_root):
        run_sp.validate(config, opts)
        from remote_introspect.execution.runner import Hooks

        result = run_sp.run(config, opts, Hooks.of(progress, notice))
        conn = open_readonly(opts.cache_root)
        try:
            answers = rep.load_answers(conn, [(r.entry, [t.key for t in r.trials]) for r in result.runs])
        finally:
            conn.close()
    out.print("\n".join(rep.format_table(answers, rep.score_all(answers))), highlight=False, markup=False)
    finish(
        complete=result.complete,
        errors=result.errors,
        incomplete="some trials failed or did not run (left out of every score, never counted wrong); "
        "re-run the same command to retry them",
    )
