"""`export`: the whole cache as one parquet file, one row per trial.

Columns are `results_frame.SCHEMA`: the trial's spec fields, status, error class and message,
backend, response text and token ids, diagnostics (raw JSON and one `diag_*` column per known
field), the chosen judge's grades, `integrity` ("ok" or the failed checks) and `usable` (done ∧
intact ∧ graded: the rows every statistic in this package counts). Rows that fail an integrity
check are kept — an export is a record — but flagged, and the command says how many.
The file is written to a temporary file beside the target, fsynced, then renamed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from remote_introspect.atomic import atomic_write
from remote_introspect.errors import UserError
from remote_introspect.store.results_frame import CorruptDatabase, load_frame, open_readonly


@dataclass
class ExportResult:
    path: Path
    rows: int
    usable: int
    flagged: int


def _check_target(out: Path) -> None:
    if out.suffix.lower() not in (".parquet", ".pq"):
        raise UserError(f"--out {out} must end in .parquet")
    if not out.parent.is_dir():
        raise UserError(f"output directory {out.parent} does not exist")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory")
    from remote_introspect.store.database import probe_dir_writable

    probe_dir_writable(out.parent, f"output directory {out.parent}")  # os.access passes for root


def write_parquet_atomic(df: pl.DataFrame, out: Path) -> None:
    atomic_write(out, df.write_parquet)


def export_cache(root: Path, out: Path, judge: str = "heuristic") -> ExportResult:
    out = Path(out)
    _check_target(out)  # before reading anything, so bad input fails fast and writes nothing
    try:
        conn = open_readonly(Path(root))
    except CorruptDatabase as err:
        from remote_introspect.store.database import (
            CacheCorrupt,  # exit 4, as `run` and `grade` on a corrupt database
        )

        raise CacheCorrupt(f"the cache database is corrupt ({err}); run `audit` for details") from None
    try:
        frame = load_frame(conn, judge)
    finally:
        conn.close()
    df = frame.df
    try:
        write_parquet_atomic(df, out)
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror or err}") from None
    except pl.exceptions.PolarsError as err:  # an I/O failure inside the writer (e.g. disk full)
        raise UserError(f"cannot write {out}: {' '.join(str(err).split())}") from None
    usable = int(df["usable"].sum()) if df.height else 0
    flagged = int(df.filter(pl.col("integrity") != "ok").height)
    return ExportResult(out, df.height, usable, flagged)
