"""What every run command does around the run itself: reject bad input with one line before any
display, show the run's progress on stderr, turn whatever the run raises into one line, and end
with the exit code the run's outcome calls for.

    checked(runner.validate, spec, opts)
    with run_display(opts.cache_root) as hooks:
        report = runner.run(spec, opts, hooks)
    ...print the results...
    finish(nonfinite=..., integrity=..., complete=..., errors=...)
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from pydantic import ValidationError

from remote_introspect.cli.app import _fail, _validation_message, err, progress_bar
from remote_introspect.errors import UserError

if TYPE_CHECKING:  # the CLI imports torch and the runner only once a command runs
    from remote_introspect.execution.runner import Hooks

T = TypeVar("T")


@contextmanager
def one_line_errors(cache_root: Path | None = None) -> Iterator[None]:
    """A UserError or a validation error raised in the block, and with `cache_root` a cache error
    (disk full, damaged pages, permissions), ends the command with one line, never a traceback."""
    try:
        yield
    except ValidationError as exc:
        _fail(_validation_message(exc))
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    except (sqlite3.DatabaseError, OSError) as exc:
        if cache_root is None:
            raise
        from remote_introspect.store.database import cache_error

        line = cache_error(exc, cache_root)
        _fail(str(line), line.exit_code)


def checked(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`, with a UserError or a validation error turned into the one-line exit."""
    with one_line_errors():
        return fn(*args)
    raise AssertionError("unreachable: _fail exits")  # pragma: no cover


@contextmanager
def run_display(cache_root: Path) -> Iterator[Hooks]:
    """A progress bar per stage on stderr (and one for the remote request in flight) while the
    block runs; errors raised in it end the command with one line (`one_line_errors`)."""
    with progress_bar("{task.description}", transient=False) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=max(total, 1))
            bar.update(tasks[stage], completed=done, total=max(total, 1))

        def request_status(state: str) -> None:
            if "remote request" not in tasks:
                tasks["remote request"] = bar.add_task("remote request", total=None)
            bar.update(tasks["remote request"], description=f"remote request: {state}")

        def notice(line: str) -> None:
            bar.console.print(line, highlight=False, markup=False)

        with one_line_errors(cache_root):
            from remote_introspect.execution.runner import Hooks

            yield Hooks(progress, notice, request_status)


_RETRY = "some trials failed or did not run; re-run the same command to retry them."


def finish(
    *,
    nonfinite: int = 0,
    unit: str = "trial",
    never: str = "graded",
    integrity: str = "",
    complete: bool = True,
    errors: Sequence[str] = (),
    incomplete: str = _RETRY,
) -> None:
    """The exit code of a run command once its results are printed: `nonfinite` rows are reported
    (recorded failed, never `never`), an `integrity` message (the command's own; empty = none)
    exits 4, an incomplete run exits 1 with the first distinct batch `errors` and `incomplete`."""
    if nonfinite:
        sys.stderr.write(
            f"error: {nonfinite} {unit}(s) failed with non-finite activations/logits (NaN/inf after steering: "
            f"lower the strength); they are recorded failed, never {never}\n"
        )
    if integrity:
        _fail(integrity, 4)
    if not complete:
        for msg in sorted(set(errors))[:5]:
            err.print(f"[red]failed batch:[/] {msg}", highlight=False)
        err.print(f"[bold red]incomplete:[/] {incomplete}")
        raise typer.Exit(1)
