"""Chaos: kill a run at 10 random points (SIGKILL, SIGINT, SIGTERM), resume, and the final cache
equals a clean run's, trial for trial, grade for grade, and `audit` is clean.

Runs are real processes with their own pids, forked from a pre-imported server (`fresh_forks`,
conftest), so each starts in well under a second. A kill point is the k-th SQLite transaction of the run, before it begins,
inside it (before COMMIT: the write must roll back or vanish) or just after it commits; the
transactions cover registering, vector extraction, claims, submission, results and grades, and
"inside the batch_done transaction" is a kill after generation but before the results are kept.
Greedy decoding keeps the comparison independent of how batches were composed on resume.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from remote_introspect.experiment.spec import ExperimentSpec, GenerationParams, VectorRecipe
from remote_introspect.reporting.audit import run_audit

SPEC = dict(
    model="tiny",
    concepts=("Dust", "Oceans"),
    strengths=(2.0, 8.0),
    samples=1,
    controls=3,
    generation=GenerationParams(max_new_tokens=3, temperature=0.0),
    # A short baseline keeps vector extraction (repeated by every run killed before it is kept) quick.
    recipe=VectorRecipe(baseline_words=("apple", "river", "chair", "music")),
)
BATCH_ROWS = 2
PHASES = ("before", "inside", "after")
SIGNALS = (signal.SIGKILL, signal.SIGINT, signal.SIGTERM)


def _child(cache: str, point: int, phase: str, sig: int, count_file: str) -> None:
    """One run; kills itself with `sig` at its `point`-th transaction (0: never)."""
    import torch

    from remote_introspect.execution import runner
    from remote_introspect.store.database import Store

    torch.set_num_threads(1)
    real_tx = Store.tx
    counter = [0]

    def chaos_tx(self):  # type: ignore[no-untyped-def]
        counter[0] += 1
        hit = counter[0] == point

        @contextmanager
        def cm():  # type: ignore[no-untyped-def]
            if hit and phase == "before":
                os.kill(os.getpid(), sig)
            with real_tx(self) as c:
                yield c
                if hit and phase == "inside":
                    os.kill(os.getpid(), sig)
            if hit and phase == "after":
                os.kill(os.getpid(), sig)

        return cm()

    Store.tx = chaos_tx  # type: ignore[method-assign]
    spec = ExperimentSpec(**SPEC)
    rep = runner.run(spec, runner.RunOptions(cache_root=Path(cache), batch_rows=BATCH_ROWS))
    Path(count_file).write_text(f"{counter[0]} {int(rep.complete)}")


def _run_child(ctx, cache: Path, point: int, phase: str, sig: int, tmp: Path) -> tuple[int | None, int]:  # type: ignore[no-untyped-def]
    """(transactions the run made if it finished, exit code)."""
    count_file = tmp / f"count-{time.monotonic_ns()}"
    p = ctx.Process(target=_child, args=(str(cache), point, phase, sig, str(count_file)))
    p.start()
    p.join(120)
    assert p.exitcode is not None, "a run hung"
    if count_file.exists():
        n, complete = (int(x) for x in count_file.read_text().split())
        assert complete
        return n, p.exitcode
    return None, p.exitcode


def _snapshot(root: Path) -> dict[str, object]:
    with sqlite3.connect(root / "results.sqlite") as c:
        trials = sorted(
            c.execute(
                "SELECT key, trial_json, status, response, response_ids, diagnostics_json, result_sha, backend,"
                " error FROM trials"
            )
        )
        grades = sorted(
            c.execute("SELECT trial_key, grader, grader_version, grade_json, grade_sha FROM grades")
        )
        vectors = sorted(c.execute("SELECT id, model_key, recipe_id, layer, concept, norm FROM vectors"))
        experiments = sorted(c.execute("SELECT id, name, spec_json FROM experiments"))
        members = sorted(c.execute("SELECT experiment_id, trial_key FROM experiment_trials"))
        claims = list(c.execute("SELECT * FROM claims"))
    c.close()
    return {
        "trials": trials,
        "grades": grades,
        "vectors": vectors,
        "experiments": experiments,
        "members": members,
        "claims": claims,
    }


def _pending(root: Path, total: int) -> int:
    db = root / "results.sqlite"
    if not db.exists() or db.stat().st_size == 0:
        return total
    with sqlite3.connect(db) as c:
        try:
            done = c.execute("SELECT COUNT(*) FROM trials WHERE status='done'").fetchone()[0]
        except sqlite3.Error:
            done = 0
    c.close()
    return total - done


def test_kill_at_random_points_then_resume_equals_clean_run(tmp_path: Path, fresh_forks) -> None:
    t0 = time.monotonic()
    clean = tmp_path / "clean"
    n_clean, code = _run_child(fresh_forks, clean, 0, "before", signal.SIGKILL, tmp_path)
    assert code == 0 and n_clean
    total = len(_snapshot(clean)["trials"])

    rng = random.Random(13)
    chaos = tmp_path / "chaos"
    killed = 0
    log = []
    for i in range(10):
        # Spread the kills over the whole run: aim inside what is left (a resumed run makes fewer
        # transactions than a clean one), a share of it that grows as fewer kills remain.
        left = _pending(chaos, total)
        span = max(2, round((n_clean * left / total + 3) * 2 / (10 - i)))
        point, phase, sig = rng.randint(1, span), rng.choice(PHASES), rng.choice(SIGNALS)
        n, code = _run_child(fresh_forks, chaos, point, phase, sig, tmp_path)
        killed += n is None
        log.append((point, phase, signal.Signals(sig).name, "killed" if n is None else "finished"))
    n, code = _run_child(fresh_forks, chaos, 0, "before", signal.SIGKILL, tmp_path)  # resume to the end
    assert code == 0 and n is not None, log
    assert killed >= 6, log  # most kills landed inside a run

    a, b = _snapshot(clean), _snapshot(chaos)
    assert b["claims"] == [] and a["claims"] == []
    for part in ("trials", "grades", "vectors", "experiments", "members"):
        assert a[part] == b[part], (part, log)
    audit = run_audit(chaos)
    assert audit["exit_code"] == 0, (audit["integrity"]["problems"], audit["interrupted_batches"], log)
    assert time.monotonic() - t0 < 120  # ~15 s on 2 busy cores
