"""The one retry policy (tenacity) for every remote call the package makes.

Only `TransientError` is retried, with exponential backoff and jitter; everything else (fatal
remote errors, bad input, bugs) surfaces at once. Settings are transport, not science: they never
enter a trial key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from .executors.base import TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int = 10
    initial_wait_s: float = 2.0
    max_wait_s: float = 120.0
    jitter_s: float = 1.0


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning("attempt %d failed (%s); retrying", state.attempt_number, exc)


def retrying(settings: RetrySettings, on_retry: Callable[[RetryCallState], None] | None = None) -> Retrying:
    def before_sleep(state: RetryCallState) -> None:
        _log_retry(state)
        if on_retry is not None:
            on_retry(state)

    return Retrying(
        stop=stop_after_attempt(max(1, settings.max_attempts)),
        wait=wait_exponential_jitter(
            multiplier=settings.initial_wait_s, max=settings.max_wait_s, jitter=settings.jitter_s
        ),
        retry=retry_if_exception_type(TransientError),
        before_sleep=before_sleep,
        reraise=True,
    )


def call_with_retries(fn: Callable[[], T], settings: RetrySettings) -> T:
    """Run `fn`, retrying transient failures; the last error is re-raised after max_attempts."""
    for attempt in retrying(settings):
        with attempt:
            return fn()
    raise AssertionError("unreachable")  # pragma: no cover
