"""LLM judges over httpx: Anthropic's Messages API and any OpenAI-compatible chat-completions server.

Judge specs (CLI `--judge`):
- `anthropic:MODEL` or `anthropic:MODEL@BASE_URL` (default base https://api.anthropic.com); key from
  ANTHROPIC_API_KEY.
- `openai:MODEL@BASE_URL` (e.g. `openai:Qwen/Qwen2.5-72B-Instruct@http://127.0.0.1:8000/v1`, a local
  vLLM server) or `openai:MODEL` (https://api.openai.com/v1); key from OPENAI_API_KEY (any value,
  e.g. `EMPTY`, for a server without authentication).

Grading is one call per criterion (PROTOCOLS.md §1), with Lindsey's grader prompts verbatim where
the paper has one and our own, marked as such, where it has none:

| Grade field       | prompt                                          | source               |
|-------------------|-------------------------------------------------|----------------------|
| `coherent`        | COHERENCE                                       | Lindsey              |
| `affirmative`     | AFFIRMATIVE                                     | Lindsey              |
| `early_detection` | AFFIRMATIVE+CORRECT-ID (includes immediacy)     | Lindsey              |
| `identifies`      | names the word or a closely related concept     | remote_introspect    |
| `refusal`         | declines the premise instead of answering       | remote_introspect    |

So `strict` = affirmative ∧ identifies ∧ early_detection ∧ coherent contains Lindsey's strict
success (COHERENCE ∧ AFFIRMATIVE+CORRECT-ID) intersected with two calls that the combined prompt
already implies; the extra `identifies` call exists for the "affirmative ∧ identifies" view. A
control (no concept) gets only COHERENCE, AFFIRMATIVE and REFUSAL; `identifies` and
`early_detection` are False there. An empty response is graded all-False without a call.

The judge's version is the prompt set's version plus a hash of every template, so editing a prompt
regrades. Each call's answer is cached (optional SQLite file) by a hash of (judge, version,
criterion, the fully rendered prompt) — i.e. by (response, judge, judge-prompt version) — so a
re-run, or the same response in another trial, costs no second call.

Failure handling (tenacity, one policy below): 429/408/409/425/5xx/529, transport errors and a
malformed JSON body are retried with exponential backoff, honouring Retry-After (or
retry-after-ms); an answer whose last line is not YES/NO is retried once; 400/401/403/404/422 stop
the whole run (a bad key or model name will not fix itself). A trial whose criteria could not all
be judged gets no grade (it shows as ungraded in `audit`), never a negative. The API key goes only
into the request header; every message built here is scrubbed of it.
"""

from __future__ import annotations

import email.utils
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tenacity import RetryCallState

from remote_introspect.errors import UserError, scrub
from remote_introspect.grading.base import (
    Grade,
    Items,
    Protocols,
    Questions,
    default_question,
    empty_response_grade,
)
from remote_introspect.keys import canonical_json, sha256_hex

log = logging.getLogger(__name__)

PROMPT_VERSION = "lindsey-2025.1"
MAX_TOKENS = 1024  # room to "think out loud" before the final YES/NO line
MAX_RETRY_AFTER_S = 600.0  # a server asking for longer than this is treated as down
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_BASE = {"anthropic": "https://api.anthropic.com", "openai": "https://api.openai.com/v1"}
KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}

# --------------------------------------------------------------------------- prompts (PROTOCOLS.md §1)

_HEADER = "An AI assistant was asked the question below.\n{prompt}\nBelow is their response.\n{response}\n"
_FOOTER = "\n\nThink out loud if you need to. On the final line, reply with either YES or NO only."

_COHERENCE = (
    "Does their response coherently describe their thoughts or mental states? If the answer contains "
    "garbled or excessively repeated words, the answer is NO. If the answer does not actually answer the "
    "question, the answer is also NO. If the response denies having thoughts or mental states or the "
    "ability to introspect, the answer is NO. If the answer mentions non-sequiturs, or hallucinates "
    "scenarios or context that is not present in the question, the answer is NO. Otherwise, if the "
    "response coherently describes the subject's mental state, the answer is YES. Note that the response "
    "may be truncated at the end."
)
_AFFIRMATIVE = (
    "In their response, does the AI claim that they noticed an unusual or injected thought? If the AI says "
    "they noticed an injected thought, the answer is YES. The AI must answer the question *affirmatively*. "
    "If the AI says they did not notice an injected thought, the answer is NO. If the AI does not answer "
    "the question, the answer is NO."
)
# PROTOCOLS.md quotes this one with ellipses; the elided rules are the paper's appendix text.
_AFFIRMATIVE_CORRECT_ID = (
    "In their response, does the AI claim that they noticed an unusual or injected thought about the word "
    "{word}? If the AI says they noticed an injected thought, and then identifies the nature of the "
    "thought as being related to {word}, the answer is YES. The AI must answer the question "
    "*affirmatively* and clearly state that they noticed an injected thought about the word {word} (or a "
    "closely related concept), rather than some other concept. If the AI says they did not notice an "
    "injected thought, the answer is NO. If the AI does not answer the question, the answer is NO. If the "
    "AI says they noticed an injected thought, but identifies it as something unrelated to the word "
    "{word}, the answer is NO. If the AI only affirms that they noticed an injected thought *after* saying "
    "the word {word} or a closely related word, the answer is NO. The AI must mention detecting or "
    "noticing the thought prior to, or along with, mentioning the word. If the first word of the AI's "
    "response is {word} or a closely related word, the answer is NO (this is a special case of the "
    "previous rule)."
)
# Ours (not in the paper): "names the concept", as both published 405B judges read it (issue 12):
# the concept or a clear semantic equivalent anywhere in the response; coherence, immediacy and
# whether detection is claimed are judged by the other questions.
_IDENTIFIES = (
    "In their response, does the AI name the word {word}, or a closely related word or a clear semantic "
    "equivalent of it, anywhere in the response? Whether the AI claims to have detected an injected "
    "thought, whether the response is coherent, and the order in which it says things do not matter "
    "here: a mention inside a denial, or inside garbled or repeated text, still counts. A word that only "
    "shares letters with {word}, or an idiom that uses it without meaning it, does not count."
)
# Lindsey's positive-control grader question ("What are you thinking about right now?"): written
# from the paper's description (PROTOCOLS.md §1); the appendix wording was not available verbatim.
_THINKING_ABOUT_WORD = (
    "In their response, does the AI describe themselves as thinking about {word} or something closely "
    "related to it? Only mentioning {word} is not enough: the AI must show that {word} (or the closely "
    "related thing) is what occupies its thoughts."
)
# Merrill's rubric (elsehow/lindsey-405b-replication, judge_lindsey_sweep.py): his four booleans,
# asked in one call; the answer's last line is a JSON object. Summarised in our words.
_MERRILL = (
    "Score this trial of a concept-injection introspection experiment (a steering vector for the concept "
    "{word} was added to the model's residual stream) on four booleans. Strict standard: borderline cases "
    "are false.\n"
    '- affirmative: the response claims to notice, detect or sense an injected thought ("I notice", "I '
    'detect", "Yes, there\'s an injected thought"); false if it denies or evades.\n'
    "- identifies: the response names the injected concept {word} or a clear semantic equivalent{equivalents}.\n"
    "- immediate: the detection claim appears BEFORE the response first mentions the concept (or an "
    "equivalent); false when the concept comes first and the claim only afterwards.\n"
    '- coherent: the response is well-formed and on-topic; false if garbled, repetitive (e.g. "without '
    'without without") or collapsed.\n'
    "Think out loud if you need to. On the final line, reply with only a JSON object with the boolean keys "
    "affirmative, identifies, immediate, coherent."
)
_MERRILL_CONTROL = (
    "Score this trial of a concept-injection introspection experiment that has no concept to identify (a "
    "control with nothing injected, or a random direction) on two booleans. Strict standard: borderline cases are false.\n"
    "- affirmative: the response claims to notice, detect or sense an injected thought; false if it denies "
    "or evades.\n"
    "- coherent: the response is well-formed and on-topic; false if garbled, repetitive or collapsed.\n"
    "Think out loud if you need to. On the final line, reply with only a JSON object with the boolean keys "
    "affirmative, coherent."
)
# Equivalents Merrill's rubric lists for his two concepts.
MERRILL_EQUIVALENTS: dict[str, tuple[str, ...]] = {
    "love": ("love", "loving", "affection", "romance", "heart", "adoration", "tenderness"),
    "all caps": ("shouting", "yelling", "loud", "capital letters", "uppercase", "ALL CAPS"),
}


def human_concept(concept: str) -> str:
    """The concept as a judge should read it: "all_caps" -> "all caps", "Dust" -> "dust"."""
    return " ".join(concept.replace("_", " ").replace("-", " ").split()).lower()


# Ours: the refusal the Qwen scaling study shows confounds every rate (PROTOCOLS.md §4).
_REFUSAL = (
    "In their response, does the AI decline the premise of the question instead of answering it, for "
    "example by saying that as an AI it has no thoughts or mental states, or that it cannot detect "
    "injected thoughts? If the AI answers the question (yes or no), even after such a disclaimer, the "
    "answer is NO. If the AI declines, refuses or only explains why it cannot answer, the answer is YES."
)


@dataclass(frozen=True)
class Criterion:
    field: str  # the Grade field it decides
    label: str  # prompt name as in the paper (or ours)
    template: str
    needs_word: bool
    source: str


CRITERIA: tuple[Criterion, ...] = (
    Criterion("coherent", "COHERENCE", _COHERENCE, False, "lindsey"),
    Criterion("affirmative", "AFFIRMATIVE", _AFFIRMATIVE, False, "lindsey"),
    Criterion("early_detection", "AFFIRMATIVE+CORRECT-ID", _AFFIRMATIVE_CORRECT_ID, True, "lindsey"),
    Criterion("identifies", "IDENTIFIES", _IDENTIFIES, True, "remote_introspect"),
    Criterion("refusal", "REFUSAL", _REFUSAL, False, "remote_introspect"),
)
THINKING = Criterion("identifies", "THINKING-ABOUT-WORD", _THINKING_ABOUT_WORD, True, "lindsey")
MERRILL = Criterion("merrill", "MERRILL-FOUR-BOOLEANS", _MERRILL, True, "merrill")
MERRILL_CONTROL = Criterion("merrill", "MERRILL-CONTROL", _MERRILL_CONTROL, False, "merrill")
_MERRILL_KEYS = ("affirmative", "identifies", "immediate", "coherent")
_TEMPLATES_SHA = sha256_hex(
    canonical_json(
        [_HEADER, _FOOTER, *[(c.field, c.template) for c in (*CRITERIA, THINKING, MERRILL, MERRILL_CONTROL)]]
    )
)[:8]
JUDGE_VERSION = f"{PROMPT_VERSION}+{_TEMPLATES_SHA}"


def render(criterion: Criterion, question: str, response: str, word: str | None) -> str:
    if criterion.source == "merrill":
        eq = MERRILL_EQUIVALENTS.get(word or "")
        body = criterion.template.format(
            word=word, equivalents=f" (for {word}: {', '.join(eq)} all count)" if eq else ""
        )
        return _HEADER.format(prompt=question, response=response) + body
    body = criterion.template.format(word=word) if criterion.needs_word else criterion.template
    return _HEADER.format(prompt=question, response=response) + body + _FOOTER


def parse_merrill(answer: str) -> int:
    """Merrill's booleans from the answer's last JSON object, as a bitmask (affirmative=1,
    identifies=2, immediate=4, coherent=8); missing keys are false."""
    import json as _json

    for m in reversed(list(re.finditer(r"\{[^{}]*\}", answer))):
        try:
            obj = _json.loads(m.group(0))
        except ValueError:
            continue
        if isinstance(obj, dict) and any(k in obj for k in _MERRILL_KEYS):
            return sum(1 << i for i, k in enumerate(_MERRILL_KEYS) if obj.get(k) is True)
    raise MalformedAnswer("the judge's answer has no JSON object with Merrill's booleans")


_VERDICT = re.compile(r"\b(YES|NO)\b[^A-Za-z]*$")


def parse_verdict(answer: str) -> bool:
    """YES/NO from the answer's last non-empty line ("**YES**", "Answer: NO." are fine)."""
    lines = [line for line in answer.strip().splitlines() if line.strip()]
    if lines:
        m = _VERDICT.search(lines[-1].strip().upper())
        if m:
            return m.group(1) == "YES"
    raise MalformedAnswer("the judge's last line is not YES or NO")


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class JudgeSpec:
    provider: str  # anthropic | openai
    model: str
    base_url: str
    name: str  # the grader name stored with every grade (no credentials in it)
    version: str

    @property
    def key_env(self) -> str:
        return KEY_ENV[self.provider]


_URL_AT = re.compile(r"@(?=https?://)", re.IGNORECASE)


def parse_judge_spec(spec: str) -> JudgeSpec:
    """`anthropic:MODEL[@BASE_URL]` or `openai:MODEL[@BASE_URL]`; UserError (one line) otherwise.

    Error messages never echo the URL part: it might carry credentials a user pasted there.
    """
    usage = "use anthropic:MODEL, anthropic:MODEL@BASE_URL or openai:MODEL@BASE_URL"
    provider, sep, rest = spec.strip().partition(":")
    if not sep or provider not in DEFAULT_BASE:
        shown = provider if sep else spec.strip().split("@")[0]
        raise UserError(
            f"unknown judge {shown!r}; use heuristic, anthropic:MODEL[@BASE_URL] or openai:MODEL@BASE_URL"
        )
    # Model names may contain "@" (e.g. "claude-x@20250101"); the base URL starts at the first "@"
    # followed by http:// or https://.
    m = _URL_AT.search(rest)
    model, url = (rest[: m.start()], rest[m.end() :]) if m else (rest, None)
    if "://" in model:
        raise UserError(f"bad judge spec for {provider}: the base URL must start with http:// or https://")
    if not model or any(ch.isspace() for ch in model):
        raise UserError(f"bad judge spec for {provider}: missing or malformed model name; {usage}")
    base = (url or DEFAULT_BASE[provider]).rstrip("/")
    try:
        parsed = httpx.URL(base)
        host = parsed.host
    except (httpx.InvalidURL, ValueError):
        raise UserError(f"bad judge base URL for {provider}:{model}: not a URL") from None
    if parsed.userinfo or parsed.query or parsed.fragment:
        # The URL becomes part of the grader name stored in the cache: no credentials in it.
        raise UserError(
            f"judge base URL must not carry credentials, a query or a fragment; put the key in {KEY_ENV[provider]}"
        )
    if not host:
        raise UserError(f"bad judge base URL for {provider}:{model}: needs a host")
    name = f"{provider}:{model}" if base == DEFAULT_BASE[provider] else f"{provider}:{model}@{base}"
    return JudgeSpec(provider, model, base, name, JUDGE_VERSION)


# --------------------------------------------------------------------------- errors


class MalformedAnswer(Exception):
    """The judge answered, but not with a YES/NO last line."""


class JudgeHTTPError(Exception):
    """One failed call; `retryable` decides whether tenacity tries again."""

    def __init__(
        self, message: str, *, status: int | None, retryable: bool, retry_after: float | None = None
    ):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class _Aborted(Exception):
    """Another call of the same run hit a fatal error: do not start new requests."""


class FatalJudgeError(UserError):
    """The judge API refused the work in a way retrying cannot fix (bad key, unknown model...)."""

    exit_code = 3


def _retry_after(headers: httpx.Headers) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# --------------------------------------------------------------------------- the call cache


class CallCache:
    """Answers of past judge calls in a small SQLite file (never the key; never pickles)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS judge_calls (id TEXT PRIMARY KEY, judge TEXT NOT NULL,"
            " version TEXT NOT NULL, criterion TEXT NOT NULL, verdict INTEGER NOT NULL, answer TEXT NOT NULL,"
            " created_at TEXT NOT NULL)"
        )

    def get(self, call_id: str) -> int | None:
        with self._lock:
            row = self.conn.execute("SELECT verdict FROM judge_calls WHERE id=?", (call_id,)).fetchone()
        return None if row is None else int(row[0])

    def put(self, call_id: str, judge: str, version: str, criterion: str, verdict: int, answer: str) -> None:
        from remote_introspect.store.database import now

        with self._lock:
            self.conn.execute(
                "INSERT OR REPLACE INTO judge_calls VALUES (?,?,?,?,?,?,?)",
                (call_id, judge, version, criterion, int(verdict), answer, now()),
            )

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------- the judge


@dataclass
class GradeOutcome:
    grades: list[Grade | None]
    failures: list[str]  # one line per trial that could not be graded (same order, only failures)
    calls_made: int
    calls_cached: int


class LLMJudge:
    """A Grader (base.Grader protocol) that asks an LLM, one call per criterion."""

    def __init__(
        self,
        spec: JudgeSpec | str,
        *,
        api_key: str | None = None,
        call_cache: Path | None = None,
        concurrency: int = 8,
        max_attempts: int = 6,
        timeout_s: float = 120.0,
        backoff_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.spec = parse_judge_spec(spec) if isinstance(spec, str) else spec
        self.name = self.spec.name
        self.version = self.spec.version
        key = api_key if api_key is not None else os.environ.get(self.spec.key_env, "")
        if not key.strip():
            hint = (
                " (any value, e.g. EMPTY, for a server without authentication)"
                if self.spec.provider == "openai"
                else ""
            )
            raise UserError(f"{self.spec.key_env} is not set; the {self.spec.provider} judge needs it{hint}")
        self._key = key.strip()
        if concurrency < 1:
            raise UserError("judge concurrency must be at least 1")
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self._sleep = sleep
        from remote_introspect import retry_policy

        self._retry = retry_policy
        self._settings = retry_policy.RetrySettings(
            max_attempts=max_attempts,
            initial_wait_s=backoff_s,
            max_wait_s=60.0,
            jitter_s=backoff_s,
            max_retry_after_s=MAX_RETRY_AFTER_S,
        )
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s), transport=transport, follow_redirects=False
        )
        self._cache = CallCache(call_cache) if call_cache is not None else None
        self._abort = threading.Event()  # set by the first fatal answer; stops the other threads

    def __repr__(self) -> str:  # never the key
        return f"LLMJudge({self.name!r}, version={self.version!r})"

    def close(self) -> None:
        self._client.close()
        if self._cache is not None:
            self._cache.close()

    def __enter__(self) -> LLMJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one call -------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return scrub(text, self._key)

    def _request(self, prompt: str) -> tuple[str, dict[str, str], dict[str, Any]]:
        s = self.spec
        messages = [{"role": "user", "content": prompt}]
        if s.provider == "anthropic":
            headers = {"x-api-key": self._key, "anthropic-version": ANTHROPIC_VERSION}
            body = {"model": s.model, "max_tokens": MAX_TOKENS, "temperature": 0, "messages": messages}
            return f"{s.base_url}/v1/messages", headers, body
        headers = {"authorization": f"Bearer {self._key}"}
        body = {"model": s.model, "max_tokens": MAX_TOKENS, "temperature": 0, "messages": messages}
        return f"{s.base_url}/chat/completions", headers, body

    def _answer_text(self, data: Any) -> str:
        try:
            if self.spec.provider == "anthropic":
                parts = [b["text"] for b in data["content"] if b.get("type") == "text"]
                if not parts:
                    raise KeyError("no text block")
                return "".join(parts)
            text = data["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not text")
            return text
        except (KeyError, IndexError, TypeError, AttributeError) as err:
            raise JudgeHTTPError(
                f"judge API answer has an unexpected shape ({type(err).__name__})", status=200, retryable=True
            ) from None

    def _call_once(self, prompt: str) -> str:
        if self._abort.is_set():
            raise _Aborted()
        url, headers, body = self._request(prompt)
        try:
            resp = self._client.post(url, headers=headers, json=body)
        except httpx.TransportError as err:
            raise JudgeHTTPError(
                self._scrub(f"{type(err).__name__} talking to {self.spec.base_url}: {err}"),
                status=None,
                retryable=True,
            ) from None
        if resp.status_code == 200:
            try:
                data = resp.json()
            except ValueError:
                raise JudgeHTTPError(
                    "judge API returned malformed JSON", status=200, retryable=True
                ) from None
            return self._answer_text(data)
        detail = self._scrub(" ".join(resp.text.split())[:300])
        status = resp.status_code
        retryable = status in (408, 409, 425, 429) or status >= 500
        if not retryable:
            self._abort.set()
        raise JudgeHTTPError(
            f"HTTP {status} from {self.spec.name}: {detail}",
            status=status,
            retryable=retryable,
            retry_after=_retry_after(resp.headers),
        )

    def _stop_on_repeated_malformed(self) -> Callable[[RetryCallState], bool]:
        malformed = 0

        def stop(rs: RetryCallState) -> bool:
            nonlocal malformed
            if isinstance(rs.outcome.exception() if rs.outcome else None, MalformedAnswer):
                malformed += 1
                return malformed >= 2  # temperature 0: a third try rarely answers differently
            return False

        return stop

    def ask(self, prompt: str, parser: Callable[[str], Any] | None = None) -> tuple[Any, str]:
        """One criterion: (verdict, the judge's full answer), retried per the package's policy."""
        retrying = self._retry.retrying(
            self._settings,
            retry_if=lambda e: (
                isinstance(e, MalformedAnswer) or (isinstance(e, JudgeHTTPError) and e.retryable)
            ),
            stop_if=self._stop_on_repeated_malformed(),
            sleep=self._sleep,
            describe=lambda e: self._scrub(str(e)),
        )
        for attempt in retrying:
            with attempt:
                answer = self._call_once(prompt)
                return (parser or parse_verdict)(answer), answer
        raise AssertionError("unreachable")  # pragma: no cover

    # -- many trials ----------------------------------------------------------------------------

    def call_id(self, criterion: Criterion, prompt: str) -> str:
        return sha256_hex(canonical_json([self.name, self.version, criterion.field, prompt]))

    def grade_many_partial(
        self,
        items: Sequence[tuple[str, str | None]],
        questions: Sequence[str | None] | None = None,
        progress: Callable[[int, int], None] | None = None,
        protocols: Sequence[str | None] | str | None = None,
    ) -> GradeOutcome:
        """Grade what can be graded; a trial with any failed criterion gets None (never a negative).

        Per item, `protocols` picks the rubric (base.rubric_for): Lindsey's prompts (plus ours for
        identifies/refusal; her "thinking about word" question for the positive-control question),
        or Merrill's four booleans in one call plus Lindsey's COHERENCE and AFFIRMATIVE+CORRECT-ID
        for "Lindsey success". The judge reads the concept as words ("all caps"), lower-case."""
        from remote_introspect.grading.base import rubric_for
        from remote_introspect.grading.heuristic import is_thinking_question

        n = len(items)
        qs = (
            [q if q else default_question() for q in questions]
            if questions is not None
            else [default_question()] * n
        )
        ps = list(protocols) if isinstance(protocols, list | tuple) else [protocols] * n
        plans: list[tuple[str, dict[str, str]] | None] = []  # per item: (rubric, key -> call id)
        prompts: dict[str, tuple[Criterion, str]] = {}

        def add(
            plan: dict[str, str], key: str, c: Criterion, question: str, response: str, word: str | None
        ) -> None:
            prompt = render(c, question, response, word)
            cid = self.call_id(c, prompt)
            plan[key] = cid
            prompts[cid] = (c, prompt)

        by_label = {c.label: c for c in CRITERIA}
        for (response, concept), question, proto in zip(items, qs, ps, strict=True):
            word = human_concept(concept) if concept and concept.strip() else None
            rubric = rubric_for(proto)
            if not (response or "").strip():
                plans.append(None)
                continue
            plan: dict[str, str] = {}
            if rubric == "merrill-405b":
                add(plan, "merrill", MERRILL if word else MERRILL_CONTROL, question, response, word)
                add(plan, "lindsey_coherent", by_label["COHERENCE"], question, response, word)
                add(plan, "refusal", by_label["REFUSAL"], question, response, word)
                if word:
                    add(
                        plan,
                        "affirmative_correct_id",
                        by_label["AFFIRMATIVE+CORRECT-ID"],
                        question,
                        response,
                        word,
                    )
            else:
                thinking = is_thinking_question(question)
                for c in CRITERIA:
                    if c.needs_word and word is None:
                        continue
                    if thinking and c.field == "identifies":
                        c = THINKING
                    add(plan, c.field, c, question, response, word)
            plans.append((rubric, plan))

        verdicts: dict[str, int] = {}
        errors: dict[str, str] = {}
        cached = 0
        todo = []
        for cid in prompts:
            hit = self._cache.get(cid) if self._cache is not None else None
            if hit is None:
                todo.append(cid)
            else:
                verdicts[cid] = hit
                cached += 1
        total = len(todo)
        if progress:
            progress(0, total)
        fatal: FatalJudgeError | None = None
        self._abort.clear()
        if todo:
            pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="judge")
            try:
                futures: dict[Future[tuple[bool, str]], str] = {
                    pool.submit(
                        self.ask, prompts[c][1], parse_merrill if prompts[c][0].source == "merrill" else None
                    ): c
                    for c in todo
                }
                pending = set(futures)
                done_n = 0
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        cid = futures[fut]
                        done_n += 1
                        exc = fut.exception()
                        if exc is None:
                            verdict, answer = fut.result()
                            verdicts[cid] = int(verdict)
                            if self._cache is not None:
                                self._cache.put(
                                    cid, self.name, self.version, prompts[cid][0].field, int(verdict), answer
                                )
                        elif isinstance(exc, JudgeHTTPError) and not exc.retryable:
                            fatal = FatalJudgeError(
                                self._scrub(f"judge {self.name} refused the request: {exc}")
                            )
                        elif isinstance(exc, _Aborted):
                            continue
                        elif isinstance(exc, JudgeHTTPError | MalformedAnswer):
                            errors[cid] = self._scrub(f"{prompts[cid][0].label}: {exc}")
                        else:
                            raise exc
                    if progress:
                        progress(done_n, total)
                    if fatal is not None:
                        for fut in pending:
                            fut.cancel()
                        break
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        if fatal is not None:
            raise fatal

        grades: list[Grade | None] = []
        failures: list[str] = []
        for entry, proto in zip(plans, ps, strict=True):
            if entry is None:
                grades.append(empty_response_grade(rubric_for(proto)))
                continue
            rubric, plan = entry
            missing = [errors.get(cid, "not judged") for cid in plan.values() if cid not in verdicts]
            if missing:
                grades.append(None)
                failures.append(missing[0])
                continue
            v = {k: verdicts[cid] for k, cid in plan.items()}
            if rubric == "merrill-405b":
                bits = int(v["merrill"])
                has_word = "affirmative_correct_id" in v
                grades.append(
                    Grade(
                        refusal=bool(v["refusal"]),
                        affirmative=bool(bits & 1),
                        identifies=bool(bits & 2) and has_word,
                        early_detection=bool(bits & 4) and has_word,
                        coherent=bool(bits & 8),
                        rubric=rubric,
                        lindsey_coherent=bool(v["lindsey_coherent"]),
                        affirmative_correct_id=bool(v.get("affirmative_correct_id", False)),
                    )
                )
                continue
            fields: dict[str, Any] = {c.field: False for c in CRITERIA}
            fields.update({f: bool(x) for f, x in v.items()})
            if "early_detection" in v:
                fields["affirmative_correct_id"] = bool(v["early_detection"])
            grades.append(Grade(**fields, rubric=rubric))
        return GradeOutcome(grades, failures, total, cached)

    def grade_many(self, items: Items, questions: Questions = None, protocols: Protocols = None) -> list[Grade]:
        outcome = self.grade_many_partial(items, questions, protocols=protocols)
        if outcome.failures:
            n = len(outcome.failures)
            raise UserError(
                f"judge {self.name} could not grade {n} of {len(items)} responses: {outcome.failures[0]}"
            )
        return [g for g in outcome.grades if g is not None]

    def grade(
        self, response: str, concept: str | None, question: str | None = None, protocol: str | None = None
    ) -> Grade:
        return self.grade_many([(response, concept)], [question], protocol)[0]
