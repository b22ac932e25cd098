"""The self-prediction harness end to end on tiny models with planted self-knowledge
(testing/planted_self_model.py): real weights, real batched greedy generation, the real store,
parsing and scoring. A model whose hypothetical answers are derived from its own object-level
answers must beat cross-prediction with a CI excluding 0; with the plant removed (the same
answers, the link to its own cut) the CI must cover 0."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from helpers import invoke

from remote_introspect.execution import self_prediction as run_sp
from remote_introspect.execution.runner import RunOptions
from remote_introspect.reporting import self_prediction as rep
from remote_introspect.reporting.audit import run_audit
from remote_introspect.reporting.audit_text import format_audit
from remote_introspect.retry_policy import RetrySettings
from remote_introspect.store.results_frame import open_readonly
from remote_introspect.testing.planted_self_model import build_planted_model

BASE = run_sp.SelfPredictConfig(models=(), tasks=("animals",), n=30, seed=0, properties=("first_word", "ends_with_vowel"))
FAST_RETRY = RetrySettings(max_attempts=2, initial_wait_s=0.01, max_wait_s=0.02, jitter_s=0.0, long_wait_s=0.02)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("planted")
    return {
        "A": build_planted_model(root, BASE, planted=True, answer_seed=1),
        "A_removed": build_planted_model(root, BASE, planted=False, answer_seed=1),
        "B": build_planted_model(root, BASE, planted=False, answer_seed=2),
    }


def _config(*models: Path) -> run_sp.SelfPredictConfig:
    return run_sp.SelfPredictConfig(
        models=tuple(str(m) for m in models), tasks=BASE.tasks, n=BASE.n, seed=BASE.seed, properties=BASE.properties
    )


def _scores(cache: Path, result: run_sp.SelfPredictRun) -> tuple[rep.Answers, list]:
    conn = open_readonly(cache)
    try:
        answers = rep.load_answers(conn, [(r.entry, [t.key for t in r.trials]) for r in result.runs])
    finally:
        conn.close()
    return answers, rep.score_all(answers)


@pytest.fixture(scope="module")
def shared_cache(planted: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Both comparisons in one cache: B's trials run once and are reused by the second."""
    cache = tmp_path_factory.mktemp("sp") / "cache"
    with_plant = run_sp.run(_config(planted["A"], planted["B"]), RunOptions(cache_root=cache))
    without = run_sp.run(_config(planted["A_removed"], planted["B"]), RunOptions(cache_root=cache))
    return {"cache": cache, "with": with_plant, "without": without}


def test_planted_answers_are_what_the_harness_generated(planted, shared_cache) -> None:
    """The plant is real: the stored object-level responses are the answers solved into lm_head."""
    wanted = json.loads((planted["A"] / "planted_answers.json").read_text())
    with sqlite3.connect(shared_cache["cache"] / "results.sqlite") as c:
        rows = [(json.loads(t), r) for t, r in c.execute("SELECT trial_json, response FROM trials")]
    a_model = shared_cache["with"].runs[0].trials[0].model
    got = {
        f"{t['task']}|{t['item_id']}|{t['property']}": r
        for t, r in rows
        if t["model"] == a_model.model_dump(mode="json")
    }
    assert len(got) == 30 * 3 and got == wanted


def test_planted_self_knowledge_beats_cross_prediction(shared_cache) -> None:
    result = shared_cache["with"]
    assert result.complete
    answers, scores = _scores(shared_cache["cache"], result)
    a = scores[0]
    assert a.accuracy[a.target].k == a.accuracy[a.target].n == 60  # self: every prediction right
    d = a.self_minus_best_cross
    assert d is not None and d.lo > 0 and d.p_value < 0.001, d
    assert a.self_minus_mode.lo > 0
    # B's hypotheticals describe other items' answers: its self-prediction is no better than cross.
    b = scores[1]
    assert b.self_minus_best_cross is not None and b.self_minus_best_cross.lo <= 0 <= b.self_minus_best_cross.hi


def test_plant_removed_the_difference_covers_zero(shared_cache) -> None:
    result = shared_cache["without"]
    assert result.complete
    _, scores = _scores(shared_cache["cache"], result)
    d = scores[0].self_minus_best_cross
    assert d is not None and d.lo <= 0 <= d.hi, d
    assert scores[0].accuracy[scores[0].target].rate < 0.6


def test_audit_counts_every_trial_and_none_is_ungraded(shared_cache) -> None:
    a = run_audit(shared_cache["cache"])
    t = a["totals"]
    assert (t["trials"], t["done"], t["failed"], t["ungraded"]) == (3 * 90, 3 * 90, 0, 0)
    assert a["status"] == "clean" and a["exit_code"] == 0
    assert sorted(e["trials"]["planned"] for e in a["experiments"]) == [90, 90, 90, 90]
    # every answer is usable (scored by exact parsing, no judge), and the text says so
    assert t["usable"] == 3 * 90
    assert sorted(e["self_predict_answers"] for e in a["experiments"]) == [90, 90, 90, 90]
    text = format_audit(a)
    assert "self-prediction answers, scored by exact parsing" in text
    assert "(no usable trials)" not in text and "0 concept(s)" not in text


def test_rerun_does_no_model_work_and_prints_the_same_table(planted, shared_cache, count_generate) -> None:
    cache = shared_cache["cache"]
    first = shared_cache["with"]
    again = run_sp.run(_config(planted["A"], planted["B"]), RunOptions(cache_root=cache))
    assert count_generate == [] and again.complete  # nothing generated
    assert [t.key for r in again.runs for t in r.trials] == [t.key for r in first.runs for t in r.trials]
    assert rep.format_table(*_scores(cache, first)) == rep.format_table(*_scores(cache, again))


def test_failed_batch_is_failed_never_a_wrong_prediction(planted, monkeypatch, tmp_path) -> None:
    from remote_introspect.execution.backends.local import LocalExecutor

    real = LocalExecutor.generate
    broken = {"left": 1}

    def flaky(self, batch, on_submitted):
        # B's first hypothetical batch dies (every attempt) on the first run.
        if str(self.loaded.ref.name).endswith(planted["B"].name) and batch.max_new_tokens == 6:
            if broken["left"]:
                broken["left"] -= 1
                on_submitted(None)
                raise RuntimeError("worker died")
        return real(self, batch, on_submitted)

    monkeypatch.setattr(LocalExecutor, "generate", flaky)
    cache = tmp_path / "c"
    opts = RunOptions(cache_root=cache, retry=FAST_RETRY, batch_rows=16)
    cfg = _config(planted["A"], planted["B"])
    first = run_sp.run(cfg, opts)
    assert not first.complete and first.runs[1].failed_batches == 1
    answers, scores = _scores(cache, first)
    assert answers.counts[str(planted["B"])]["failed"] == 16
    cross = scores[0].accuracy[str(planted["B"])]
    assert cross.n == 60 - 16  # the failed predictions are left out, not scored wrong
    audit = run_audit(cache)
    assert audit["totals"]["failed"] == 16 and "RuntimeError" in audit["failures_by_class"]
    assert audit["exit_code"] == 1  # incomplete, not corrupt, and nothing counted
    again = run_sp.run(cfg, opts)  # the rerun retries exactly the failed trials
    assert again.complete and run_audit(cache)["exit_code"] == 0
    assert again.runs[0].executed_batches == 0 and again.runs[1].executed_batches == 1


def test_cli_prints_the_table_and_bad_input_writes_nothing(planted, shared_cache, count_generate, tmp_path) -> None:
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(shared_cache["cache"], cache)
    code, out, err = invoke("self-predict", "--models", f"{planted['A']},{planted['B']}", "--tasks", "animals",
                            "--n", "30", "--properties", "first_word,ends_with_vowel", "--cache", cache)  # fmt: skip
    assert code == 0, err
    assert count_generate == []  # all cached
    assert "self − best cross" in out and "60/60 100.0%" in out and "Binder" in out
    for args, expected in (
        (["--models", "no-such-model"], "unknown model"),
        (["--models", "tiny", "--tasks", "planets"], "unknown task"),
        (["--models", "tiny", "--n", "0"], "--n must be"),
        (["--models", "tiny,tiny"], "twice"),
        (["--models", "tiny", "--properties", "colour"], "unknown propert"),
        (["--models", "405b", "--backend", "local"], "remote-only"),
    ):
        bad = tmp_path / "bad"
        code, out, err = invoke("self-predict", *args, "--cache", bad)
        lines = [x for x in err.splitlines() if x.strip()]
        assert code != 0 and len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], err
        assert not bad.exists() and out == ""


def test_remote_models_run_through_the_ndif_loopback_in_one_request_per_batch(planted, shared_cache, monkeypatch, tmp_path) -> None:
    """`--backend ndif` sends every listed model to the (loopback) NDIF server: the same keys and
    token ids as the local run, one request per batch."""
    from remote_introspect.testing.ndif_loopback import DEFAULT_API_KEY, LoopbackNDIF

    monkeypatch.setenv("NDIF_API_KEY", DEFAULT_API_KEY)
    models = (planted["A"], planted["B"])
    with LoopbackNDIF({str(m): m for m in models}, preload=True) as server:
        cache = tmp_path / "remote"
        opts = RunOptions(cache_root=cache, backend="ndif", ndif_host=server.url, batch_rows=32,
                          retry=FAST_RETRY, poll_initial_s=0.01, job_timeout_s=60.0)  # fmt: skip
        result = run_sp.run(_config(*models), opts)
        assert result.complete
        # 90 trials per model: 30 object rows (1 batch), 60 hypothetical rows (2 batches of 32).
        assert server.requests == 2 * 3
        assert sum(r.executed_batches for r in result.runs) == 6
        again = run_sp.run(_config(*models), opts)
        assert again.complete and server.requests == 6  # nothing left to run: no request at all

    def rows(c: Path) -> dict[str, str]:
        with sqlite3.connect(c / "results.sqlite") as conn:
            return dict(conn.execute("SELECT key, response_ids FROM trials WHERE status='done'"))

    remote, local = rows(cache), rows(shared_cache["cache"])
    assert len(remote) == 180 and all(local[k] == v for k, v in remote.items())
    with sqlite3.connect(cache / "results.sqlite") as conn:
        assert {r[0] for r in conn.execute("SELECT DISTINCT backend FROM trials")} == {"ndif"}


def test_report_has_a_self_prediction_section(shared_cache, tmp_path) -> None:
    from remote_introspect.reporting.report import build_report

    build_report(shared_cache["cache"], tmp_path / "report")
    md = (tmp_path / "report" / "summary.md").read_text()
    html = (tmp_path / "report" / "index.html").read_text()
    # One section per run recorded in the cache: (A, B) and (A with the plant removed, B).
    assert md.count("## Self-prediction:") == 2 and html.count("<h2>Self-prediction:") == 2
    assert "60/60 100.0%" in md and "self − best cross" in html
