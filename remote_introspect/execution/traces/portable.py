"""Shipping code to NDIF without shipping this package.

nnsight serialises a trace by re-reading the source of the function that opens it and ships every
function the block calls by source, with only the globals it reads. Two rules follow, kept here:
`PORTABLE` holds the functions of `interventions` compiled from its source under a neutral file
name (no module object, no client path); `relocate` moves a trace-opening function under a
neutral file name whose source is registered in linecache line for line.
"""

from __future__ import annotations

import inspect
import linecache
import types
from pathlib import Path
from typing import Any

from remote_introspect.execution.traces import interventions

PORTABLE_FILE = "<remote_introspect.execution.traces.interventions>"
_SOURCES: dict[str, str] = {}  # neutral file name -> source, kept in linecache (see _ensure_sources)


def ensure_sources() -> None:
    """(Re-)register our neutral file names in linecache: nnsight reads the trace blocks and the
    portable functions' source from there (a `linecache.clearcache()` elsewhere drops them)."""
    for name, source in _SOURCES.items():
        if name not in linecache.cache:
            linecache.cache[name] = (len(source), None, source.splitlines(keepends=True), name)


def _portable_functions() -> dict[str, Any]:
    """The functions of `interventions`, compiled from its source under a neutral file name in a
    namespace that is no importable module. nnsight ships such functions by source with only the
    globals they read (torch and each other): no module object, no `__spec__`/`__loader__`, no
    client file path, nothing the server must import from this package."""
    source = inspect.getsource(interventions)
    _SOURCES[PORTABLE_FILE] = source
    namespace: dict[str, Any] = {"__name__": "remote_introspect_portable"}
    exec(compile(source, PORTABLE_FILE, "exec"), namespace)  # noqa: S102 - our own module's source
    return {
        name: fn
        for name, fn in namespace.items()
        if inspect.isfunction(fn) and fn.__module__ == "remote_introspect_portable"
    }


PORTABLE = _portable_functions()
ensure_sources()


def _relocate_code(code: types.CodeType, file_name: str) -> types.CodeType:
    consts = tuple(_relocate_code(c, file_name) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=file_name, co_consts=consts)


def relocate(fn: Any, file_name: str, source_path: str) -> Any:
    """`fn` (defined in `source_path`) as a function whose code claims `file_name`, that file's
    source registered under it: nnsight records the trace's file name in every request, and the
    client's absolute paths have no business on the server."""
    _SOURCES[file_name] = Path(source_path).read_text(encoding="utf-8")
    ensure_sources()
    moved = types.FunctionType(
        _relocate_code(fn.__code__, file_name), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    moved.__kwdefaults__ = fn.__kwdefaults__
    moved.__doc__, moved.__annotations__, moved.__qualname__ = fn.__doc__, fn.__annotations__, fn.__qualname__
    moved.__module__ = fn.__module__
    return moved
