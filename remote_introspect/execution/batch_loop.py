"""The one loop that runs a protocol's pending trials, batch by batch, for every protocol
(`runner`, `localization`, `probe_report`, `self_prediction`).

What it guarantees, whatever the request (a generation or a readout): jobs an earlier (killed) run
submitted and never collected are reattached, not resubmitted; each batch's trials are claimed in
SQLite before they run, so concurrent runs on one cache never run the same trial (trials another
live run holds are waited for); the submission is persisted before waiting on it; one request per
batch through the shared retry policy; a batch the server finds too large is split in halves; a
failed batch is recorded failed with its reason (retried on the next run, never counted as an
answer), and so is every non-finite row of a finished one.

A protocol supplies only what differs: how a batch becomes a request (`build`), which executor call
sends it (`send`) or collects an orphaned job (`collect`), how the output becomes stored rows
(`decode`), and how pending trials are cut into batches (`plan`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import torch

from remote_introspect.errors import BatchTooLargeError, UserError
from remote_introspect.execution.backends.base import Executor
from remote_introspect.experiment.planner import Batch, Keyed, make_batch
from remote_introspect.retry_policy import RetrySettings, call_with_retries
from remote_introspect.store.database import ClaimOwner, Store

log = logging.getLogger(__name__)

NONFINITE_ERROR = "non-finite activations/logits (NaN or inf in the steered hidden states or the logits)"

T = TypeVar("T", bound=Keyed)
R = TypeVar("R")

Progress = Callable[[str, int, int], None]  # (stage, done, total)
Submitted = Callable[[str | None], None]  # told the job id as soon as the request is accepted
# A finished batch's stored rows: {key: (response ids, response text, diagnostics[, readout])}
# and the keys whose row was non-finite (failed, never stored as a result).
Decoded = tuple[dict[str, tuple[Any, ...]], list[str]]


class LoopOptions(Protocol):
    """The run options the loop reads (`runner.RunOptions` has them)."""

    retry: RetrySettings
    claim_lease_s: float
    claim_poll_s: float


@dataclass
class Tally:
    """What one loop did: the protocol's report adds these to its own counters."""

    executed_batches: int = 0
    failed_batches: int = 0
    failed_trials: int = 0
    nonfinite_trials: int = 0
    errors: list[str] = field(default_factory=list)


def error_line(err: BaseException) -> str:
    """A failure as stored and reported: one line, class name first, at most 500 characters."""
    return f"{type(err).__name__}: {err}".splitlines()[0][:500]


def nonfinite_rows(trials: Sequence[Keyed], out: Any) -> list[str]:
    """Keys of the rows a generation output flags as non-finite (`out.nonfinite`, when it has one)."""
    bad = getattr(out, "nonfinite", None)
    return [t.key for i, t in enumerate(trials) if bad is not None and bool(bad[i])]


def chunk_batches(items: list[T], rows: int, make: Callable[[list[T]], Batch[T]] = make_batch) -> list[Batch[T]]:
    """`items` in order, `rows` per batch."""
    return [make(items[i : i + rows]) for i in range(0, len(items), rows)]


def not_done(store: Store, trials: list[T]) -> list[T]:
    """The trials still to run: every one the store does not hold as done."""
    statuses = store.statuses(_keys(trials))
    return [t for t in trials if statuses.get(t.key) != "done"]


def extract(
    executor: Executor, retry: RetrySettings, ids: torch.Tensor, mask: torch.Tensor, layers: list[int]
) -> torch.Tensor:
    """`executor.extract` [L, N, H] with the shared retry policy; rows too many for the server are
    halved (recursively) and the halves' activations concatenated."""
    try:
        return call_with_retries(lambda: executor.extract(ids, mask, layers), retry)
    except BatchTooLargeError:
        if ids.shape[0] < 2:
            raise
        h = ids.shape[0] // 2
        return torch.cat(
            [extract(executor, retry, ids[:h], mask[:h], layers), extract(executor, retry, ids[h:], mask[h:], layers)],
            dim=1,
        )


def claim_batch(
    store: Store, owner: ClaimOwner, batch: Batch[T], lease_s: float, notice: Callable[[str], None],
    make: Callable[[list[T]], Batch[T]] = make_batch,
) -> tuple[Batch[T] | None, list[T]]:  # fmt: skip
    """Claim a batch's trials before running them: (the batch of trials now ours or None, the
    trials another live run holds, to wait for). Trials that became done meanwhile are dropped."""
    mine, others, taken = store.claim(batch.keys, owner, lease_s)
    if taken:
        notice(f"took over {taken} trial(s) claimed by a run that is no longer alive")
    held = set(others)
    waiting = [t for t in batch.trials if t.key in held]
    ours = set(mine)
    trials = [t for t in batch.trials if t.key in ours]
    if not trials:
        return None, waiting
    return (batch if len(trials) == len(batch.trials) else make(trials)), waiting


@dataclass
class BatchLoop(Generic[T, R]):
    """Runs `pending` (see the module docstring); `run` returns what it did."""

    store: Store
    executor: Executor
    opts: LoopOptions
    build: Callable[[Batch[T]], R]  # the request of one batch
    send: Callable[[R, Submitted], Any]  # one request: executor.generate or executor.readout
    decode: Callable[[Batch[T], R, Any], Decoded]
    plan: Callable[[list[T]], list[Batch[T]]]  # pending trials -> batches
    collect: Callable[[str], Any] | None  # an orphaned job's output by job id (None: no reattach)
    readout: bool  # rows carry a readout (`store.readout_done`) or are generations (`batch_done`)
    progress: Progress
    notice: Callable[[str], None]
    stage: str  # the progress stage of this loop ("generating", "reading out", ...)
    unit: str = "trials"  # what the reattach notice counts
    failure_stage: str | None = None  # a progress stage that counts failed trials, if any
    make: Callable[[list[T]], Batch[T]] = make_batch  # a batch of given trials (splitting)
    tally: Tally = field(default_factory=Tally)
    _done: int = 0
    _total: int = 0

    def run(self, pending: list[T]) -> Tally:
        self._total, self._done = len(pending), 0
        self.progress(self.stage, 0, self._total)
        owner = ClaimOwner.this_process()
        try:
            handled = self._reattach(pending, owner)
            queue = self.plan([t for t in pending if t.key not in handled])
            deferred: list[T] = []
            while queue or deferred:
                if not queue:
                    freed = self._wait_for_claims(owner, deferred)
                    deferred = []
                    queue = self.plan(freed)
                    continue
                claimed, waiting = claim_batch(
                    self.store, owner, queue.pop(0), self.opts.claim_lease_s, self.notice, self.make
                )
                deferred += waiting
                if claimed is None:
                    continue
                try:
                    self._run_one(claimed, queue)
                finally:
                    self.store.release(owner, claimed.keys)  # done, failed or split: free for others
        finally:
            try:
                self.store.release(owner)
            except UserError:
                pass
        return self.tally

    def _reattach(self, pending: list[T], owner: ClaimOwner) -> set[str]:
        """Collect the jobs an earlier (killed) run submitted and never collected."""
        collect = self.collect
        if not self.executor.supports_reattach or collect is None:
            return set()
        by_key = {t.key: t for t in pending}
        handled: set[str] = set()
        for row in self.store.open_batches():
            batch_keys = json.loads(row["trial_keys"])
            if row["backend"] != self.executor.name or not set(batch_keys) <= by_key.keys():
                continue
            mine, others, _ = self.store.claim(batch_keys, owner, self.opts.claim_lease_s)
            try:
                if others or len(mine) != len(batch_keys):
                    continue  # another live run holds it (or part is done): not ours to collect
                batch = self.make([by_key[k] for k in batch_keys])
                request = self.build(batch)
                try:
                    out = call_with_retries(lambda jid=row["job_id"]: collect(jid), self.opts.retry)
                except UserError:
                    raise
                except Exception:  # noqa: BLE001 - fall back to resubmitting
                    out = None
                if out is not None:
                    self.notice(f"reattached job {row['job_id']} ({len(batch_keys)} {self.unit})")
                    self._finish(batch, request, out)
                    handled |= set(batch_keys)
            finally:
                self.store.release(owner, mine)
        return handled

    def _run_one(self, batch: Batch[T], queue: list[Batch[T]]) -> None:
        request = self.build(batch)

        def submitted(job_id: str | None) -> None:
            self.store.batch_submitted(batch.id, batch.keys, batch.seed, self.executor.name, job_id)

        try:
            out = call_with_retries(lambda: self.send(request, submitted), self.opts.retry)
        except UserError:
            raise
        except BatchTooLargeError as err:
            if len(batch.trials) > 1:
                half = len(batch.trials) // 2
                self.notice(f"batch of {len(batch.trials)} too large for the server ({err}); splitting")
                self.store.batch_failed(batch.id, [], f"split: {err}", "BatchTooLargeError")
                queue[:0] = [self.make(list(batch.trials[:half])), self.make(list(batch.trials[half:]))]
                return
            self._failed(batch, err)
            return
        except Exception as err:  # noqa: BLE001 - recorded as failed (never as an answer)
            self._failed(batch, err)
            return
        self._finish(batch, request, out)

    def _finish(self, batch: Batch[T], request: R, out: Any) -> None:
        try:
            results, bad = self.decode(batch, request, out)
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - an output we cannot read (malformed, wrong shape):
            # the batch failed (retried by the next run), never an answer, and the run goes on;
            # left `submitted`, every rerun would reattach the same unreadable job.
            self._failed(batch, err)
            return
        done = {k: r for k, r in results.items() if k not in bad}
        if self.readout:
            self.store.readout_done(batch.id, done, self.executor.name, self.executor.versions())  # type: ignore[arg-type]
        else:
            self.store.batch_done(batch.id, done, self.executor.name, self.executor.versions())  # type: ignore[arg-type]
        if bad:  # never done, never an answer: failed with the reason (retried on the next run)
            self.store.batch_failed(batch.id, bad, NONFINITE_ERROR, "NonFiniteError")
            self.tally.failed_trials += len(bad)
            self.tally.nonfinite_trials += len(bad)
        self.tally.executed_batches += 1
        self._advance(len(batch.trials))

    def _failed(self, batch: Batch[T], err: BaseException) -> None:
        msg = error_line(err)
        log.error("batch %s failed: %s", batch.id[:12], msg)
        self.store.batch_failed(batch.id, batch.keys, msg, type(err).__name__)
        self.tally.failed_trials += len(batch.trials)
        self.tally.failed_batches += 1
        self.tally.errors.append(msg)
        if self.failure_stage is not None:
            self.progress(self.failure_stage, self.tally.failed_trials, self._total)

    def _advance(self, n: int) -> None:
        self._done += n
        self.progress(self.stage, self._done, self._total)

    def _wait_for_claims(self, owner: ClaimOwner, trials: list[T]) -> list[T]:
        """Wait while other live runs hold `trials`; returns those that are free and still not done
        (the other run failed them, or died: its claims are then taken over at once)."""
        remaining = list(trials)
        delay = self.opts.claim_poll_s
        while remaining:
            statuses = self.store.statuses(_keys(remaining))
            done = [t for t in remaining if statuses.get(t.key) == "done"]
            if done:
                self._advance(len(done))
            remaining = [t for t in remaining if statuses.get(t.key) != "done"]
            held = self.store.live_claims_by_others(_keys(remaining), owner)
            free = [t for t in remaining if t.key not in held]
            if free or not remaining:
                return free
            self.progress("waiting for another run's claimed trials", len(remaining), len(remaining))
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)
        return []


def _keys(trials: Iterable[Keyed]) -> list[str]:
    return [t.key for t in trials]
