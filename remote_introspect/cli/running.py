"""What every run command does around the run itself: reject bad input with one line before any
display, show the run's progress on stderr, and turn whatever the run raises into one line.

    checked(runner.validate, spec, opts)
    with run_display(opts.cache_root) as hooks:
        report = runner.run(spec, opts, hooks.progress, hooks.notice, hooks.request_status)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from remote_introspect.cli.app import _fail, _validation_message, progress_bar
from remote_introspect.errors import UserError

T = TypeVar("T")


def checked(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`, with a UserError or a validation error turned into the one-line exit."""
    try:
        return fn(*args)
    except ValidationError as exc:
        _fail(_validation_message(exc))
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    raise AssertionError("unreachable: _fail exits")  # pragma: no cover


@dataclass(frozen=True)
class RunHooks:
    """Where a run reports: stage progress, one-line notices, the remote request's state."""

    progress: Callable[[str, int, int], None]
    notice: Callable[[str], None]
    request_status: Callable[[str], None]


@contextmanager
def run_display(cache_root: Path) -> Iterator[RunHooks]:
    """A progress bar per stage on stderr (and one for the remote request in flight) while the
    block runs; a UserError, a validation error or a cache error (disk full, damaged pages,
    permissions) raised in it ends the command with one line, never a traceback."""
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

        try:
            yield RunHooks(progress, notice, request_status)
        except ValidationError as exc:
            _fail(_validation_message(exc))
        except UserError as exc:
            _fail(str(exc), exc.exit_code)
        except (sqlite3.DatabaseError, OSError) as exc:
            from remote_introspect.store.database import cache_error

            line = cache_error(exc, cache_root)
            _fail(str(line), line.exit_code)
