"""The NDIF executor against a loopback NDIF-protocol server (real nnsight client, real HTTP).

The model is a tiny random Llama saved as a local directory; the client builds it on the meta
device (no weights) and the server loads the same directory, as NDIF does for a repo id.
"""

from __future__ import annotations

import copy
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from helpers import run_cli_forked, start_cli_forked, tiny_spec

from remote_introspect.errors import FatalRemoteError
from remote_introspect.execution import runner
from remote_introspect.execution.runner import RunOptions
from remote_introspect.experiment.spec import ExperimentSpec
from remote_introspect.models.tiny import materialize_tiny_model
from remote_introspect.retry_policy import RetrySettings
from remote_introspect.testing.ndif_loopback import (
    CANNOT_ACCOMMODATE,
    CONNECTION_LOST,
    DEFAULT_API_KEY,
    EVICTED,
    NOT_DEDICATED,
    LoopbackNDIF,
    model_key_for_dir,
)

# NDIF's full text (queue/processor.py); "accomodated" is the server's spelling.
CANNOT_ACCOMMODATE_TEXT = f"{CANNOT_ACCOMMODATE} at this time. Please try again later. Sorry for the inconvenience."
FAST_RETRY = RetrySettings(max_attempts=10, initial_wait_s=0.01, max_wait_s=0.05, jitter_s=0.0, long_wait_s=0.05)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return materialize_tiny_model(tmp_path_factory.mktemp("models"), "llama", seed=0)


@pytest.fixture
def server(model_dir: Path, monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", DEFAULT_API_KEY)
    with LoopbackNDIF({str(model_dir): model_dir}, preload=True) as srv:
        yield srv


def _spec(model_dir: Path, **kw: object) -> ExperimentSpec:
    return tiny_spec(**{"model": str(model_dir), "concepts": ("Dust", "Oceans", "Trees"), **kw})


def _opts(cache: Path, host: str | None, **kw) -> RunOptions:
    base = dict(
        cache_root=cache,
        backend="ndif" if host else "local",
        ndif_host=host,
        batch_rows=5,
        retry=FAST_RETRY,
        poll_initial_s=0.01,
        job_timeout_s=20.0,
    )
    base.update(kw)
    return RunOptions(**base)


def _responses(cache: Path) -> dict[str, str]:
    with sqlite3.connect(cache / "results.sqlite") as c:
        return dict(c.execute("SELECT key, response_ids FROM trials WHERE status='done'").fetchall())


@pytest.fixture(scope="module")
def local_reference(model_dir: Path, tmp_path_factory) -> dict[str, str]:
    """The same experiment run locally: remote results must be identical, key for key."""
    cache = tmp_path_factory.mktemp("local")
    rep = runner.run(_spec(model_dir), _opts(cache, None))
    assert rep.complete
    return _responses(cache)


def test_remote_run_equals_local_run_with_few_round_trips(server, model_dir, tmp_path, local_reference):
    rep = runner.run(_spec(model_dir), _opts(tmp_path / "c", server.url))
    assert rep.complete
    assert _responses(tmp_path / "c") == local_reference  # same keys, same token ids
    n_trials = 3 * 2 * 2 + 3
    batches = -(-n_trials // 5)
    # One request for all vectors (one pass, all layers) + one per batch; nothing per trial.
    assert server.requests == 1 + batches
    with sqlite3.connect(tmp_path / "c" / "results.sqlite") as c:
        backends = {r[0] for r in c.execute("SELECT DISTINCT backend FROM trials")}
        versions = json.loads(c.execute("SELECT versions_json FROM batches LIMIT 1").fetchone()[0])
    assert backends == {"ndif"}
    assert versions["server_nnsight"] == versions["nnsight"] and versions["backend_host"] == server.url


def test_thirty_percent_transient_faults_complete_identically(server, model_dir, tmp_path, local_reference):
    """30% of submissions fail (503 or an ERROR text) and 30% of polls answer 502. The results
    equal the fault-free run, and the server sees no more POSTs than requests + retried failures:
    a failed poll is retried on the same job id, never by a second POST."""
    server.faults.update(fault_rate=0.3, poll_fault_rate=0.3, seed=7)
    rep = runner.run(_spec(model_dir), _opts(tmp_path / "c", server.url))
    assert rep.complete
    assert _responses(tmp_path / "c") == local_reference
    assert server.failed + server.requests - server.accepted > 0, "the fault rate injected nothing"
    assert server.poll_errors > 0, "no poll failed"
    # No trial ran twice once stored: every completed job is one batch (or the vector pass).
    with sqlite3.connect(tmp_path / "c" / "results.sqlite") as c:
        n_batches = c.execute("SELECT COUNT(*) FROM batches WHERE status='done'").fetchone()[0]
    assert server.completed == n_batches + 1
    rejected = server.requests - server.accepted  # 503 on submit
    # POSTs = one per request (batches + the vector pass) + one per failure the server reported.
    assert server.requests == (n_batches + 1) + server.failed + rejected
    print(f"\nPOSTs {server.requests} = {n_batches + 1} requests + {server.failed} failed jobs + "
          f"{rejected} refused submits; {server.poll_errors} of {server.polls} polls answered 502")  # fmt: skip


def test_poll_502s_retry_the_poll_not_the_job(server, model_dir, tmp_path, local_reference):
    server.faults.update(poll_fault_rate=0.5, seed=3)
    rep = runner.run(_spec(model_dir), _opts(tmp_path / "c", server.url))
    assert rep.complete and _responses(tmp_path / "c") == local_reference
    assert server.poll_errors > 0
    with sqlite3.connect(tmp_path / "c" / "results.sqlite") as c:
        n_batches = c.execute("SELECT COUNT(*) FROM batches WHERE status='done'").fetchone()[0]
    assert server.requests == server.accepted == server.completed == n_batches + 1


def test_expired_result_link_resubmits_the_batch_not_a_key_error(server, model_dir, tmp_path, local_reference):
    """NDIF's result link is an S3 URL presigned for 2 h (mixins.py @051b7056); fetched too late it
    answers 403 AccessDenied. That is an expired link: resubmit the batch. It is not a bad key."""
    import threading

    server.faults.update(result_url_ttl_s=0.0)  # every link has expired by the time it is fetched

    def heal_after_first_expiry():
        deadline = time.time() + 120
        while server.expired_downloads == 0 and time.time() < deadline:
            time.sleep(0.01)
        server.faults.update(result_url_ttl_s=3600.0)

    threading.Thread(target=heal_after_first_expiry, daemon=True).start()
    rep = runner.run(_spec(model_dir), _opts(tmp_path / "c", server.url))
    assert rep.complete and _responses(tmp_path / "c") == local_reference
    assert server.expired_downloads >= 1
    with sqlite3.connect(tmp_path / "c" / "results.sqlite") as c:
        n_batches = c.execute("SELECT COUNT(*) FROM batches WHERE status='done'").fetchone()[0]
    assert server.accepted == n_batches + 1 + server.expired_downloads


def test_long_queue_is_not_a_reason_to_resubmit(server, model_dir, tmp_path):
    """`--job-timeout` bounds time RUNNING; a job queued longer than that is waited for."""
    opts = _opts(tmp_path / "c", server.url, job_timeout_s=0.5)
    small = dict(concepts=("Dust",), strengths=(2.0,), controls=0)
    assert runner.run(_spec(model_dir, samples=1, **small), opts).complete  # vectors cached
    server.reset_counters()
    server.faults.update(queue_delay_s=1.5)
    rep = runner.run(_spec(model_dir, samples=3, **small), opts)
    assert rep.complete
    assert server.requests == server.accepted == server.completed  # one POST per batch


def _freeze_when(server, status: str, **faults: float) -> None:
    """In the background: once a job reaches `status`, lift `faults` and restart the server with
    its jobs' statuses frozen (what an NDIF restart leaves behind)."""
    import threading

    def freeze():
        deadline = time.time() + 60
        while time.time() < deadline:
            with server._lock:
                if any(j.status == status for j in server._jobs.values()):
                    break
            time.sleep(0.01)
        server.faults.update(**faults)
        server.restart(lost="freeze")

    threading.Thread(target=freeze, daemon=True).start()


def test_job_frozen_running_after_restart_is_resubmitted_after_the_running_cap(server, model_dir, tmp_path):
    """A restart loses the job but its last status (RUNNING) stays in the object store forever;
    past the execution cap (`job_timeout_s`) the executor resubmits it."""
    opts = _opts(tmp_path / "c", server.url, job_timeout_s=1.0, stale_probe_s=600.0)
    small = dict(concepts=("Dust",), strengths=(2.0,), controls=0)
    assert runner.run(_spec(model_dir, samples=1, **small), opts).complete  # vectors cached
    server.faults.update(run_delay_s=30.0)

    _freeze_when(server, "RUNNING", run_delay_s=0.0)
    t0 = time.time()
    rep = runner.run(_spec(model_dir, samples=3, **small), opts)
    assert rep.complete and time.time() - t0 < 30
    assert server.job_status  # the frozen job is still reported by its last status
    frozen = [j for j in server._jobs.values() if j.status == "RUNNING"]
    assert len(frozen) == 1


def test_job_frozen_queued_after_restart_is_resubmitted_after_queue_plus_job_timeout(
    server, model_dir, tmp_path, caplog
):
    """A restart while queued freezes the status at QUEUED; the model stays deployed and the id
    known, so only the bound `queue_timeout_s + job_timeout_s` (no change) gets it resubmitted."""

    opts = _opts(tmp_path / "c", server.url, job_timeout_s=1.0, queue_timeout_s=0.5, stale_probe_s=600.0)
    small = dict(concepts=("Dust",), strengths=(2.0,), controls=0)
    assert runner.run(_spec(model_dir, samples=1, **small), opts).complete  # vectors cached
    assert runner.run(_spec(model_dir, samples=2, **small), _opts(tmp_path / "local", None)).complete
    server.reset_counters()
    server.faults.update(queue_delay_s=30.0)

    _freeze_when(server, "QUEUED", queue_delay_s=0.0)
    t0 = time.time()
    with caplog.at_level("WARNING"):
        rep = runner.run(_spec(model_dir, samples=2, **small), opts)
    assert rep.complete and time.time() - t0 < 30
    assert server.requests == 2  # the frozen job and exactly one resubmission
    assert [j for j in server._jobs.values() if j.status == "QUEUED"]
    assert "froze" in caplog.text and "QUEUED" in caplog.text
    assert _responses(tmp_path / "c") == _responses(tmp_path / "local")


def test_cannot_be_accommodated_is_transient_with_a_long_backoff(server, model_dir, tmp_path):
    server.faults.update(job_errors=[CANNOT_ACCOMMODATE_TEXT])
    rep = runner.run(_spec(model_dir, concepts=("Dust",), strengths=(2.0,), samples=1, controls=0),
                     _opts(tmp_path / "c", server.url))  # fmt: skip
    assert rep.complete and server.failed == 1


def test_each_transient_text_is_retried(server, model_dir, tmp_path):
    server.faults.update(
        job_errors=[EVICTED, CONNECTION_LOST, "Your job was cancelled or preempted by the server."]
    )
    rep = runner.run(
        _spec(model_dir, concepts=("Dust",), strengths=(2.0,)), _opts(tmp_path / "c", server.url)
    )
    assert rep.complete and server.failed == 3


def test_transient_errors_exhaust_attempts_then_failed_not_negative(server, model_dir, tmp_path):
    server.faults.update(job_error=EVICTED)
    opts = _opts(tmp_path / "c", server.url, retry=RetrySettings(3, 0.01, 0.02, 0.0))
    with pytest.raises(Exception):  # noqa: B017 - vectors cannot be extracted: the run stops
        runner.run(_spec(model_dir, concepts=("Dust",)), opts)
    server.faults.clear()
    # Vectors now extract; every generate job fails transiently until the attempts run out.
    runner.run(_spec(model_dir, concepts=("Dust",), strengths=(2.0,), samples=1, controls=0), opts)
    server.faults.update(job_error=EVICTED)
    rep = runner.run(_spec(model_dir, concepts=("Dust",), strengths=(2.0,), samples=2, controls=1), opts)
    assert not rep.complete
    failed = [k for k, s in rep.statuses.items() if s == "failed"]
    assert failed and not set(failed) & set(rep.grades)
    with sqlite3.connect(tmp_path / "c" / "results.sqlite") as c:
        row = c.execute("SELECT error_class, error FROM trials WHERE status='failed' LIMIT 1").fetchone()
    assert row[0] == "TransientError" and "evicted" in row[1]


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (dict(reject_auth=True), "API key"),
        (dict(version_mismatch=True), "pip install nnsight=="),
        (dict(job_error=NOT_DEDICATED), "cannot run this model"),
    ],
)
def test_fatal_errors_stop_the_run(server, model_dir, tmp_path, fault, expected):
    server.faults.update(**fault)
    with pytest.raises(FatalRemoteError, match=expected):
        runner.run(_spec(model_dir), _opts(tmp_path / "c", server.url))


def test_preflight_names_unavailable_model_and_alternatives(server, model_dir, tmp_path):
    server.faults.update(unavailable_models=frozenset({model_key_for_dir(model_dir)}))
    with pytest.raises(FatalRemoteError, match="not available on NDIF"):
        runner.run(_spec(model_dir), _opts(tmp_path / "c", server.url))
    assert server.requests == 0  # the preflight is GET-only


def test_preflight_version_mismatch_is_fatal(model_dir, tmp_path, monkeypatch):
    """NDIF's rule is client >= server (dependencies.py @134eac98): a newer server is fatal with the
    exact pip command, before any POST; the POST itself would be refused with HTTP 400."""
    monkeypatch.setenv("NDIF_API_KEY", DEFAULT_API_KEY)
    with LoopbackNDIF({str(model_dir): model_dir}, server_nnsight_version="0.8.9") as srv:
        with pytest.raises(FatalRemoteError, match="server runs 0.8.9") as err:
            runner.run(_spec(model_dir), _opts(tmp_path / "c", srv.url))
        assert "pip install nnsight==0.8.9" in str(err.value) and "\n" not in str(err.value)
        assert srv.requests == 0
        with pytest.raises(FatalRemoteError, match="pip install nnsight==0.8.9"):  # the server's 400
            runner.run(_spec(model_dir), _opts(tmp_path / "c", srv.url, allow_version_mismatch=True))


def test_preflight_server_nnsight_outside_the_pin_says_so(model_dir, tmp_path, monkeypatch):
    """Server on nnsight 0.9.x: the printed `pip install` would conflict with nnsight<0.9."""
    monkeypatch.setenv("NDIF_API_KEY", DEFAULT_API_KEY)
    with LoopbackNDIF({str(model_dir): model_dir}, server_nnsight_version="0.9.2") as srv:
        with pytest.raises(FatalRemoteError, match="server runs 0.9.2") as err:
            runner.run(_spec(model_dir), _opts(tmp_path / "c", srv.url))
        assert "outside the range this package is tested with (nnsight>=0.8.1,<0.9)" in str(err.value)
        assert "run: pip install" not in str(err.value) and srv.requests == 0


def test_client_python_newer_than_the_server_is_accepted(model_dir, tmp_path, monkeypatch):
    """NDIF's newest rule (dependencies.py @134eac98 and later): client Python >= MIN_PYTHON_VERSION
    (default the server's); the exact-match rule of the older @6512b9c5 is not followed."""
    monkeypatch.setenv("NDIF_API_KEY", DEFAULT_API_KEY)
    lines = []
    with LoopbackNDIF({str(model_dir): model_dir}, server_python_version="3.10.4 (main)", preload=True) as srv:
        rep = runner.run(_spec(model_dir, concepts=("Dust",), strengths=(2.0,), samples=1, controls=0),
                         _opts(tmp_path / "c", srv.url), runner.Hooks.of(notice=lines.append))  # fmt: skip
    assert rep.complete
    assert any("python 3.10" in line and "ok" in line for line in lines), lines


def test_older_server_patch_release_is_accepted(model_dir, tmp_path, monkeypatch):
    """A server running an older nnsight than ours (client >= server) is what NDIF accepts; the
    old exact-equality preflight refused it."""
    monkeypatch.setenv("NDIF_API_KEY", DEFAULT_API_KEY)
    lines = []
    with LoopbackNDIF({str(model_dir): model_dir}, server_nnsight_version="0.8.0", preload=True) as srv:
        rep = runner.run(_spec(model_dir, concepts=("Dust",), strengths=(2.0,), samples=1, controls=0),
                         _opts(tmp_path / "c", srv.url), runner.Hooks.of(notice=lines.append))  # fmt: skip
    assert rep.complete
    assert any("server 0.8.0" in line and "ok" in line for line in lines), lines


def test_server_python_newer_than_ours_is_fatal(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", DEFAULT_API_KEY)
    with LoopbackNDIF({str(model_dir): model_dir}, server_python_version="3.99.0 (main)") as srv:
        with pytest.raises(FatalRemoteError, match="python: server runs 3.99"):
            runner.run(_spec(model_dir), _opts(tmp_path / "c", srv.url))
        assert srv.requests == 0
        with pytest.raises(FatalRemoteError, match="Python >= 3.99"):  # the server's HTTP 400
            runner.run(_spec(model_dir), _opts(tmp_path / "c", srv.url, allow_version_mismatch=True))


def test_missing_preflight_endpoints_are_not_checked_and_the_run_goes_on(server, model_dir, tmp_path):
    server.faults.update(missing_endpoints=frozenset({"/env", "/status", "/whoami"}))
    lines = []
    rep = runner.run(_spec(model_dir, concepts=("Dust",), strengths=(2.0,), samples=1, controls=0),
                     _opts(tmp_path / "c", server.url), runner.Hooks.of(notice=lines.append))  # fmt: skip
    assert rep.complete
    checks = [line for line in lines if line.startswith("preflight:")]
    assert len(checks) == 3 and all("not checked" in line and "404" in line for line in checks), checks


def test_warm_deployment_counts_as_available(server, model_dir, tmp_path):
    server.faults.update(warm_models=frozenset({model_key_for_dir(model_dir)}))
    lines = []
    rep = runner.run(_spec(model_dir, concepts=("Dust",), strengths=(2.0,), samples=1, controls=0),
                     _opts(tmp_path / "c", server.url), runner.Hooks.of(notice=lines.append))  # fmt: skip
    assert rep.complete
    assert any("WARM" in line for line in lines), lines


def test_missing_key_is_fatal_before_any_request(server, model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("NDIF_API_KEY")
    with pytest.raises(FatalRemoteError, match="NDIF_API_KEY is not set"):
        runner.run(_spec(model_dir), _opts(tmp_path / "c", server.url))
    assert server.gets == 0 and server.http_requests == 0


def test_job_timeout_splits_the_batch(server, model_dir, tmp_path, local_reference):
    # More than 4 rows times out: a 5-row batch splits into 2 + 3, and the vector extraction (one
    # request of 103 prompts) halves down to requests of at most 4 rows.
    server.faults.update(timeout_rows=4)
    rep = runner.run(_spec(model_dir), _opts(tmp_path / "c", server.url, batch_rows=5))
    assert rep.complete
    assert server.max_rows_seen >= 5  # the full batch was tried first
    assert server.failed > 0


def test_dropped_job_is_resubmitted_after_the_cap(server, model_dir, tmp_path):
    rep0 = runner.run(_spec(model_dir, concepts=("Dust",), strengths=(2.0,), samples=1, controls=0),
                      _opts(tmp_path / "c", server.url))  # fmt: skip
    assert rep0.complete  # vectors cached
    server.faults.update(drop_after_submit="forget")
    server.faults.update(job_errors=[])

    def heal_later():
        time.sleep(1.0)
        server.faults.update(drop_after_submit=None)

    import threading

    threading.Thread(target=heal_later, daemon=True).start()
    rep = runner.run(_spec(model_dir, concepts=("Dust",), strengths=(2.0,), samples=3, controls=0),
                     _opts(tmp_path / "c", server.url, stale_probe_s=0.3))  # fmt: skip
    assert rep.complete


def test_nothing_to_run_sends_no_request(server, model_dir, tmp_path):
    opts = _opts(tmp_path / "c", server.url)
    assert runner.run(_spec(model_dir), opts).complete
    server.reset_counters()
    assert runner.run(_spec(model_dir), opts).complete
    assert server.gets == 0 and server.http_requests == 0


def test_api_key_never_reaches_cache_or_output(model_dir, tmp_path, fresh_forks):
    secret = "fake-ndif-SECRET-0123456789"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NDIF_API_KEY": secret}
    with LoopbackNDIF({str(model_dir): model_dir}, api_keys=(secret,)) as srv:
        srv.faults.update(job_errors=[EVICTED])
        cmd = ["replicate-lindsey", "--model", str(model_dir),
               "--backend", "ndif", "--ndif-host", srv.url, "--max-new-tokens", "3", "--concepts", "Dust",
               "--cache", str(tmp_path / "c")]  # fmt: skip
        res = run_cli_forked(fresh_forks, cmd, tmp_path, timeout=300, env=env)
        assert res.returncode == 0, res.stderr
        srv.faults.update(reject_auth=True)
        res2 = run_cli_forked(fresh_forks, [*cmd, "--seed", "1"], tmp_path, timeout=300, env=env)
    assert res2.returncode == 3 and "API key" in res2.stderr
    for blob in (res.stdout, res.stderr, res2.stdout, res2.stderr):
        assert secret not in blob
    for f in (tmp_path / "c").rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f


def _kill_once_a_batch_is_submitted(ctx, cmd: list[str], env: dict[str, str], db: Path) -> None:  # type: ignore[no-untyped-def]
    """Start the CLI and kill -9 it as soon as the store shows a batch submitted (a job in flight)."""
    proc = start_cli_forked(ctx, cmd, db.parent.parent, db.parent.parent / "killed-run", env)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:  # read-only: never creates it
                n = c.execute("SELECT COUNT(*) FROM batches WHERE status='submitted'").fetchone()[0]
        except sqlite3.OperationalError:  # no database (or no batches table) yet
            n = 0
        if n:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("no batch was ever submitted")
    proc.kill()  # SIGKILL
    proc.join()


def test_sigkill_mid_run_reattaches_without_resubmitting(model_dir, tmp_path, fresh_forks):
    """Kill -9 the client while a job is in flight; the re-run collects that job by its id."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NDIF_API_KEY": DEFAULT_API_KEY}
    cache = tmp_path / "c"
    with LoopbackNDIF({str(model_dir): model_dir}, preload=True) as srv:
        cmd = ["replicate-lindsey", "--model", str(model_dir),
               "--backend", "ndif", "--ndif-host", srv.url, "--max-new-tokens", "3", "--concepts", "3",
               "--batch-size", "4", "--cache", str(cache)]  # fmt: skip
        srv.faults.update(run_delay_s=1.5)
        db = cache / "results.sqlite"
        _kill_once_a_batch_is_submitted(fresh_forks, cmd, env, db)
        with sqlite3.connect(db) as c:
            inflight = c.execute("SELECT id, job_id FROM batches WHERE status='submitted'").fetchall()
            done_before = c.execute("SELECT COUNT(*) FROM batches WHERE status='done'").fetchone()[0]
        assert len(inflight) == 1
        submitted_before = srv.accepted
        srv.faults.update(run_delay_s=0.0)
        res = run_cli_forked(fresh_forks, cmd, tmp_path, timeout=300, env=env)
        assert res.returncode == 0, res.stderr
        assert "reattached job" in res.stderr
        with sqlite3.connect(db) as c:
            rows = c.execute("SELECT id, status, attempts, job_id FROM batches").fetchall()
            trial_status = {r[0] for r in c.execute("SELECT status FROM trials")}
    by_id = {r[0]: r for r in rows}
    bid, jid = inflight[0]
    assert by_id[bid][1] == "done" and by_id[bid][2] == 1 and by_id[bid][3] == jid  # not resubmitted
    total_batches = len(rows)
    # Every batch submitted exactly once across both runs.
    assert srv.accepted == total_batches + 1  # + the vector extraction request
    assert submitted_before == 1 + done_before + 1
    assert trial_status == {"done"}


def test_405b_preset_offline_preflight_names_the_deployed_base_model(tmp_path, tiny_tokenizer, fresh_forks):
    """The 405b preset builds offline (shipped config, stand-in tokenizer); when only the base
    model is deployed, the preflight says so, names it with its preset, and exits non-zero."""
    tok_dir = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(tok_dir)
    never = {model_key_for_dir("meta-llama/Llama-3.1-405B"): lambda: pytest.fail("must not load")}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NDIF_API_KEY": DEFAULT_API_KEY}
    with LoopbackNDIF(never) as srv:
        res = run_cli_forked(
            fresh_forks,
            ["replicate-lindsey", "--model", "405b", "--tokenizer", str(tok_dir), "--ndif-host", srv.url,
             "--cache", str(tmp_path / "c")],
            tmp_path, env=env,
        )  # fmt: skip
        assert srv.http_requests == 0
    assert res.returncode == 3
    err = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1
    assert "meta-llama/Llama-3.1-405B-Instruct is not available" in err[0]
    assert "meta-llama/Llama-3.1-405B (--model 405b-base)" in err[0]
    # ... and the command to run instead: this one, with --model 405b-base.
    assert "use instead: python -m remote_introspect replicate-lindsey --model 405b-base --tokenizer" in err[0]


def test_405b_base_renders_lindsey_in_the_llama31_chat_format_from_the_shipped_template(tmp_path, tiny_tokenizer):
    """The base model's tokenizer has no chat template; the preset ships Llama 3.1's, so the
    Lindsey prompt is the chat the Instruct model would see, and the template's text enters the
    tokenizer fingerprint (hence the trial key)."""
    from remote_introspect.execution.backends.ndif import _load_tokenizer
    from remote_introspect.experiment.prompts import FIXED_DATE, LINDSEY_SETUP, tokenizer_fingerprint
    from remote_introspect.models.loading import resolve_model

    tok_dir = tmp_path / "tok"
    base_tok = copy.deepcopy(tiny_tokenizer)  # the fixture is shared by the whole session
    base_tok.chat_template = None
    base_tok.save_pretrained(tok_dir)
    ref = resolve_model("405b-base")
    assert ref.preset is not None and not ref.preset.instruct
    tok = _load_tokenizer(ref, tok_dir)
    assert tok.chat_template == ref.preset.shipped_chat_template()
    text = tok.apply_chat_template(
        [{"role": "user", "content": LINDSEY_SETUP}, {"role": "assistant", "content": "Ok."}],
        tokenize=False, add_generation_prompt=True, date_string=FIXED_DATE,
    )  # fmt: skip
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        f"Today Date: {FIXED_DATE}\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{LINDSEY_SETUP}"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nOk.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    bare_fp = tokenizer_fingerprint(base_tok)
    assert tokenizer_fingerprint(tok) != bare_fp  # the template is part of the key


def test_server_restart_mid_job_is_detected_and_resubmitted(server, model_dir, tmp_path):
    """A restarted server forgets its jobs; polls then look like "not yet" (404 → None). The
    executor probes a job whose status stopped changing and resubmits it, long before the cap."""
    opts = _opts(tmp_path / "c", server.url, stale_probe_s=0.3, job_timeout_s=600.0)
    small = dict(concepts=("Dust",), strengths=(2.0,), controls=0)
    assert runner.run(_spec(model_dir, samples=1, **small), opts).complete  # vectors cached
    server.faults.update(queue_delay_s=2.0, unknown_id_status=404)  # other servers' "not found"

    import threading

    def restart_soon():
        time.sleep(0.5)
        server.faults.update(queue_delay_s=0.0)
        server.restart()

    threading.Thread(target=restart_soon, daemon=True).start()
    t0 = time.time()
    rep = runner.run(_spec(model_dir, samples=3, **small), opts)
    assert rep.complete and time.time() - t0 < 60


def test_killed_client_and_restarted_server_rerun_resubmits_within_two_minutes(model_dir, tmp_path, fresh_forks):
    """kill -9 the client mid-job, restart the server (NDIF forgets the job and answers 500 for its
    id), rerun: the rerun notices the forgotten job and resubmits it promptly, with the CLI's
    default retry settings (the old code retried the reattach with minutes of backoff)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NDIF_API_KEY": DEFAULT_API_KEY}
    cache = tmp_path / "c"
    with LoopbackNDIF({str(model_dir): model_dir}, preload=True) as srv:
        srv.faults.update(unknown_id_status=500)
        cmd = ["replicate-lindsey", "--model", str(model_dir),
               "--backend", "ndif", "--ndif-host", srv.url, "--max-new-tokens", "3", "--concepts", "2",
               "--batch-size", "4", "--cache", str(cache)]  # fmt: skip
        # Every job (the vector extraction first) runs 3 s: the client is killed within ~0.1 s of
        # its first batch's submission, and the restart below forgets that job while in flight.
        srv.faults.update(run_delay_s=3.0)
        db = cache / "results.sqlite"
        _kill_once_a_batch_is_submitted(fresh_forks, cmd, env, db)
        with sqlite3.connect(db) as c:
            done_before = c.execute("SELECT COUNT(*) FROM batches WHERE status='done'").fetchone()[0]
        srv.faults.update(run_delay_s=0.0)
        srv.restart(lost="forget")
        accepted_before = srv.accepted
        t0 = time.time()
        res = run_cli_forked(fresh_forks, cmd, tmp_path, timeout=200, env=env)
        elapsed = time.time() - t0
        print(f"\nrerun after kill + restart: {elapsed:.0f}s, {srv.accepted - accepted_before} POSTs accepted")
        assert res.returncode == 0, res.stderr
        with sqlite3.connect(db) as c:
            statuses = {r[0] for r in c.execute("SELECT status FROM trials")}
            n_done = c.execute("SELECT COUNT(*) FROM batches WHERE status='done'").fetchone()[0]
    assert statuses == {"done"}
    assert elapsed < 120, f"rerun took {elapsed:.0f}s"
    # The lost batch was resubmitted once, the others submitted once: no duplicates.
    assert srv.accepted - accepted_before == n_done - done_before
    assert "reattached" not in res.stderr


def test_job_queued_past_queue_timeout_is_probed_and_kept_while_the_server_knows_it(server, model_dir, tmp_path):
    """A job sits QUEUED unchanged past `queue_timeout_s`: the executor asks the server, which
    still lists it and the model, so it keeps waiting (no second POST). Once the server forgets it
    (restart; NDIF then answers 500 for the id) it is resubmitted."""
    import threading

    opts = _opts(tmp_path / "c", server.url, queue_timeout_s=0.3, stale_probe_s=0.5)
    small = dict(concepts=("Dust",), strengths=(2.0,), controls=0)
    assert runner.run(_spec(model_dir, samples=1, **small), opts).complete  # vectors cached
    server.reset_counters()
    server.faults.update(drop_after_submit="hang", unknown_id_status=500)
    seen = {}

    def forget_later():
        time.sleep(2.0)  # several queue_timeout probes while the server still knows the job
        seen["accepted"] = server.accepted
        server.faults.update(drop_after_submit=None)
        server.restart(lost="forget")

    threading.Thread(target=forget_later, daemon=True).start()
    rep = runner.run(_spec(model_dir, samples=2, **small), opts)
    assert rep.complete
    assert seen["accepted"] == 1  # waited on the queued job: no resubmission while it was known
    assert server.accepted == 2 and server.completed == 1
