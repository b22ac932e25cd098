"""The embedded store: SQLite for experiments, trials, batches, jobs and grades; safetensors
files for concept vectors.

Writes are transactional; a batch's results land in one transaction, so a kill at any point leaves
either all of a batch or none of it. Each stored result and vector carries a sha256 over its
content so `audit` can detect an edited row or a truncated file. Nothing is ever unpickled.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .spec import canonical_json, sha256_hex

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiments (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, spec_json TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
  key TEXT PRIMARY KEY,
  trial_json TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('planned','submitted','done','failed')),
  batch_id TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  error TEXT, error_class TEXT,
  response_ids TEXT, response TEXT, diagnostics_json TEXT,
  backend TEXT, result_sha TEXT, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS experiment_trials (
  experiment_id TEXT NOT NULL, trial_key TEXT NOT NULL, PRIMARY KEY (experiment_id, trial_key)
);
CREATE TABLE IF NOT EXISTS batches (
  id TEXT PRIMARY KEY, trial_keys TEXT NOT NULL, seed INTEGER NOT NULL,
  status TEXT NOT NULL, backend TEXT, job_id TEXT, attempts INTEGER NOT NULL DEFAULT 0,
  versions_json TEXT, error TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vectors (
  id TEXT PRIMARY KEY, model_key TEXT NOT NULL, recipe_id TEXT NOT NULL, layer INTEGER NOT NULL,
  concept TEXT NOT NULL, file TEXT NOT NULL, tensor_name TEXT NOT NULL, file_sha TEXT NOT NULL,
  norm REAL NOT NULL, recipe_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS grades (
  trial_key TEXT NOT NULL, grader TEXT NOT NULL, grader_version TEXT NOT NULL,
  grade_json TEXT NOT NULL, created_at TEXT NOT NULL,
  PRIMARY KEY (trial_key, grader, grader_version)
);
CREATE INDEX IF NOT EXISTS trials_status ON trials(status);
"""


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def result_sha(key: str, response_ids: list[int], response: str, diagnostics: dict[str, Any]) -> str:
    return sha256_hex(canonical_json([key, response_ids, response, diagnostics]))


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_writable(root: Path) -> None:
    """Fail with one line, writing nothing, if the cache root cannot be created or written."""
    probe = root
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"cache path {root} is not a directory ({probe} is a file)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cache directory {root} is not writable")


class Store:
    """One cache root: `<root>/results.sqlite` and `<root>/vectors/*.safetensors`."""

    def __init__(self, root: Path, *, create: bool = True) -> None:
        self.root = Path(root)
        self.db_path = self.root / "results.sqlite"
        if not create and not self.db_path.exists():
            raise UserError(f"no cache at {self.root} (expected {self.db_path})")
        if create:
            check_writable(self.root)
            self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(_SCHEMA)
            self.conn.execute(
                "INSERT OR IGNORE INTO meta(k, v) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        except sqlite3.DatabaseError as err:
            raise UserError(f"the cache database {self.db_path} is unreadable or corrupt: {err}") from err
        self.conn.row_factory = sqlite3.Row

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    # -- experiments and trials ---------------------------------------------------------------

    def register(self, experiment_id: str, name: str, spec_json: str, trials: dict[str, str]) -> None:
        """Record an experiment and its trials (key -> trial JSON); existing trials are kept."""
        stamp = now()
        with self.tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO experiments(id, name, spec_json, created_at) VALUES (?,?,?,?)",
                (experiment_id, name, spec_json, stamp),
            )
            c.executemany(
                "INSERT OR IGNORE INTO trials(key, trial_json, status, updated_at) VALUES (?,?,'planned',?)",
                [(k, j, stamp) for k, j in trials.items()],
            )
            c.executemany(
                "INSERT OR IGNORE INTO experiment_trials(experiment_id, trial_key) VALUES (?,?)",
                [(experiment_id, k) for k in trials],
            )

    def statuses(self, keys: Iterable[str]) -> dict[str, str]:
        keys = list(keys)
        out: dict[str, str] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT key, status FROM trials WHERE key IN ({','.join('?' * len(chunk))})"
            out.update({r["key"]: r["status"] for r in self.conn.execute(q, chunk)})
        return out

    def trial_rows(self, keys: Iterable[str]) -> list[sqlite3.Row]:
        keys = list(keys)
        rows: list[sqlite3.Row] = []
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT * FROM trials WHERE key IN ({','.join('?' * len(chunk))})"
            rows.extend(self.conn.execute(q, chunk))
        return rows

    def experiment_keys(self, experiment_id: str) -> list[str]:
        q = "SELECT trial_key FROM experiment_trials WHERE experiment_id = ? ORDER BY rowid"
        return [r[0] for r in self.conn.execute(q, (experiment_id,))]

    # -- batches ------------------------------------------------------------------------------

    def batch_submitted(
        self, batch_id: str, keys: list[str], seed: int, backend: str, job_id: str | None
    ) -> None:
        """Persist a submission BEFORE waiting on it, so a killed client can reattach."""
        stamp = now()
        with self.tx() as c:
            c.execute(
                "INSERT INTO batches(id, trial_keys, seed, status, backend, job_id, attempts, created_at, updated_at)"
                " VALUES (?,?,?,'submitted',?,?,1,?,?) ON CONFLICT(id) DO UPDATE SET status='submitted',"
                " backend=excluded.backend, job_id=excluded.job_id, attempts=batches.attempts+1,"
                " updated_at=excluded.updated_at",
                (batch_id, json.dumps(keys), seed, backend, job_id, stamp, stamp),
            )
            c.executemany(
                "UPDATE trials SET status='submitted', batch_id=?, attempts=attempts+1, updated_at=?"
                " WHERE key=? AND status != 'done'",
                [(batch_id, stamp, k) for k in keys],
            )

    def batch_done(
        self,
        batch_id: str,
        results: dict[str, tuple[list[int], str, dict[str, Any]]],
        backend: str,
        versions: dict[str, str],
    ) -> None:
        """Store every row of a batch in one transaction; a trial already done is never rewritten."""
        stamp = now()
        with self.tx() as c:
            for key, (ids, text, diag) in results.items():
                c.execute(
                    "UPDATE trials SET status='done', batch_id=?, error=NULL, error_class=NULL,"
                    " response_ids=?, response=?, diagnostics_json=?, backend=?, result_sha=?, updated_at=?"
                    " WHERE key=? AND status != 'done'",
                    (
                        batch_id,
                        json.dumps(ids),
                        text,
                        canonical_json(diag),
                        backend,
                        result_sha(key, ids, text, diag),
                        stamp,
                        key,
                    ),
                )
            c.execute(
                "UPDATE batches SET status='done', versions_json=?, error=NULL, updated_at=? WHERE id=?",
                (canonical_json(versions), stamp, batch_id),
            )

    def batch_failed(self, batch_id: str, keys: list[str], error: str, error_class: str) -> None:
        stamp = now()
        with self.tx() as c:
            c.execute(
                "UPDATE batches SET status='failed', error=?, updated_at=? WHERE id=?",
                (error, stamp, batch_id),
            )
            c.executemany(
                "UPDATE trials SET status='failed', error=?, error_class=?, updated_at=?"
                " WHERE key=? AND status != 'done'",
                [(error, error_class, stamp, k) for k in keys],
            )

    def open_batches(self) -> list[sqlite3.Row]:
        """Batches submitted to a remote backend whose results were never collected."""
        return list(
            self.conn.execute("SELECT * FROM batches WHERE status='submitted' AND job_id IS NOT NULL")
        )

    # -- vectors ------------------------------------------------------------------------------

    def vector_file_dir(self) -> Path:
        return self.root / "vectors"

    def save_vectors(
        self,
        model_key: str,
        recipe_id: str,
        recipe_json: str,
        vectors: dict[tuple[int, str], torch.Tensor],
    ) -> None:
        """Write one safetensors file (atomic: temp, fsync, rename), then index it in SQLite."""
        from safetensors.torch import save_file

        names = {f"L{layer}/{concept}": (layer, concept) for layer, concept in vectors}
        tensors = {n: vectors[lc].detach().float().contiguous().cpu() for n, lc in names.items()}
        content = hashlib.sha256(canonical_json([model_key, recipe_id, sorted(names)]).encode()).hexdigest()
        directory = self.vector_file_dir()
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / f"{recipe_id}-{content[:16]}.safetensors"
        tmp = directory / f".{final.name}.{os.getpid()}.tmp"
        save_file(tensors, str(tmp), metadata={"model": model_key, "recipe": recipe_json})
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        digest = file_sha(final)
        with self.tx() as c:
            for name, (layer, concept) in names.items():
                vid = sha256_hex(canonical_json([model_key, recipe_id, layer, concept]))
                c.execute(
                    "INSERT OR REPLACE INTO vectors(id, model_key, recipe_id, layer, concept, file, tensor_name,"
                    " file_sha, norm, recipe_json) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        vid,
                        model_key,
                        recipe_id,
                        layer,
                        concept,
                        final.name,
                        name,
                        digest,
                        float(tensors[name].norm()),
                        recipe_json,
                    ),
                )

    def missing_vectors(
        self, model_key: str, recipe_id: str, wanted: Iterable[tuple[int, str]]
    ) -> list[tuple[int, str]]:
        have = {
            (r["layer"], r["concept"])
            for r in self.conn.execute(
                "SELECT layer, concept FROM vectors WHERE model_key=? AND recipe_id=?", (model_key, recipe_id)
            )
        }
        return sorted({w for w in wanted if w not in have})

    def load_vectors(
        self, model_key: str, recipe_id: str, wanted: Iterable[tuple[int, str]]
    ) -> dict[tuple[int, str], torch.Tensor]:
        """Read vectors, verifying each file's sha256 first: a corrupt file is an error, not data."""
        from safetensors import safe_open

        wanted = set(wanted)
        rows = [
            r
            for r in self.conn.execute(
                "SELECT * FROM vectors WHERE model_key=? AND recipe_id=?", (model_key, recipe_id)
            )
            if (r["layer"], r["concept"]) in wanted
        ]
        verified: set[str] = set()
        out: dict[tuple[int, str], torch.Tensor] = {}
        for r in rows:
            path = self.vector_file_dir() / r["file"]
            if r["file"] not in verified:
                if not path.exists() or file_sha(path) != r["file_sha"]:
                    raise UserError(
                        f"vector file {path} is missing or corrupt (sha256 mismatch); run `audit`"
                    )
                verified.add(r["file"])
            with safe_open(str(path), framework="pt") as f:
                out[(r["layer"], r["concept"])] = f.get_tensor(r["tensor_name"])
        return out

    # -- grades -------------------------------------------------------------------------------

    def ungraded(self, keys: Iterable[str], grader: str, version: str) -> list[sqlite3.Row]:
        rows = [r for r in self.trial_rows(keys) if r["status"] == "done"]
        have = {
            r[0]
            for r in self.conn.execute(
                "SELECT trial_key FROM grades WHERE grader=? AND grader_version=?", (grader, version)
            )
        }
        return [r for r in rows if r["key"] not in have]

    def save_grades(self, grader: str, version: str, grades: dict[str, dict[str, Any]]) -> None:
        stamp = now()
        with self.tx() as c:
            c.executemany(
                "INSERT OR REPLACE INTO grades(trial_key, grader, grader_version, grade_json, created_at)"
                " VALUES (?,?,?,?,?)",
                [(k, grader, version, canonical_json(g), stamp) for k, g in grades.items()],
            )

    def grades_for(self, keys: Iterable[str], grader: str, version: str) -> dict[str, dict[str, Any]]:
        keys = list(keys)
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = (
                "SELECT trial_key, grade_json FROM grades WHERE grader=? AND grader_version=?"
                f" AND trial_key IN ({','.join('?' * len(chunk))})"
            )
            for r in self.conn.execute(q, [grader, version, *chunk]):
                out[r[0]] = json.loads(r[1])
        return out
