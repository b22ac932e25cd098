"""The store on its own (no model): registration, a batch's life, vectors and grades, each
verified through the same read the reports use (`results_frame.load_frame`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch

from remote_introspect import keys
from remote_introspect.errors import UserError
from remote_introspect.store.database import ClaimOwner, Store
from remote_introspect.store.results_frame import load_frame


def _trial(i: int) -> tuple[str, str]:
    t = {
        "condition": "concept",
        "concept": "dust",
        "layer": 1,
        "strength": 2.0,
        "sample": i,
        "prompt_set": "lindsey",
    }
    return keys.trial_key(t), keys.canonical_json(t)


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Store(tmp_path)
    yield s
    s.close()


def _register(store: Store, n: int = 3) -> list[str]:
    trials = dict(_trial(i) for i in range(n))
    store.register("exp1", "e", "{}", trials)
    return list(trials)


def test_register_is_idempotent_and_plans_every_trial(store: Store) -> None:
    ks = _register(store)
    _register(store)
    assert store.statuses(ks) == {k: "planned" for k in ks}
    assert set(store.experiment_keys("exp1")) == set(ks)


def test_a_batch_goes_submitted_then_done_and_a_done_trial_is_never_rewritten(store: Store) -> None:
    ks = _register(store, 2)
    bid = keys.batch_id(ks)
    store.batch_submitted(bid, ks, 7, "local", None)
    assert set(store.statuses(ks).values()) == {"submitted"}
    store.batch_done(bid, {k: ([1, 2], f"text {k[:4]}", {"ratio": 1.0}) for k in ks}, "local", {"torch": "x"})
    assert set(store.statuses(ks).values()) == {"done"}
    store.batch_done(bid, {ks[0]: ([9], "rewritten", {})}, "local", {})
    assert store.trial_rows([ks[0]])[0]["response"] == f"text {ks[0][:4]}"
    store.batch_failed(bid, ks, "boom", "RuntimeError")  # a done trial stays done
    assert set(store.statuses(ks).values()) == {"done"}
    df = load_frame(store.conn, "heuristic", ks).df
    assert df["integrity"].to_list() == ["ok", "ok"]


def test_a_failed_batch_marks_its_pending_trials_failed(store: Store) -> None:
    ks = _register(store, 2)
    store.batch_failed(keys.batch_id(ks), ks, "boom", "RuntimeError")
    assert set(store.statuses(ks).values()) == {"failed"}


def test_an_edited_response_no_longer_verifies(store: Store, tmp_path: Path) -> None:
    ks = _register(store, 1)
    store.batch_done(keys.batch_id(ks), {ks[0]: ([1], "hello", {})}, "local", {})
    with sqlite3.connect(tmp_path / "results.sqlite") as c:
        c.execute("UPDATE trials SET response='HELLO' WHERE key=?", (ks[0],))
    store2 = Store(tmp_path)
    try:
        df = load_frame(store2.conn, "heuristic", ks).df
    finally:
        store2.close()
    assert df["integrity"].to_list() != ["ok"] and df["usable"].to_list() == [False]


def test_grades_are_bound_to_the_result_they_grade(store: Store) -> None:
    ks = _register(store, 1)
    store.batch_done(keys.batch_id(ks), {ks[0]: ([1], "hello", {})}, "local", {})
    grade = {"refusal": False, "affirmative": True, "identifies": False, "early_detection": False,
             "coherent": True, "strict": False}  # fmt: skip
    store.save_grades("g", "1", {ks[0]: grade})
    assert store.grades_for(ks, "g", "1")[ks[0]]["affirmative"] is True
    row = store.conn.execute("SELECT grade_sha, grade_json FROM grades").fetchone()
    result = store.trial_rows(ks)[0]["result_sha"]
    assert row[0] == keys.grade_sha(ks[0], result, "g", "1", row[1])


def test_vectors_round_trip_and_a_corrupt_file_is_refused(store: Store) -> None:
    vecs = {(1, "dust"): torch.arange(4.0), (2, "dust"): torch.ones(4)}
    store.save_vectors("mk", "rid", '{"kind":"x"}', vecs)
    back = store.load_vectors("mk", "rid", [(1, "dust"), (2, "dust")])
    assert torch.equal(back[(1, "dust")], vecs[(1, "dust")]) and torch.equal(
        back[(2, "dust")], vecs[(2, "dust")]
    )
    row = store.conn.execute("SELECT id, file FROM vectors WHERE layer=1").fetchone()
    assert row[0] == keys.vector_id("mk", "rid", 1, "dust")
    assert not list(store.vector_file_dir().glob(".*.tmp"))  # the atomic write left no temporary
    path = store.vector_file_dir() / row[1]
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(UserError, match="missing or corrupt"):
        store.load_vectors("mk", "rid", [(1, "dust")])


def test_claims_keep_a_live_owner_out(store: Store) -> None:
    ks = _register(store, 2)
    a, b = ClaimOwner.this_process(), ClaimOwner.this_process()
    mine, others, _ = store.claim(ks, a, 3600.0)
    assert sorted(mine) == sorted(ks) and not others
    mine_b, others_b, _ = store.claim(ks, b, 3600.0)
    assert not mine_b and sorted(others_b) == sorted(ks)
    store.release(a, ks)
    mine_b, _, _ = store.claim(ks, b, 3600.0)
    assert sorted(mine_b) == sorted(ks)
