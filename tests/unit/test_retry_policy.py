"""The one retry policy: NDIF's "cannot be accommodated" waits long; ordinary transients do not."""

from __future__ import annotations

import pytest

from remote_introspect.execution.backends.base import TransientError
from remote_introspect.execution.backends.ndif import (
    CapacityError,
    JobLostError,
    ResultExpiredError,
    classify,
)
from remote_introspect.retry_policy import RetrySettings, retrying

# NDIF's text, as its queue processor sends it (src/services/api/src/queue/processor.py).
ACCOMMODATE = (
    "Model deployment cannot be accomodated at this time. Please try again later. Sorry for the inconvenience."
)


def _waits(errors: list[BaseException], settings: RetrySettings) -> list[float]:
    waits: list[float] = []
    pending = list(errors)

    def fn() -> str:
        if pending:
            raise pending.pop(0)
        return "ok"

    for attempt in retrying(settings, sleep=waits.append):
        with attempt:
            fn()
    return waits


def test_cannot_be_accommodated_is_transient_not_fatal() -> None:
    from nnsight.intervention.backends.remote import RemoteError

    err = classify(RemoteError(ACCOMMODATE))
    assert isinstance(err, CapacityError) and isinstance(err, TransientError)


def test_capacity_errors_wait_the_long_backoff() -> None:
    settings = RetrySettings(max_attempts=5, initial_wait_s=1.0, max_wait_s=60.0, jitter_s=0.0, long_wait_s=300.0)
    waits = _waits([CapacityError(ACCOMMODATE), TransientError("evicted"), CapacityError(ACCOMMODATE)], settings)
    assert waits[0] >= 300.0 and waits[1] < 60.0 and waits[2] >= 300.0


def test_lost_and_expired_jobs_are_transient() -> None:
    assert issubclass(JobLostError, TransientError) and issubclass(ResultExpiredError, TransientError)


@pytest.mark.parametrize(
    "text",
    [
        "Failed to send request: Client nnsight version 0.8.1 is incompatible with the server nnsight version. "
        "The minimum supported version is 0.8.3. Please update nnsight to the latest version: "
        "`pip install --upgrade nnsight`",
    ],
)
def test_version_refusal_names_the_exact_pip_command(text: str) -> None:
    import httpx
    from nnsight.intervention.backends.remote import RemoteError

    request = httpx.Request("POST", "https://api.ndif.us/request")
    cause = httpx.HTTPStatusError("400", request=request, response=httpx.Response(400, request=request))
    try:
        raise RemoteError(text) from cause
    except RemoteError as err:
        fatal = classify(err)
    assert "pip install nnsight==0.8.3" in str(fatal) and "\n" not in str(fatal)


def test_version_refusal_outside_the_pinned_range_says_so() -> None:
    """A server on nnsight 0.9.x: `pip install nnsight==0.9.1` would break this package's pin
    (nnsight>=0.8.1,<0.9); the message says so instead of offering it as the fix."""
    import httpx
    from nnsight.intervention.backends.remote import RemoteError

    text = (
        "Client nnsight version 0.8.1 is incompatible with the server nnsight version. "
        "The minimum supported version is 0.9.1. Please update nnsight to the latest version"
    )
    request = httpx.Request("POST", "https://api.ndif.us/request")
    cause = httpx.HTTPStatusError("400", request=request, response=httpx.Response(400, request=request))
    try:
        raise RemoteError(text) from cause
    except RemoteError as err:
        fatal = str(classify(err))
    assert "outside the range this package is tested with" in fatal and "<0.9" in fatal
    assert "run: pip install" not in fatal and "\n" not in fatal
