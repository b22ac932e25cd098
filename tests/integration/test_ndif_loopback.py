"""The real nnsight 0.8.1 client against the loopback NDIF server, over real HTTP on 127.0.0.1.

Trace blocks live in this file on purpose: nnsight captures a ``with`` block by re-reading its
source file. Run with ``-q`` (``-v`` on the command line switches nnsight into debug mode).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

nnsight = pytest.importorskip("nnsight")

from nnsight.intervention.backends.remote import RemoteBackend, RemoteError  # noqa: E402

from remote_introspect.models.tiny import materialize_tiny_model  # noqa: E402
from remote_introspect.testing.ndif_loopback import (  # noqa: E402
    CANNOT_ACCOMMODATE,
    CONNECTION_LOST,
    EVICTED,
    HTTP_503,
    JOB_TIMEOUT,
    NOT_DEDICATED,
    PREEMPTED,
    LoopbackNDIF,
    client_model_for_dir,
    model_key_for_dir,
    server_model_for_dir,
)

PROMPT = "Tell me about the word"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialize_tiny_model(tmp_path_factory.mktemp("tiny"), "llama")


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Any:
    """The client's model: a meta skeleton, no weights, as when targeting a model only NDIF has."""
    return client_model_for_dir(model_dir)


@pytest.fixture(scope="module")
def local(model_dir: Path) -> Any:
    """The same checkpoint loaded for real, for the ``remote=False`` reference runs."""
    return server_model_for_dir(model_dir)


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[LoopbackNDIF]:
    config = nnsight.CONFIG
    saved = (config.API.APIKEY, config.API.HOST, config.APP.REMOTE_LOGGING)
    config.API.APIKEY = "test-key"
    config.APP.REMOTE_LOGGING = False  # no status spinner in test output
    with LoopbackNDIF({str(model_dir): model_dir}, preload=True) as loopback:
        yield loopback
    config.API.APIKEY, config.API.HOST, config.APP.REMOTE_LOGGING = saved


@pytest.fixture(autouse=True)
def healthy(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts from a healthy server with zeroed counters and the accepted key."""
    if "server" not in request.fixturenames:
        yield
        return
    loopback: LoopbackNDIF = request.getfixturevalue("server")
    loopback.faults.clear()
    loopback.min_nnsight_version = None
    loopback.refuse_connections(False)
    loopback.reset_counters()
    nnsight.CONFIG.API.APIKEY = "test-key"
    yield
    loopback.faults.clear()
    loopback.refuse_connections(False)


def wait(backend: Any, timeout: float = 60.0) -> dict[str, Any]:
    """Poll a non-blocking backend (``GET /response/{id}``) until it returns the saves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = backend()
        if result is not None:
            return result
        time.sleep(0.01)
    raise AssertionError(f"job {backend.job_id} not done after {timeout}s (last status {backend.status})")


def submit_small(model: Any, url: str) -> Any:
    """Submit a one-row trace non-blocking; return its backend (holding the job id)."""
    with model.trace(PROMPT, remote=url, blocking=False) as tracer:
        logits = model.lm_head.output.save()  # noqa: F841 - shipped back by name
    return tracer.backend


# -- the happy paths -------------------------------------------------------------------------------


def test_client_model_key_matches_helper(client: Any, model_dir: Path) -> None:
    assert client.to_model_key() == model_key_for_dir(model_dir)
    assert next(client._module.parameters()).device.type == "meta"  # no weights client-side


def test_trace_nonblocking_matches_local(server: LoopbackNDIF, client: Any, local: Any) -> None:
    with client.trace(PROMPT, remote=server.url, blocking=False) as tracer:
        client.model.layers[1].output[:] = client.model.layers[1].output * 3.0
        hidden = client.model.layers[2].output.save()  # noqa: F841
        logits = client.lm_head.output.save()  # noqa: F841
    backend = tracer.backend
    assert isinstance(backend.job_id, str) and backend.status.value == "RECEIVED"
    remote = wait(backend)

    with local.trace(PROMPT):
        local.model.layers[1].output[:] = local.model.layers[1].output * 3.0
        hidden = local.model.layers[2].output.save()
        logits = local.lm_head.output.save()
    with local.trace(PROMPT):
        plain = local.lm_head.output.save()

    assert set(remote) == {"hidden", "logits"}
    assert torch.equal(remote["hidden"], hidden)
    assert torch.equal(remote["logits"], logits)
    assert not torch.equal(remote["logits"], plain)  # the edit really ran on the server

    counts = server.counters()
    assert counts["requests"] == 1 and counts["completed"] == 1
    assert counts["polls"] >= 1 and counts["downloads"] == 1
    assert counts["result_bytes"] > 0
    assert server.round_trips == counts["requests"] + counts["polls"] + counts["downloads"]


def test_generate_nonblocking_matches_local(server: LoopbackNDIF, client: Any, local: Any) -> None:
    with client.generate(PROMPT, max_new_tokens=3, remote=server.url, blocking=False) as tracer:
        steps = nnsight.save([])
        for _ in tracer.iter[0:3]:
            client.model.layers[1].output[:] = client.model.layers[1].output * 3.0
            steps.append(client.lm_head.output[:, -1])
        ids = tracer.result.save()  # noqa: F841
    remote = wait(tracer.backend)

    with local.generate(PROMPT, max_new_tokens=3) as tracer:
        steps = nnsight.save([])
        for _ in tracer.iter[0:3]:
            local.model.layers[1].output[:] = local.model.layers[1].output * 3.0
            steps.append(local.lm_head.output[:, -1])
        ids = tracer.result.save()

    assert torch.equal(remote["ids"], ids)
    assert ids.shape[1] == len(local.tokenizer(PROMPT)["input_ids"]) + 3
    assert len(remote["steps"]) == 3
    for got, want in zip(remote["steps"], steps, strict=True):
        assert torch.equal(got, want)


def test_reattach_from_bare_job_id(server: LoopbackNDIF, client: Any) -> None:
    job_id = submit_small(client, server.url).job_id
    # A fresh backend from nothing but the id, as after a crash; host from CONFIG.API.HOST.
    nnsight.CONFIG.API.HOST, saved = server.url, nnsight.CONFIG.API.HOST
    try:
        first = wait(RemoteBackend(client.to_model_key(), job_id=job_id, blocking=False))
        again = wait(RemoteBackend(client.to_model_key(), job_id=job_id, blocking=False))
    finally:
        nnsight.CONFIG.API.HOST = saved
    assert torch.equal(first["logits"], again["logits"])  # results are kept for re-download
    assert server.downloads == 2


def test_uncompressed_round_trip(server: LoopbackNDIF, client: Any, local: Any) -> None:
    saved, nnsight.CONFIG.API.COMPRESS = nnsight.CONFIG.API.COMPRESS, False  # read per backend
    try:
        remote = wait(submit_small(client, server.url))
    finally:
        nnsight.CONFIG.API.COMPRESS = saved
    with local.trace(PROMPT):
        logits = local.lm_head.output.save()
    assert torch.equal(remote["logits"], logits)


def test_blocking_mode_over_websocket(server: LoopbackNDIF, client: Any, local: Any) -> None:
    with local.trace(PROMPT):
        want = local.lm_head.output.save()
    for inline_limit in (1 << 20, 0):  # inline binary frame, then the presigned-URL route
        server.inline_limit = inline_limit
        with client.trace(PROMPT, remote=server.url) as tracer:
            got = client.lm_head.output.save()
        assert torch.equal(got, want)
        assert tracer.backend.job_id is None  # blocking mode never records one
    server.inline_limit = 1 << 20
    assert server.subscriptions == 2 and server.downloads == 1


def test_session_is_one_round_trip(server: LoopbackNDIF, client: Any, local: Any) -> None:
    with client.session(remote=server.url, blocking=False) as session:
        with client.trace(PROMPT):
            first = client.lm_head.output.save()  # noqa: F841
        with client.trace("Yes"):
            second = client.lm_head.output.save()  # noqa: F841
    remote = wait(session.backend)
    with local.trace("Yes"):
        second = local.lm_head.output.save()
    assert torch.equal(remote["second"], second)
    assert server.requests == 1


def test_repeated_invoke_blocks_from_one_file(server: LoopbackNDIF, client: Any) -> None:
    """Two different nested-invoke blocks from the same file: no stale-source WithBlockNotFoundError."""
    with client.trace(remote=server.url, blocking=False) as tracer:
        with tracer.invoke(PROMPT):
            a = client.lm_head.output.save()  # noqa: F841
        with tracer.invoke("Yes"):
            b = client.lm_head.output.save()  # noqa: F841
    first = wait(tracer.backend)
    with client.trace(remote=server.url, blocking=False) as tracer:
        with tracer.invoke("No"):
            c = client.lm_head.output.save()  # noqa: F841
    second = wait(tracer.backend)
    assert set(first) == {"a", "b"} and set(second) == {"c"}
    assert server.max_rows_seen == 2


def test_status_env_ping_whoami(server: LoopbackNDIF, client: Any, model_dir: Path) -> None:
    from nnsight import ndif

    nnsight.CONFIG.API.HOST, saved = server.url, nnsight.CONFIG.API.HOST
    try:
        status = ndif.status()
        assert str(model_dir) in status and status.status == ndif.NdifStatus.Status.UP
        assert status[str(model_dir)]["state"] == "RUNNING"
        env = ndif.get_remote_env(force_refresh=True)
        assert env["packages"]["nnsight"] == server.server_nnsight_version
        assert ndif.whoami()["email"] == "test-key@loopback.invalid"
        server.faults.unavailable_models = frozenset({client.to_model_key()})
        assert str(model_dir) not in ndif.status()  # COLD deployments are filtered by the client
    finally:
        nnsight.CONFIG.API.HOST = saved
        ndif._REMOTE_ENV = None
    assert httpx.get(f"{server.url}/ping").json() == "pong"


# -- how each failure surfaces on the client ---------------------------------------------------------


@pytest.mark.parametrize("key", ["wrong-key", None])
def test_bad_or_missing_key_is_401(server: LoopbackNDIF, client: Any, key: str | None) -> None:
    nnsight.CONFIG.API.APIKEY = key
    with pytest.raises(RemoteError, match=r"^Failed to send request: Missing or invalid API key"):
        submit_small(client, server.url)
    assert server.requests == 1 and server.accepted == 0


def test_reject_auth_fault(server: LoopbackNDIF, client: Any) -> None:
    server.faults.reject_auth = True
    with pytest.raises(RemoteError, match="Missing or invalid API key"):
        submit_small(client, server.url)
    cause = _http_cause(client, server.url)
    assert cause.response.status_code == 401


def test_version_mismatch_is_400(server: LoopbackNDIF, client: Any) -> None:
    server.faults.version_mismatch = True
    with pytest.raises(
        RemoteError, match=r"^Failed to send request: Client nnsight version .* is incompatible"
    ):
        submit_small(client, server.url)
    server.faults.version_mismatch = False
    server.min_nnsight_version = "99.0.0"  # the real check: a minimum version
    assert _http_cause(client, server.url).response.status_code == 400


def test_submit_5xx(server: LoopbackNDIF, client: Any) -> None:
    server.faults.submit_status = 503
    with pytest.raises(RemoteError, match=r"^Failed to send request: Service temporarily unavailable"):
        submit_small(client, server.url)
    assert _http_cause(client, server.url).response.status_code == 503


@pytest.mark.parametrize("text", [EVICTED, PREEMPTED, CONNECTION_LOST, NOT_DEDICATED, CANNOT_ACCOMMODATE])
def test_job_error_texts(server: LoopbackNDIF, client: Any, text: str) -> None:
    server.faults.job_errors = [text]  # only the next job fails
    backend = submit_small(client, server.url)
    with pytest.raises(RemoteError) as caught:
        wait(backend)
    assert str(caught.value) == text and backend.status.value == "ERROR"
    wait(submit_small(client, server.url))  # the one after succeeds
    assert server.failed == 1 and server.completed == 1


def test_user_code_error_surfaces_with_its_traceback(server: LoopbackNDIF, client: Any) -> None:
    # Fine on the client (a meta model runs nothing); the server's real forward raises.
    with client.trace(PROMPT, remote=server.url, blocking=False) as tracer:
        bad = client.model.layers[0].output[0, 999].save()  # noqa: F841 - past the last token
    with pytest.raises(RemoteError, match=r"IndexError: .*out of bounds"):
        wait(tracer.backend)
    wait(submit_small(client, server.url))  # the worker survives it


def test_model_specs_factory_and_loaded(model_dir: Path, local: Any) -> None:
    key = model_key_for_dir(model_dir)
    assert LoopbackNDIF({key: lambda: local})._model(key) is local
    assert LoopbackNDIF({key: local})._model(key) is local
    # Keys match as parsed JSON, whatever the spacing.
    spaced = key.replace('": ', '":')
    assert LoopbackNDIF({key: local})._resolve_key(spaced) == key


def test_unknown_model_is_fatal_error(server: LoopbackNDIF, client: Any) -> None:
    server.faults.unavailable_models = frozenset({client.to_model_key()})
    with pytest.raises(RemoteError, match=f"^{NOT_DEDICATED}"):
        wait(submit_small(client, server.url))


def test_timeout_when_batch_too_big(server: LoopbackNDIF, client: Any) -> None:
    server.faults.timeout_rows = 1
    with client.trace([PROMPT, "Yes"], remote=server.url, blocking=False) as tracer:
        logits = client.lm_head.output.save()  # noqa: F841
    with pytest.raises(RemoteError, match=f"^{JOB_TIMEOUT}$"):
        wait(tracer.backend)
    wait(submit_small(client, server.url))  # one row is under the limit


def test_slow_queue(server: LoopbackNDIF, client: Any) -> None:
    server.faults.queue_delay_s = 0.5
    backend = submit_small(client, server.url)
    time.sleep(0.1)
    assert backend() is None and backend.status.value == "QUEUED"
    assert "logits" in wait(backend)


def test_drop_after_submit_hang(server: LoopbackNDIF, client: Any) -> None:
    server.faults.drop_after_submit = "hang"
    backend = submit_small(client, server.url)
    time.sleep(0.2)
    for _ in range(3):
        assert backend() is None
    assert backend.status.value == "QUEUED"  # and stays there


def test_drop_after_submit_forget(server: LoopbackNDIF, client: Any) -> None:
    server.faults.update(drop_after_submit="forget", unknown_id_status=404)
    backend = submit_small(client, server.url)
    assert isinstance(backend.job_id, str)  # the client got an id ...
    assert backend() is None and server.job_status(backend.job_id) is None  # ... that is a 404


def test_restart_forgets_jobs(server: LoopbackNDIF, client: Any) -> None:
    server.faults.update(queue_delay_s=5.0, unknown_id_status=404)  # other servers' answer
    backend = submit_small(client, server.url)
    server.restart(first_request_error=CONNECTION_LOST)
    server.faults.queue_delay_s = 0.0
    assert backend() is None  # 404: indistinguishable from "not recorded yet"
    assert server.polls == 1
    with pytest.raises(RemoteError, match=f"^{CONNECTION_LOST}$"):
        wait(submit_small(client, server.url))  # first request after a backend restart
    wait(submit_small(client, server.url))


def test_refuse_connections(server: LoopbackNDIF, client: Any) -> None:
    backend = submit_small(client, server.url)
    wait(backend)
    server.refuse_connections()
    with pytest.raises(RemoteError, match=r"^Failed to send request: .*[Cc]onnection refused"):
        submit_small(client, server.url)
    with pytest.raises(httpx.ConnectError):  # the poll path does not wrap transport errors
        backend()
    server.refuse_connections(False)
    assert "logits" in wait(submit_small(client, server.url))


@pytest.mark.parametrize("mode", ["cut", "close"])
def test_websocket_drop_in_blocking_mode(server: LoopbackNDIF, client: Any, mode: str) -> None:
    import pydantic
    import websocket

    # A TCP cut surfaces from websocket-client; a close frame makes recv() return "", which the
    # client then fails to parse as a ResponseModel.
    expected = websocket.WebSocketConnectionClosedException if mode == "cut" else pydantic.ValidationError
    server.faults.update(drop_websocket=mode, queue_delay_s=0.5)
    with pytest.raises(expected):
        with client.trace(PROMPT, remote=server.url):
            logits = client.lm_head.output.save()  # noqa: F841


def test_fault_rate_is_seeded(server: LoopbackNDIF, client: Any) -> None:
    def outcomes() -> list[str]:
        seen = []
        for _ in range(12):
            try:
                wait(submit_small(client, server.url))
                seen.append("ok")
            except RemoteError as error:
                seen.append(str(error))
        return seen

    kinds = (EVICTED, PREEMPTED, HTTP_503)
    server.faults.update(fault_rate=0.3, transient_kinds=kinds, seed=7)
    first = outcomes()
    server.faults.seed = 7
    assert outcomes() == first
    failures = [o for o in first if o != "ok"]
    assert failures and len(failures) < len(first)
    assert all(o in (EVICTED, PREEMPTED) or o.startswith("Failed to send request: Service") for o in failures)
    assert server.requests == 24


def _http_cause(client: Any, url: str) -> httpx.HTTPStatusError:
    """The ``httpx.HTTPStatusError`` a submit's RemoteError is chained from (``raise ... from``)."""
    with pytest.raises(RemoteError) as caught:
        submit_small(client, url)
    cause = caught.value.__cause__
    assert isinstance(cause, httpx.HTTPStatusError)
    return cause


# -- behaviours of the real service (ndif-team/ndif), switched on one at a time --------------------


def test_unknown_id_answers_500_like_ndif(server: LoopbackNDIF, client: Any) -> None:
    """NDIF's GET /response/{id} loads from the object store; an unknown id is an unhandled S3
    NoSuchKey: HTTP 500 (src/services/api/src/app.py @105da734), which the client raises."""
    server.faults.update(unknown_id_status=500, drop_after_submit="forget")
    backend = submit_small(client, server.url)
    with pytest.raises(httpx.HTTPStatusError) as caught:
        backend()
    assert caught.value.response.status_code == 500


def test_poll_502s_are_seeded_and_counted(server: LoopbackNDIF, client: Any) -> None:
    server.faults.update(poll_fault_rate=0.5, seed=0)
    backend = submit_small(client, server.url)
    errors = 0
    deadline = time.monotonic() + 60
    result = None
    while result is None and time.monotonic() < deadline:
        try:
            result = backend()
        except httpx.HTTPStatusError as error:
            assert error.response.status_code == 502
            errors += 1
        time.sleep(0.01)
    assert result is not None and "logits" in result
    assert errors == server.poll_errors > 0


def test_result_url_is_presigned_on_a_separate_path_and_expires_with_403(server: LoopbackNDIF, client: Any) -> None:
    """NDIF's result link is an S3 URL signed once, at completion, for 2 h (mixins.py @051b7056);
    once expired the object store answers 403 AccessDenied: not NDIF's API, not the key."""
    server.faults.update(result_url_ttl_s=0.3)
    backend = submit_small(client, server.url)
    deadline = time.monotonic() + 60
    while server.job_status(backend.job_id) != "COMPLETED" and time.monotonic() < deadline:
        time.sleep(0.01)
    text = httpx.get(f"{server.url}/response/{backend.job_id}").json()
    assert "/objects/results/" in text["data"] and "X-Amz-Expires" in text["data"]
    assert httpx.get(text["data"]).status_code == 200  # fresh: downloads
    time.sleep(0.4)
    expired = httpx.get(text["data"])
    assert expired.status_code == 403 and b"AccessDenied" in expired.content
    with pytest.raises(httpx.HTTPStatusError) as caught:  # the client's own download path
        backend()
    assert caught.value.response.status_code == 403 and server.expired_downloads == 2


def test_restart_freeze_keeps_last_status_forever(server: LoopbackNDIF, client: Any) -> None:
    server.faults.update(run_delay_s=5.0)
    backend = submit_small(client, server.url)
    deadline = time.monotonic() + 60
    while server.job_status(backend.job_id) != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.01)
    server.restart(lost="freeze")
    server.faults.update(run_delay_s=0.0)
    for _ in range(3):
        assert backend() is None and backend.status.value == "RUNNING"
        time.sleep(0.1)
    assert "logits" in wait(submit_small(client, server.url))  # new work still runs
    assert backend() is None and backend.status.value == "RUNNING"


def test_running_past_the_cap_ends_with_ndifs_timeout_text(server: LoopbackNDIF, client: Any) -> None:
    """The model actor waits `execution_timeout` and raises "Job took longer than timeout: N
    seconds" (ray/deployments/modeling/base.py @02758d7c)."""
    server.faults.update(running_cap_s=0.2, run_delay_s=1.0)
    with pytest.raises(RemoteError, match=rf"^{JOB_TIMEOUT}: 0.2 seconds$"):
        wait(submit_small(client, server.url))


def test_default_version_rule_is_client_at_least_server(model_dir: Path, client: Any) -> None:
    """By default the loopback applies NDIF's rule with NDIF's default minimum (the server's own
    nnsight, config.py @14c5ae16): an older server accepts us, a newer one answers 400."""
    with LoopbackNDIF({str(model_dir): model_dir}, server_nnsight_version="0.8.0") as older:
        assert older.min_nnsight_version == "0.8.0"
        assert "logits" in wait(submit_small(client, older.url))
    with LoopbackNDIF({str(model_dir): model_dir}, server_nnsight_version="0.8.99") as newer:
        cause = _http_cause(client, newer.url)
        assert cause.response.status_code == 400
        assert "minimum supported version is 0.8.99" in cause.response.json()["detail"]
    with LoopbackNDIF({str(model_dir): model_dir}, server_python_version="3.99.1 (main)") as py:
        cause = _http_cause(client, py.url)
        assert cause.response.status_code == 400
        assert "Client python version" in cause.response.json()["detail"]


def test_missing_endpoints_warm_models_and_upload_bytes(server: LoopbackNDIF, client: Any, model_dir: Path) -> None:
    server.faults.update(missing_endpoints=frozenset({"/env"}), warm_models=frozenset({model_key_for_dir(model_dir)}))
    assert httpx.get(f"{server.url}/env").status_code == 404
    level = httpx.get(f"{server.url}/status").json()["deployments"][model_key_for_dir(model_dir)]
    assert level["deployment_level"] == "WARM"
    assert "logits" in wait(submit_small(client, server.url))  # WARM still runs requests
    assert server.upload_bytes > 0


def test_unknown_id_answers_500_by_default_as_ndif_does(server: LoopbackNDIF) -> None:
    import httpx

    reply = httpx.get(f"{server.url}/response/no-such-job")
    assert reply.status_code == 500 and reply.text == "Internal Server Error"
