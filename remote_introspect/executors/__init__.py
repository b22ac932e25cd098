"""Executors run the package's two traces somewhere: `local` (this machine) or `ndif` (remote)."""

from __future__ import annotations

from ..errors import TransientError
from .base import Executor, GenerationOutput

__all__ = ["Executor", "GenerationOutput", "TransientError"]
