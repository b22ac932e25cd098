"""Errors a user can act on.

`UserError` is bad input or a fatal condition with one clear line of explanation; the CLI prints
its message (no traceback) and exits non-zero. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a fatal, non-retryable condition; `str(err)` is the one line shown."""

    exit_code: int = 2


class FatalRemoteError(UserError):
    """The remote service refused the work in a way retrying cannot fix (bad key, version...)."""

    exit_code = 3
