"""A loopback LLM-judge server on 127.0.0.1 that speaks Anthropic's Messages API and the OpenAI
chat-completions API, so tests run the real httpx client code of `grading/llm_judge.py`.

Endpoints (stdlib ``ThreadingHTTPServer``):
- ``POST /v1/messages`` (Anthropic): needs headers ``x-api-key`` (the server's key) and
  ``anthropic-version``; body ``{model, max_tokens, messages}``. Answers
  ``{id, type: "message", role, model, content: [{type: "text", text}], stop_reason, usage}``;
  errors as ``{"type": "error", "error": {"type", "message"}}``.
- ``POST /v1/chat/completions`` (OpenAI-compatible; base URL ``{url}/v1``): needs
  ``Authorization: Bearer <key>``; answers ``{id, object: "chat.completion", model, choices:
  [{index, message: {role, content}, finish_reason}]}``; errors as ``{"error": {"message", "type"}}``.

A wrong key gets 401 with a body that ECHOES the key it received (as some real servers do), so a
test can check the client never repeats it.

The answer to each prompt comes from `answer(prompt)`; the default reads which grader prompt it
is and what response it embeds, and answers YES/NO with the offline heuristic grader after a line
of "reasoning" — realistic enough that agreement statistics are meaningful.

Faults, consumed one per request in order (`inject(kind, times=1, retry_after=None)`):
``429`` (with ``Retry-After`` if given), ``500``, ``503``, ``529`` (Anthropic "overloaded"),
``malformed_json`` (HTTP 200 whose body is not JSON), ``bad_shape`` (JSON without the answer
field), ``bad_answer`` (an answer whose last line is not YES/NO), ``401``, ``404`` (unknown model).
Counters: `requests` (every request, with its path, headers, JSON body and arrival time).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "503", "529", "malformed_json", "bad_shape", "bad_answer", "401", "404")


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class _Fault:
    kind: str
    retry_after: str | None = None


_RESPONSE = re.compile(
    r"Below is their response\.\n(?P<resp>.*)\n(?P<rest>In their response|Does their response|Score this)",
    re.S,
)
_WORD = re.compile(
    r"(?:about the word|name the word|as thinking about) (?P<word>.+?)(?:\?|, or| or something)"
)


def default_answer(prompt: str) -> str:
    """YES/NO per the heuristic grader, for whichever of our judge prompts this is."""
    from remote_introspect.grading.heuristic import HeuristicGrader

    m = _RESPONSE.search(prompt)
    response = m["resp"] if m else ""
    w = _WORD.search(prompt)
    word = w["word"] if w else None
    if "JSON object with the boolean keys" in prompt:  # Merrill's rubric: one call, four booleans
        w = re.search(r"concept (?P<word>.+?) was added", prompt)
        g = HeuristicGrader().grade(response, w["word"] if w else None, protocol="merrill-405b")
        obj = {"affirmative": g.affirmative, "identifies": g.identifies, "immediate": g.early_detection}
        return "Scoring.\n" + json.dumps({**obj, "coherent": g.coherent})
    g = HeuristicGrader().grade(response, word)
    if "coherently describe" in prompt:
        verdict = g.coherent
    elif "about the word" in prompt:
        verdict = g.affirmative and g.identifies and g.early_detection
    elif "name the word" in prompt or "thinking about" in prompt:
        verdict = g.identifies
    elif "decline the premise" in prompt:
        verdict = g.refusal
    else:
        verdict = g.affirmative
    return f"Let me think about this response.\nIt reads as {'a yes' if verdict else 'a no'}.\n{'YES' if verdict else 'NO'}"


@dataclass
class JudgeLoopback:
    api_key: str = "loopback-test-key"
    answer: Callable[[str], str] = default_answer
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._faults: deque[_Fault] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def anthropic_spec(self, model: str = "claude-loopback") -> str:
        return f"anthropic:{model}@{self.url}"

    def openai_spec(self, model: str = "loopback-model") -> str:
        return f"openai:{model}@{self.url}/v1"

    def inject(self, kind: str, times: int = 1, retry_after: str | None = None) -> None:
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; choose from {FAULTS}")
        with self._lock:
            self._faults.extend(_Fault(kind, retry_after) for _ in range(times))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()

    def _next_fault(self) -> _Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)

    def start(self) -> JudgeLoopback:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="judge-loopback", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> JudgeLoopback:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _make_handler(srv: JudgeLoopback) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            return  # quiet: tests read `requests`, not stderr

        def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)

        def _error(
            self, anthropic: bool, status: int, kind: str, message: str, headers: dict[str, str] | None = None
        ) -> None:
            body = (
                {"type": "error", "error": {"type": kind, "message": message}}
                if anthropic
                else {"error": {"message": message, "type": kind, "code": status}}
            )
            self._send(status, json.dumps(body).encode(), headers)

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            headers = {k.lower(): v for k, v in self.headers.items()}
            srv._record(Recorded(self.path, headers, body, time.monotonic()))
            anthropic = self.path == "/v1/messages"
            if self.path not in ("/v1/messages", "/v1/chat/completions"):
                self._error(False, 404, "not_found", f"no route {self.path}")
                return
            if anthropic:
                given = headers.get("x-api-key", "")
                if not headers.get("anthropic-version"):
                    self._error(True, 400, "invalid_request_error", "anthropic-version header is required")
                    return
            else:
                auth = headers.get("authorization", "")
                given = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
            fault = srv._next_fault()
            if given != srv.api_key or (fault is not None and fault.kind == "401"):
                self._error(anthropic, 401, "authentication_error", f"invalid api key: {given}")
                return
            if not isinstance(body, dict) or not body.get("messages") or not body.get("model"):
                self._error(anthropic, 400, "invalid_request_error", "body needs model and messages")
                return
            if anthropic and "max_tokens" not in body:
                self._error(True, 400, "invalid_request_error", "max_tokens: field required")
                return
            if fault is not None:
                kind = fault.kind
                if kind == "429":
                    extra = {"retry-after": fault.retry_after} if fault.retry_after is not None else {}
                    self._error(anthropic, 429, "rate_limit_error", "rate limited", extra)
                    return
                if kind in ("500", "503", "529"):
                    self._error(
                        anthropic,
                        int(kind),
                        "overloaded_error" if kind == "529" else "api_error",
                        "server error",
                    )
                    return
                if kind == "404":
                    self._error(anthropic, 404, "not_found_error", f"model: {body['model']}")
                    return
                if kind == "malformed_json":
                    self._send(200, b'{"id": "x", "content": [{"type": "text", "text": "YES"')
                    return
                if kind == "bad_shape":
                    self._send(200, json.dumps({"id": "x", "unexpected": True}).encode())
                    return
            prompt = body["messages"][-1]["content"]
            text = (
                "I am not sure what to say here."
                if fault is not None and fault.kind == "bad_answer"
                else srv.answer(prompt)
            )
            if anthropic:
                out = {
                    "id": "msg_loopback",
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "usage": {"input_tokens": len(prompt.split()), "output_tokens": len(text.split())},
                }
            else:
                out = {
                    "id": "chatcmpl-loopback",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                }
            self._send(200, json.dumps(out).encode())

    return Handler
