"""Executors run the package's two traces somewhere: `local` (this machine) or `ndif` (remote)."""

from __future__ import annotations

from remote_introspect.errors import TransientError
from remote_introspect.execution.backends.base import Executor, GenerationOutput

__all__ = ["Executor", "GenerationOutput", "TransientError"]
