"""What every run command does around its work: the stderr progress bar, bad input and cache
errors as one `error:` line, and the exit code from what the run left behind."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import typer
from pydantic import ValidationError

from remote_introspect.cli.app import _fail, _validation_message, err, progress_bar
from remote_introspect.errors import UserError

T = TypeVar("T")
Progress = Callable[[str, int, int], None]
Notice = Callable[[str], None]
RequestStatus = Callable[[str], None]


@contextmanager
def one_line_errors(cache_root: Path) -> Iterator[None]:
    """Bad input (a spec that does not validate, a `UserError`) and cache or disk trouble (full
    disk, damaged pages, permissions) inside the block: one `error:` line and its exit code, never
    a traceback."""
    try:
        yield
    except ValidationError as exc:
        _fail(_validation_message(exc))
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    except (sqlite3.DatabaseError, OSError) as exc:
        from remote_introspect.store.database import cache_error

        line = cache_error(exc, cache_root)
        _fail(str(line), line.exit_code)


def run_with_progress(work: Callable[[Progress, Notice, RequestStatus], T], cache_root: Path) -> T:
    """`work(progress, notice, request_status)` under the stderr progress bar: one bar per stage,
    one line following the remote request's state, notices printed above the bars."""
    with progress_bar("{task.description}", transient=False) as bar:
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

        with one_line_errors(cache_root):
            return work(progress, notice, request_status)
    raise AssertionError("unreachable: one_line_errors exits on every error")  # pragma: no cover


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
