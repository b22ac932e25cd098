"""NDIF errors → the package's error classes (`executors.ndif.classify`), one row per case: what
is retried, what splits a batch, what is fatal, and that the key never reaches a message."""

from __future__ import annotations

import httpx
import pytest

from remote_introspect.errors import BatchTooLargeError, FatalRemoteError, TransientError
from remote_introspect.execution.backends.ndif import CapacityError, RemoteJobError, classify

KEY = "sk-secret-123"


class HTTPError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.response = type("R", (), {"status_code": status})()


CASES = [
    ("401", HTTPError("unauthorized", 401), FatalRemoteError),
    ("403", HTTPError("forbidden", 403), FatalRemoteError),
    ("invalid key text", Exception("Invalid API key"), FatalRemoteError),
    ("not dedicated", Exception("model is not dedicated for this key"), FatalRemoteError),
    ("version 400", HTTPError("incompatible nnsight version", 400), FatalRemoteError),
    ("capacity", Exception("Model deployment cannot be accomodated at this time."), CapacityError),
    ("timeout split", Exception("job took longer than timeout"), BatchTooLargeError),
    ("oom split", Exception("CUDA out of memory"), BatchTooLargeError),
    ("evicted", Exception("job was evicted"), TransientError),
    ("preempted", Exception("cancelled or preempted"), TransientError),
    ("500", HTTPError("server error", 500), TransientError),
    ("429", HTTPError("slow down", 429), TransientError),
    ("transport", httpx.ConnectError("refused"), TransientError),
    ("os error", ConnectionResetError("reset"), TransientError),
    ("404 other", HTTPError("not found", 404), RemoteJobError),
    ("job raised", Exception("IndexError in the trace"), RemoteJobError),
]


@pytest.mark.parametrize(("case", "err", "kind"), CASES, ids=[c[0] for c in CASES])
def test_classify(case: str, err: BaseException, kind: type) -> None:
    out = classify(err, KEY)
    assert isinstance(out, kind), (case, type(out), out)
    if kind is TransientError:
        assert not isinstance(out, CapacityError)  # only NDIF's capacity text waits the long backoff


@pytest.mark.parametrize(("case", "err", "kind"), CASES, ids=[c[0] for c in CASES])
def test_the_key_never_reaches_the_message(case: str, err: BaseException, kind: type) -> None:
    leaked = (
        type(err)(*(f"{err.args[0]} key={KEY}", *err.args[1:]))
        if not isinstance(err, HTTPError)
        else (HTTPError(f"{err} key={KEY}", err.response.status_code))
    )
    assert KEY not in str(classify(leaked, KEY))
