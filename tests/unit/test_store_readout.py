"""Readout trials in the store: `readout_json` written with the done status in one transaction,
covered by the result hash (an edit is caught by the shared integrity checks), counted usable
without a judge's grade, and added to a version-2 cache by migration."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from remote_introspect import keys
from remote_introspect.store.database import SCHEMA_VERSION, Store
from remote_introspect.store.results_frame import load_frame, open_readonly


def _stored(root: Path) -> str:
    trial = {"kind": "localization", "layer": 1, "strength": 4.0}
    key = keys.trial_key(trial)
    store = Store(root)
    try:
        store.register("exp1", "loc", "{}", {key: json.dumps(trial)})
        store.batch_submitted("b1", [key], 0, "local", None)
        readout = {"candidates": [10, 11], "logprobs": [-0.5, -1.5]}
        store.readout_done("b1", {key: ([10], "1", {"start": 3, "end": 7}, readout)}, "local", {})
    finally:
        store.close()
    return key


def test_readout_round_trip_is_usable_without_a_grade(tmp_path: Path) -> None:
    key = _stored(tmp_path)
    conn = open_readonly(tmp_path)
    df = load_frame(conn).df
    row = df.filter(df["key"] == key).to_dicts()[0]
    assert row["status"] == "done" and row["integrity"] == "ok" and row["usable"]
    assert json.loads(row["readout_json"])["logprobs"] == [-0.5, -1.5]


def test_edited_readout_fails_the_result_hash(tmp_path: Path) -> None:
    key = _stored(tmp_path)
    with sqlite3.connect(tmp_path / "results.sqlite") as c:
        c.execute("UPDATE trials SET readout_json=? WHERE key=?", ('{"candidates":[10,11],"logprobs":[-2.0,-0.1]}', key))
    c.close()
    frame = load_frame(open_readonly(tmp_path))
    assert [p.kind for p in frame.problems] == ["result_sha_mismatch"]
    assert not frame.df["usable"][0]


def test_version_two_cache_gains_the_column(tmp_path: Path) -> None:
    Store(tmp_path).close()
    with sqlite3.connect(tmp_path / "results.sqlite") as c:
        c.execute("ALTER TABLE trials DROP COLUMN readout_json")
        c.execute("UPDATE meta SET v='2' WHERE k='schema_version'")
    c.close()
    Store(tmp_path).close()
    with sqlite3.connect(tmp_path / "results.sqlite") as c:
        cols = {r[1] for r in c.execute("PRAGMA table_info(trials)")}
        version = c.execute("SELECT v FROM meta WHERE k='schema_version'").fetchone()[0]
    c.close()
    assert "readout_json" in cols and int(version) == SCHEMA_VERSION == 3


def test_result_hash_without_readout_is_unchanged() -> None:
    """Every existing row's hash: the readout argument must not change it."""
    assert keys.result_sha("k", [1, 2], "text", {"a": 1}) == keys.sha256_hex(
        keys.canonical_json(["k", [1, 2], "text", {"a": 1}])
    )


def test_a_new_cache_is_created_at_the_current_schema_without_migrating(tmp_path: Path, monkeypatch) -> None:
    """A new database has every column from the start: nothing to ALTER on first open (so two
    runs opening a new cache together cannot race on the migration)."""
    altered: list[str] = []
    real_tx = Store.tx

    def spy_tx(self: Store):  # type: ignore[no-untyped-def]
        altered.append("tx")
        return real_tx(self)

    monkeypatch.setattr(Store, "tx", spy_tx)
    Store(tmp_path).close()
    assert altered == []  # created current: no migration, no write lock taken
    with sqlite3.connect(tmp_path / "results.sqlite") as c:
        assert "readout_json" in {r[1] for r in c.execute("PRAGMA table_info(trials)")}
    c.close()


def test_migration_rereads_the_schema_under_the_write_lock(tmp_path: Path, monkeypatch) -> None:
    """Another process migrates between our first look and our write lock: the migration must
    notice (a second ALTER TABLE would fail on the duplicate column and end the run)."""
    Store(tmp_path).close()
    with sqlite3.connect(tmp_path / "results.sqlite") as c:
        c.execute("ALTER TABLE trials DROP COLUMN readout_json")
        c.execute("UPDATE meta SET v='2' WHERE k='schema_version'")
    c.close()
    real = Store._schema_state
    calls: list[int] = []

    def stale_first(self: Store, c: sqlite3.Connection):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:  # our first look: still version 2; then the other process migrates
            state = real(self, c)
            Store(tmp_path).close()
            return state
        return real(self, c)

    monkeypatch.setattr(Store, "_schema_state", stale_first)
    Store(tmp_path).close()  # would raise "duplicate column name" without the re-read
    with sqlite3.connect(tmp_path / "results.sqlite") as c:
        assert int(c.execute("SELECT v FROM meta WHERE k='schema_version'").fetchone()[0]) == SCHEMA_VERSION
    c.close()
