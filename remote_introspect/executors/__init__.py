"""Executors run the package's two traces somewhere: `local` (this machine) or `ndif` (remote)."""

from __future__ import annotations

from .base import Executor, GenerationOutput, TransientError

__all__ = ["Executor", "GenerationOutput", "TransientError"]
