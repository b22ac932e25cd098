"""Graders: turn a response (and the injected concept, if any) into Lindsey's criteria.

Public API: `Grade`, `Grader`, `get_grader(name)`. The heuristic grader is the default everywhere.
"""

from __future__ import annotations

from .base import Grade, Grader
from .service import get_grader

__all__ = ["Grade", "Grader", "get_grader"]
