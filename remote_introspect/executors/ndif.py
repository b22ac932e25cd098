"""Run the package's traces on NDIF (or any server speaking nnsight 0.8.1's remote protocol).

Submission is always non-blocking: the job id comes back from the POST and the runner persists it
BEFORE we wait, so a killed client reattaches instead of resubmitting. We poll with backoff under
our own wall-clock cap (the client's blocking websocket wait has none, and a dropped socket loses
a blocking job). Every failure is classified (NDIF.md "How it fails"):

- fatal (bad key, version mismatch, model not available) → `FatalRemoteError`: the run stops;
- transient (5xx, connection errors, eviction, preemption, lost backend, a job that never
  finishes within the cap) → `TransientError`: retried by `retry_policy`, then recorded failed;
- "Job took longer than timeout" / out of memory → `BatchTooLargeError`: the runner splits;
- anything else the server reports (an exception in the request) → `RemoteJobError`: the batch is
  recorded failed with the server's message.

The API key is read from the environment and scrubbed from every message we raise or store.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import trace_blocks
from ..errors import FatalRemoteError, UserError
from ..model_loading import ModelRef
from ..trace_blocks import GenerationBatch
from .base import BatchTooLargeError, GenerationOutput, TransientError, client_versions

log = logging.getLogger(__name__)

DEFAULT_HOST = "https://api.ndif.us"
API_KEY_ENV = "NDIF_API_KEY"

FATAL_TEXTS = (
    "not dedicated",
    "not pinned",
    "hotswapping is not supported",
    "cannot be accomodated",  # sic: NDIF's spelling
    "cannot be accommodated",
    "invalid api key",
    "incompatible with the server nnsight version",
)
TRANSIENT_TEXTS = (
    "evicted",
    "cancelled or preempted",
    "connection lost to compute backend",
    "please retry",
    "try again later",
    "temporarily unavailable",
)
SPLIT_TEXTS = ("took longer than timeout", "out of memory")


class RemoteJobError(Exception):
    """The server ran the request and it raised (not retryable as is)."""


@dataclass
class NDIFSettings:
    host: str = DEFAULT_HOST
    poll_initial_s: float = 0.5
    poll_max_s: float = 10.0
    job_timeout_s: float = 3 * 3600.0  # NDIF's own execution cap is 3600 s; add queueing time
    # The client reads a 404 on GET /response/{id} as "not yet": after this long without a status
    # change we ask the server directly whether it still knows the job (a restart forgets it).
    stale_probe_s: float = 120.0
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


def scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


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
    if code in (401, 403) or "api key" in low and ("invalid" in low or "missing" in low):
        return FatalRemoteError(f"NDIF rejected the API key (HTTP {code or 401}): {msg}")
    if code == 400 and ("version" in low or "incompatible" in low):
        return FatalRemoteError(f"nnsight version mismatch with the server: {msg}")
    if any(t in low for t in FATAL_TEXTS):
        return FatalRemoteError(f"NDIF cannot run this model for you: {msg}")
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
        from ..prompts import GEMMA_CHAT_TEMPLATE

        if "gemma" in str(ref.config.get("model_type", "")):
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
        # The trace code ships as functions (trace_blocks.PORTABLE), never as a module object.
        import nnsight

        # nnsight prints job status lines to stdout; ours go to stderr (stdout is results only).
        nnsight.CONFIG.APP.REMOTE_LOGGING = False

    # -- identity -------------------------------------------------------------------------------

    @property
    def weights_id(self) -> str:
        if self.ref.local_dir is not None:
            from ..model_loading import _dir_fingerprint

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
        """GET-only checks, one line each. Raises FatalRemoteError for a fatal finding."""
        from importlib.metadata import version

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
        status = self._get("/status")
        if status.status_code == 200:
            deployments = status.json().get("deployments", {})
            mine = [d for d in deployments.values() if d.get("repo_id") == self.ref.repo_id]
            live = [
                d
                for d in mine
                if d.get("deployment_level") in ("HOT", "WARM") and d.get("application_state") == "RUNNING"
            ]
            if not live:
                others = sorted(
                    {
                        str(d.get("repo_id"))
                        for d in deployments.values()
                        if d.get("deployment_level") in ("HOT", "WARM")
                    }
                )
                state = (
                    f" (state {mine[0].get('deployment_level')}/{mine[0].get('application_state')})"
                    if mine
                    else ""
                )
                from ..presets import PRESETS

                named = [
                    f"{o} (--model {p.name})"
                    if (p := next((q for q in PRESETS.values() if q.repo_id == o), None))
                    else o
                    for o in others
                ]
                raise FatalRemoteError(
                    f"model {self.ref.repo_id} is not available on NDIF{state}; deployed: "
                    + (", ".join(named) if named else "none")
                )
            lines.append(f"model: {self.ref.repo_id} is deployed and running")
        else:
            lines.append(f"model: availability not checked (/status answered {status.status_code})")
        env = self._get("/env")
        if env.status_code == 200:
            self._server_env = env.json()
            server_nn = str(self._server_env.get("packages", {}).get("nnsight", "unknown"))
            client_nn = version("nnsight")
            if server_nn != client_nn:
                msg = f"nnsight: server runs {server_nn}, this client {client_nn}"
                if not self.settings.allow_version_mismatch:
                    raise FatalRemoteError(
                        msg + f"; install nnsight=={server_nn} (or pass --allow-version-mismatch)"
                    )
                lines.append(msg + " (mismatch allowed)")
            else:
                lines.append(f"nnsight: {client_nn} on both ends")
        else:
            lines.append(f"nnsight: server version not checked (/env answered {env.status_code})")
        return lines

    # -- running ----------------------------------------------------------------------------------

    def _wait(self, backend: Any) -> dict[str, Any]:
        """Poll a non-blocking job until its result arrives, under our wall-clock cap."""
        deadline = time.monotonic() + self.settings.job_timeout_s
        delay = self.settings.poll_initial_s
        last = None
        changed = time.monotonic()
        while True:
            try:
                result = backend()
            except Exception as err:  # noqa: BLE001 - classified below
                raise classify(err, self.settings.api_key) from None
            if result is not None:
                self.on_status("downloaded")
                return result
            status = getattr(backend.status, "name", None) or str(backend.status or "submitted")
            if status != last:
                self.on_status(status.lower())
                last = status
                changed = time.monotonic()
            elif time.monotonic() - changed > self.settings.stale_probe_s:
                changed = time.monotonic()
                if self._job_forgotten(backend.job_id):
                    raise TransientError(f"the server no longer knows job {backend.job_id}; resubmitting")
            if time.monotonic() > deadline:
                raise TransientError(
                    f"job {backend.job_id} gave no result within {self.settings.job_timeout_s:.0f}s "
                    f"(last status {status}); resubmitting"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, self.settings.poll_max_s)

    def _job_forgotten(self, job_id: str) -> bool:
        try:
            return self._get(f"/response/{job_id}").status_code == 404
        except Exception:  # noqa: BLE001 - unreachable now: let the poll loop find out
            return False

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
            lambda: trace_blocks.extract_last_token(
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
            lambda: trace_blocks.generate_steered(
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

    def reattach(self, job_id: str) -> GenerationOutput | None:
        """Collect a job submitted by an earlier (killed) run; None when the server forgot it."""
        from nnsight.intervention.backends.remote import RemoteBackend

        try:
            probe = self._get(f"/response/{job_id}")
        except Exception as err:  # noqa: BLE001 - classified below
            raise classify(err, self.settings.api_key) from None
        if probe.status_code == 404:  # the server forgot it (restart, expiry): resubmit
            return None
        backend = RemoteBackend(
            self.model_key,
            host=self.settings.host,
            api_key=self.settings.api_key,
            job_id=job_id,
            blocking=False,
        )
        return self._output(self._wait(backend))

    @staticmethod
    def _output(result: dict[str, Any]) -> GenerationOutput:
        diags = [(int(layer), torch.as_tensor(d).cpu()) for layer, d in result["diags"]]
        bad = torch.as_tensor(result["bad"]).cpu() if "bad" in result else None
        return GenerationOutput(torch.as_tensor(result["ids"]).cpu(), diags, bad)

    def versions(self) -> dict[str, str]:
        out = client_versions()
        out["backend_host"] = self.settings.host
        if self._server_env:
            for name, ver in self._server_env.get("packages", {}).items():
                out[f"server_{name}"] = str(ver)
        return out
