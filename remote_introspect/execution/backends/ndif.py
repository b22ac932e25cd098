"""Run the package's traces on NDIF (or any server speaking nnsight 0.8.1's remote protocol).

Submission is always non-blocking: the job id comes back from the POST and the runner persists it
BEFORE we wait, so a killed client reattaches instead of resubmitting. We poll `GET /response/{id}`
ourselves (the client's blocking websocket wait has no timeout, and a dropped socket loses a
blocking job) and download the result link separately, so each failure is attributed to the step
that failed. Facts from NDIF's public server source (ndif-team/ndif):

- `GET /response/{id}` loads the status JSON from the object store; an id it does not know raises
  S3 NoSuchKey, unhandled → HTTP 500, not 404 (`src/services/api/src/app.py` @105da734,
  `src/common/schema/mixins.py` @051b7056). Queues live in memory, statuses in the object store:
  a job lost in a restart keeps its last status forever.
- Result links are S3 URLs presigned once, when the job completes, for 2 h (`ExpiresIn=3600 * 2`,
  mixins.py @051b7056); afterwards the object store answers 403 AccessDenied.
- The model actor kills a job after `execution_timeout` ("Job took longer than timeout: N
  seconds", `src/services/ray/src/ray/deployments/modeling/base.py` @02758d7c; 3600 s on NDIF).
- Versions: client nnsight >= `MIN_NNSIGHT_VERSION` (default: the server's own) and client Python
  major.minor >= `MIN_PYTHON_VERSION` (default: the server's own major.minor), else HTTP 400
  (`src/services/api/src/dependencies.py` @134eac98 and its newest stored version, which only wraps
  `validate_request` in a tracing span; `config.py` @14c5ae16, @59237031). The exact-match Python
  rule ("Client python version X does not match server version") is the OLDER dependencies.py
  @6512b9c5 (module-level `MIN_NNSIGHT_VERSION`, before `AppConfig`); we follow the newer one.

Hence:
- a poll that fails (502, connection error, unparsable body) is retried on the SAME job id; it
  never resubmits a job that may still run;
- a job is resubmitted only when the server reports it failed (ERROR), no longer knows it (404/500
  for `stale_probe_s`), has been RUNNING past NDIF's execution cap (`job_timeout_s`, default 3600 s
  + a margin: its status froze in a restart), or has sat unchanged in the queue past
  `queue_timeout_s` AND the server no longer lists the model as deployed, or unchanged in the
  queue past `queue_timeout_s + job_timeout_s` whatever the server lists (a status frozen at
  QUEUED by a restart never moves again); or when the result link has expired (`ResultExpiredError`).
  A long queue whose status or position still changes is never a failure;
- fatal (bad key from the API itself, version mismatch, model not hosted) → `FatalRemoteError`;
- transient (5xx on submit, eviction, preemption, lost backend) → `TransientError`, retried by
  `retry_policy`; "cannot be accommodated" → `CapacityError`, transient with a long backoff;
- "Job took longer than timeout" / out of memory → `BatchTooLargeError`: the runner splits;
- anything else the server reports (an exception in the request) → `RemoteJobError`: the batch is
  recorded failed with the server's message.

The API key is read from the environment and scrubbed from every message we raise or store.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from remote_introspect.errors import BatchTooLargeError, FatalRemoteError, TransientError, UserError, scrub
from remote_introspect.execution.backends.base import GenerationOutput, ReadoutOutput, client_versions
from remote_introspect.execution.traces import extraction, hf_generation, readout, steered_generation
from remote_introspect.execution.traces.generation_batch import GenerationBatch
from remote_introspect.execution.traces.readout import ReadoutBatch
from remote_introspect.models.loading import ModelRef

log = logging.getLogger(__name__)

DEFAULT_HOST = "https://api.ndif.us"
API_KEY_ENV = "NDIF_API_KEY"

#: NDIF's model actor kills a job RUNNING this long (base.py @02758d7c; NDIF runs 3600 s).
NDIF_EXECUTION_CAP_S = 3600.0

FATAL_TEXTS = (
    "not dedicated",
    "not pinned",
    "hotswapping is not supported",
    "invalid api key",
    "incompatible with the server nnsight version",
)
#: The deployment has no room now (queue/processor.py): retry, but minutes apart.
CAPACITY_TEXTS = ("cannot be accomodated", "cannot be accommodated")  # sic: NDIF's spelling first
TRANSIENT_TEXTS = (
    "evicted",
    "cancelled or preempted",
    "connection lost to compute backend",
    "please retry",
    "try again later",
    "try again in",
    "temporarily unavailable",
    "failed to submit request to queue",
)
SPLIT_TEXTS = ("took longer than timeout", "out of memory")
#: `/status` deployment levels that can run a request, best first (COLD = downloaded only).
_HOSTED_LEVELS = ("HOT", "WARM")


class RemoteJobError(Exception):
    """The server ran the request and it raised (not retryable as is)."""


class CapacityError(TransientError):
    """NDIF cannot place the model now; `retry_policy` waits its long backoff before retrying."""

    long_backoff = True


class JobLostError(TransientError):
    """The server no longer runs this job (forgotten, or its status froze): resubmit it."""


class ResultExpiredError(TransientError):
    """The job finished but its result link has expired (403 from the object store): resubmit."""


@dataclass
class NDIFSettings:
    host: str = DEFAULT_HOST
    poll_initial_s: float = 0.5
    poll_max_s: float = 10.0
    # Longest a job may stay RUNNING: NDIF's own execution cap plus a margin. Past it the server
    # would have ended the job itself, so a status still RUNNING froze in a restart. Time queued
    # does not count.
    job_timeout_s: float = NDIF_EXECUTION_CAP_S + 600.0
    # A job whose queued status has not changed for this long is probed: resubmitted only if the
    # server no longer knows it or no longer lists the model as deployed.
    queue_timeout_s: float = 2 * 3600.0
    # How long the server must keep answering "unknown id" (NDIF: 500; others: 404) before the
    # job counts as lost (a status not yet written, or a one-off 500, does not).
    stale_probe_s: float = 30.0
    # Prefill the prompt prefix all rows share once, in the same request (one nnsight session of
    # two traces): saves server time. Off by default: the cache argument's name is decided by the
    # client's transformers and has not been verified against the real service's.
    share_prefix: bool = False
    allow_version_mismatch: bool = False
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        self.host = self.host.rstrip("/")


def _status_code(err: BaseException) -> int | None:
    seen: BaseException | None = err
    while seen is not None:
        response = getattr(seen, "response", None)
        code = getattr(response, "status_code", None)
        if isinstance(code, int):
            return code
        seen = seen.__cause__ or seen.__context__
    return None


def classify(err: BaseException, secret: str | None = None) -> Exception:
    """Map a client-side exception to our error classes (message scrubbed of the key)."""
    import httpx

    msg = scrub(f"{err}".strip().splitlines()[0] if str(err).strip() else type(err).__name__, secret)
    low = str(err).lower()
    code = _status_code(err)
    # Only errors from NDIF's own API reach here (result downloads are handled in `_download`),
    # so a 401/403 is the key.
    if code in (401, 403) or "api key" in low and ("invalid" in low or "missing" in low):
        return FatalRemoteError(f"NDIF rejected the API key (HTTP {code or 401}): {msg}")
    if code == 400 and ("version" in low or "incompatible" in low):
        return FatalRemoteError(_version_refusal(str(err), msg))
    if any(t in low for t in FATAL_TEXTS):
        return FatalRemoteError(f"NDIF cannot run this model for you: {msg}")
    if any(t in low for t in CAPACITY_TEXTS):
        return CapacityError(msg)
    if any(t in low for t in SPLIT_TEXTS):
        return BatchTooLargeError(msg)
    if any(t in low for t in TRANSIENT_TEXTS):
        return TransientError(msg)
    if code is not None and (code >= 500 or code == 429):
        return TransientError(f"HTTP {code}: {msg}")
    if isinstance(err, httpx.TransportError | ConnectionError | TimeoutError | OSError):
        return TransientError(f"{type(err).__name__}: {msg}")
    if type(err).__name__ in ("ValidationError", "WebSocketConnectionClosedException"):
        return TransientError(f"connection dropped: {msg}")
    if code is not None:
        return RemoteJobError(f"HTTP {code}: {msg}")
    return RemoteJobError(msg)


def _version_refusal(text: str, msg: str) -> str:
    """One line for NDIF's HTTP 400 version refusal, with the command that fixes it."""
    minimum = re.search(r"minimum supported version is ([0-9][0-9A-Za-z.+-]*[0-9A-Za-z])", text)
    if minimum and "python" in text.lower():
        return (
            f"NDIF requires Python >= {minimum.group(1)}; this client runs "
            f"{sys.version_info.major}.{sys.version_info.minor}: {msg}"
        )
    if minimum:
        from importlib.metadata import version

        return (
            f"nnsight: NDIF requires >= {minimum.group(1)}, this client has {version('nnsight')}; "
            f"{_pip_nnsight(minimum.group(1))}"
        )
    return f"nnsight version mismatch with the server: {msg}"


# The nnsight range this package pins and is tested with (pyproject.toml: keep them equal).
NNSIGHT_TESTED = ">=0.8.1,<0.9"


def _pip_nnsight(wanted: str) -> str:
    """The install command for the server's nnsight, honest when it is outside our pin."""
    try:
        from packaging.specifiers import SpecifierSet

        inside = SpecifierSet(NNSIGHT_TESTED).contains(wanted, prereleases=True)
    except Exception:  # noqa: BLE001 - an unparsable version: say nothing about the range
        inside = True
    if inside:
        return f"run: pip install nnsight=={wanted}"
    return (
        f"nnsight {wanted} is outside the range this package is tested with (nnsight{NNSIGHT_TESTED}); "
        f"`pip install nnsight=={wanted}` conflicts with its pin and is untested: a release of "
        "remote_introspect that supports it is needed"
    )


def _version_key(text: str) -> tuple:
    """Comparable version (PEP 440 via packaging when it parses, else numeric parts)."""
    try:
        from packaging.version import Version

        return (0, Version(text))
    except Exception:  # noqa: BLE001 - a malformed version compares by its digits
        return (1, tuple(int(p) for p in re.findall(r"\d+", text)[:3]))


def _major_minor(text: str) -> str:
    return ".".join(str(text).split()[0].split(".")[:2]) if str(text).strip() else ""


def _suggest_command(preset_name: str) -> str:
    """This run's command line with `--model` set to `preset_name` (or just the flag)."""
    args = list(sys.argv[1:])
    prog = sys.argv[0] if sys.argv else ""
    if not args or not (prog.endswith("__main__.py") or "remote_introspect" in prog):
        return f"--model {preset_name}"
    out: list[str] = []
    skip = False
    replaced = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--model":
            out += ["--model", preset_name]
            skip = replaced = True
        elif arg.startswith("--model="):
            out.append(f"--model={preset_name}")
            replaced = True
        else:
            out.append(arg)
    if not replaced:
        out += ["--model", preset_name]
    return "python -m remote_introspect " + " ".join(out)


def _load_tokenizer(ref: ModelRef, tokenizer_dir: Path | None) -> Any:
    from transformers import AutoTokenizer

    source = str(tokenizer_dir) if tokenizer_dir else (str(ref.local_dir) if ref.local_dir else ref.repo_id)
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except Exception as err:  # noqa: BLE001 - any failure means "no tokenizer available"
        raise UserError(
            f"no tokenizer for {ref.repo_id}: not in the Hugging Face cache and no --tokenizer DIR given "
            "(Meta's repos are gated: accept the licence on Hugging Face, `huggingface-cli login`, "
            f"and download the tokenizer once) [{type(err).__name__}]"
        ) from None
    if tok.chat_template is None:
        from remote_introspect.experiment.prompts import GEMMA_CHAT_TEMPLATE

        shipped = ref.preset.shipped_chat_template() if ref.preset else None
        if shipped is not None:
            # A base model's tokenizer has no template: render the protocol's chat with the one
            # the preset ships (its text is hashed into every trial key with the tokenizer).
            tok.chat_template = shipped
        elif "gemma" in str(ref.config.get("model_type", "")):
            tok.chat_template = GEMMA_CHAT_TEMPLATE
        else:
            raise UserError(f"the tokenizer for {ref.repo_id} has no chat template; the protocols need one")
    return tok


def build_remote_model(ref: ModelRef, tokenizer: Any) -> Any:
    """A meta-device nnsight model (no weights) whose requests NDIF resolves by model key."""
    from nnsight import TransformersModel
    from nnsight.modeling.huggingface import _ID_CACHE
    from transformers import AutoConfig

    # to_model_key() canonicalises the repo id through a Hub call; pre-seeding avoids it offline.
    _ID_CACHE.setdefault(ref.repo_id, ref.repo_id)
    kwargs: dict[str, Any] = {"tokenizer": tokenizer, "task": "text-generation"}
    if ref.local_dir is None:
        cfg_dir = ref.preset.shipped_config_path() if ref.preset else None
        kwargs["config"] = AutoConfig.from_pretrained(str(cfg_dir) if cfg_dir else ref.repo_id)
    model = TransformersModel(ref.repo_id, **kwargs)
    # Send none of the client's model settings: the config object (with the client's file path in
    # it) stays out of the pickled model state, and nnsight's per-request env (the client's
    # resolved attention implementation) is empty. The server runs its deployment as deployed.
    model.kwargs.pop("config", None)
    object.__setattr__(model, "_remoteable_get_env", dict)
    return model


class NDIFExecutor:
    name = "ndif"

    def __init__(self, ref: ModelRef, settings: NDIFSettings, tokenizer_dir: Path | None = None) -> None:
        self.ref = ref
        self.settings = settings
        self.tokenizer = _load_tokenizer(ref, tokenizer_dir)
        self.model = build_remote_model(ref, self.tokenizer)
        self.model_key = self.model.to_model_key()
        self.on_status: Callable[[str], None] = lambda s: None
        self._server_env: dict[str, Any] | None = None
        # The trace code ships as functions (portable.PORTABLE), never as a module object.
        import nnsight

        # nnsight prints job status lines to stdout; ours go to stderr (stdout is results only).
        nnsight.CONFIG.APP.REMOTE_LOGGING = False

    # -- identity -------------------------------------------------------------------------------

    @property
    def weights_id(self) -> str:
        if self.ref.local_dir is not None:
            from remote_introspect.models.loading import _dir_fingerprint

            return f"dir:{_dir_fingerprint(self.ref.local_dir)}"
        return f"hf:{self.ref.repo_id}@main"

    @property
    def dtype_label(self) -> str:
        return (
            str(self.ref.config.get("torch_dtype") or self.ref.config.get("dtype") or "fp32")
            .replace("bfloat16", "bf16")
            .replace("float32", "fp32")
            .replace("float16", "fp16")
        )

    # -- HTTP helpers for the GET-only preflight ---------------------------------------------------

    def _get(self, path: str) -> Any:
        import httpx

        headers = {"ndif-api-key": self.settings.api_key} if self.settings.api_key else {}
        return httpx.get(
            f"{self.settings.host}{path}", headers=headers, timeout=httpx.Timeout(30, connect=10)
        )

    def preflight(self) -> list[str]:
        """GET-only checks, one line each. Raises FatalRemoteError for a fatal finding; an
        endpoint that is missing (404) or unreachable prints "not checked" and the run goes on."""
        import httpx

        lines: list[str] = []
        key = self.settings.api_key
        if not key:
            raise FatalRemoteError(
                f"{API_KEY_ENV} is not set: create a key at https://login.ndif.us and export {API_KEY_ENV}=..."
            )
        try:
            who = self._get("/whoami")
        except httpx.TransportError as err:
            raise FatalRemoteError(
                f"cannot reach NDIF at {self.settings.host}: {type(err).__name__}"
            ) from None
        if who.status_code in (401, 403):
            raise FatalRemoteError(f"NDIF rejected the API key (HTTP {who.status_code})")
        lines.append(
            "key: accepted"
            if who.status_code == 200
            else f"key: not checked (/whoami answered {who.status_code})"
        )
        lines.append(self._check_hosted())
        lines.append(self._check_versions())
        return lines

    def _check_hosted(self) -> str:
        """HOT (on GPUs) or WARM (cached; the next request brings it back) counts as hosted; COLD
        (downloaded, not deployed) or absent does not (the levels `nnsight.ndif.status` shows)."""
        try:
            status = self._get("/status")
        except Exception as err:  # noqa: BLE001 - preflight only: the run decides
            return f"model: availability not checked (/status unreachable: {type(err).__name__})"
        if status.status_code != 200:
            return f"model: availability not checked (/status answered {status.status_code})"
        try:
            deployments = dict(status.json().get("deployments") or {})
        except Exception:  # noqa: BLE001 - an unexpected body is not a reason to stop
            return "model: availability not checked (/status answered an unexpected body)"
        mine = [d for d in deployments.values() if d.get("repo_id") == self.ref.repo_id]
        live = [d for d in mine if d.get("deployment_level") in _HOSTED_LEVELS]
        if live:
            best = min(live, key=lambda d: _HOSTED_LEVELS.index(d.get("deployment_level")))
            level, state = best.get("deployment_level"), best.get("application_state") or "?"
            note = " (cached; the first request brings it back)" if level == "WARM" else ""
            return f"model: {self.ref.repo_id} is deployed ({level}, {state}){note}"
        hosted = sorted(
            {str(d.get("repo_id")) for d in deployments.values() if d.get("deployment_level") in _HOSTED_LEVELS}
        )
        state = f" (state {mine[0].get('deployment_level')}/{mine[0].get('application_state')})" if mine else ""
        from remote_introspect.models.presets import PRESETS

        named, instead = [], None
        for repo in hosted:
            preset = next((q for q in PRESETS.values() if q.repo_id == repo and q.backend == "ndif"), None)
            named.append(f"{repo} (--model {preset.name})" if preset else repo)
            if preset is not None and instead is None and self._same_family(repo):
                instead = _suggest_command(preset.name)
        raise FatalRemoteError(
            f"model {self.ref.repo_id} is not available on NDIF{state}; hosted: "
            + (", ".join(named) if named else "none")
            + (f"; use instead: {instead}" if instead else "")
        )

    def _same_family(self, repo: str) -> bool:
        """The hosted repo is the same model in another variant (e.g. base vs Instruct)."""
        strip = lambda r: r.lower().removesuffix("-instruct")  # noqa: E731
        return strip(repo) == strip(self.ref.repo_id)

    def _check_versions(self) -> str:
        """NDIF's rule: client nnsight >= the server's (its default minimum) and client Python
        major.minor >= the server's (dependencies.py @134eac98, config.py @14c5ae16; see the module
        docstring for the older exact-match rule we do not follow)."""
        from importlib.metadata import version

        try:
            env = self._get("/env")
        except Exception as err:  # noqa: BLE001 - preflight only
            return f"nnsight: server version not checked (/env unreachable: {type(err).__name__})"
        if env.status_code != 200:
            return f"nnsight: server version not checked (/env answered {env.status_code})"
        try:
            self._server_env = dict(env.json())
        except Exception:  # noqa: BLE001
            return "nnsight: server version not checked (/env answered an unexpected body)"
        server_nn = str((self._server_env.get("packages") or {}).get("nnsight") or "")
        client_nn = version("nnsight")
        server_py = _major_minor(str(self._server_env.get("python_version") or ""))
        client_py = f"{sys.version_info.major}.{sys.version_info.minor}"
        problems = []
        if server_nn and _version_key(client_nn) < _version_key(server_nn):
            problems.append(
                f"nnsight: server runs {server_nn}, this client {client_nn} (NDIF requires client >= server); "
                f"{_pip_nnsight(server_nn)}"
            )
        if server_py and _version_key(client_py) < _version_key(server_py):
            problems.append(
                f"python: server runs {server_py}, this client {client_py} (NDIF requires client >= server); "
                f"use Python {server_py} or newer"
            )
        if problems:
            if not self.settings.allow_version_mismatch:
                raise FatalRemoteError(" | ".join(problems) + " (or pass --allow-version-mismatch)")
            return " | ".join(problems) + " (mismatch allowed)"
        if not server_nn:
            return f"nnsight: server version not reported by /env (this client {client_nn})"
        return f"nnsight: server {server_nn}, this client {client_nn}; python {server_py or '?'} / {client_py}: ok"

    # -- running ----------------------------------------------------------------------------------

    def _wait(self, backend: Any) -> dict[str, Any]:
        """Poll a non-blocking job by its id until its result arrives (see the module docstring
        for when it gives up: never because a poll failed or a queue is long)."""
        from nnsight.intervention.backends.remote import RemoteError
        from nnsight.schema.response import ResponseModel

        s = self.settings
        job_id = backend.job_id
        delay = s.poll_initial_s
        now = time.monotonic()
        last_seen: tuple[str, str] | None = None
        changed = now  # when the (status, description) last changed
        unchanged_since = now  # same, never reset by a queue probe
        running_since: float | None = None
        last_answer = now  # last time the server answered this job's poll at all
        unknown_since: float | None = None
        unknown_polls = 0
        shown = None
        while True:
            now = time.monotonic()
            problem = None
            try:
                http = self._get(f"/response/{job_id}")
            except Exception as err:  # noqa: BLE001 - any transport failure: poll again
                http, problem = None, f"{type(err).__name__}"
            if http is not None and http.status_code in (404, 500):
                # NDIF: 500 for an id it does not know (404 from other servers, or a status not
                # yet written). Lost only once the server keeps saying so.
                unknown_polls += 1
                unknown_since = now if unknown_since is None else unknown_since
                last_answer = now
                if unknown_polls >= 2 and now - unknown_since >= s.stale_probe_s:
                    raise JobLostError(
                        f"the server no longer knows job {job_id} (HTTP {http.status_code} for "
                        f"{now - unknown_since:.0f}s); resubmitting"
                    )
                problem = f"HTTP {http.status_code} (unknown id?)"
            elif http is not None and http.status_code in (401, 403):
                raise FatalRemoteError(f"NDIF rejected the API key (HTTP {http.status_code})")
            elif http is not None and http.status_code == 200:
                try:
                    response = ResponseModel.model_validate_json(http.text)
                except Exception as err:  # noqa: BLE001 - a garbled answer: poll again
                    response, problem = None, f"unparsable status ({type(err).__name__})"
                if response is not None:
                    last_answer, unknown_since, unknown_polls = now, None, 0
                    status = getattr(response.status, "name", None) or str(response.status)
                    backend.status = response.status
                    if status == "ERROR":
                        raise classify(RemoteError(response.description), s.api_key) from None
                    if status == "COMPLETED":
                        result = self._download(backend, response.data)
                        if result is not None:
                            self.on_status("downloaded")
                            return result
                        problem = "result download failed"
                    else:
                        seen = (status, str(response.description or ""))
                        if seen != last_seen:
                            last_seen, changed, unchanged_since = seen, now, now
                        if status == "RUNNING":
                            running_since = now if running_since is None else running_since
                            if now - running_since > s.job_timeout_s:
                                raise JobLostError(
                                    f"job {job_id} has been RUNNING for {now - running_since:.0f}s, past "
                                    f"NDIF's execution cap ({NDIF_EXECUTION_CAP_S:.0f}s): its status froze "
                                    "(server restart); resubmitting"
                                )
                        elif now - unchanged_since > s.queue_timeout_s + s.job_timeout_s:
                            raise JobLostError(
                                f"job {job_id} has been {status} with no change for "
                                f"{now - unchanged_since:.0f}s (past --queue-timeout + --job-timeout): "
                                "its status froze (server restart); resubmitting"
                            )
                        elif now - changed > s.queue_timeout_s:
                            changed = now
                            self._probe_queued(job_id, status)
                        if status != shown:
                            self.on_status(status.lower())
                            shown = status
            elif http is not None:
                problem = f"HTTP {http.status_code}"
            if problem is not None:
                log.info("poll of job %s: %s; polling again", job_id, problem)
                if now - last_answer > s.job_timeout_s:
                    raise JobLostError(
                        f"no answer about job {job_id} for {now - last_answer:.0f}s (longer than NDIF "
                        "runs a job); resubmitting"
                    )
            time.sleep(delay)
            delay = min(delay * 1.5, s.poll_max_s)

    def _download(self, backend: Any, data: Any) -> dict[str, Any] | None:
        """Fetch a COMPLETED job's result; None when worth trying again (5xx, connection).

        The link is an object-store URL, not NDIF's API: a 401/403 (or 400/404/410) there means
        the presigned link expired or its object is gone, never a bad API key.
        """
        import httpx

        if isinstance(data, (list, tuple)) and data and isinstance(data[0], str):
            data = data[0]  # NDIF's actor records (url, size) (base.py @02758d7c); the URL is what we fetch
        try:
            return backend.download_result(data)
        except httpx.HTTPStatusError as err:
            code = err.response.status_code
            if code in (400, 401, 403, 404, 410):
                reason = "403 AccessDenied: the presigned link expired" if code == 403 else f"HTTP {code}"
                raise ResultExpiredError(
                    f"job {backend.job_id} finished but its result link is no longer valid "
                    f"(object store: {reason}; NDIF's links last 2 h); resubmitting the batch"
                ) from None
            log.info("result download for job %s: HTTP %s; retrying", backend.job_id, code)
            return None
        except (httpx.TransportError, OSError) as err:
            log.info("result download for job %s: %s; retrying", backend.job_id, type(err).__name__)
            return None

    def _probe_queued(self, job_id: str, status: str) -> None:
        """A queued job unchanged for `queue_timeout_s`: resubmit only if the server no longer
        knows it (checked by the poll loop) or no longer lists the model as deployed."""
        try:
            reply = self._get("/status")
            deployments = dict(reply.json().get("deployments") or {}) if reply.status_code == 200 else None
        except Exception:  # noqa: BLE001 - cannot tell: keep waiting
            deployments = None
        if deployments is not None and not any(
            d.get("repo_id") == self.ref.repo_id and d.get("deployment_level") in _HOSTED_LEVELS
            for d in deployments.values()
        ):
            raise JobLostError(
                f"job {job_id} has been {status} for {self.settings.queue_timeout_s:.0f}s and "
                f"{self.ref.repo_id} is no longer deployed; resubmitting"
            )
        log.warning(
            "job %s still %s after %.0fs; the server still knows it, so it keeps its place",
            job_id, status, self.settings.queue_timeout_s,
        )

    def _submit(self, run: Callable[[], Any]) -> Any:
        import nnsight

        nnsight.CONFIG.API.APIKEY = self.settings.api_key
        try:
            tracer = run()
        except Exception as err:  # noqa: BLE001 - classified below
            raise classify(err, self.settings.api_key) from None
        return tracer.backend

    def extract(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: list[int]
    ) -> torch.Tensor:
        backend = self._submit(
            lambda: extraction.extract_last_token(
                self.model, input_ids, attention_mask, layers, remote=self.settings.host, blocking=False
            )[1]
        )
        self.on_status("submitted")
        result = self._wait(backend)
        return torch.as_tensor(result["stacked"]).float().cpu()

    def generate(
        self, batch: GenerationBatch, on_submitted: Callable[[str | None], None]
    ) -> GenerationOutput:
        backend = self._submit(
            lambda: steered_generation.generate_steered(
                self.model,
                batch,
                mlp_attr=self.ref.mlp_attr,
                remote=self.settings.host,
                blocking=False,
                share_prefix=self.settings.share_prefix,
            )[3]
        )
        on_submitted(backend.job_id)  # persisted before we wait: reattachable after a crash
        self.on_status("submitted")
        return self._output(self._wait(backend))

    def readout(
        self, batch: ReadoutBatch, on_submitted: Callable[[str | None], None]
    ) -> ReadoutOutput:
        """One steered forward pass, one request; submitted, persisted, polled and retried exactly
        as `generate` (the runner's retry policy wraps this call)."""
        backend = self._submit(
            lambda: readout.read_steered(
                self.model, batch, mlp_attr=self.ref.mlp_attr, remote=self.settings.host, blocking=False
            )[3]
        )
        on_submitted(backend.job_id)  # persisted before we wait: reattachable after a crash
        self.on_status("submitted")
        return self._readout_output(self._wait(backend))

    supports_reattach = True  # a job id persisted before waiting can be collected by a later run

    def model_eos_ids(self) -> list[int]:
        return hf_generation.model_eos_ids(self.model._module)

    def reattach(self, job_id: str) -> GenerationOutput | None:
        """Collect a job submitted by an earlier (killed) run; None when it must be resubmitted
        (the server forgot it, it failed, its status froze, or its result link expired)."""
        result = self._reattach_result(job_id)
        return None if result is None else self._output(result)

    def reattach_readout(self, job_id: str) -> ReadoutOutput | None:
        """`reattach` for a readout job (`readout`)."""
        result = self._reattach_result(job_id)
        return None if result is None else self._readout_output(result)

    def _reattach_result(self, job_id: str) -> dict[str, Any] | None:
        from nnsight.intervention.backends.remote import RemoteBackend

        backend = RemoteBackend(
            self.model_key,
            host=self.settings.host,
            api_key=self.settings.api_key,
            job_id=job_id,
            blocking=False,
        )
        try:
            return self._wait(backend)
        except TransientError as err:  # resubmitting is the answer to all of these
            log.info("job %s cannot be collected (%s); resubmitting", job_id, err)
            return None

    @staticmethod
    def _output(result: dict[str, Any]) -> GenerationOutput:
        diags = [(int(layer), torch.as_tensor(d).cpu()) for layer, d in result["diags"]]
        bad = torch.as_tensor(result["bad"]).cpu() if "bad" in result else None
        return GenerationOutput(torch.as_tensor(result["ids"]).cpu(), diags, bad)

    @staticmethod
    def _readout_output(result: dict[str, Any]) -> ReadoutOutput:
        proj = result.get("proj")
        return ReadoutOutput(
            torch.as_tensor(result["logp"]).float().cpu(),
            None if proj is None else torch.as_tensor(proj).float().cpu(),
            torch.as_tensor(result["bad"]).bool().cpu(),
        )

    def versions(self) -> dict[str, str]:
        out = client_versions()
        out["backend_host"] = self.settings.host
        if self._server_env:
            for name, ver in self._server_env.get("packages", {}).items():
                out[f"server_{name}"] = str(ver)
        return out
