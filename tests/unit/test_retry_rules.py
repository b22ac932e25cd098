"""The retry policy's rules on their own, with a recorded sleep (no waiting)."""

from __future__ import annotations

import pytest

from remote_introspect.errors import FatalRemoteError, TransientError
from remote_introspect.retry_policy import RetrySettings, retrying

FAST = RetrySettings(max_attempts=4, initial_wait_s=1.0, max_wait_s=8.0, jitter_s=0.0, max_retry_after_s=60.0)


def _run(errors: list[BaseException], settings: RetrySettings = FAST) -> tuple[list[float], int]:
    waits: list[float] = []
    calls = [0]
    pending = list(errors)

    def fn() -> str:
        calls[0] += 1
        if pending:
            raise pending.pop(0)
        return "ok"

    for attempt in retrying(settings, sleep=waits.append):
        with attempt:
            fn()
    return waits, calls[0]


def test_transient_errors_back_off_then_succeed() -> None:
    waits, calls = _run([TransientError("a"), TransientError("b")])
    assert calls == 3 and len(waits) == 2 and waits[0] <= waits[1] <= FAST.max_wait_s


def test_attempts_are_capped_and_the_last_error_is_raised() -> None:
    with pytest.raises(TransientError, match="4"):
        _run([TransientError(str(i)) for i in range(1, 6)])


def test_a_non_transient_error_is_never_retried() -> None:
    with pytest.raises(FatalRemoteError):
        _run([FatalRemoteError("bad key"), TransientError("x")])


def test_retry_after_is_honoured_exactly() -> None:
    err = TransientError("busy")
    err.retry_after = 7.5  # type: ignore[attr-defined]
    waits, _ = _run([err])
    assert waits == [7.5]


def test_a_retry_after_beyond_the_cap_stops_at_once() -> None:
    err = TransientError("down for maintenance")
    err.retry_after = 3600.0  # type: ignore[attr-defined]
    with pytest.raises(TransientError):
        _run([err])
