"""Command-line interface (typer). stdout carries results only; progress and logs go to stderr.

- `app`: the typer app, its consoles and the one-line `error:` every command fails with
- `options`: the options `replicate-lindsey` and `run` share, declared once
- `experiments`: `replicate-lindsey`, `run`, `models`
- `results`: the commands over the cache: `grade`, `audit`, `report`, `export`
- `scale`: one experiment across models, a table and a scaling plot
- `probe_report`: probe–report coupling (Martorell & Bianchi)
- `compare`, `ladder`: two experiments knob by knob; a one-knob-per-rung ladder between two recipes
- `localize`: localization and the position control (PROTOCOLS.md §5)
- `self_predict`: `self-predict` (Binder et al.'s self- vs cross-prediction)

Never name an option `-v`/`--verbose`: nnsight switches into debug mode when it sees either in
sys.argv (NDIF.md).
"""

from __future__ import annotations

import os
import sqlite3
import sys

import typer

from remote_introspect.cli import (  # noqa: F401 - registers the commands on `app`
    compare,
    experiments,
    ladder,
    localize,
    probe_report,
    results,
    scale,
    self_predict,
)
from remote_introspect.cli.app import _setup_logging, app, err, out

__all__ = ["app", "err", "main", "out"]


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
