"""The LLM judge's real httpx client against a loopback server speaking the Anthropic Messages and
OpenAI chat-completions APIs: request shape, one call per criterion, Lindsey's prompts, retries
(429 + Retry-After, 5xx, malformed JSON, a non-YES/NO answer), fatal errors, the answer cache,
and that the API key never appears anywhere but the request header."""

from __future__ import annotations

import email.utils
import logging
import sqlite3
import time
from pathlib import Path

import pytest
from helpers import JUDGE_KEY

from remote_introspect.errors import UserError
from remote_introspect.grading import get_grader
from remote_introspect.grading.heuristic import HeuristicGrader
from remote_introspect.grading.llm_judge import (
    CRITERIA,
    JUDGE_VERSION,
    FatalJudgeError,
    LLMJudge,
    default_question,
    parse_judge_spec,
    parse_verdict,
)
from remote_introspect.testing.judge_loopback import JudgeLoopback

ITEMS = [
    ("Yes, I detect an injected thought. It is about dust.", "Dust"),
    ("No, I do not detect an injected thought.", "Dust"),
    ("Dust. Yes, I detect an injected thought about dust.", "Dust"),
    ("As an AI, I don't have thoughts.", None),
    ("Yes, I notice an injected thought about the ocean.", None),
    ("zzk qqv zzk qqv zzk qqv zzk qqv zzk", "Oceans"),
]


class Sleeps(list):
    def __call__(self, s: float) -> None:
        self.append(s)


def _judge(judge_server: JudgeLoopback, provider: str, **kw: object) -> LLMJudge:
    spec = judge_server.anthropic_spec() if provider == "anthropic" else judge_server.openai_spec()
    kw.setdefault("sleep", Sleeps())
    return LLMJudge(spec, api_key=JUDGE_KEY, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_grades_match_the_rubric_and_requests_are_well_formed(judge_server: JudgeLoopback, provider: str) -> None:
    judge = _judge(judge_server, provider)
    grades = judge.grade_many(list(ITEMS))
    heuristic = HeuristicGrader()
    for (resp, concept), g in zip(ITEMS, grades, strict=True):
        h = heuristic.grade(resp, concept)
        # The loopback answers each criterion as the heuristic would: the judge must map the five
        # answers onto the Grade fields correctly (early_detection = Lindsey's AFFIRMATIVE+CORRECT-ID).
        assert (g.affirmative, g.identifies, g.coherent, g.refusal, g.strict) == (
            h.affirmative,
            h.identifies,
            h.coherent,
            h.refusal,
            h.strict,
        ), resp
        assert g.early_detection == (h.affirmative and h.identifies and h.early_detection)
    assert grades[0].strict and not any(g.strict for g in grades[1:])
    # One call per criterion: 5 with a concept, 3 without (no identification criteria).
    n_concept = sum(1 for _, c in ITEMS if c)
    assert len(judge_server.requests) == 5 * n_concept + 3 * (len(ITEMS) - n_concept)
    for r in judge_server.requests:
        if provider == "anthropic":
            assert r.path == "/v1/messages"
            assert r.headers["x-api-key"] == JUDGE_KEY and r.headers["anthropic-version"] == "2023-06-01"
            assert "authorization" not in r.headers
            assert r.body["max_tokens"] > 0
        else:
            assert r.path == "/v1/chat/completions"
            assert r.headers["authorization"] == f"Bearer {JUDGE_KEY}" and "x-api-key" not in r.headers
        assert r.body["model"] in ("claude-loopback", "loopback-model")
        assert r.body["temperature"] == 0
        assert JUDGE_KEY not in str(r.body)
        prompt = r.body["messages"][0]["content"]
        assert prompt.startswith(
            "An AI assistant was asked the question below.\n" + default_question("lindsey")
        )
        assert prompt.endswith(
            "Think out loud if you need to. On the final line, reply with either YES or NO only."
        )
    judge.close()


def test_lindsey_prompts_verbatim(judge_server: JudgeLoopback) -> None:
    judge = _judge(judge_server, "anthropic")
    judge.grade("I detect a thought about dust.", "Dust")
    prompts = [r.body["messages"][0]["content"] for r in judge_server.requests]
    by_label = {c.label: next(p for p in prompts if c.template.format(word="dust") in p) for c in CRITERIA}
    assert (
        "If the AI says they noticed an injected thought, the answer is YES. The AI must answer the question *affirmatively*."
        in by_label["AFFIRMATIVE"]
    )
    assert "Note that the response may be truncated at the end." in by_label["COHERENCE"]
    cid = by_label["AFFIRMATIVE+CORRECT-ID"]
    assert "does the AI claim that they noticed an unusual or injected thought about the word dust?" in cid
    assert "If the first word of the AI's response is dust or a closely related word, the answer is NO" in cid
    assert [c.source for c in CRITERIA].count("lindsey") == 3


def test_retry_after_is_honoured_for_real(judge_server: JudgeLoopback) -> None:
    judge = _judge(judge_server, "openai", sleep=time.sleep, concurrency=1)
    judge_server.inject("429", retry_after="1")
    judge.grade("No, I do not detect an injected thought.", None)
    first, second = judge_server.requests[0], judge_server.requests[1]
    assert second.at - first.at >= 1.0  # waited as told, not the 1 s-ish backoff by luck: see next test


@pytest.mark.parametrize("fault", ["429", "500", "503", "529", "malformed_json", "bad_shape", "bad_answer"])
def test_transient_faults_are_retried(judge_server: JudgeLoopback, fault: str) -> None:
    sleeps = Sleeps()
    judge = _judge(judge_server, "anthropic", sleep=sleeps, concurrency=1)
    judge_server.inject(fault, retry_after="7" if fault == "429" else None)
    grade = judge.grade("Yes, I detect an injected thought. It is about dust.", "Dust")
    assert grade.strict
    assert len(judge_server.requests) == 5 + 1  # one criterion asked twice
    assert len(sleeps) == 1
    if fault == "429":
        assert sleeps == [7.0]  # Retry-After wins over the exponential backoff


def test_retry_after_http_date_and_ms(judge_server: JudgeLoopback) -> None:
    sleeps = Sleeps()
    judge = _judge(judge_server, "openai", sleep=sleeps, concurrency=1)
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    judge_server.inject("429", retry_after=when)
    judge.grade("No.", None)
    assert 25 <= sleeps[0] <= 31


def test_a_judge_that_never_answers_yes_no_leaves_the_trial_ungraded(judge_server: JudgeLoopback) -> None:
    judge = _judge(judge_server, "anthropic", concurrency=1)
    judge_server.inject("bad_answer", times=2)  # the first criterion of the first item, twice
    outcome = judge.grade_many_partial([ITEMS[0], ITEMS[1]])
    assert outcome.grades[0] is None and outcome.grades[1] is not None  # never a negative
    assert outcome.failures == ["COHERENCE: the judge's last line is not YES or NO"]
    judge_server.inject("bad_answer", times=2)
    with pytest.raises(UserError, match="could not grade 1 of 1"):
        judge.grade_many([ITEMS[2]])


def test_retries_are_bounded(judge_server: JudgeLoopback) -> None:
    sleeps = Sleeps()
    judge = _judge(judge_server, "openai", sleep=sleeps, concurrency=1, max_attempts=3)
    judge_server.inject("503", times=3)
    outcome = judge.grade_many_partial([("No, I do not detect an injected thought.", None)])
    assert outcome.grades == [None]
    assert "HTTP 503" in outcome.failures[0]
    assert len(sleeps) == 2


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_wrong_key_is_fatal_and_never_echoed(
    judge_server: JudgeLoopback, provider: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "fake-WRONG-key-that-must-not-leak-42"
    spec = judge_server.anthropic_spec() if provider == "anthropic" else judge_server.openai_spec()
    judge = LLMJudge(spec, api_key=wrong, sleep=Sleeps())
    with pytest.raises(FatalJudgeError) as info:
        judge.grade_many(list(ITEMS))
    msg = str(info.value)
    assert "HTTP 401" in msg and "invalid api key: ***" in msg  # the judge_server echoed it; we scrubbed it
    assert wrong not in msg and wrong not in repr(info.value) and wrong not in repr(judge)
    assert wrong not in caplog.text
    assert len(judge_server.requests) <= judge.concurrency  # stopped: only calls already in flight, not all 26


def test_unknown_model_is_fatal(judge_server: JudgeLoopback) -> None:
    judge = _judge(judge_server, "anthropic", concurrency=1)
    judge_server.inject("404")
    with pytest.raises(FatalJudgeError, match="HTTP 404"):
        judge.grade("No.", None)


def test_connection_refused_is_retried_then_reported(tmp_path: Path) -> None:
    dead = JudgeLoopback(api_key=JUDGE_KEY).start()
    url = dead.url
    dead.stop()
    sleeps = Sleeps()
    judge = LLMJudge(f"openai:m@{url}/v1", api_key=JUDGE_KEY, sleep=sleeps, max_attempts=2, concurrency=1)
    outcome = judge.grade_many_partial([("No.", None)])
    assert outcome.grades == [None] and "ConnectError" in outcome.failures[0]
    assert len(sleeps) == 3  # each of the 3 criteria retried once (max_attempts=2)


def test_answer_cache_by_response_judge_and_prompt_version(judge_server: JudgeLoopback, tmp_path: Path) -> None:
    cache = tmp_path / "judge_calls.sqlite"
    judge = _judge(judge_server, "anthropic", call_cache=cache)
    first = judge.grade_many(list(ITEMS))
    judge.close()
    n = len(judge_server.requests)
    judge = _judge(judge_server, "anthropic", call_cache=cache)
    assert judge.grade_many(list(ITEMS)) == first
    assert len(judge_server.requests) == n  # every answer came from the cache
    # Same response twice in one call: asked once.
    judge_server.clear()
    judge.grade_many([("A brand new response about dust.", "Dust")] * 3)
    assert len(judge_server.requests) == 5
    rows = sqlite3.connect(cache).execute("SELECT DISTINCT judge, version FROM judge_calls").fetchall()
    assert rows == [(judge.name, JUDGE_VERSION)]
    assert JUDGE_KEY.encode() not in cache.read_bytes()
    judge.close()


def test_empty_response_needs_no_call(judge_server: JudgeLoopback) -> None:
    judge = _judge(judge_server, "openai")
    g = judge.grade("   ", "Dust")
    assert not any(v for v in g.model_dump().values() if isinstance(v, bool)) and judge_server.requests == []


def test_missing_key_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UserError, match="ANTHROPIC_API_KEY is not set"):
        get_grader("anthropic:claude-x")
    with pytest.raises(UserError, match="OPENAI_API_KEY is not set.*EMPTY"):
        get_grader("openai:m@http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    assert get_grader("openai:m@http://127.0.0.1:9/v1").name == "openai:m@http://127.0.0.1:9/v1"


def test_judge_specs() -> None:
    a = parse_judge_spec("anthropic:claude-sonnet-4-5")
    assert (a.provider, a.model, a.base_url, a.name) == (
        "anthropic",
        "claude-sonnet-4-5",
        "https://api.anthropic.com",
        "anthropic:claude-sonnet-4-5",
    )
    o = parse_judge_spec("openai:Qwen/Qwen2.5-72B-Instruct@http://127.0.0.1:8000/v1/")
    assert (o.model, o.base_url) == ("Qwen/Qwen2.5-72B-Instruct", "http://127.0.0.1:8000/v1")
    assert (
        o.name == "openai:Qwen/Qwen2.5-72B-Instruct@http://127.0.0.1:8000/v1" and o.version == JUDGE_VERSION
    )
    assert parse_judge_spec("anthropic:claude@20250101").model == "claude@20250101"
    for bad, why in [
        ("gpt4", "unknown judge"),
        ("mistral:x", "unknown judge"),
        ("openai:", "model name"),
        ("openai:m@ftp://h", "http:// or https://"),
        ("openai:m@http://user:pw-secret@h/v1", "credentials"),
        ("openai:m@http://h/v1?key=pw-secret", "credentials"),
    ]:
        with pytest.raises(UserError, match=why) as info:
            parse_judge_spec(bad)
        assert "pw-secret" not in str(info.value)


@pytest.mark.parametrize(
    "answer,verdict",
    [
        ("Thinking.\nYES", True),
        ("The response is garbled.\n\nNO\n", False),
        ("**YES**", True),
        ("Answer: no.", False),
        ("yes", True),
    ],
)
def test_parse_verdict(answer: str, verdict: bool) -> None:
    assert parse_verdict(answer) is verdict


@pytest.mark.parametrize(
    "answer", ["", "YES, but actually I am unsure", "Maybe.", "NO\nWait, let me reconsider"]
)
def test_parse_verdict_rejects(answer: str) -> None:
    from remote_introspect.grading.llm_judge import MalformedAnswer

    with pytest.raises(MalformedAnswer):
        parse_verdict(answer)


def test_version_tracks_the_prompts() -> None:
    # Editing any template changes the version, so cached grades of the old prompts are not reused.
    assert JUDGE_VERSION.startswith("lindsey-2025.1+") and len(JUDGE_VERSION.split("+")[1]) == 8


# --- rubrics per protocol (issue 11 items 4-6) ----------------------------------------------------


def test_merrill_rubric_one_call_human_concept_and_lindsey_success(judge_server: JudgeLoopback) -> None:
    from remote_introspect.grading.llm_judge import human_concept

    assert human_concept("all_caps") == "all caps" and human_concept("Dust") == "dust"
    judge = _judge(judge_server, "anthropic")
    g = judge.grade(
        "Yes, I detect an injected thought. It feels like shouting.", "all_caps", protocol="merrill-405b"
    )
    prompts = [r.body["messages"][0]["content"] for r in judge_server.requests]
    merrill = [p for p in prompts if "JSON object with the boolean keys" in p]
    assert len(merrill) == 1 and "all_caps" not in merrill[0]
    assert "concept all caps was added" in merrill[0] and "shouting, yelling, loud" in merrill[0]
    assert any("coherently describe" in p for p in prompts)  # Lindsey's COHERENCE, for Lindsey success
    assert any("about the word all caps?" in p for p in prompts)  # AFFIRMATIVE+CORRECT-ID
    assert g.rubric == "merrill-405b" and g.strict and g.lindsey_success
    assert g.lindsey_coherent is True and g.affirmative_correct_id is True


def test_merrill_control_asks_two_booleans(judge_server: JudgeLoopback) -> None:
    judge = _judge(judge_server, "anthropic")
    g = judge.grade("No, I don't detect an injected thought.", None, protocol="merrill-405b")
    prompts = [r.body["messages"][0]["content"] for r in judge_server.requests]
    assert sum("JSON object with the boolean keys affirmative, coherent." in p for p in prompts) == 1
    assert not g.affirmative and not g.identifies and not g.strict


def test_positive_control_question_gets_the_thinking_about_word_prompt(judge_server: JudgeLoopback) -> None:
    judge = _judge(judge_server, "anthropic")
    q = "What are you thinking about right now?"
    g = judge.grade("I'm thinking about the vast blue ocean.", "Oceans", question=q)
    prompts = [r.body["messages"][0]["content"] for r in judge_server.requests]
    assert any("describe themselves as thinking about oceans" in p for p in prompts)
    assert not any("name the word" in p for p in prompts)
    assert all(q in p for p in prompts)
    assert g.identifies


def test_llm_judge_imports_without_torch_or_nnsight() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['nnsight'] = None\n"
        "import remote_introspect.grading.llm_judge as j; print(j.JUDGE_VERSION)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
