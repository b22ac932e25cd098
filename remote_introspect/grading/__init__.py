"""Graders: turn a response (and the injected concept, if any) into Lindsey's criteria.

Public API: `Grade`, `Grader`, `get_grader(name)`. The heuristic grader is the default everywhere.
"""

from __future__ import annotations

from remote_introspect.grading.base import Grade, Grader
from remote_introspect.grading.service import get_grader

__all__ = ["Grade", "Grader", "get_grader"]
