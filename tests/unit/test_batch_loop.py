"""The shared batch loop (execution/batch_loop.py) that every protocol runs its trials through:
splitting on "too large", failures recorded as failed (never done), non-finite rows failed,
orphaned jobs reattached instead of resubmitted. A scripted executor, a real SQLite store."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from remote_introspect.errors import BatchTooLargeError, UserError
from remote_introspect.execution.batch_loop import (
    NONFINITE_ERROR,
    BatchLoop,
    Decoded,
    chunk_batches,
    not_done,
)
from remote_introspect.execution.runner import RunOptions
from remote_introspect.experiment.planner import Batch, make_batch
from remote_introspect.retry_policy import RetrySettings
from remote_introspect.store.database import Store


@dataclass(frozen=True)
class Item:
    key: str


@dataclass
class Out:
    keys: list[str]
    nonfinite: list[bool]


class FakeExecutor:
    """`send` refuses batches larger than `max_rows`, fails batches holding `broken`, flags rows in
    `nan` as non-finite; `collect` answers the jobs in `orphans`."""

    name = "fake"
    supports_reattach = True

    def __init__(self, max_rows: int = 99, broken: str | None = None, nan: tuple[str, ...] = ()) -> None:
        self.max_rows, self.broken, self.nan = max_rows, broken, nan
        self.sent: list[list[str]] = []
        self.orphans: dict[str, list[str]] = {}

    def versions(self) -> dict[str, str]:
        return {"fake": "1"}

    def send(self, keys: list[str], submitted: Any) -> Out:
        self.sent.append(keys)
        if len(keys) > self.max_rows:
            raise BatchTooLargeError(f"{len(keys)} rows")
        submitted(f"job-{len(self.sent)}")
        if self.broken in keys:
            raise RuntimeError("server said no\nsecond line")
        return Out(keys, [k in self.nan for k in keys])

    def collect(self, job_id: str) -> Out | None:
        keys = self.orphans.get(job_id)
        return None if keys is None else Out(keys, [False] * len(keys))


def _decode(batch: Batch[Item], request: list[str], out: Out) -> Decoded:
    results = {k: ([1], f"answer {k}", {}) for k in out.keys}
    return results, [k for k, bad in zip(out.keys, out.nonfinite, strict=True) if bad]  # type: ignore[return-value]


def _run(tmp_path: Path, ex: FakeExecutor, items: list[Item], rows: int) -> tuple[Store, Any, list[tuple]]:
    store = Store(tmp_path)
    store.register("exp", "test", "{}", {t.key: json.dumps({"key": t.key}) for t in items})
    progress: list[tuple] = []
    opts = RunOptions(cache_root=tmp_path, retry=RetrySettings(max_attempts=1))
    tally = BatchLoop(
        store, ex, opts, lambda b: b.keys, ex.send, _decode, lambda ts: chunk_batches(ts, rows), ex.collect,
        readout=False, progress=lambda *a: progress.append(a), notice=lambda line: None, stage="generating",
        failure_stage="failed",
    ).run(items)  # type: ignore[arg-type]  # fmt: skip
    return store, tally, progress


def test_too_large_batches_are_halved_until_they_fit(tmp_path: Path) -> None:
    items = [Item(f"k{i}") for i in range(8)]
    ex = FakeExecutor(max_rows=2)
    store, tally, progress = _run(tmp_path, ex, items, rows=8)
    assert [len(s) for s in ex.sent] == [8, 4, 2, 2, 4, 2, 2]
    assert not_done(store, items) == []
    assert tally.executed_batches == 4 and tally.failed_trials == 0
    assert progress[-1] == ("generating", 8, 8)


def test_a_failed_batch_is_recorded_failed_never_done(tmp_path: Path) -> None:
    items = [Item(f"k{i}") for i in range(4)]
    store, tally, progress = _run(tmp_path, FakeExecutor(broken="k3"), items, rows=2)
    statuses = store.statuses(t.key for t in items)
    assert statuses == {"k0": "done", "k1": "done", "k2": "failed", "k3": "failed"}
    assert tally.failed_batches == 1 and tally.failed_trials == 2
    assert tally.errors == ["RuntimeError: server said no"]  # one line
    assert ("failed", 2, 4) in progress
    assert not_done(store, items) == items[2:]  # the next run retries them


def test_non_finite_rows_fail_and_the_rest_of_the_batch_is_stored(tmp_path: Path) -> None:
    items = [Item(f"k{i}") for i in range(3)]
    store, tally, _ = _run(tmp_path, FakeExecutor(nan=("k1",)), items, rows=3)
    rows = {r["key"]: r for r in store.trial_rows(t.key for t in items)}
    assert rows["k1"]["status"] == "failed" and rows["k1"]["error"] == NONFINITE_ERROR
    assert rows["k1"]["response"] is None
    assert rows["k0"]["status"] == rows["k2"]["status"] == "done"
    assert tally.nonfinite_trials == 1 and tally.failed_trials == 1 and tally.executed_batches == 1


def test_an_orphaned_job_is_collected_not_resubmitted(tmp_path: Path) -> None:
    items = [Item(f"k{i}") for i in range(4)]
    store = Store(tmp_path)
    orphan = make_batch(items[:2])
    store.register("exp", "test", "{}", {t.key: "{}" for t in items})
    store.batch_submitted(orphan.id, orphan.keys, orphan.seed, "fake", "job-old")
    store.close()
    ex = FakeExecutor()
    ex.orphans["job-old"] = orphan.keys
    store, tally, _ = _run(tmp_path, ex, items, rows=4)
    assert ex.sent == [["k2", "k3"]]  # only what the killed run never submitted
    assert not_done(store, items) == []
    assert tally.executed_batches == 2


def test_a_user_error_stops_the_run(tmp_path: Path) -> None:
    ex = FakeExecutor()

    def refuse(keys: list[str], submitted: Any) -> Out:
        raise UserError("bad key")

    ex.send = refuse  # type: ignore[method-assign]
    with pytest.raises(UserError):
        _run(tmp_path, ex, [Item("k0")], rows=1)


def test_an_unreadable_output_fails_its_batch_and_the_run_goes_on(tmp_path: Path, monkeypatch) -> None:
    """A server output the decoder cannot read fails that batch (never stored as an answer, not
    left `submitted` for every rerun to reattach) and the other batches still run."""
    items = [Item(f"k{i}") for i in range(4)]
    readable = _decode

    def decode(batch: Batch[Item], request: list[str], out: Out) -> Decoded:
        if "k0" in out.keys:
            raise ValueError("expected [B, K] log-probabilities, got []")
        return readable(batch, request, out)

    monkeypatch.setattr(__import__(__name__), "_decode", decode)
    store, tally, _ = _run(tmp_path, FakeExecutor(), items, rows=2)
    assert store.statuses(t.key for t in items) == {"k0": "failed", "k1": "failed", "k2": "done", "k3": "done"}
    assert tally.failed_batches == 1 and tally.errors == ["ValueError: expected [B, K] log-probabilities, got []"]
    assert store.open_batches() == []  # nothing left for a rerun to reattach
