"""The typer app, its two consoles and the one-line error every command fails with.

stdout carries results only; progress and logs go to stderr. Never name an option
`-v`/`--verbose`: nnsight switches into debug mode when it sees either in sys.argv (NDIF.md).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

import typer
from pydantic import ValidationError
from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Command-line interface (typer). stdout carries results only; progress and logs go to stderr.",
)
out = Console(soft_wrap=True, width=160)
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    # Plain write, not rich: the message must stay ONE line whatever the terminal width.
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    raise typer.Exit(code)


def progress_bar(label: str, *, transient: bool) -> Progress:
    """The stderr progress bar of every long command: label, bar, done/total, time left."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err, transient=transient
    )


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


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

