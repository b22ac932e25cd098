"""A loopback NDIF server that the real nnsight 0.8.1 client talks to over real HTTP on 127.0.0.1.

It speaks the wire protocol of the installed client (``nnsight/intervention/backends/remote.py``):
the client serializes a trace exactly as it would for NDIF, POSTs it here, and polls or streams the
result back; this server rebuilds the request with nnsight's own ``RequestModel.deserialize`` and
runs it on a real (tiny) model, the way ``LocalSimulationBackend`` does in-process. Nothing in the
client is mocked, so a test or benchmark against it exercises serialization, the HTTP round trips,
result decoding, and every failure path our executor has to classify. Faults are switchable while
the server runs (see `Faults`), and counters (`LoopbackNDIF.requests`, ``.polls``,
``.result_bytes``, ...) let a benchmark report round trips per 1,000 trials.

Endpoints (stdlib ``ThreadingHTTPServer``, one thread per connection, one worker thread that runs
jobs in submission order, like one model replica):

- ``POST /request``: multipart form ``data`` (JSON ``{model_key, session_id, compress, env}``) and
  file ``blob``; headers ``ndif-api-key``, ``nnsight-version``, ``python-version``. Answers the
  ``ResponseModel`` JSON ``{id, status: "RECEIVED", description, ...}``; 401 / 400 / 5xx carry
  ``{"detail": ...}``, which the client folds into ``RemoteError("Failed to send request: <detail>")``.
- ``GET /response/{id}``: for an unknown id 500 by default, as real NDIF answers, or, with
  ``Faults.unknown_id_status=404``, a 404 (other servers; the client reads that as "not yet");
  else the job's latest ``ResponseModel`` (``Faults.poll_fault_rate``: a share answer 502). A
  COMPLETED response's ``data`` is the URL ``{url}/result/{id}``: a non-blocking poll parses the
  body as JSON, so the result cannot ride inline there, and the client streams the URL with a GET.
  With ``Faults.result_url_ttl_s`` it is instead an object-store URL
  ``{url}/objects/results/{id}.pt?X-Amz-Date=..&X-Amz-Expires=..`` signed when the job completed,
  which answers 403 AccessDenied (S3's XML) once expired, as NDIF's presigned links do after 2 h.
- ``GET /result/{id}``: the result blob: ``torch.save({name: value})``, zstd-compressed when the
  request said ``compress`` (the client's ``finalize`` decompresses, then ``torch.load``).

Real-service behaviours (ndif-team/ndif; see `remote_introspect.execution.backends.ndif` for file and
commit): the version rule (client nnsight >= the server's, client Python major.minor >= the
server's, else HTTP 400) is on by default; `restart` loses queued and running jobs (``lost=
"forget"`` drops them, ``"freeze"`` leaves their last status readable forever, as NDIF's object
store does); ``Faults.running_cap_s`` ends a job RUNNING too long with "Job took longer than
timeout: N seconds"; ``Faults.missing_endpoints`` answers 404 for ``/env`` etc.;
``Faults.warm_models`` reports a deployment WARM.
- ``GET /subscribe`` (websocket; only for ``blocking=True``): first frame ``{"session_id": ...}``,
  then one frame per status. A COMPLETED result up to ``inline_limit`` bytes rides inline as a
  binary frame (a pickled ``ResponseModel`` whose ``data`` is the blob), larger ones as a URL.
- ``GET /status`` (the shape ``nnsight.ndif.status()`` folds: ``{"deployments": {name: {model_key,
  repo_id, revision, task, deployment_level, application_state}}}``), ``GET /env`` (``{python_version,
  packages}``, as ``nnsight.ndif.get_remote_env()`` reads it), ``GET /ping`` (``"pong"``),
  ``GET /whoami`` (``{email, tags}``).

Pointing the client at it (verified against 0.8.1's ``Remotable._remote_backend`` and
``RemoteBackend.__init__``):

- ``remote=server.url`` on ``trace`` / ``generate`` / ``session`` overrides the host for that call
  (a string other than ``"local"`` is a host URL). Setting ``nnsight.CONFIG.API.HOST = server.url``
  works too and is what a bare ``RemoteBackend(...)`` falls back to; so does ``host=server.url``.
- The API key is read from ``nnsight.CONFIG.API.APIKEY`` when the backend is built; ``trace()``
  takes no key argument (``RemoteBackend(api_key=...)`` does).

Non-blocking submit, poll, reattach (what the executor uses)::

    from nnsight.intervention.backends.remote import RemoteBackend, RemoteError

    with LoopbackNDIF({model_key_for_dir(path): path}) as server:
        nnsight.CONFIG.API.APIKEY = "test-key"          # default accepted key
        model = client_model_for_dir(path)               # meta model: no weights loaded here
        with model.trace("Hello", remote=server.url, blocking=False) as tracer:
            hidden = model.model.layers[0].output.save()
        job_id = tracer.backend.job_id                   # submit happened on __exit__
        result = None
        while result is None:                            # None: not finished, or id unknown (404)
            result = tracer.backend()                    # GET /response/{id}; RemoteError on ERROR
            time.sleep(0.05)
        hidden = result["hidden"]                        # saves come back as {variable name: value}
        # From a bare id (another process, after a crash); host= or CONFIG.API.HOST:
        backend = RemoteBackend(model.to_model_key(), host=server.url, job_id=job_id, blocking=False)
        result = backend()                               # same poll; backend.status = last status

Model keys: the client's ``model.to_model_key()`` is
``nnsight.modeling.transformers.TransformersModel:{"repo_id": <repo id>, "revision": null, "task":
"text-generation"}``. For a local directory the repo id is the path string as given, but minting
the key first asks the Hub to canonicalise it (``HfApi().model_info``), which rejects a path; so
`client_model_for_dir` pre-seeds ``nnsight.modeling.huggingface._ID_CACHE[path] = path``, and
`model_key_for_dir` builds the same string without a model. Keys are matched as parsed JSON, so
spacing and key order do not matter.

Cached sources: a real NDIF worker reuses one process, and nnsight memoises block sources per
*filename* (``nnsight.tracing.globals.SOURCES`` / ``BLOCKS``), so the second request from the same
client file would look up a nested ``invoke`` in the first request's source and fail with
``WithBlockNotFoundError`` unless the caches are cleared between requests. Here the server usually
shares a process with the client, where clearing the client's own entries (or letting
``deserialize`` overwrite the file's ``linecache`` entry, as it does) would break the client's next
trace. So each job is compiled under a job-unique filename (through ``deserialize``'s ``unpickler``
hook), and that filename's ``SOURCES`` / ``BLOCKS`` / ``linecache`` entries are dropped after the
job: every request starts from clean caches, and the client's entries are never touched.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import linecache
import queue
import random
import select
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# -- texts the real service sends (NDIF source / shared/NDIF.md) ------------------------------------

#: Transient job errors: retry with backoff.
EVICTED = "Model deployment evicted. Please try again later."
PREEMPTED = "Your job was cancelled or preempted by the server."
CONNECTION_LOST = "Connection lost to compute backend. Please retry."
TRANSIENT_ERRORS: tuple[str, ...] = (EVICTED, PREEMPTED, CONNECTION_LOST)
#: Fatal job errors: do not retry. (Newer NDIF says "not pinned" instead of "not dedicated" and
#: appends " See https://nnsight.net/status/ ..."; classify by prefix.)
NOT_DEDICATED = "Model is not dedicated and hotswapping is not supported for this API key"
CANNOT_ACCOMMODATE = "Model deployment cannot be accomodated"  # sic, as the server spells it
FATAL_ERRORS: tuple[str, ...] = (NOT_DEDICATED, CANNOT_ACCOMMODATE)
#: Neither: the batch was too big for the execution timeout; split it and resubmit.
JOB_TIMEOUT = "Job took longer than timeout"
#: HTTP ``detail`` bodies, worded as NDIF's API (``dependencies.py``) words them.
INVALID_KEY_DETAIL = "Missing or invalid API key. Please visit https://login.ndif.us/ to create a new one."
UNAVAILABLE_DETAIL = (
    "Service temporarily unavailable: compute backend is reconnecting. Please try again in a few minutes."
)
#: In `Faults.transient_kinds`: a transient fault that answers the submit with HTTP 503 instead of
#: ending the job with an ERROR text.
HTTP_503 = "HTTP 503"

DEFAULT_API_KEY = "test-key"
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 handshake constant
_CHUNK = 128 * 1024


def _installed(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return ""


# -- model keys and models for a local HF directory ------------------------------------------------


def model_key_for_dir(path: str | Path, task: str = "text-generation") -> str:
    """The key a client `TransformersModel(str(path), task=task)` sends, built without a model.

    Mirrors ``TransformersModel._remoteable_model_key`` (repo id, revision, resolved task); the
    revision is ``None`` because a local directory has none.
    """
    data = {"repo_id": str(path), "revision": None, "task": task}
    return f"nnsight.modeling.transformers.TransformersModel:{json.dumps(data)}"


def client_model_for_dir(path: str | Path, task: str = "text-generation", **kwargs: Any) -> Any:
    """A meta-device (weightless) nnsight model for a local HF directory, ready for ``remote=``.

    ``tokenizer=`` is always passed: with transformers >= 5.23 the lazy (meta) build cannot guess a
    tokenizer by itself. ``task=`` is required because transformers infers a task from the Hub, which
    rejects a path. The Hub lookup that ``to_model_key()`` does is pre-empted by seeding
    ``_ID_CACHE``, so no network is touched.
    """
    from nnsight import TransformersModel
    from nnsight.modeling.huggingface import _ID_CACHE
    from transformers import AutoTokenizer

    path = str(path)
    _ID_CACHE.setdefault(path, path)
    kwargs.setdefault("tokenizer", AutoTokenizer.from_pretrained(path))
    return TransformersModel(path, task=task, **kwargs)


def server_model_for_dir(path: str | Path, task: str = "text-generation", **kwargs: Any) -> Any:
    """The same directory loaded for real (``dispatch=True``), as the server runs it."""
    kwargs.setdefault("dispatch", True)
    return client_model_for_dir(path, task=task, **kwargs)


def _parse_key(model_key: str) -> tuple[str, Any]:
    """``(import path, parsed suffix)``: equal for keys that differ only in JSON spacing/order."""
    import_path, _, suffix = model_key.partition(":")
    try:
        return import_path, json.loads(suffix)
    except ValueError:
        return import_path, suffix


# -- faults ----------------------------------------------------------------------------------------


@dataclass
class Faults:
    """Switchable failure modes; set attributes while the server runs (assignments take a lock).

    Decisions that read several fields go through the lock too, so a test flipping a switch from
    another thread never sees half an update. ``fault_rate`` draws from a seeded RNG in submission
    order, so a run with the same submissions fails the same requests.
    """

    reject_auth: bool = False  #: every POST /request (and /subscribe) answers 401
    version_mismatch: bool = False  #: every POST /request answers 400 "incompatible nnsight"
    submit_status: int | None = None  #: every POST /request answers this HTTP status (e.g. 503)
    job_error: str | None = None  #: every job ends ERROR with this description
    job_errors: list[str] = field(default_factory=list)  #: the next jobs end ERROR with these, FIFO
    timeout_rows: int | None = None  #: a job whose forward sees > N batch rows ends JOB_TIMEOUT
    queue_delay_s: float = 0.0  #: a job sits QUEUED this long before RUNNING
    run_delay_s: float = 0.0  #: a job stays RUNNING at least this long
    drop_after_submit: str | None = None  #: "hang": stays QUEUED forever; "forget": never stored (404)
    #: a blocking client's websocket goes away right after the submit: True/"cut" drops the TCP
    #: connection, "close" sends a websocket close frame first
    drop_websocket: bool | str = False
    unavailable_models: frozenset[str] = frozenset()  #: keys reported COLD and refused (fatal text)
    #: keys reported WARM (cached off the GPUs; the next request brings them back) and not
    #: RUNNING; requests still run
    warm_models: frozenset[str] = frozenset()
    fault_rate: float = 0.0  #: this share of submissions fails transiently ...
    transient_kinds: tuple[str, ...] = TRANSIENT_ERRORS  #: ... as one of these (texts or HTTP_503)
    seed: int = 0  #: seeds the fault_rate RNG (re-seeded when assigned)
    #: GET /response/{id} for an id the server does not know: 500, as NDIF answers
    #: (``BackendResponseModel.load`` -> S3 NoSuchKey, unhandled in ``app.py``); 404 (opt in) is
    #: what other servers answer, which the client reads as "not yet".
    unknown_id_status: int = 500
    poll_fault_rate: float = 0.0  #: this share of GET /response answers 502 (a proxy blip)
    #: COMPLETED results are served from a separate object-store path by a URL signed when the
    #: job completes and valid this long; afterwards the URL answers 403 AccessDenied (S3's
    #: presigned-URL expiry; NDIF signs for 2 h). None: the plain ``/result/{id}`` route.
    result_url_ttl_s: float | None = None
    #: a job RUNNING longer than this ends ERROR with NDIF's execution-timeout text
    running_cap_s: float | None = None
    #: GET paths (e.g. ``{"/env", "/whoami"}``) this server answers 404, as an older or other
    #: NDIF-compatible deployment may
    missing_endpoints: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lock", threading.RLock())
        object.__setattr__(self, "_rng", random.Random(self.seed))
        object.__setattr__(self, "_poll_rng", random.Random(self.seed + 1))

    def __setattr__(self, name: str, value: Any) -> None:
        if "_lock" not in self.__dict__:  # still inside the dataclass __init__
            object.__setattr__(self, name, value)
            return
        with self._lock:
            object.__setattr__(self, name, value)
            if name == "seed":
                object.__setattr__(self, "_rng", random.Random(value))
                object.__setattr__(self, "_poll_rng", random.Random(value + 1))

    def update(self, **changes: Any) -> None:
        """Set several switches atomically."""
        with self._lock:
            for name, value in changes.items():
                if name not in self.__dataclass_fields__:
                    raise AttributeError(f"unknown fault {name!r}")
                setattr(self, name, value)

    def clear(self) -> None:
        """Back to a healthy server (the RNG is re-seeded with the current seed)."""
        with self._lock:
            fresh = Faults(seed=self.seed)
            for name in self.__dataclass_fields__:
                setattr(self, name, getattr(fresh, name))

    def poll_fails(self) -> bool:
        """Whether this GET /response answers 502 (draws from a second seeded RNG)."""
        with self._lock:
            return self.poll_fault_rate > 0 and self._poll_rng.random() < self.poll_fault_rate

    def plan_submission(self) -> tuple[str | None, str | None]:
        """``(HTTP_503 or None, ERROR text the job must end with or None)`` for one submission."""
        with self._lock:
            if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
                kind = self._rng.choice(self.transient_kinds)
                return (HTTP_503, None) if kind == HTTP_503 else (None, kind)
            if self.job_errors:
                return None, self.job_errors.pop(0)
            return None, self.job_error


# -- jobs ------------------------------------------------------------------------------------------


@dataclass
class _Job:
    id: str
    model_key: str
    blob: bytes
    compress: bool
    env: dict
    session_id: str
    planned_error: str | None
    hang: bool = False  # fault "hang": goes QUEUED, then never runs
    status: str = "RECEIVED"
    description: str = "Your job has been received and is waiting to be queued."
    result: bytes | None = None
    meta: dict | None = None
    signed_at: float | None = None  # when the result URL was signed (object-store expiry)


class _Recorder(dict):
    """The restored frame's locals; remembers what the outermost trace pushed back (the saves).

    ``nnsight.tracing.util.push`` writes results into ``frame.f_locals`` with ``update``; for a
    ``SerializedFrame`` that is this plain-dict subclass, so the override sees exactly the values
    ``push_result`` let through (only ``.save()``-marked ones at depth 1).
    """

    def __init__(self, initial: Mapping[str, Any]) -> None:
        super().__init__(initial)
        self.pushed: dict[str, Any] = {}

    def update(self, other: Any = (), /, **kwargs: Any) -> None:  # type: ignore[override]
        values = dict(other, **kwargs)
        self.pushed.update(values)
        super().update(values)


class _JobTimeout(Exception):
    """Raised from the row-counting hook to abort a job that breaches `Faults.timeout_rows`."""


# -- the server ------------------------------------------------------------------------------------

ModelSpec = Any  # a loaded nnsight model, a zero-arg factory returning one, or a local dir path


class LoopbackNDIF:
    """An NDIF-protocol server on 127.0.0.1 in background threads; use as a context manager.

    Args:
        models: model key -> a loaded nnsight model, a zero-arg factory returning one (called on
            first use, in the worker thread), or a local HF directory (loaded with
            `server_model_for_dir`). A key may also be given as a bare directory path, which is
            turned into `model_key_for_dir(path)`. Give the server its own model instances: the
            client's models are meta skeletons, and sharing one object between client and worker
            would interleave two traces on one envoy tree.
        api_keys: accepted keys (or key -> email for ``/whoami``); ``None`` accepts any key,
            including none (NDIF's dev mode).
        min_nnsight_version: clients below it get HTTP 400 (the real check is a minimum, not an
            exact match). ``"server"`` (default) = the server's own nnsight, as NDIF's
            ``AppConfig.min_nnsight_version`` defaults to its installed version
            (ndif-team/ndif ``src/services/api/src/config.py`` @14c5ae16); ``None`` disables it.
        min_python_version: the same rule for the client's Python major.minor (``python-version``
            header); ``"server"`` (default) = `server_python_version`'s; ``None`` disables it.
        server_nnsight_version: reported by ``/env``; defaults to the installed nnsight.
        server_python_version: reported by ``/env`` (``sys.version`` format); defaults to ours.
        port: 0 picks a free port.
        inline_limit: largest result (bytes) sent inline on the websocket; larger ones go by URL.
        keep_results: keep a result after it is downloaded (NDIF's presigned URLs last ~2 h, so a
            reattaching client can fetch it again); ``False`` frees it on first download.
        preload: load every model on `start` rather than on its first request.
    """

    #: Deserialize requests under NDIF's import whitelist (testing/ndif_protected_env.py), as the
    #: real server does; a request that imports anything else fails with NDIF's ImportError.
    protected_env: bool = False

    def __init__(
        self,
        models: Mapping[str, ModelSpec],
        *,
        api_keys: Iterable[str] | Mapping[str, str] | None = (DEFAULT_API_KEY,),
        min_nnsight_version: str | None = "server",
        min_python_version: str | None = "server",
        server_nnsight_version: str | None = None,
        server_python_version: str | None = None,
        port: int = 0,
        inline_limit: int = 1 << 20,
        keep_results: bool = True,
        preload: bool = False,
        faults: Faults | None = None,
    ) -> None:
        self._specs: dict[str, ModelSpec] = {}
        for key, spec in models.items():
            self._specs[key if ":" in key else model_key_for_dir(key)] = spec
        self._loaded: dict[str, Any] = {}
        if api_keys is None:
            self.api_keys: dict[str, str] | None = None
        elif isinstance(api_keys, Mapping):
            self.api_keys = dict(api_keys)
        else:
            self.api_keys = {key: f"{key}@loopback.invalid" for key in api_keys}
        self.server_nnsight_version = server_nnsight_version or _installed("nnsight")
        self.server_python_version = server_python_version or sys.version
        self.min_nnsight_version = (
            self.server_nnsight_version if min_nnsight_version == "server" else min_nnsight_version
        )
        self.min_python_version = (
            ".".join(self.server_python_version.split()[0].split(".")[:2])
            if min_python_version == "server"
            else min_python_version
        )
        self.inline_limit = inline_limit
        self.keep_results = keep_results
        self.preload = preload
        self.faults = faults if faults is not None else Faults()

        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.RLock()
        self._jobs: dict[str, _Job] = {}
        self._sessions: dict[str, queue.Queue[tuple[str, Any] | None]] = {}
        self._fail_next_with: str | None = None
        self._stopping = threading.Event()
        self.reset_counters()

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> LoopbackNDIF:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LoopbackNDIF:
        if self.preload:
            for key in self._specs:
                self._model(key)
        self._stopping.clear()
        # A fresh queue (a previous stop() left its sentinel in the old one), holding whatever was
        # still waiting when the server stopped, so start() after stop() resumes rather than hangs.
        self._queue = queue.Queue()
        with self._lock:
            for job in self._jobs.values():
                if job.status in ("RECEIVED", "QUEUED") and not job.hang:
                    self._queue.put(job.id)
        self._listen()
        self._worker = threading.Thread(target=self._work, name="ndif-loopback-worker", daemon=True)
        self._worker.start()
        return self

    def stop(self) -> None:
        """Stop listening, end websocket sessions and the worker; safe to call twice."""
        self._stopping.set()
        self._unlisten()
        with self._lock:
            for session in self._sessions.values():
                session.put(None)
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout=30)
            self._worker = None

    def _listen(self) -> None:
        # HTTPServer sets SO_REUSEADDR, so after refuse_connections() the same port binds again.
        httpd = ThreadingHTTPServer(("127.0.0.1", self._port), _Handler)
        httpd.daemon_threads = True
        httpd.loopback = self  # type: ignore[attr-defined]
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._serve_thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="ndif-loopback-http", daemon=True
        )
        self._serve_thread.start()

    def _unlisten(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._serve_thread is not None:
            self._serve_thread.join(timeout=10)
        self._httpd = None
        self._serve_thread = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # -- operator actions (faults that are actions, not switches) -------------------------------

    def refuse_connections(self, refuse: bool = True) -> None:
        """Close (or reopen) the listening socket: new connections get ECONNREFUSED meanwhile."""
        if refuse:
            self._unlisten()
        elif self._httpd is None:
            self._listen()

    def restart(self, first_request_error: str | None = None, lost: str = "forget") -> None:
        """Restart: every queued or running job is lost, as NDIF's in-memory queues are.

        ``lost="forget"``: the server forgets every job (finished ones too); polls then answer
        `Faults.unknown_id_status`. ``lost="freeze"``: NDIF's statuses live in the object store,
        which survives the restart, so a lost job keeps its last status (QUEUED, RUNNING) forever
        and never runs; finished jobs stay collectable.
        ``first_request_error``: the next submission ends ERROR with this text, as NDIF's first
        request after a backend restart does (e.g. `CONNECTION_LOST`).
        """
        if lost not in ("forget", "freeze"):
            raise ValueError(f"lost must be 'forget' or 'freeze', not {lost!r}")
        with self._lock:
            if lost == "forget":
                self._jobs.clear()
            else:
                for job_id, job in list(self._jobs.items()):
                    if job.status not in ("COMPLETED", "ERROR"):
                        # A new object: the running one's later updates fail the identity check.
                        self._jobs[job_id] = dataclasses.replace(job, hang=True, blob=b"")
            self._fail_next_with = first_request_error
        # Drop what was queued; a job already running finds itself gone from _jobs when it
        # reports back, so its result is discarded too.
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break

    # -- counters -------------------------------------------------------------------------------

    def reset_counters(self) -> None:
        with self._lock:
            self.requests = 0  #: POST /request received (round trips that submit), rejected ones too
            self.accepted = 0  #: submissions that got a job id
            self.polls = 0  #: GET /response/{id}
            self.downloads = 0  #: GET /result/{id} served
            self.result_bytes = 0  #: result bytes sent (downloads + inline websocket frames)
            self.subscriptions = 0  #: websocket /subscribe sessions opened
            self.completed = 0  #: jobs COMPLETED
            self.gets = 0  #: every GET (preflight, polls, downloads, websocket upgrades)
            self.http_requests = 0  #: every POST (accepted or not)
            self.failed = 0  #: jobs ended ERROR
            self.max_rows_seen = 0  #: largest batch (rows) any forward saw
            self.upload_bytes = 0  #: payload (``blob``) bytes received with POST /request
            self.poll_errors = 0  #: GET /response answered 502 by `Faults.poll_fault_rate`
            self.expired_downloads = 0  #: result downloads refused because the URL had expired

    @property
    def round_trips(self) -> int:
        """Client-initiated HTTP exchanges: submits + polls + result downloads + websocket opens."""
        with self._lock:
            return self.requests + self.polls + self.downloads + self.subscriptions

    def counters(self) -> dict[str, int]:
        with self._lock:
            names = (
                "requests accepted polls downloads result_bytes subscriptions completed failed max_rows_seen gets "
                "http_requests upload_bytes poll_errors expired_downloads"
            ).split()
            return {name: getattr(self, name) for name in names} | {"round_trips": self.round_trips}

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    # -- state for the handlers -----------------------------------------------------------------

    def job_status(self, job_id: str) -> str | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else job.status

    def status_payload(self) -> dict[str, Any]:
        unavailable = self.faults.unavailable_models
        deployments = {}
        for key in self._specs:
            _, data = _parse_key(key)
            repo_id = data.get("repo_id", key) if isinstance(data, dict) else key
            cold = key in unavailable
            warm = not cold and key in self.faults.warm_models
            deployments[key] = {
                "model_key": key,
                "repo_id": repo_id,
                "revision": data.get("revision") if isinstance(data, dict) else None,
                "task": data.get("task") if isinstance(data, dict) else None,
                "deployment_level": "COLD" if cold else ("WARM" if warm else "HOT"),
                "application_state": "NOT_STARTED" if cold or warm else "RUNNING",
            }
        return {"deployments": deployments}

    def env_payload(self) -> dict[str, Any]:
        packages = {name: _installed(name) for name in ("torch", "transformers", "zstandard")}
        packages["nnsight"] = self.server_nnsight_version
        return {"python_version": self.server_python_version, "packages": packages}

    def _resolve_key(self, model_key: str) -> str | None:
        if model_key in self._specs:
            return model_key
        wanted = _parse_key(model_key)
        for key in self._specs:
            if _parse_key(key) == wanted:
                return key
        return None

    def _model(self, key: str) -> Any:
        with self._lock:
            model = self._loaded.get(key)
        if model is not None:
            return model
        spec = self._specs[key]
        if isinstance(spec, (str, Path)):
            _, data = _parse_key(key)
            task = data.get("task", "text-generation") if isinstance(data, dict) else "text-generation"
            model = server_model_for_dir(spec, task=task)
        elif callable(spec) and not hasattr(spec, "to_model_key"):
            model = spec()
        else:
            model = spec
        with self._lock:
            self._loaded.setdefault(key, model)
            return self._loaded[key]

    # -- submission -----------------------------------------------------------------------------

    def submit(self, meta: dict[str, Any], blob: bytes) -> _Job | None:
        """Record a validated submission; ``None`` when the fault "forget" swallows it."""
        http_fault, planned = self.faults.plan_submission()
        if http_fault is not None:
            raise _HTTPFault(HTTPStatus.SERVICE_UNAVAILABLE, UNAVAILABLE_DETAIL)
        with self._lock:
            self.accepted += 1
            if self._fail_next_with is not None and planned is None:
                planned, self._fail_next_with = self._fail_next_with, None
            model_key = str(meta.get("model_key", ""))
            key = self._resolve_key(model_key)
            if planned is None and (key is None or key in self.faults.unavailable_models):
                planned = (
                    f"{NOT_DEDICATED}. See https://nnsight.net/status/ for a list of scheduled models. "
                    f"(loopback: no deployment for {model_key!r})"
                )
            job = _Job(
                id=str(uuid.uuid4()),
                model_key=key or model_key,
                blob=blob,
                compress=bool(meta.get("compress", False)),
                env=dict(meta.get("env") or {}),
                session_id=str(meta.get("session_id") or ""),
                planned_error=planned,
            )
            drop = self.faults.drop_after_submit
            if drop == "forget":
                return job  # answered RECEIVED with an id, never stored: every poll is a 404
            job.hang = drop == "hang"
            self._jobs[job.id] = job
        self._queue.put(job.id)
        return job

    def _set_status(self, job: _Job, status: str, description: str, **extra: Any) -> bool:
        """Record (and stream) a status; ``False`` if the job was forgotten by a restart."""
        with self._lock:
            if self._jobs.get(job.id) is not job:
                return False
            job.status, job.description = status, description
            for name, value in extra.items():
                setattr(job, name, value)
            session = self._sessions.get(job.session_id) if job.session_id else None
            # A snapshot, not the job: the worker may move on before the handler sends this one.
            snapshot = (job.id, job.status, job.description, job.result, job.meta)
        if session is not None:
            session.put(("status", snapshot))
        return True

    def response_json(self, job: _Job) -> str:
        from nnsight.schema.response import ResponseModel

        data = self.result_url(job) if job.status == "COMPLETED" else None
        return ResponseModel(
            id=job.id, status=job.status, description=job.description, data=data, meta=job.meta
        ).model_dump_json()

    def result_url(self, job: _Job) -> str:
        """Where a COMPLETED job's result is fetched: ``/result/{id}``, or, with
        `Faults.result_url_ttl_s`, an object-store URL signed once, when the job completed."""
        if self.faults.result_url_ttl_s is None:
            return f"{self.url}/result/{job.id}"
        signed = job.signed_at if job.signed_at is not None else time.time()
        return (
            f"{self.url}/objects/results/{job.id}.pt?X-Amz-Date={signed:.3f}"
            f"&X-Amz-Expires={self.faults.result_url_ttl_s}"
        )

    def take_object(self, job_id: str, query: str) -> bytes | int:
        """The object-store route: the result blob, or 403 once the signature has expired."""
        params = dict(item.partition("=")[::2] for item in query.split("&") if item)
        try:
            expires_at = float(params["X-Amz-Date"]) + float(params["X-Amz-Expires"])
        except (KeyError, ValueError):
            return 403
        if time.time() > expires_at:
            self._count("expired_downloads")
            return 403
        blob = self.take_result(job_id)
        return 404 if blob is None else blob

    def take_result(self, job_id: str) -> bytes | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.result is None:
                return None
            blob = job.result
            if not self.keep_results:
                job.result = None
            self.downloads += 1
            self.result_bytes += len(blob)
            return blob

    # -- the worker -----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None or self._stopping.is_set():
                return
            with self._lock:
                job = self._jobs.get(job_id)
            if job is None:
                continue  # forgotten by a restart
            try:
                self._run(job)
            except Exception:  # the worker must survive anything a job does
                self._finish_error(job, traceback.format_exc())

    def _sleep(self, seconds: float, job: _Job) -> bool:
        """Wait, but give up early if the server stops or forgets the job."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._stopping.wait(min(0.02, max(0.0, deadline - time.monotonic()))):
                return False
            with self._lock:
                if self._jobs.get(job.id) is not job:
                    return False
        return True

    def _run(self, job: _Job) -> None:
        with self._lock:
            position = self._queue.qsize() + 1
        if not self._set_status(job, "QUEUED", f"Moved to position {position} in Queue.") or job.hang:
            return
        if not self._sleep(self.faults.queue_delay_s, job):
            return
        if job.planned_error is not None:
            self._finish_error(job, job.planned_error)
            return
        if not self._set_status(job, "RUNNING", "Your job has started running."):
            return
        started = time.monotonic()
        cap = self.faults.running_cap_s
        if cap is not None and self.faults.run_delay_s > cap:
            # NDIF's model actor waits `execution_timeout` seconds, then kills the job
            # (ray/deployments/modeling/base.py @02758d7c).
            if self._sleep(cap, job):
                self._finish_error(job, f"{JOB_TIMEOUT}: {cap} seconds")
            return
        try:
            saves = self._execute(job)
            job.blob = b""  # the payload is spent; a long benchmark should not hold every one
        except _JobTimeout:
            self._finish_error(job, JOB_TIMEOUT)
            return
        except Exception as error:
            # NDIF sends the formatted exception; the client raises RemoteError(description).
            self._finish_error(job, _describe(error))
            return
        import torch

        buffer = io.BytesIO()
        torch.save(saves, buffer, pickle_protocol=4)
        blob = buffer.getvalue()
        if job.compress:
            import zstandard

            blob = zstandard.ZstdCompressor(level=6).compress(blob)
        if not self._sleep(self.faults.run_delay_s - (time.monotonic() - started), job):
            return
        meta = {"loopback": {"execute_s": round(time.monotonic() - started, 6), "result_bytes": len(blob)}}
        signed = time.time()
        if self._set_status(
            job, "COMPLETED", "Your job has been completed.", result=blob, meta=meta, signed_at=signed
        ):
            self._count("completed")

    def _finish_error(self, job: _Job, description: str) -> None:
        if self._set_status(job, "ERROR", description):
            self._count("failed")

    def _execute(self, job: _Job) -> dict[str, Any]:
        """Deserialize and run one request on the server model; return ``{name: saved value}``."""
        from nnsight.intervention.serialization import CustomCloudUnpickler
        from nnsight.schema.request import RequestModel
        from nnsight.tracing import globals as nnsight_globals
        from nnsight.tracing.tracer import dec, inc

        model = self._model(job.model_key)
        unique = f"<ndif-loopback {job.id}>"

        base: type = CustomCloudUnpickler
        if self.protected_env:  # NDIF's deserialization sandbox, see testing/ndif_protected_env.py
            from remote_introspect.testing.ndif_protected_env import protected_unpickler

            base = protected_unpickler(CustomCloudUnpickler)

        class _Unpickler(base):  # type: ignore[misc, valid-type]
            # deserialize() compiles the block under tracer.info.frame.f_code.co_filename and
            # registers it in linecache there; renaming it here, before that happens, gives the
            # job fresh SOURCES/BLOCKS entries and leaves the client's file entries alone.
            def load(self) -> Any:
                obj = super().load()
                code = obj[0].info.frame.f_code
                code.co_filename = f"{unique} {code.co_filename}"
                return obj

        tracer = RequestModel.deserialize(
            job.blob, model._remoteable_persistent_objects(), job.compress, unpickler=_Unpickler
        )
        frame = tracer.info.frame
        filename = frame.f_code.co_filename
        recorder = _Recorder(frame.f_locals)
        frame.f_locals = recorder

        # Rows per forward, for the timeout fault and max_rows_seen; raising from the hook aborts
        # the job at its first oversized forward instead of after it.
        limit = self.faults.timeout_rows

        def count_rows(_module: Any, args: tuple, kwargs: dict) -> None:
            rows = _batch_rows(args, kwargs)
            with self._lock:
                self.max_rows_seen = max(self.max_rows_seen, rows)
            if limit is not None and rows > limit:
                raise _JobTimeout(rows)

        handle = model._module.register_forward_pre_hook(count_rows, with_kwargs=True)
        timed_out = False
        try:
            model._remoteable_set_env(job.env)
            # The client's Tracer.__exit__ brackets the backend call with inc()/dec(): save() refuses
            # to run at depth 0, and push_result filters to saved values only at depth 1.
            inc()
            try:
                tracer.execute(tracer.info.code)
            except Exception as error:
                timed_out = _caused_by(error, _JobTimeout)
                if not timed_out:
                    raise
            finally:
                dec()
        finally:
            handle.remove()
            linecache.cache.pop(filename, None)
            nnsight_globals.SOURCES.pop(filename, None)
            for key in [key for key in list(nnsight_globals.BLOCKS) if key[0] == filename]:
                nnsight_globals.BLOCKS.pop(key, None)
        if timed_out:
            raise _JobTimeout()
        return recorder.pushed

    # -- websocket sessions ---------------------------------------------------------------------

    def open_session(self) -> tuple[str, queue.Queue]:
        session_id = uuid.uuid4().hex
        outbox: queue.Queue = queue.Queue()
        with self._lock:
            self._sessions[session_id] = outbox
            self.subscriptions += 1
        return session_id, outbox

    def close_session(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def ws_frame(self, snapshot: tuple) -> tuple[int, bytes]:
        """One status as a websocket frame ``(opcode, payload)``; a small result rides inline."""
        from nnsight.schema.response import ResponseModel

        job_id, status, description, result, meta = snapshot
        if status == "COMPLETED" and result is not None and len(result) <= self.inline_limit:
            self._count("result_bytes", len(result))
            response = ResponseModel(
                id=job_id, status=status, description=description, data=result, meta=meta
            )
            return 0x2, response.pickle()
        data = f"{self.url}/result/{job_id}" if status == "COMPLETED" else None
        response = ResponseModel(id=job_id, status=status, description=description, data=data, meta=meta)
        return 0x1, response.model_dump_json().encode()


def _describe(error: BaseException) -> str:
    """The formatted exception, minus this module's and nnsight's own frames (server plumbing)."""
    from nnsight.tracing.util import _INTERNAL, filter_traceback

    def keep(frame: Any) -> bool:
        filename = frame.f_code.co_filename
        return filename != __file__ and not filename.startswith(_INTERNAL)

    tb = filter_traceback(error.__traceback__, keep)
    return "".join(traceback.format_exception(type(error), error, tb)).rstrip()


def _batch_rows(args: tuple, kwargs: dict) -> int:
    for name in ("input_ids", "inputs_embeds"):
        value = kwargs.get(name)
        if value is not None and hasattr(value, "shape"):
            return int(value.shape[0])
    for value in args:
        if hasattr(value, "shape") and len(value.shape) > 0:
            return int(value.shape[0])
    return 0


def _caused_by(error: BaseException | None, kind: type[BaseException]) -> bool:
    """Whether ``kind`` is anywhere in the chain (nnsight may re-wrap errors raised inside a trace)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


class _HTTPFault(Exception):
    def __init__(self, status: HTTPStatus | int, detail: str) -> None:
        super().__init__(detail)
        self.status = int(status)
        self.detail = detail


# -- HTTP ------------------------------------------------------------------------------------------


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    """Split a multipart/form-data body into ``{field name: raw bytes}``, byte-exact.

    Hand-rolled because the payload is arbitrary binary (the stdlib ``email`` parser works on lines)
    and ``cgi`` is gone from Python 3.13.
    """
    boundary = None
    for item in content_type.split(";"):
        name, _, value = item.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        raise _HTTPFault(HTTPStatus.BAD_REQUEST, "Expected a multipart/form-data request.")
    fields: dict[str, bytes] = {}
    for part in body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter
        head, _, content = part.partition(b"\r\n\r\n")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("content-disposition:"):
                for item in line.split(";"):
                    key, _, value = item.strip().partition("=")
                    if key == "name":
                        fields[value.strip('"')] = content
    return fields


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ndif-loopback"

    @property
    def loopback(self) -> LoopbackNDIF:
        return self.server.loopback  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # tests and benchmarks want a quiet server

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode())

    def _check_key(self) -> None:
        keys = self.loopback.api_keys
        if self.loopback.faults.reject_auth or (
            keys is not None and self.headers.get("ndif-api-key", "") not in keys
        ):
            raise _HTTPFault(HTTPStatus.UNAUTHORIZED, INVALID_KEY_DETAIL)

    def do_POST(self) -> None:
        server = self.loopback
        server._count("http_requests")
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        if self.path.rstrip("/") != "/request":
            self._json(404, {"detail": "Not Found"})
            return
        server._count("requests")
        try:
            # Same order as NDIF's validate_request: key, then client versions, then the backend.
            self._check_key()
            # NDIF's rule (dependencies.py validate_nnsight_version / validate_python_version
            # @134eac98): client nnsight >= the minimum (default: the server's own version), and
            # the client's Python major.minor >= the server's; else HTTP 400 with these texts.
            client_version = self.headers.get("nnsight-version", "")
            minimum = server.min_nnsight_version
            if server.faults.version_mismatch or (
                minimum is not None and _version_tuple(client_version) < _version_tuple(minimum)
            ):
                shown = minimum or server.server_nnsight_version
                raise _HTTPFault(
                    HTTPStatus.BAD_REQUEST,
                    f"Client nnsight version {client_version} is incompatible with the server nnsight "
                    f"version. The minimum supported version is {shown}. Please update nnsight to the "
                    "latest version: `pip install --upgrade nnsight`",
                )
            client_python = ".".join(self.headers.get("python-version", "").split(".")[:2])
            min_python = server.min_python_version
            if min_python is not None and _version_tuple(client_python) < _version_tuple(min_python):
                raise _HTTPFault(
                    HTTPStatus.BAD_REQUEST,
                    f"Client python version {client_python} is incompatible with the server. The minimum "
                    f"supported version is {min_python}. Please update your python version and try again.",
                )
            status = server.faults.submit_status
            if status is not None:
                raise _HTTPFault(status, UNAVAILABLE_DETAIL if status >= 500 else "Rejected by fault.")
            fields = _multipart(self.headers.get("Content-Type", ""), body)
            if "data" not in fields or "blob" not in fields:
                raise _HTTPFault(HTTPStatus.BAD_REQUEST, "Expected form field 'data' and file 'blob'.")
            server._count("upload_bytes", len(fields["blob"]))
            job = server.submit(json.loads(fields["data"]), fields["blob"])
        except _HTTPFault as fault:
            self._json(fault.status, {"detail": fault.detail})
            return
        self._send(200, server.response_json(job).encode())
        if job.session_id and server.faults.drop_websocket:
            with server._lock:
                session = server._sessions.get(job.session_id)
            if session is not None:
                session.put(("drop", server.faults.drop_websocket))

    def do_GET(self) -> None:
        server = self.loopback
        path, _, query = self.path.partition("?")
        path = path.rstrip("/")
        server._count("gets")
        try:
            if path in server.faults.missing_endpoints:
                self._json(404, {"detail": "Not Found"})
            elif path.startswith("/response/"):
                server._count("polls")
                job_id = path[len("/response/") :]
                if server.faults.poll_fails():
                    server._count("poll_errors")
                    self._send(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
                    return
                with server._lock:
                    job = server._jobs.get(job_id)
                    text = None if job is None else server.response_json(job)
                if text is None:
                    status = server.faults.unknown_id_status
                    if status == 500:  # FastAPI's answer to the unhandled S3 NoSuchKey
                        self._send(500, b"Internal Server Error", "text/plain; charset=utf-8")
                    else:
                        self._json(status, {"detail": f"Response {job_id} not found."})
                else:
                    self._send(200, text.encode())
            elif path.startswith("/objects/results/"):
                job_id = path[len("/objects/results/") :].removesuffix(".pt")
                got = server.take_object(job_id, query)
                if isinstance(got, bytes):
                    self._send(200, got, "application/octet-stream")
                else:
                    code, message = (
                        ("AccessDenied", "Request has expired") if got == 403 else ("NoSuchKey", "Not found")
                    )
                    body = (
                        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
                        f"{code}</Code><Message>{message}</Message></Error>"
                    )
                    self._send(got, body.encode(), "application/xml")
            elif path.startswith("/result/"):
                blob = server.take_result(path[len("/result/") :])
                if blob is None:
                    self._json(404, {"detail": "Result not found."})
                else:
                    self._send(200, blob, "application/octet-stream")
            elif path == "/subscribe":
                self._subscribe()
            elif path == "/status":
                self._json(200, server.status_payload())
            elif path == "/env":
                self._json(200, server.env_payload())
            elif path == "/ping":
                self._json(200, "pong")
            elif path == "/whoami":
                keys = server.api_keys
                key = self.headers.get("ndif-api-key", "")
                self._json(200, {"email": None if keys is None else keys.get(key), "tags": []})
            else:
                self._json(404, {"detail": "Not Found"})
        except _HTTPFault as fault:
            self._json(fault.status, {"detail": fault.detail})

    # -- websocket (RFC 6455, just what the websocket-client library needs) ---------------------

    def _subscribe(self) -> None:
        if self.headers.get("Upgrade", "").lower() != "websocket":
            raise _HTTPFault(HTTPStatus.BAD_REQUEST, "Expected a websocket upgrade.")
        self._check_key()
        server = self.loopback
        accept = base64.b64encode(
            hashlib.sha1((self.headers["Sec-WebSocket-Key"] + _WS_GUID).encode()).digest()
        ).decode()
        self.send_response(HTTPStatus.SWITCHING_PROTOCOLS)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        session_id, outbox = server.open_session()
        try:
            self._ws_send(0x1, json.dumps({"session_id": session_id}).encode())
            while True:
                try:
                    item = outbox.get(timeout=0.05)
                except queue.Empty:
                    if self._ws_client_closed():
                        return
                    continue
                if item is None:  # server stopping
                    self._ws_send(0x8, b"")
                    return
                kind, snapshot = item
                if kind == "drop":
                    if snapshot == "close":
                        self._ws_send(0x8, (1001).to_bytes(2, "big"))  # 1001: going away
                    # No close frame for "cut": what a dropped connection looks like to the client.
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                opcode, payload = server.ws_frame(snapshot)
                self._ws_send(opcode, payload)
        except OSError:
            return
        finally:
            server.close_session(session_id)

    def _ws_send(self, opcode: int, payload: bytes) -> None:
        size = len(payload)
        if size < 126:
            header = bytes([0x80 | opcode, size])
        elif size < 1 << 16:
            header = bytes([0x80 | opcode, 126]) + size.to_bytes(2, "big")
        else:
            header = bytes([0x80 | opcode, 127]) + size.to_bytes(8, "big")
        self.wfile.write(header + payload)
        self.wfile.flush()

    def _ws_client_closed(self) -> bool:
        """Read (and drop) whatever the client sent; ``True`` once it closed or hung up."""
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        head = self.rfile.read(2)
        if len(head) < 2:
            return True
        opcode, size = head[0] & 0x0F, head[1] & 0x7F
        if size == 126:
            size = int.from_bytes(self.rfile.read(2), "big")
        elif size == 127:
            size = int.from_bytes(self.rfile.read(8), "big")
        mask = self.rfile.read(4) if head[1] & 0x80 else b""
        payload = self.rfile.read(size)
        if opcode == 0x8:
            self._ws_send(0x8, payload[:2] if mask else b"")
            return True
        if opcode == 0x9:  # ping -> pong with the unmasked payload
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if mask else payload
            self._ws_send(0xA, data)
        return False


__all__ = [
    "CANNOT_ACCOMMODATE",
    "CONNECTION_LOST",
    "DEFAULT_API_KEY",
    "EVICTED",
    "FATAL_ERRORS",
    "HTTP_503",
    "INVALID_KEY_DETAIL",
    "JOB_TIMEOUT",
    "NOT_DEDICATED",
    "PREEMPTED",
    "TRANSIENT_ERRORS",
    "UNAVAILABLE_DETAIL",
    "Faults",
    "LoopbackNDIF",
    "client_model_for_dir",
    "model_key_for_dir",
    "server_model_for_dir",
]
