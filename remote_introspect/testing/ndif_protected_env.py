"""NDIF's request sandbox, transcribed for tests: what the real server lets a request import and call.

Transcribed (data only, no code copied) from NDIF's public server source, ndif-team/ndif:

* ``src/services/ray/src/ray/nn/security/whitelist.yaml`` at commit
  07fc4d98a8e1c3a18fc51a86f353c9c97aecc857 (``builtins``, ``modules``, ``deserialization_modules``);
* ``src/services/ray/src/ray/nn/security/protected_environment.py`` at commit
  119fddbd4bb7dee8ab775f6c01563c6091e11772 (the older, smaller lists; the server deserializes a
  request under ``Protector(WHITELISTED_MODULES_DESERIALIZATION)`` — imports checked, builtins not —
  and runs it under ``Protector(WHITELISTED_MODULES, builtins=True)``).

What this module checks (the same three rules, applied to a captured request payload):

1. deserialization: every module the unpickler imports (``find_class`` and cloudpickle's
   ``subimport``/``dynamic_subimport`` through ``__import__``) matches the deserialization whitelist;
   a module object pickled by value (``dynamic_subimport``) drags its ``__spec__``/``__loader__``
   (``_frozen_importlib``) and ``__future__`` features along and fails here;
2. execution builtins: the names the shipped block and every shipped function read as builtins are
   in the builtins whitelist;
3. (not NDIF's rule, ours) no client source-file path appears in the payload.

`protected_unpickler` and `import_guard` plug into the loopback server (``protected_env=True``),
`check_payload` into tests.
"""

from __future__ import annotations

import builtins
import contextlib
import dis
import pickle
import threading
import types
from collections.abc import Iterator
from typing import Any

# whitelist.yaml@07fc4d98 `builtins` (protected_environment.py@119fddbd has the same set, with
# `input` instead of `eval` and without BaseExceptionGroup).
WHITELISTED_BUILTINS = frozenset(
    """
    BaseExceptionGroup ArithmeticError AssertionError AttributeError BaseException BlockingIOError
    BrokenPipeError BufferError BytesWarning ChildProcessError ConnectionAbortedError ConnectionError
    ConnectionRefusedError ConnectionResetError DeprecationWarning EOFError Ellipsis EncodingWarning
    EnvironmentError Exception False FileExistsError FileNotFoundError FloatingPointError
    FutureWarning GeneratorExit IOError ImportError ImportWarning IndentationError IndexError
    InterruptedError IsADirectoryError KeyError KeyboardInterrupt LookupError MemoryError
    ModuleNotFoundError NameError None NotADirectoryError NotImplemented NotImplementedError OSError
    OverflowError PendingDeprecationWarning PermissionError ProcessLookupError RecursionError
    ReferenceError ResourceWarning RuntimeError RuntimeWarning StopAsyncIteration StopIteration
    SyntaxError SyntaxWarning SystemError SystemExit TabError TimeoutError True TypeError
    UnboundLocalError UnicodeDecodeError UnicodeEncodeError UnicodeError UnicodeTranslateError
    UnicodeWarning UserWarning ValueError Warning ZeroDivisionError
    __doc__ __import__ __loader__ __name__ __package__ __spec__ __build_class__
    abs aiter all anext any ascii bool bytearray bytes callable chr classmethod complex copyright
    credits delattr dict dir divmod enumerate filter float format frozenset getattr hasattr hash hex
    id int isinstance issubclass iter len list map max min next object oct ord pow print property
    range repr reversed round set setattr slice sorted staticmethod str sum super tuple type vars zip
    memoryview globals eval
    """.split()
)

# (name, strict): strict = that module only; otherwise the module and its submodules.
# whitelist.yaml@07fc4d98 `modules` (execution).
WHITELISTED_MODULES: tuple[tuple[str, bool], ...] = (
    ("builtins", True),
    ("torch", False),
    ("collections", False),
    ("nnsight.intervention.envoy", False),
    ("time", False),
    ("numpy", False),
    ("sympy", False),
    ("nnterp", False),
    ("math", False),
    ("einops", False),
    ("urllib3", False),
    ("typing", False),
    ("_operator", True),
    ("operator", True),
    ("pandas", False),
    ("enum", False),
)
# whitelist.yaml@07fc4d98 `deserialization_modules`, plus the execution modules (as the server does).
WHITELISTED_MODULES_DESERIALIZATION: tuple[tuple[str, bool], ...] = (
    ("pickle", False),
    ("cloudpickle", False),
    ("copyreg", False),
    ("nnsight.schema.request", True),
    ("nnsight.modeling.mixins.remoteable", True),
    ("nnsight.intervention.tracing.base", True),
    ("nnsight.intervention.interleaver", True),
    ("nnsight.intervention.batching", True),
    ("nnsight.intervention.serialization", True),
    ("nnsight.modeling", False),
    # Deviation: the yaml names nnsight 0.7-era internals; nnsight 0.8.1 pickles its tracer from
    # other modules of its own (nnsight.intervention.tracer, nnsight.tracing.*). The server runs the
    # same nnsight, so nnsight's own modules are allowed here; everything else keeps the yaml's rule.
    ("nnsight", False),
    *WHITELISTED_MODULES,
)


def module_allowed(name: str, whitelist: tuple[tuple[str, bool], ...] = WHITELISTED_MODULES_DESERIALIZATION) -> bool:
    return any(name == m or (not strict and name.startswith(m + ".")) for m, strict in whitelist)


class NotWhitelistedError(ImportError):
    """What NDIF's sandbox raises for a module outside its whitelist."""


def _check(name: str, whitelist: tuple[tuple[str, bool], ...]) -> None:
    if not module_allowed(name, whitelist):
        raise NotWhitelistedError(f"Module {name} is not whitelisted")


_guard = threading.local()


@contextlib.contextmanager
def import_guard(whitelist: tuple[tuple[str, bool], ...] = WHITELISTED_MODULES_DESERIALIZATION) -> Iterator[None]:
    """Check every ``__import__`` made by THIS thread against `whitelist` (other threads of a
    loopback server's process are left alone). Relative imports resolve first, as NDIF's do."""
    real = builtins.__import__
    owner = threading.get_ident()

    def guarded(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        if threading.get_ident() != owner or getattr(_guard, "inside", False):
            return real(name, globals, locals, fromlist, level)
        if level == 0:
            _check(name, whitelist)
        _guard.inside = True  # a whitelisted module's own imports run unchecked (NDIF exits the guard)
        try:
            module = real(name, globals, locals, fromlist, level)
        finally:
            _guard.inside = False
        if level > 0:
            _check(module.__name__, whitelist)
        return module

    builtins.__import__ = guarded
    try:
        yield
    finally:
        builtins.__import__ = real


def protected_unpickler(base: type) -> type:
    """A subclass of the unpickler `base` that loads under the deserialization whitelist: every
    ``__import__`` during ``load`` (`import_guard`) and every ``find_class`` (the C unpickler skips
    ``__import__`` for modules already loaded, so it is checked there too)."""

    class ProtectedUnpickler(base):  # type: ignore[misc, valid-type]
        def find_class(self, module: str, name: str) -> Any:
            _check(module, WHITELISTED_MODULES_DESERIALIZATION)
            return super().find_class(module, name)

        def load(self) -> Any:
            with import_guard():  # cloudpickle's subimport/dynamic_subimport go through __import__
                return super().load()

    return ProtectedUnpickler


def _global_loads(code: types.CodeType) -> set[str]:
    """Names a code object looks up as globals/builtins (not attribute names)."""
    return {
        str(i.argval) for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")
    }


def _function_builtins(fn: types.FunctionType, seen: set[int]) -> set[str]:
    """Builtin names a function (and the shipped functions it reads) would look up at run time."""
    if id(fn) in seen:
        return set()
    seen.add(id(fn))
    names: set[str] = set()

    def walk(code: types.CodeType) -> None:
        for n in _global_loads(code):
            if n in fn.__globals__:
                value = fn.__globals__[n]
                if isinstance(value, types.FunctionType):
                    names.update(_function_builtins(value, seen))
            elif hasattr(builtins, n):
                names.add(n)
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                walk(c)

    walk(fn.__code__)
    return names


def payload_builtins(source: str, glbls: dict[str, Any], lcls: dict[str, Any]) -> set[str]:
    """Builtin names the shipped block and its shipped functions read."""
    code = compile(source, "<payload>", "exec")
    names: set[str] = set()
    seen: set[int] = set()

    def walk(c: types.CodeType) -> None:
        for n in _global_loads(c):
            if n not in glbls and n not in lcls and hasattr(builtins, n):
                names.add(n)
        for k in c.co_consts:
            if isinstance(k, types.CodeType):
                walk(k)

    walk(code)
    for value in (*glbls.values(), *lcls.values()):
        if isinstance(value, types.FunctionType):
            names |= _function_builtins(value, seen)
    return names


def check_payload(
    blob: bytes,
    persistent_objects: dict[str, Any],
    *,
    compress: bool = False,
    client_paths: tuple[str, ...] = (),
) -> list[str]:
    """Problems NDIF's sandbox (and our no-client-paths rule) finds in a request payload; [] = none.

    Deserializes `blob` (nnsight's ``RequestModel.serialize`` output) under the deserialization
    whitelist, then checks the builtins its block and functions read against the builtins
    whitelist, and searches the raw bytes for `client_paths`."""
    from nnsight.intervention.serialization import CustomCloudUnpickler
    from nnsight.intervention.serialization import loads as nn_loads

    raw = blob
    if compress:
        import zstandard

        raw = zstandard.ZstdDecompressor().decompress(blob)
    problems = [f"client path in payload: {p}" for p in client_paths if p.encode() in raw]
    try:
        _tracer, (source, glbls, lcls) = nn_loads(raw, persistent_objects, protected_unpickler(CustomCloudUnpickler))
    except (ImportError, pickle.UnpicklingError, AttributeError) as err:
        return [*problems, f"deserialization refused: {type(err).__name__}: {err}"]
    bad = sorted(payload_builtins(source, glbls, lcls) - WHITELISTED_BUILTINS)
    if bad:
        problems.append(f"builtins outside NDIF's whitelist: {', '.join(bad)}")
    modules = sorted(
        {v.__name__ for v in (*glbls.values(), *lcls.values()) if isinstance(v, types.ModuleType)}
    )
    problems += [f"module object shipped: {m}" for m in modules if not module_allowed(m, WHITELISTED_MODULES)]
    return problems
