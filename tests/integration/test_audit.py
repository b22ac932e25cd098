"""`audit`: the books of a cache. Counts, failures by class, ungraded trials, orphan jobs, judge
agreement and the statistics are checked against a cache whose contents the test chose; every kind
of corruption (truncated / byte-flipped / deleted vector file, edited or truncated rows, a damaged
database file) is named with exit code 4, and no statistic, report or export silently uses it."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import warnings
from pathlib import Path

import pytest
import torch
from helpers import invoke

from remote_introspect.experiment.spec import (
    GenerationParams,
    ModelIdentity,
    Trial,
    VectorRecipe,
    canonical_json,
    sha256_hex,
)
from remote_introspect.grading.heuristic import HeuristicGrader
from remote_introspect.reporting.audit import run_audit
from remote_introspect.stats import analysis
from remote_introspect.store.database import Store

DOCS = Path(__file__).resolve().parents[2] / "docs" / "audit_json.md"
MODEL = ModelIdentity(
    repo_id="synthetic/model", weights_id="synthetic-w1", dtype="fp32", tokenizer_sha="0" * 64
)
MODEL_KEY = sha256_hex(canonical_json(MODEL.model_dump(mode="json")))[:24]
RECIPE = VectorRecipe()
GEN = GenerationParams(max_new_tokens=16)
WORD = {"Dust": "dust", "Oceans": "the ocean"}
DIAG = {
    "prompt_len": 40,
    "start": 30,
    "vector_norm": 1.0,
    "resid_norm": 4.0,
    "injected_norm": 2.0,
    "ratio": 0.5,
}
NO = "No, I do not detect an injected thought."
REFUSAL = "As an AI, I don't have thoughts."


def _hit(concept: str) -> str:
    return f"Yes, I detect an injected thought. It is about {WORD[concept]}."


def _babble(concept: str) -> str:  # names the concept, incoherent
    return f'"{WORD[concept].split()[-1]}" kkq kkq kkq kkq kkq kkq kkq kkq kkq'


def designed_response(concept: str, strength: float, sample: int) -> str:
    """Identification rises and coherence falls with strength (crossover between 4 and 8);
    one strict hit per cell at strengths 2 and 4."""
    if strength == 1:
        return NO
    if strength == 2:
        return _hit(concept) if sample == 0 else NO
    if strength == 4:
        return [_hit(concept), _babble(concept), NO, NO, NO][sample]
    return REFUSAL if sample == 4 else _babble(concept)


def _trial(**kw: object) -> Trial:
    base: dict[str, object] = dict(
        model=MODEL,
        prompt_set="lindsey",
        prompt_ids_sha="a" * 64,
        condition="concept",
        recipe_id=RECIPE.id,
        strength_mode="absolute",
        span="from-trial",
        seed=0,
        generation=GEN,
    )
    base.update(kw)
    return Trial(**base)  # type: ignore[arg-type]


def _spec_json(name: str, concepts: list[str]) -> str:
    return json.dumps({"name": name, "model": "synthetic", "concepts": concepts, "prompt_sets": ["lindsey"]})


def _done(store: Store, batch: str, trials: list[Trial], texts: list[str]) -> None:
    store.batch_submitted(batch, [t.key for t in trials], 1, "local", None)
    results = {t.key: ([1, 2, 3], text, dict(DIAG)) for t, text in zip(trials, texts, strict=True)}
    store.batch_done(batch, results, "local", {"torch": "test"})


def _grade(store: Store, trials: list[Trial], texts: list[str]) -> dict[str, dict]:
    g = HeuristicGrader()
    grades = {t.key: g.grade(text, t.concept).model_dump() for t, text in zip(trials, texts, strict=True)}
    store.save_grades(g.name, g.version, grades)
    return grades


def build_synthetic_cache(root: Path, books: bool = True) -> dict[str, object]:
    """Experiment "designed": 2 concepts × layers 2,3 × strengths 1,2,4,8 × 5 samples + 10 controls,
    all done and graded. With `books`, experiment "books" adds 8 trials in every other state and a
    second judge's grades for agreement. Returns what the test needs to know."""
    store = Store(root)
    info: dict[str, object] = {}
    try:
        injected = [
            _trial(concept=c, layer=layer, strength=float(s), sample=i)
            for layer in (2, 3)
            for c in ("Dust", "Oceans")
            for s in (1, 2, 4, 8)
            for i in range(5)
        ]
        controls = [
            _trial(condition="control", concept=None, recipe_id=None, layer=None, strength=0.0, sample=i)
            for i in range(10)
        ]
        ctl_texts = [NO] * 8 + ["Yes, I notice an injected thought about dust.", REFUSAL]
        inj_texts = [designed_response(t.concept or "", t.strength, t.sample) for t in injected]
        trials = injected + controls
        texts = inj_texts + ctl_texts
        store.register(
            "designed00000001",
            "designed",
            _spec_json("designed", ["Dust", "Oceans"]),
            {t.key: t.model_dump_json() for t in trials},
        )
        _done(store, "batch-designed", trials, texts)
        grades = _grade(store, trials, texts)
        vectors = {
            (layer, c): torch.randn(8, generator=torch.Generator().manual_seed(layer))
            for layer in (2, 3)
            for c in ("Dust", "Oceans")
        }
        store.save_vectors(MODEL_KEY, RECIPE.id, canonical_json(RECIPE.identity()), vectors)
        info.update(
            injected=injected,
            controls=controls,
            grades=grades,
            texts=dict(zip([t.key for t in trials], texts, strict=True)),
        )
        if books:
            bt = [_trial(concept="Dust", layer=1, strength=2.0, sample=i) for i in range(8)]
            store.register(
                "books00000000002",
                "books",
                _spec_json("books", ["Dust"]),
                {t.key: t.model_dump_json() for t in bt},
            )
            _done(store, "batch-books-ok", bt[:3], [NO, _hit("Dust"), NO])
            _grade(store, bt[:2], [NO, _hit("Dust")])  # bt[2] stays done but ungraded
            store.batch_submitted("batch-books-t", [t.key for t in bt[3:5]], 2, "ndif", "job-timeout")
            store.batch_failed(
                "batch-books-t",
                [t.key for t in bt[3:5]],
                "RemoteTimeout: no answer in 600 s",
                "RemoteTimeout",
            )
            store.batch_submitted("batch-books-v", [bt[5].key], 3, "ndif", "job-bad")
            store.batch_failed("batch-books-v", [bt[5].key], "ValueError: bad shape", "ValueError")
            store.batch_submitted("batch-books-orphan", [bt[6].key], 4, "ndif", "ndif-job-orphan-42")
            # bt[7] is registered and never run.
            # A second judge disagrees on two affirmative labels of the designed experiment.
            other = {k: dict(g) for k, g in grades.items()}
            for k in [t.key for t in controls[:2]]:
                other[k]["affirmative"] = True
            store.save_grades("other-judge", "7", other)
            info.update(books=bt, other=other)
    finally:
        store.close()
    return info


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    root = tmp_path_factory.mktemp("synthetic") / "cache"
    info = build_synthetic_cache(root)
    return root, info


@pytest.fixture(scope="module")
def designed_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("designed") / "cache"
    build_synthetic_cache(root, books=False)
    return root


@pytest.fixture
def fresh_copy(designed_only: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "cache"
    shutil.copytree(designed_only, dst)
    return dst


_cli = invoke


# --------------------------------------------------------------------------- the books


def test_clean_cache_exit_0(designed_only: Path) -> None:
    code, out, err = _cli("audit", "--cache", str(designed_only))
    assert code == 0, out + err
    assert "Verdict: CLEAN (exit 0)" in out
    assert "90 planned, 90 done, 0 failed" in out
    data = run_audit(designed_only)
    assert data["status"] == "clean" and data["intact"] and data["complete"]
    assert data["integrity"]["vectors"]["rows"] == 4 and data["integrity"]["vectors"]["files"] == 1


def test_books_counts_failures_orphans_ungraded(synthetic: tuple[Path, dict]) -> None:
    root, _ = synthetic
    code, out, err = _cli("audit", "--cache", str(root), "--json")
    assert code == 1, out + err  # incomplete, not corrupt
    data = json.loads(out)
    assert data["status"] == "incomplete" and data["intact"] and not data["complete"]
    books = next(e for e in data["experiments"] if e["name"] == "books")
    assert books["trials"] == {
        "planned": 8,
        "done": 3,
        "failed": 3,
        "in_flight": 1,
        "never_run": 1,
        "missing_rows": 0,
        "ungraded": 1,
        "corrupt": 0,
        "usable": 2,
    }
    assert books["failures_by_class"] == {"RemoteTimeout": 2, "ValueError": 1}
    assert [j["job_id"] for j in data["orphan_jobs"]] == ["ndif-job-orphan-42"]
    assert data["orphan_jobs"][0]["trials"] == 1
    designed = next(e for e in data["experiments"] if e["name"] == "designed")
    assert designed["complete"] and designed["trials"]["usable"] == 90
    assert data["totals"]["ungraded"] == 1
    # The same in text.
    code, text, _ = _cli("audit", "--cache", str(root))
    assert code == 1
    assert "failures by class: RemoteTimeout 2, ValueError 1" in text
    assert "job ndif-job-orphan-42 on ndif" in text
    assert "8 planned, 3 done, 3 failed, 1 in flight, 1 never run; 1 done but ungraded" in text
    assert "Verdict: INCOMPLETE (exit 1)" in text


def test_statistics_match_analysis(synthetic: tuple[Path, dict]) -> None:
    root, info = synthetic
    data = run_audit(root)
    res = next(e for e in data["experiments"] if e["name"] == "designed")["results"]
    assert [r["prompt_set"] for r in res] == ["lindsey"]
    r = res[0]
    # 8 strict hits (strength 2 and 4, one per cell of 5) in 80 injected; FP 1/10; refusals 4 and 1.
    exp_hit = analysis.rate_ci(8, 80)
    assert (r["injected"]["strict"]["k"], r["injected"]["strict"]["n"]) == (8, 80)
    assert r["injected"]["strict"]["lo"] == pytest.approx(exp_hit.lo)
    assert r["injected"]["strict"]["hi"] == pytest.approx(exp_hit.hi)
    assert r["controls"]["false_positive_affirmative"]["k"] == 1
    assert r["controls"]["false_positive_affirmative_identifies"]["k"] == 1  # "about dust" names a concept
    nd = analysis.net_detection(8, 80, 1, 10)
    assert r["net_strict"]["net"] == pytest.approx(nd.net)
    assert (r["net_strict"]["lo"], r["net_strict"]["hi"]) == pytest.approx((nd.lo, nd.hi))
    # Refusal-excluded view (the Qwen correction): 4 refusals among injected, 1 among controls.
    assert r["injected"]["refusal"]["k"] == 4 and r["controls"]["refusal"]["k"] == 1
    rx = analysis.refusal_excluded(8, 80, 4)
    assert (r["refusal_excluded"]["strict"]["k"], r["refusal_excluded"]["strict"]["n"]) == (8, 76)
    assert r["refusal_excluded"]["strict"]["hi"] == pytest.approx(rx.hi)
    nd_rx = analysis.net_detection(8, 76, 1, 9)
    assert r["refusal_excluded"]["net_strict"]["net"] == pytest.approx(nd_rx.net)
    assert r["null"] is None  # not a null: there are hits
    # Agreement between the two judges: kappa and raw agreement as analysis computes them.
    pair = next(
        p for p in data["agreement"] if {p["a"]["grader"], p["b"]["grader"]} == {"heuristic", "other-judge"}
    )
    keys = sorted(info["grades"])  # type: ignore[arg-type]
    a = [info["grades"][k]["affirmative"] for k in keys]  # type: ignore[index]
    b = [info["other"][k]["affirmative"] for k in keys]  # type: ignore[index]
    assert pair["n"] == 90
    assert pair["criteria"]["affirmative"]["raw_agreement"] == pytest.approx(analysis.raw_agreement(a, b))
    assert pair["criteria"]["affirmative"]["kappa"] == pytest.approx(analysis.cohen_kappa(a, b))
    assert pair["criteria"]["coherent"]["raw_agreement"] == 1.0


def test_null_result_bound_and_power(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    trials = [_trial(concept="Dust", layer=2, strength=2.0, sample=i) for i in range(400)]
    store.register(
        "null0000000000001",
        "null",
        _spec_json("null", ["Dust"]),
        {t.key: t.model_dump_json() for t in trials},
    )
    _done(store, "b", trials, [NO] * 400)
    _grade(store, trials, [NO] * 400)
    store.close()
    code, out, _ = _cli("audit", "--cache", str(tmp_path / "c"))
    assert "0/400: true rate < 0.75% (one-sided 95%)" in out
    assert "1% → 161" in out
    data = run_audit(tmp_path / "c")
    null = data["experiments"][0]["results"][0]["null"]
    assert null["upper_bound_95"] == pytest.approx(analysis.upper_bound(0, 400))
    assert [t["n"] for t in null["trials_needed"]] == [analysis.trials_needed(p) for p in (0.01, 0.05, 0.2)]
    assert data["experiments"][0]["results"][0]["net_strict"] is None  # no controls: no net claimed


def test_json_fields_are_documented(synthetic: tuple[Path, dict]) -> None:
    """Every field name the JSON prints appears in docs/audit_json.md (stable, documented names)."""
    data = run_audit(synthetic[0])
    spans = re.findall(r"`([^`]+)`", DOCS.read_text())  # names appear in code spans, alone or quoted
    documented = {name for span in spans for name in re.findall(r"[a-z_0-9]+", span)}
    seen: set[str] = set()

    def walk(obj: object, parent: str = "") -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                # Free-form keys (error classes, condition names) are values, not field names.
                if parent not in ("failures_by_class", "other_conditions", "criteria"):
                    seen.add(k)
                walk(v, k)
        elif isinstance(obj, list):
            for v in obj:
                walk(v, parent)

    walk(data)
    assert seen - documented == set()
    json.dumps(data, allow_nan=False)  # strict JSON: no NaN tokens


# --------------------------------------------------------------------------- corruption


def _one(db: Path, sql: str, *args: object) -> None:
    with sqlite3.connect(db) as c:
        c.execute(sql, args)
    c.close()


def _first_key(db: Path, condition: str = "concept") -> str:
    with sqlite3.connect(db) as c:
        for key, tj in c.execute("SELECT key, trial_json FROM trials ORDER BY rowid"):
            if json.loads(tj)["condition"] == condition:
                return key
    raise AssertionError("no trial")


def _vector_file(root: Path) -> Path:
    return next((root / "vectors").glob("*.safetensors"))


def _flip_bytes(path: Path, offset: int, n: int = 4) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# Edits of one stored row, each caught by the hash or key it was written with: how → (the UPDATE,
# with `?` the trial key; the problem kind audit must name).
ROW_EDITS: dict[str, tuple[str, str]] = {
    "edit response row": (
        "UPDATE trials SET response = 'Yes, I detect an injected thought about dust.' WHERE key = ?",
        "result_sha_mismatch",
    ),
    "truncate response row": ("UPDATE trials SET response = substr(response, 1, 5) WHERE key = ?", "result_sha_mismatch"),
    "edit diagnostics row": (
        "UPDATE trials SET diagnostics_json = replace(diagnostics_json, '0.5', '0.9') WHERE key = ?",
        "result_sha_mismatch",
    ),
    "edit token ids row": ("UPDATE trials SET response_ids = '[1,2]' WHERE key = ?", "result_sha_mismatch"),
    "edit trial spec row": (
        "UPDATE trials SET trial_json = replace(trial_json, '\"strength\":1.0', '\"strength\":3.0') WHERE key = ?",
        "trial_key_mismatch",
    ),
    "unparseable grade row": (
        "UPDATE grades SET grade_json = '{\"affirmative\": tru' WHERE trial_key = ?",
        "grade_unreadable",
    ),
    "inconsistent grade row": (
        "UPDATE grades SET grade_json = replace(grade_json, '\"strict\":false', '\"strict\":true')"
        " WHERE trial_key = ?",
        "grade_unreadable",
    ),
}


def corrupt(root: Path, how: str) -> tuple[str, str]:
    """Damage the cache one way; returns (problem kind expected, the id audit must name)."""
    db = root / "results.sqlite"
    if how == "truncate vector file":
        f = _vector_file(root)
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        return "vector_file_sha_mismatch", f.name
    if how == "flip bytes in vector file":
        f = _vector_file(root)
        _flip_bytes(f, f.stat().st_size - 8)
        return "vector_file_sha_mismatch", f.name
    if how == "delete vector file":
        f = _vector_file(root)
        f.unlink()
        return "vector_file_missing", f.name
    if how == "edit vector norm row":
        with sqlite3.connect(db) as c:
            vid = c.execute("SELECT id FROM vectors LIMIT 1").fetchone()[0]
            c.execute("UPDATE vectors SET norm = norm * 2 WHERE id = ?", (vid,))
        return "vector_norm_mismatch", vid
    if how in ROW_EDITS:  # one UPDATE of the first concept trial's row (or its grade)
        sql, kind = ROW_EDITS[how]
        key = _first_key(db)
        _one(db, sql, key)
        return kind, key
    if how == "flip bytes of a response inside the database file":
        with sqlite3.connect(db) as c:
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            key, text = c.execute(
                "SELECT key, response FROM trials WHERE response LIKE 'Yes, I notice%'"
            ).fetchone()
        c.close()
        raw = db.read_bytes()
        offset = raw.index(text.encode()) + 4
        _flip_bytes(db, offset, 2)  # a valid page with damaged text in it: only the result sha catches it
        return "", key  # result_sha_mismatch or database_corrupt, whichever the damage causes
    if how == "truncate the database file":
        with sqlite3.connect(db) as c:
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        c.close()
        db.write_bytes(db.read_bytes()[: 4096 + 100])
        return "database_corrupt", "results.sqlite"
    raise AssertionError(how)


CORRUPTIONS = [
    "truncate vector file",
    "flip bytes in vector file",
    "delete vector file",
    "edit vector norm row",
    *ROW_EDITS,
    "flip bytes of a response inside the database file",
    "truncate the database file",
]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corruption_is_named_and_exit_nonzero(fresh_copy: Path, how: str) -> None:
    kind, ident = corrupt(fresh_copy, how)
    code, out, err = _cli("audit", "--cache", str(fresh_copy))
    assert code == 4, out + err
    assert "Verdict: CORRUPT (exit 4)" in out
    if kind:
        assert kind in out
    assert ident in out, out
    code, js, _ = _cli("audit", "--cache", str(fresh_copy), "--json")
    data = json.loads(js)
    assert code == 4 and data["status"] == "corrupt" and not data["intact"]
    problems = data["integrity"]["problems"]
    assert any((not kind or p["kind"] == kind) and ident in (p["id"], p["detail"]) for p in problems), (
        problems
    )
    if kind.startswith(("result_", "trial_", "grade_")):
        # The damaged trial is excluded from every statistic.
        res = data["experiments"][0]
        assert res["trials"]["corrupt"] == 1 and res["trials"]["usable"] == 89


def test_all_corruptions_at_once_each_named(fresh_copy: Path) -> None:
    expected = []
    for how in ("delete vector file", "edit response row", "unparseable grade row"):
        expected.append(corrupt(fresh_copy, how))
    code, out, _ = _cli("audit", "--cache", str(fresh_copy))
    assert code == 4
    for kind, ident in expected:
        assert re.search(rf"{kind}: \w+ {re.escape(ident)}", out), (kind, ident, out)
    assert "done trial(s) were generated with a vector that no longer verifies" in out


def test_edited_row_is_never_counted(fresh_copy: Path, tmp_path: Path) -> None:
    """Forge a hit on a control (edit its response and grade): audit, report and export must
    not count it, and must say why."""
    db = fresh_copy / "results.sqlite"
    key = _first_key(db, "control")
    forged = "Yes, I detect an injected thought. It is about dust."
    _one(db, "UPDATE trials SET response = ? WHERE key = ?", forged, key)
    g = HeuristicGrader()
    with sqlite3.connect(db) as c:
        c.execute(
            "UPDATE grades SET grade_json = ? WHERE trial_key = ?",
            (canonical_json(g.grade(forged, None).model_dump()), key),
        )
    before = run_audit(fresh_copy)["experiments"][0]["results"][0]["controls"]["false_positive_affirmative"]
    assert (before["k"], before["n"]) == (1, 9)  # the original 1/10 minus the forged row: not 2/10

    out_dir = tmp_path / "report"
    code, out, err = _cli("report", "--cache", str(fresh_copy), "--out", str(out_dir))
    assert code == 0, out + err
    page = (out_dir / "index.html").read_text()
    assert "result_sha_mismatch" in page and key in page
    assert "false positives (affirmative) 1/9" in page

    code, out, err = _cli("export", "--cache", str(fresh_copy), "--out", str(tmp_path / "x.parquet"))
    assert code == 0 and "1 flagged by integrity checks" in out and "integrity" in err
    import polars as pl

    df = pl.read_parquet(tmp_path / "x.parquet")
    row = df.filter(pl.col("key") == key).row(0, named=True)
    # The forged grade is caught too (grades are hashed with their trial's result and grader).
    assert row["integrity"] == "result_sha_mismatch; grade_sha_mismatch" and row["usable"] is False


def test_corrupt_database_report_and_export_refuse(fresh_copy: Path, tmp_path: Path) -> None:
    corrupt(fresh_copy, "truncate the database file")
    for args in (("report", "--out", str(tmp_path / "r")), ("export", "--out", str(tmp_path / "x.parquet"))):
        code, out, err = _cli(*args, "--cache", str(fresh_copy))
        assert code == 4 and out == ""  # as `run` and `grade` on a corrupt database
        assert len(err.strip().splitlines()) == 1 and "corrupt" in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "x.parquet").exists()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args,expected",
    [
        (["audit", "--cache", "{missing}"], "no cache"),
        (["audit", "--cache", "{file}"], "no cache"),
        (["audit", "--cache", "{cache}", "--judge", "gpt4"], "unknown judge"),
        (["audit", "--cache", "{cache}", "--judge", "openai:m@http://user:s3cret@host/v1"], "credentials"),
    ],
)
def test_bad_input_one_line(args: list[str], expected: str, designed_only: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    subst = {
        "{missing}": str(tmp_path / "nope"),
        "{file}": str(tmp_path / "file"),
        "{cache}": str(designed_only),
    }
    code, out, err = _cli(*[subst.get(a, a) for a in args])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], err
    assert "s3cret" not in err
    assert not (tmp_path / "nope").exists()


def test_audit_is_read_only(designed_only: Path) -> None:
    def snapshot() -> dict[str, bytes]:
        # The WAL's shared-memory index (-shm) is touched by any reader; it holds no data.
        return {
            p.name: p.read_bytes()
            for p in designed_only.rglob("*")
            if p.is_file() and not p.name.endswith("-shm")
        }

    before = snapshot()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray RuntimeWarning from undefined kappas either
        run_audit(designed_only)
    assert snapshot() == before


def test_real_tiny_model_cache_is_clean(tiny_cache: Path) -> None:
    """End to end on a real run (tiny random model, 4 tokens): every trial re-verifies."""
    code, out, err = _cli("audit", "--cache", str(tiny_cache))
    assert code == 0, out + err
    data = run_audit(tiny_cache)
    assert data["status"] == "clean", data["integrity"]["problems"]
    assert data["totals"]["done"] == data["totals"]["usable"] == 11
    assert data["integrity"]["vectors"]["rows"] == 2  # 2 concepts × 1 layer
    res = data["experiments"][0]["results"][0]
    assert res["injected"]["strict"]["n"] == 8 and res["controls"]["false_positive_affirmative"]["n"] == 3
