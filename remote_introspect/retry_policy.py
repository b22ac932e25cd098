"""The one retry policy (tenacity) for every remote call the package makes: NDIF requests and
LLM-judge calls.

Exponential backoff with jitter, capped attempts, and a server's own hint honoured: an exception
carrying `retry_after` (seconds, e.g. from HTTP Retry-After) waits exactly that long, and one
asking for longer than `max_retry_after_s` stops the retries (the service is down, not busy). An
exception marked `long_backoff = True` (NDIF: "Model deployment cannot be accomodated at this
time. Please try again later") waits at least `long_wait_s`: the cluster has no room for the model
now, and asking again in seconds only adds load.
Which errors are worth retrying is the caller's classification (`retry_if`); by default only
`TransientError`. Settings are transport, not science: they never enter a trial key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

from remote_introspect.errors import TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int = 10
    initial_wait_s: float = 2.0
    max_wait_s: float = 120.0
    jitter_s: float = 1.0
    max_retry_after_s: float = 600.0
    long_wait_s: float = 300.0  # minimum wait after an error marked `long_backoff`


def _exception(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None


def retrying(
    settings: RetrySettings,
    *,
    retry_if: Callable[[BaseException], bool] | None = None,
    stop_if: Callable[[RetryCallState], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    describe: Callable[[BaseException | None], str] = str,
) -> Retrying:
    """A tenacity `Retrying` with the package's backoff; `describe` renders an error for the log
    (callers pass a scrubber so no secret reaches a log line)."""
    backoff = wait_exponential_jitter(
        multiplier=settings.initial_wait_s, max=settings.max_wait_s, jitter=settings.jitter_s
    )

    def wait(state: RetryCallState) -> float:
        err = _exception(state)
        after = getattr(err, "retry_after", None)
        if after is not None:
            return min(float(after), settings.max_retry_after_s)
        if getattr(err, "long_backoff", False):
            return max(float(backoff(state)), settings.long_wait_s)
        return float(backoff(state))

    def stop(state: RetryCallState) -> bool:
        after = getattr(_exception(state), "retry_after", None)
        if after is not None and after > settings.max_retry_after_s:
            return True
        if stop_if is not None and stop_if(state):
            return True
        return state.attempt_number >= max(1, settings.max_attempts)

    def before_sleep(state: RetryCallState) -> None:
        log.warning("attempt %d failed (%s); retrying", state.attempt_number, describe(_exception(state)))

    return Retrying(
        stop=stop,
        wait=wait,
        retry=retry_if_exception(retry_if or (lambda e: isinstance(e, TransientError))),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


def call_with_retries(fn: Callable[[], T], settings: RetrySettings) -> T:
    """Run `fn`, retrying transient failures; the last error is re-raised after max_attempts."""
    for attempt in retrying(settings):
        with attempt:
            return fn()
    raise AssertionError("unreachable")  # pragma: no cover
