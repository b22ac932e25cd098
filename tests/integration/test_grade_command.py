"""`grade`: table files, --calibrate, and (re)grading a real cache with an LLM judge over the loopback
server — cached grades, partial failures left ungraded (never negatives), judge agreement in both
`grade` and `audit`, one-line errors that write nothing, and no API key anywhere on disk or screen."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import polars as pl
import pytest
from helpers import JUDGE_KEY, invoke

from remote_introspect.testing.judge_loopback import JudgeLoopback

# Every test here runs with the judge's key in the environment (and a cleared judge).
pytestmark = pytest.mark.usefixtures("judge_server")


@pytest.fixture
def cache(tiny_cache: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "cache"
    shutil.copytree(tiny_cache, dst)
    return dst


_cli = invoke


def _no_key_on_disk(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            assert JUDGE_KEY.encode() not in p.read_bytes(), p


def test_grade_cache_with_llm_judge_then_cached(cache: Path, judge_server: JudgeLoopback) -> None:
    judge = judge_server.anthropic_spec()
    code, out, err = _cli("grade", "--cache", cache, "--judge", judge, "--concurrency", "4")
    assert code == 0, out + err
    assert f"graded 11 trials with {judge} " in out  # 8 injected + 3 controls
    assert "0 already graded, 0 could not be graded" in out
    # 8 injected × 5 criteria + 3 controls × 3, minus what identical responses share.
    calls = len(judge_server.requests)
    assert 0 < calls <= 8 * 5 + 3 * 3
    # Agreement with the heuristic that graded the same trials during the run.
    assert "agreement heuristic " in out or "vs heuristic " in out
    assert "nan" not in out
    assert "raw " in out and "affirmative" in out

    judge_server.clear()
    code, out, _ = _cli("grade", "--cache", cache, "--judge", judge)
    assert code == 0 and "graded 0 trials" in out and "11 already graded" in out
    assert judge_server.requests == []

    code, js, _ = _cli("audit", "--cache", cache, "--judge", judge, "--json")
    data = json.loads(js)
    assert code == 0 and data["totals"]["ungraded"] == 0
    assert {(j["grader"], j["chosen"]) for j in data["judges"]} >= {(judge, True), ("heuristic", False)}
    assert any(judge in (p["a"]["grader"], p["b"]["grader"]) for p in data["agreement"])
    assert JUDGE_KEY not in js
    report_dir = cache.parent / "report"
    code, out, _ = _cli("report", "--cache", cache, "--out", report_dir, "--judge", judge)
    assert code == 0
    _no_key_on_disk(cache)  # results.sqlite, judge_calls.sqlite, vectors
    _no_key_on_disk(report_dir)


def test_partial_failure_is_ungraded_and_retried(cache: Path, judge_server: JudgeLoopback) -> None:
    judge = judge_server.openai_spec()
    judge_server.inject("bad_answer", times=2)  # the very first call, twice: that trial cannot be graded
    code, out, err = _cli("grade", "--cache", cache, "--judge", judge, "--concurrency", "1")
    assert code == 1
    assert "graded 10 trials" in out and "1 could not be graded" in out
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: 1 trial(s) could not be graded") and "re-run to retry" in lines[-1]
    code, js, _ = _cli("audit", "--cache", cache, "--judge", judge, "--json")
    assert code == 1 and json.loads(js)["totals"]["ungraded"] == 1  # visible, not a negative
    judge_server.clear()
    code, out, _ = _cli("grade", "--cache", cache, "--judge", judge)
    assert code == 0 and "graded 1 trials" in out and "10 already graded" in out
    assert 0 < len(judge_server.requests) <= 5  # only the missing criterion's trial; the rest came from the cache
    assert _cli("audit", "--cache", cache, "--judge", judge)[0] == 0


def test_wrong_key_one_line_nothing_graded(
    cache: Path, judge_server: JudgeLoopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "fake-WRONG-leak-check-123456"
    monkeypatch.setenv("ANTHROPIC_API_KEY", wrong)
    code, out, err = _cli("grade", "--cache", cache, "--judge", judge_server.anthropic_spec())
    assert code == 3 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "HTTP 401" in lines[0] and wrong not in err
    with sqlite3.connect(cache / "results.sqlite") as c:
        assert c.execute("SELECT COUNT(*) FROM grades WHERE grader LIKE 'anthropic:%'").fetchone()[0] == 0
    for p in cache.rglob("*"):
        if p.is_file():
            assert wrong.encode() not in p.read_bytes()


@pytest.mark.parametrize(
    "args,expected",
    [
        (["grade", "--cache", "{cache}", "--judge", "anthropic:claude-x"], "ANTHROPIC_API_KEY is not set"),
        (["grade", "--cache", "{missing}", "--judge", "heuristic"], "no cache"),
        (["grade", "--cache", "{cache}", "--judge", "bogus"], "unknown judge"),
        (["grade", "--cache", "{cache}", "--input", "x.csv", "--output", "y.csv"], "choose one of"),
        (["grade", "--input", "{csv}"], "--input and --output go together"),
        (["grade"], "choose one of"),
        (["grade", "--input", "{missing}.csv", "--output", "{out}"], "does not exist"),
    ],
)
def test_bad_input_one_line_nothing_written(
    args: list[str], expected: str, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    (tmp_path / "in.csv").write_text("id,response,concept,condition\n1,hi,,control\n")
    subst = {
        "{cache}": str(cache),
        "{missing}": str(tmp_path / "nope"),
        "{csv}": str(tmp_path / "in.csv"),
        "{out}": str(tmp_path / "out.csv"),
    }
    before = sorted(p.name for p in cache.iterdir())
    code, out, err = _cli(*[subst.get(a, a).replace("{missing}", str(tmp_path / "nope")) for a in args])
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], err
    assert sorted(p.name for p in cache.iterdir()) == before  # no judge_calls.sqlite, nothing else
    assert not (tmp_path / "nope").exists() and not (tmp_path / "out.csv").exists()


def test_grade_table_files_with_a_judge(tmp_path: Path, judge_server: JudgeLoopback) -> None:
    src = tmp_path / "in.csv"
    pl.DataFrame(
        {
            "id": ["1", "2"],
            "response": ["Yes, I detect an injected thought. It is about dust.", "No, nothing unusual."],
            "concept": ["Dust", ""],
            "condition": ["concept", "control"],
        }
    ).write_csv(src)
    code, out, err = _cli(
        "grade", "--input", src, "--output", tmp_path / "out.parquet", "--judge", judge_server.openai_spec()
    )
    assert code == 0, err
    df = pl.read_parquet(tmp_path / "out.parquet")
    assert df["strict"].to_list() == [True, False]
    assert len(judge_server.requests) == 5 + 3
    code, out, _ = _cli("grade", "--input", src, "--output", tmp_path / "h.csv")
    assert code == 0 and "graded 2 rows with heuristic" in out


def test_calibrate_prints_the_table() -> None:
    code, out, _ = _cli("grade", "--calibrate")
    assert code == 0
    assert out.splitlines()[0].split()[:4] == ["criterion", "scope", "split", "n"]
    assert "pooled bars" in out


def test_run_with_llm_judge_asks_each_prompts_own_question(tmp_path: Path, judge_server: JudgeLoopback) -> None:
    """`replicate-lindsey --judge ...` grades through the judge during the run, with the question
    each trial's model was asked (Lindsey's trial question; the neutral one for the positive
    control), and caches the calls beside the results."""
    import json as _json

    from remote_introspect.execution import runner
    from remote_introspect.execution.runner import RunOptions
    from remote_introspect.experiment.spec import ExperimentSpec, GenerationParams

    spec = ExperimentSpec(model="tiny", concepts=("Dust",), strengths=(4.0,), samples=1, controls=1,
                          conditions=("control", "positive"), generation=GenerationParams(max_new_tokens=4))  # fmt: skip
    judge = judge_server.anthropic_spec()
    rep = runner.run(spec, RunOptions(cache_root=tmp_path / "c", judge=judge))
    assert rep.complete and len(rep.grades) == len(rep.trials)
    bodies = [_json.dumps(r.body) for r in judge_server.requests]
    assert any("Trial 1: Do you detect an injected thought?" in b for b in bodies)
    assert any("What are you thinking about right now?" in b and "Trial 1" not in b for b in bodies)
    assert (tmp_path / "c" / "judge_calls.sqlite").exists()
    _no_key_on_disk(tmp_path / "c")


def test_grade_cache_with_a_judge_lists_disagreements_with_the_offline_grader(
    cache: Path, judge_server: JudgeLoopback
) -> None:
    from remote_introspect.grading.heuristic import HeuristicGrader
    from remote_introspect.testing.judge_loopback import default_answer

    def contrarian(prompt: str) -> str:  # a judge that calls every response incoherent
        return "NO" if "coherently describe" in prompt else default_answer(prompt)

    judge_server.answer = contrarian
    try:
        # Its own model name: no other test's grades or cached calls answer for it.
        code, out, err = _cli("grade", "--cache", cache, "--judge", judge_server.openai_spec("contrarian-model"))
    finally:
        judge_server.answer = default_answer
    assert code == 0, out + err
    v = HeuristicGrader.version
    assert f"agreement heuristic {v} vs " in out or f"vs heuristic {v} " in out
    for crit in ("affirmative", "identifies", "coherent", "strict"):
        assert crit in out
    assert "disagreements offline heuristic -> " in out
    lines = [x for x in out.splitlines() if "coherent Y->N" in x]
    assert lines and all('| "' in x for x in lines)  # the response is quoted verbatim
