"""Errors a user can act on, and the two a remote call can raise that the retry policy and
the runner act on (`TransientError`: retry; `BatchTooLargeError`: split).

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


class TransientError(Exception):
    """A failure worth retrying with backoff (5xx, dropped connection, eviction, preemption)."""


class BatchTooLargeError(Exception):
    """The server ran out of time or memory on this batch: split it and resubmit the halves."""


def scrub(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` (an API key) replaced, for any message or log line
    that may quote a request: the one secret scrubber (NDIF and the LLM judges)."""
    return text.replace(secret, "***") if secret else text
