"""The checks every protocol's run makes before it loads a model or writes a byte (the "bad input
writes nothing" rule): the model and its layers, the backend, batch size and dtype, the cache.

One place, so that `run`, `localize`, `probe-report` and `self-predict` reject the same bad option
with the same line."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from remote_introspect.errors import UserError
from remote_introspect.models.loading import ModelRef, resolve_model
from remote_introspect.store.database import check_writable, refuse_empty_database

DTYPES = ("fp32", "bf16", "fp16")


class LayeredSpec(Protocol):
    """A spec that names a model and resolves its layers against the model's depth."""

    @property
    def model(self) -> str: ...

    def resolve_layers(self, num_layers: int) -> tuple[int, ...]: ...


class Options(Protocol):
    """The run options these checks read (`runner.RunOptions` has them)."""

    backend: str | None
    batch_rows: int | None
    dtype: str | None


def model_and_layers(spec: LayeredSpec) -> tuple[ModelRef, tuple[int, ...]]:
    """The spec's model (an unknown one fails with one line) and its layers on that model."""
    ref = resolve_model(spec.model)
    try:
        return ref, spec.resolve_layers(ref.num_layers)
    except ValueError as err:
        raise UserError(str(err)) from None


def check_options(opts: Options, refs: Sequence[ModelRef]) -> None:
    """Backend (and that each model can run on it), batch size and dtype."""
    for ref in refs:
        backend = opts.backend or ref.default_backend
        if backend not in ("local", "ndif"):
            raise UserError(f"unknown backend {backend!r}; choose local or ndif")
        if backend == "local" and ref.preset is not None and ref.preset.backend == "ndif":
            raise UserError(f"{ref.name} is a remote-only preset (too large for this machine); use --backend ndif")
    if opts.batch_rows is not None and opts.batch_rows < 1:
        raise UserError("--batch-size must be at least 1")
    if opts.dtype is not None and opts.dtype not in DTYPES:
        raise UserError(f"unknown dtype {opts.dtype!r}; choose one of {', '.join(DTYPES)}")


def check_cache(cache_root: Path | str) -> None:
    """The cache directory is writable and its database, if any, is not an empty husk."""
    check_writable(Path(cache_root))
    refuse_empty_database(Path(cache_root) / "results.sqlite")
