"""Issue 13: what a run prints is as trustworthy as what `audit` says.

Each test here failed on the code before the fix: the run's summary through audit's checks,
hashed grades, duplicates, input bounds, one-line errors, claims for concurrent runs, vector
repair, preflight failures, deleted experiment rows, and model-loading errors.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import pytest
from helpers import tiny_spec

from remote_introspect.errors import FatalRemoteError, UserError
from remote_introspect.execution import runner
from remote_introspect.execution.backends.local import LocalExecutor
from remote_introspect.execution.runner import RunOptions
from remote_introspect.experiment.spec import ExperimentSpec, GenerationParams
from remote_introspect.reporting.audit import run_audit
from remote_introspect.store.database import ClaimOwner, Store

REPO = Path(__file__).resolve().parents[2]


# Greedy decoding (temperature 0) throughout this file.
_spec = partial(tiny_spec, temperature=0.0)


def _main(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """The real entry point (`python -m remote_introspect`), in-process."""
    from remote_introspect import cli

    monkeypatch.setattr(sys, "argv", ["remote_introspect", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- 1. the run's summary


def test_run_summary_applies_audits_checks(cache_dir: Path, monkeypatch, capsys) -> None:
    """A response edited in SQLite with its grade deleted is not regraded and counted by the next
    run: the run excludes it (same checks as audit), says so, and exits 4 like audit."""
    opts = RunOptions(cache_root=cache_dir)
    first = runner.run(_spec(), opts)
    assert first.complete and not first.excluded
    key = next(t.key for t in first.trials if t.condition == "concept")
    with sqlite3.connect(cache_dir / "results.sqlite") as c:
        c.execute(
            "UPDATE trials SET response='Yes, I detect an injected thought about dust.' WHERE key=?", (key,)
        )
        c.execute("DELETE FROM grades WHERE trial_key=?", (key,))
    c.close()
    second = runner.run(_spec(), opts)
    assert key not in second.grades
    assert second.statuses[key] == "corrupt"
    assert any(key in line and "result_sha_mismatch" in line for line in second.excluded)
    with sqlite3.connect(cache_dir / "results.sqlite") as c:  # not regraded either
        assert c.execute("SELECT COUNT(*) FROM grades WHERE trial_key=?", (key,)).fetchone()[0] == 0
    c.close()
    code, out, err = _main(
        [
            "replicate-lindsey",
            "--model",
            "tiny",
            "--concepts",
            "Dust,Oceans",
            "--strengths",
            "2,8",
            "--samples",
            "2",
            "--controls",
            "3",
            "--max-new-tokens",
            "4",
            "--temperature",
            "0",
            "--cache",
            str(cache_dir),
        ],
        monkeypatch,
        capsys,
    )
    assert code == 4, err
    assert "1 excluded (integrity)" in out and key in out
    assert len(_error_lines(err)) == 1 and "integrity" in _error_lines(err)[0]
    assert run_audit(cache_dir)["exit_code"] == 4


# --------------------------------------------------------------------------- 2. hashed grades


def test_edited_grades_fail_audit_and_are_never_counted(tiny_cache: Path, tmp_path: Path) -> None:
    root = _copy(tiny_cache, tmp_path / "cache")
    db = root / "results.sqlite"
    all_true = json.dumps(
        {
            "refusal": False,
            "affirmative": True,
            "identifies": True,
            "early_detection": True,
            "coherent": True,
            "strict": True,
        }
    )
    with sqlite3.connect(db) as c:
        keys = [r[0] for r in c.execute("SELECT trial_key FROM grades ORDER BY trial_key LIMIT 10")]
        c.executemany("UPDATE grades SET grade_json=? WHERE trial_key=?", [(all_true, k) for k in keys])
    c.close()
    result = run_audit(root)
    assert result["exit_code"] == 4
    named = {p["id"] for p in result["integrity"]["problems"] if p["kind"] == "grade_sha_mismatch"}
    assert named == set(keys)
    strict = result["experiments"][0]["results"][0]["injected"]["strict"]
    assert strict["k"] == 0  # none of the forged hits counted
    from remote_introspect.reporting.export import export_cache

    res = export_cache(root, tmp_path / "x.parquet")
    assert res.flagged == len(keys)
    import polars as pl

    df = pl.read_parquet(tmp_path / "x.parquet")
    assert df.filter(pl.col("key").is_in(keys))["usable"].to_list() == [False] * len(keys)


def test_grade_moved_to_another_trial_is_caught(tiny_cache: Path, tmp_path: Path) -> None:
    root = _copy(tiny_cache, tmp_path / "cache")
    with sqlite3.connect(root / "results.sqlite") as c:
        (a, ga, sa), (b, _, _) = c.execute(
            "SELECT trial_key, grade_json, grade_sha FROM grades ORDER BY trial_key LIMIT 2"
        ).fetchall()
        c.execute("UPDATE grades SET grade_json=?, grade_sha=? WHERE trial_key=?", (ga, sa, b))
    c.close()
    result = run_audit(root)
    assert result["exit_code"] == 4
    assert any(p["kind"] == "grade_sha_mismatch" and p["id"] == b for p in result["integrity"]["problems"])


def test_old_cache_is_migrated_and_its_grades_hashed(tiny_cache: Path, tmp_path: Path) -> None:
    """A schema-1 cache (no grade_sha column) reads in audit (grades flagged as unhashed) and is
    migrated on the first writable open."""
    root = _copy(tiny_cache, tmp_path / "cache")
    db = root / "results.sqlite"
    with sqlite3.connect(db) as c:
        c.execute("ALTER TABLE grades DROP COLUMN grade_sha")
        c.execute("UPDATE meta SET v='1' WHERE k='schema_version'")
    c.close()
    before = run_audit(root)
    assert before["exit_code"] == 4
    assert {p["kind"] for p in before["integrity"]["problems"]} == {"grade_unhashed"}
    Store(root).close()
    assert run_audit(root)["exit_code"] == 0


# --------------------------------------------------------------------------- 3. duplicates


def test_duplicates_run_and_count_once(cache_dir: Path, count_generate: list[int]) -> None:
    spec = _spec(concepts=("Dust", "Dust"), strengths=(1.0, 1.0), samples=1, controls=1)
    assert spec.concepts == ("dust",) and spec.strengths == (1.0,)
    rep = runner.run(spec, RunOptions(cache_root=cache_dir))
    assert len(rep.trials) == len({t.key for t in rep.trials}) == 2
    assert sum(count_generate) == 2  # each distinct trial generated once
    trial = rep.trials[0]
    # Even a hand-built duplicate list plans one trial per key.
    assert runner.unique_trials([trial, trial, rep.trials[1]]) == [trial, rep.trials[1]]


# --------------------------------------------------------------------------- 5/6. bad input


TINY = ["replicate-lindsey", "--model", "tiny"]
BAD_INPUT = {
    "absolute strength above its bound": (["--strengths", "2e6"], "above the limit"),
    "relative strength above its bound": (
        ["--strength-mode", "relative", "--strengths", "5000"],
        "above the limit",
    ),
    "10,000-character concept": (["--concepts", "x" * 10_000], "characters long"),
    "too many concepts": (["--concepts", ",".join(f"w{i}" for i in range(600))], "limit of 500"),
    "temperature inf": (["--temperature", "inf"], "temperature"),
    "dtype fp64": (["--dtype", "fp64"], "unknown dtype"),
    "max-new-tokens beyond the context": (["--max-new-tokens", "2000"], "context"),
    "usage error: not a number": (["--samples", "abc"], "--samples"),
    "usage error: unknown option": (["--no-such-flag"], "--no-such-flag"),
    "unwritable cache (root too)": (["--cache", "/proc/ri-no-such/cache"], "not writable"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_one_line_nothing_written(case: str, tmp_path: Path, monkeypatch, capsys) -> None:
    args, expected = BAD_INPUT[case]
    cache = tmp_path / "cache"
    if "--cache" not in args:
        args = [*args, "--cache", str(cache)]
    code, out, err = _main([*TINY, *args], monkeypatch, capsys)
    assert code != 0, out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and expected in lines[0], lines[0]
    assert out == "" and not cache.exists()


def test_zero_byte_database_is_refused_not_rebuilt(tmp_path: Path, monkeypatch, capsys) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "results.sqlite").write_bytes(b"")
    code, out, err = _main([*TINY, "--cache", str(cache)], monkeypatch, capsys)
    assert code == 4, err
    assert len(_error_lines(err)) == 1 and "0 bytes" in err and "Traceback" not in err
    assert (cache / "results.sqlite").stat().st_size == 0  # not silently rebuilt
    assert sorted(p.name for p in cache.iterdir()) == ["results.sqlite"]
    with pytest.raises(UserError, match="0 bytes"):
        Store(cache, create=False)
    code, out, err = _main(
        ["export", "--cache", str(cache), "--out", str(tmp_path / "x.parquet")], monkeypatch, capsys
    )
    assert code != 0 and len(_error_lines(err)) == 1 and "0 bytes" in err


def _flip_response_bytes(db: Path) -> str:
    """Overwrite bytes inside one stored response with invalid UTF-8, in place in the file."""
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        key, text = c.execute(
            "SELECT key, response FROM trials WHERE status='done' AND length(response) >= 8 ORDER BY key LIMIT 1"
        ).fetchone()
    c.close()
    raw = bytearray(db.read_bytes())
    at = raw.index(text.encode())
    raw[at : at + 2] = b"\xff\xfe"
    db.write_bytes(bytes(raw))
    return key


def test_flipped_bytes_in_database_one_line(tiny_cache: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    root = _copy(tiny_cache, tmp_path / "cache")
    key = _flip_response_bytes(root / "results.sqlite")
    # Same grid as the shared tiny cache (conftest), plus a new strength so the run writes too.
    args = [
        *TINY,
        "--concepts",
        "Dust,Oceans",
        "--strengths",
        "2,8,4",
        "--samples",
        "2",
        "--controls",
        "3",
        "--max-new-tokens",
        "4",
        "--cache",
        str(root),
    ]
    code, out, err = _main(args, monkeypatch, capsys)
    assert "Traceback" not in err and "UnicodeDecodeError" not in err
    assert code == 4 and len(_error_lines(err)) == 1, err
    assert key in out  # named as excluded by the run itself


_LIMITED = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.argv = ["remote_introspect", *sys.argv[2:]]
    from remote_introspect.cli import main
    main()
    """
)


def _run_limited(limit: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """A CLI run whose files cannot grow past `limit` bytes: a full disk, for SQLite and parquet."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", _LIMITED, str(limit), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_disk_full_sqlite_one_line(tiny_cache: Path, tmp_path: Path) -> None:
    root = _copy(tiny_cache, tmp_path / "cache")
    with sqlite3.connect(root / "results.sqlite") as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = c.execute("SELECT COUNT(*) FROM trials WHERE status='done'").fetchone()[0]
    c.close()
    args = [*TINY, "--concepts", "Dust,Oceans", "--strengths", "2,8,4,16", "--samples", "2"]
    args += ["--controls", "3", "--max-new-tokens", "4", "--cache", str(root)]
    # Room to open the cache (its 32 KiB -shm file), none to grow its WAL: the disk fills mid-run.
    res = _run_limited(40_000, args, tmp_path)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr
    lines = _error_lines(res.stderr)
    assert len(lines) == 1 and "disk" in lines[0], res.stderr
    with sqlite3.connect(root / "results.sqlite") as c:  # nothing lost, nothing half-written
        assert c.execute("SELECT COUNT(*) FROM trials WHERE status='done'").fetchone()[0] == before
    c.close()


def test_disk_full_parquet_export_one_line(tiny_cache: Path, tmp_path: Path) -> None:
    root = _copy(tiny_cache, tmp_path / "cache")
    with sqlite3.connect(root / "results.sqlite") as c:  # no -shm file to create while reading
        c.execute("PRAGMA journal_mode=DELETE")
    c.close()
    res = _run_limited(1024, ["export", "--cache", str(root), "--out", str(tmp_path / "x.parquet")], tmp_path)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr
    lines = _error_lines(res.stderr)
    assert len(lines) == 1 and "cannot write" in lines[0], res.stderr
    assert not (tmp_path / "x.parquet").exists()
    assert not list(tmp_path.glob(".x.parquet*"))


# --------------------------------------------------------------------------- 7. claims


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _insert_claim(root: Path, key: str, host: str, pid: int, expires: float) -> None:
    with sqlite3.connect(root / "results.sqlite") as c:
        c.execute(
            "INSERT OR REPLACE INTO claims(trial_key, owner, host, pid, pid_start, claimed_at, expires_at)"
            " VALUES (?,?,?,?,NULL,'x',?)",
            (key, "someone-else", host, pid, expires),
        )
    c.close()


def test_claims_dead_pid_taken_over_at_once_lease_only_for_other_hosts(cache_dir: Path) -> None:
    store = Store(cache_dir)
    store.register("e", "e", "{}", {"k1": "{}", "k2": "{}", "k3": "{}", "k4": "{}"})
    store.close()
    far = time.time() + 3600
    _insert_claim(cache_dir, "k1", socket.gethostname(), _dead_pid(), far)  # dead here: take over
    _insert_claim(cache_dir, "k2", socket.gethostname(), os.getppid(), far)  # alive here: wait
    _insert_claim(cache_dir, "k3", "another-host", 1, far)  # cannot check, lease running: wait
    _insert_claim(cache_dir, "k4", "another-host", 1, time.time() - 1)  # lease expired: take over
    store = Store(cache_dir)
    me = ClaimOwner.this_process()
    mine, others, taken = store.claim(["k1", "k2", "k3", "k4"], me, 60)
    assert sorted(mine) == ["k1", "k4"] and sorted(others) == ["k2", "k3"] and taken == 2
    store.release(me)
    assert store.live_claims_by_others(["k1", "k2", "k3", "k4"], me) == {"k2", "k3"}
    store.close()


def test_run_takes_over_a_dead_runs_claims(cache_dir: Path) -> None:
    opts = RunOptions(cache_root=cache_dir)
    spec = _spec(samples=1, controls=1)
    first = runner.run(spec, RunOptions(cache_root=cache_dir, batch_rows=2))
    keys = [t.key for t in first.trials]
    with sqlite3.connect(cache_dir / "results.sqlite") as c:
        c.execute("UPDATE trials SET status='submitted', response=NULL WHERE key=?", (keys[0],))
    c.close()
    _insert_claim(cache_dir, keys[0], socket.gethostname(), _dead_pid(), time.time() + 3600)
    notices: list[str] = []
    t0 = time.time()
    rep = runner.run(spec, opts, runner.Hooks.of(notice=notices.append))
    assert time.time() - t0 < 60 and rep.complete
    assert any("took over 1 trial" in n for n in notices)


CONCURRENT_SPEC = dict(
    model="tiny",
    concepts=("Dust", "Oceans", "Trees", "Music"),
    strengths=(2.0, 8.0),
    samples=2,
    controls=4,
    generation=GenerationParams(max_new_tokens=3, temperature=0.0),
)


def _concurrent_worker(cache: str, me: str, other: str, out: str) -> None:
    """One of two real processes running the same experiment on one cache."""
    import torch

    torch.set_num_threads(1)
    spec = ExperimentSpec(**CONCURRENT_SPEC)
    opts = RunOptions(cache_root=Path(cache), batch_rows=3, claim_poll_s=0.05)
    ref, _ = runner.validate(spec, opts)
    bundle = runner.make_executor(ref, opts)
    rows: list[int] = []
    real = LocalExecutor.generate

    def spy(self, batch, cb):  # type: ignore[no-untyped-def]
        rows.append(batch.input_ids.shape[0])
        time.sleep(0.2)  # slow enough that the two runs overlap
        return real(self, batch, cb)

    LocalExecutor.generate = spy  # type: ignore[method-assign]
    root = Path(cache).parent
    (root / me).touch()
    while not (root / other).exists():  # start together
        time.sleep(0.01)
    rep = runner.run(spec, opts, executor_bundle=bundle)
    Path(out).write_text(
        json.dumps(
            {"rows": sum(rows), "complete": rep.complete, "trials": len(rep.trials), "grades": rep.grades}
        )
    )


def test_two_concurrent_runs_never_generate_the_same_trial(tmp_path: Path, fresh_forks) -> None:
    cache = tmp_path / "cache"
    Store(cache).close()
    ctx = fresh_forks  # real processes (own pids), forked from a pre-imported server
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    procs = [
        ctx.Process(target=_concurrent_worker, args=(str(cache), me, other, str(out)))
        for (me, other), out in zip((("a.ready", "b.ready"), ("b.ready", "a.ready")), outs, strict=True)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    assert procs[0].pid != procs[1].pid
    results = [json.loads(o.read_text()) for o in outs]
    n = results[0]["trials"]
    assert n == 4 * 2 * 2 + 4
    assert all(r["complete"] for r in results)
    assert results[0]["rows"] + results[1]["rows"] == n  # every trial generated exactly once
    assert results[0]["rows"] > 0 and results[1]["rows"] > 0  # and the work was shared
    assert results[0]["grades"] == results[1]["grades"]  # both print the same table
    assert run_audit(cache)["exit_code"] == 0
    with sqlite3.connect(cache / "results.sqlite") as c:
        assert c.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
    c.close()


# --------------------------------------------------------------------------- 8. smaller


def test_broken_vector_file_is_re_extracted(cache_dir: Path) -> None:
    opts = RunOptions(cache_root=cache_dir)
    runner.run(_spec(samples=1, controls=1), opts)
    (vec,) = list((cache_dir / "vectors").glob("*.safetensors"))
    vec.write_bytes(vec.read_bytes()[:100])  # truncated
    assert run_audit(cache_dir)["exit_code"] == 4
    notices: list[str] = []
    rep = runner.run(_spec(samples=1, controls=1, strengths=(2.0, 8.0, 4.0)), opts, runner.Hooks.of(notice=notices.append))
    assert rep.complete
    assert any("re-extracting" in n and vec.name in n for n in notices), notices
    assert run_audit(cache_dir)["exit_code"] == 0


def test_broken_vector_file_is_repaired_by_the_same_command_when_every_trial_is_done(
    cache_dir: Path,
) -> None:
    """Every trial done, a vector file damaged: rerunning the SAME spec verifies this experiment's
    vector files, re-extracts the broken one (one notice line) and leaves `audit` clean."""
    opts = RunOptions(cache_root=cache_dir)
    spec = _spec(samples=1, controls=1)
    first = runner.run(spec, opts)
    assert first.complete
    (vec,) = list((cache_dir / "vectors").glob("*.safetensors"))
    original = vec.read_bytes()
    vec.write_bytes(original[:100])  # truncated
    assert run_audit(cache_dir)["exit_code"] == 4
    notices: list[str] = []
    rep = runner.run(spec, opts, runner.Hooks.of(notice=notices.append))
    assert rep.complete and rep.executed_batches == 0  # no trial re-run
    repaired = [n for n in notices if "re-extracting" in n]
    assert len(repaired) == 1 and vec.name in repaired[0], notices
    from safetensors.torch import load

    before, after = load(original), load(vec.read_bytes())
    assert before.keys() == after.keys() and all((before[k] == after[k]).all() for k in before)  # deterministic
    assert run_audit(cache_dir)["exit_code"] == 0
    notices.clear()
    runner.run(spec, opts, runner.Hooks.of(notice=notices.append))  # intact now: nothing to say
    assert not [n for n in notices if "re-extracting" in n]


def test_failed_preflight_leaves_no_experiment(cache_dir: Path) -> None:
    spec = _spec(samples=1, controls=1)
    opts = RunOptions(cache_root=cache_dir)
    ref, _ = runner.validate(spec, opts)
    executor, identity = runner.make_executor(ref, opts)

    def refuse() -> list[str]:
        raise FatalRemoteError("the NDIF API key was rejected (401)")

    executor.preflight = refuse  # type: ignore[attr-defined]
    with pytest.raises(FatalRemoteError):  # a fresh cache: not even the database is created
        runner.run(spec, opts, executor_bundle=(executor, identity))
    assert not (cache_dir / "results.sqlite").exists()
    Store(cache_dir).close()  # an existing cache: nothing is registered in it
    with pytest.raises(FatalRemoteError):
        runner.run(spec, opts, executor_bundle=(executor, identity))
    audit = run_audit(cache_dir)
    assert audit["exit_code"] == 0 and audit["experiments"] == []


@pytest.mark.parametrize("tables", [("experiments",), ("experiments", "experiment_trials")])
def test_deleting_experiment_rows_fails_audit(tiny_cache: Path, tmp_path: Path, tables) -> None:
    root = _copy(tiny_cache, tmp_path / "cache")
    with sqlite3.connect(root / "results.sqlite") as c:
        for t in tables:
            c.execute(f"DELETE FROM {t}")
    c.close()
    result = run_audit(root)
    assert result["exit_code"] == 4
    kinds = {p["kind"] for p in result["integrity"]["problems"]}
    assert ("experiment_missing" if len(tables) == 1 else "trial_unregistered") in kinds


def test_model_loading_names_the_real_failure(tmp_path: Path, monkeypatch) -> None:
    from remote_introspect.models import loading as model_loading

    hub = tmp_path / "hub"
    snap = hub / "models--org--broken" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{not json")
    (hub / "models--org--broken" / "refs").mkdir()
    (hub / "models--org--broken" / "refs" / "main").write_text("abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(hub))
    with pytest.raises(UserError, match="not valid JSON"):
        model_loading.resolve_model("org/broken")

    ref = model_loading.ModelRef("org/x", None, "org/x", None, {"num_hidden_layers": 2}, "mlp", "local")

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(hub))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", denied)
    with pytest.raises(UserError) as info:
        model_loading.load_local(ref, tmp_path / "cache")
    assert "Permission denied" in str(info.value) and "not in the Hugging Face cache" not in str(info.value)
