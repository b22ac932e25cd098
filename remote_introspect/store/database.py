"""The embedded store: SQLite for experiments, trials, batches, jobs and grades; safetensors
files for concept vectors.

Writes are transactional; a batch's results land in one transaction, so a kill at any point leaves
either all of a batch or none of it. Each stored result and vector carries a sha256 over its
content so `audit` can detect an edited row or a truncated file. Nothing is ever unpickled.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import socket
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from remote_introspect.atomic import atomic_write, fsync_file
from remote_introspect.errors import UserError
from remote_introspect.keys import canonical_json, grade_sha, result_sha, vector_id

# 2: grades carry `grade_sha` (hash of the grade with its trial's result hash and the grader);
#    `claims` (batch leases for concurrent runs on one cache). A version-1 cache is migrated on
#    the first writable open (its grades are hashed as found: trust on first use).
# 3: `trials.readout_json` (nullable): a readout trial's few floats (localization, probes); its
#    result hash covers it, so a version-2 reader could not verify such rows. Added on open.
SCHEMA_VERSION = 3

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
  backend TEXT, result_sha TEXT, updated_at TEXT NOT NULL,
  readout_json TEXT
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
  grade_json TEXT NOT NULL, created_at TEXT NOT NULL, grade_sha TEXT,
  PRIMARY KEY (trial_key, grader, grader_version)
);
CREATE INDEX IF NOT EXISTS trials_status ON trials(status);
CREATE TABLE IF NOT EXISTS claims (
  trial_key TEXT PRIMARY KEY, owner TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
  pid_start TEXT, claimed_at TEXT NOT NULL, expires_at REAL NOT NULL
);
"""


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_writable(root: Path) -> None:
    """Fail with one line, writing nothing that stays, if the cache root cannot be created or
    written. Probes by creating (and removing) a file: `os.access` always passes for root."""
    probe = Path(root)
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"cache path {root} is not a directory ({probe} is a file)")
    probe_dir_writable(probe, f"cache directory {root}")


def probe_dir_writable(directory: Path, what: str) -> None:
    """UserError (one line) unless a file can really be created in `directory`."""
    try:
        fd, name = tempfile.mkstemp(prefix=".ri-write-probe-", dir=directory)
    except OSError as err:
        raise UserError(f"{what} is not writable ({err.strerror or err})") from None
    os.close(fd)
    try:
        os.unlink(name)
    except OSError:
        pass


class CacheCorrupt(UserError):
    """The cache database cannot be read or is not what this package wrote; `audit` names it."""

    exit_code = 4


def cache_error(err: BaseException, path: Path) -> UserError:
    """One line for an SQLite or file-system failure on the cache: full disk, damage, permissions."""
    text = " ".join(str(err).split()) or type(err).__name__
    code = getattr(err, "errno", None)
    if "full" in text.lower() or code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return UserError(
            f"cannot write the cache at {path}: disk full ({text}); nothing half-written was kept"
        )
    if isinstance(err, sqlite3.OperationalError) and "disk i/o error" in text.lower():
        return UserError(
            f"cannot write the cache at {path}: disk I/O error (disk full?); nothing half-written was kept"
        )
    if isinstance(err, sqlite3.DatabaseError) and any(
        w in text.lower() for w in ("malformed", "not a database", "decode", "corrupt")
    ):
        return CacheCorrupt(f"the cache database {path} is corrupt ({text}); run `audit` for details")
    if "readonly" in text.lower() or code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write the cache at {path}: {text}")
    if isinstance(err, sqlite3.Error):
        return UserError(f"cache database error at {path}: {text}")
    return UserError(text)


def _pid_start(pid: int) -> str | None:
    """Start time of a process (Linux /proc), to tell a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass(frozen=True)
class ClaimOwner:
    """Who holds a claim: this host, this process (and its start time), a token per run."""

    token: str
    host: str
    pid: int
    pid_start: str | None

    @staticmethod
    def this_process() -> ClaimOwner:
        pid = os.getpid()
        return ClaimOwner(uuid.uuid4().hex, socket.gethostname(), pid, _pid_start(pid))


def claim_alive(row: sqlite3.Row, now_s: float | None = None) -> bool:
    """A claim on this host is alive while its process is (checked at once, pid reuse included);
    only a claim from another host, which cannot be checked, waits for its lease to expire."""
    if row["host"] == socket.gethostname():
        try:
            os.kill(int(row["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        start = _pid_start(int(row["pid"]))
        return not (row["pid_start"] and start and start != row["pid_start"])
    return (now_s if now_s is not None else time.time()) < float(row["expires_at"])


def refuse_empty_database(db_path: Path) -> None:
    """A 0-byte results.sqlite is damage (the package never leaves one: a new database is built
    beside it and renamed into place); treating it as an empty cache would silently rebuild it
    and, on NDIF, resubmit every job and forget the orphaned job ids."""
    try:
        size = db_path.stat().st_size
    except FileNotFoundError:
        return
    except OSError as err:
        raise cache_error(err, db_path.parent) from None
    if size == 0:
        raise CacheCorrupt(
            f"the cache database {db_path} is empty (0 bytes): truncated or overwritten; restore it "
            "from a copy, or move it away to start a new cache"
        )


def _create_database(db_path: Path) -> None:
    """A new, initialised database, renamed into place so a kill never leaves a 0-byte file."""
    fd, name = tempfile.mkstemp(prefix=".results.sqlite.", suffix=".new", dir=db_path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.executescript(_SCHEMA)
            conn.execute(
                "INSERT OR IGNORE INTO meta(k, v) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        finally:
            conn.close()
        fsync_file(tmp)
        try:
            os.link(tmp, db_path)  # never replaces a database another process just created
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


class Store:
    """One cache root: `<root>/results.sqlite` and `<root>/vectors/*.safetensors`."""

    @staticmethod
    def exists(root: Path) -> bool:
        """Whether `root` already holds a results database (a new cache: every trial is pending)."""
        return (Path(root) / "results.sqlite").exists()

    def __init__(self, root: Path, *, create: bool = True) -> None:
        self.root = Path(root)
        self.db_path = self.root / "results.sqlite"
        if not create and not self.db_path.exists():
            raise UserError(f"no cache at {self.root} (expected {self.db_path})")
        refuse_empty_database(self.db_path)
        try:
            if create:
                check_writable(self.root)
                self.root.mkdir(parents=True, exist_ok=True)
                if not self.db_path.exists():
                    _create_database(self.db_path)
            self.conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            # Damaged bytes in a text column surface as a hash mismatch naming the row (audit's
            # checks), not as a decode error that aborts the run.
            self.conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(_SCHEMA)
            self.conn.row_factory = sqlite3.Row
            self._migrate()
        except sqlite3.DatabaseError as err:
            raise CacheCorrupt(
                f"the cache database {self.db_path} is unreadable or corrupt: {err}; run `audit`"
            ) from None
        except OSError as err:
            raise cache_error(err, self.root) from None

    def _schema_state(self, c: sqlite3.Connection) -> tuple[int, set[str], set[str]]:
        """(schema version, grades' columns, trials' columns) as the database holds them now."""
        row = c.execute("SELECT v FROM meta WHERE k='schema_version'").fetchone()
        version = int(row[0]) if row is not None else SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise UserError(
                f"the cache at {self.root} has schema version {version}; this version of "
                f"remote_introspect reads up to {SCHEMA_VERSION}: upgrade the package"
            )
        cols = {r[1] for r in c.execute("PRAGMA table_info(grades)")}
        trial_cols = {r[1] for r in c.execute("PRAGMA table_info(trials)")}
        return version, cols, trial_cols

    def _migrate(self) -> None:
        """Bring an older cache to SCHEMA_VERSION (refusing a newer one)."""
        version, cols, trial_cols = self._schema_state(self.conn)
        if "grade_sha" in cols and "readout_json" in trial_cols and version == SCHEMA_VERSION:
            return
        with self.tx() as c:
            # Read again under the write lock: another process opening the same cache may have
            # migrated it in between (a second ALTER would fail on the duplicate column).
            version, cols, trial_cols = self._schema_state(c)
            if "grade_sha" not in cols:
                c.execute("ALTER TABLE grades ADD COLUMN grade_sha TEXT")
            if "readout_json" not in trial_cols:
                c.execute("ALTER TABLE trials ADD COLUMN readout_json TEXT")
            if version < 2:  # hash the grades found (trust on first use), once
                rows = list(
                    c.execute(
                        "SELECT g.rowid, g.trial_key, g.grader, g.grader_version, g.grade_json, t.result_sha"
                        " FROM grades g LEFT JOIN trials t ON t.key = g.trial_key WHERE g.grade_sha IS NULL"
                    )
                )
                c.executemany(
                    "UPDATE grades SET grade_sha=? WHERE rowid=?",
                    [(grade_sha(r[1], r[5], r[2], r[3], r[4]), r[0]) for r in rows],
                )
            c.execute(
                "INSERT OR REPLACE INTO meta(k, v) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as err:
            raise cache_error(err, self.root) from None
        try:
            yield self.conn
        except BaseException as exc:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.DatabaseError):
                raise cache_error(exc, self.root) from None
            raise
        else:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.DatabaseError as err:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise cache_error(err, self.root) from None

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

    def readout_done(
        self,
        batch_id: str,
        results: dict[str, tuple[list[int], str, dict[str, Any], dict[str, Any]]],
        backend: str,
        versions: dict[str, str],
    ) -> None:
        """`batch_done` for readout trials: (answer ids, answer text, diagnostics, readout) per
        key, the readout stored in `readout_json` and covered by the result hash, all in one
        transaction with the done status; a trial already done is never rewritten."""
        stamp = now()
        with self.tx() as c:
            for key, (ids, text, diag, readout) in results.items():
                c.execute(
                    "UPDATE trials SET status='done', batch_id=?, error=NULL, error_class=NULL,"
                    " response_ids=?, response=?, diagnostics_json=?, readout_json=?, backend=?,"
                    " result_sha=?, updated_at=? WHERE key=? AND status != 'done'",
                    (
                        batch_id,
                        json.dumps(ids),
                        text,
                        canonical_json(diag),
                        canonical_json(readout),
                        backend,
                        result_sha(key, ids, text, diag, readout),
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

    def settle_batches(self) -> int:
        """Batches left 'submitted' by a killed run whose trials are all done since (in other
        batches): marked 'superseded', so they are neither reattached nor reported as in flight."""
        stale = []
        for r in self.conn.execute("SELECT id, trial_keys FROM batches WHERE status='submitted'"):
            keys = json.loads(r["trial_keys"])
            st = self.statuses(keys)
            if keys and all(st.get(k) == "done" for k in keys):
                stale.append(r["id"])
        if stale:
            with self.tx() as c:
                c.executemany(
                    "UPDATE batches SET status='superseded', updated_at=? WHERE id=? AND status='submitted'",
                    [(now(), b) for b in stale],
                )
        return len(stale)

    def prune_claims(self) -> int:
        """Drop claims on done trials and claims of runs that are no longer alive."""
        now_s = time.time()
        stale = [
            (r["owner"], r["trial_key"])
            for r in self.conn.execute(
                "SELECT c.*, t.status FROM claims c LEFT JOIN trials t ON t.key = c.trial_key"
            )
            if r["status"] == "done" or not claim_alive(r, now_s)
        ]
        if stale:
            with self.tx() as c:
                c.executemany("DELETE FROM claims WHERE owner=? AND trial_key=?", stale)
        return len(stale)

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
        from safetensors.torch import save

        names = {f"L{layer}/{concept}": (layer, concept) for layer, concept in vectors}
        tensors = {n: vectors[lc].detach().float().contiguous().cpu() for n, lc in names.items()}
        content = hashlib.sha256(canonical_json([model_key, recipe_id, sorted(names)]).encode()).hexdigest()
        directory = self.vector_file_dir()
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / f"{recipe_id}-{content[:16]}.safetensors"
        atomic_write(final, lambda fh: fh.write(save(tensors, metadata={"model": model_key, "recipe": recipe_json})))
        digest = file_sha(final)
        with self.tx() as c:
            for name, (layer, concept) in names.items():
                vid = vector_id(model_key, recipe_id, layer, concept)
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

    def drop_broken_vector_files(
        self, model_key: str, recipe_id: str, wanted: Iterable[tuple[int, str]]
    ) -> list[tuple[str, int]]:
        """Un-index every vector file holding a wanted vector that is missing or fails its sha256,
        so the run re-extracts it (vectors are deterministic). A damaged file is kept beside the
        others as `.NAME.corrupt` for inspection. Returns (file name, vectors un-indexed)."""
        wanted = set(wanted)
        files: dict[str, str] = {}
        for r in self.conn.execute(
            "SELECT layer, concept, file, file_sha FROM vectors WHERE model_key=? AND recipe_id=?",
            (model_key, recipe_id),
        ):
            if (r["layer"], r["concept"]) in wanted:
                files[r["file"]] = r["file_sha"]
        broken = []
        for name, sha in sorted(files.items()):
            path = self.vector_file_dir() / name
            if path.is_file() and file_sha(path) == sha:
                continue
            with self.tx() as c:
                n = c.execute("DELETE FROM vectors WHERE file=?", (name,)).rowcount
            if path.exists():
                os.replace(path, path.with_name(f".{name}.corrupt"))
            broken.append((name, n))
        return broken

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
        """Store grades, each hashed with its trial's result hash and the grader's identity."""
        stamp = now()
        with self.tx() as c:
            shas = self._result_shas(c, list(grades))
            rows = []
            for k, g in grades.items():
                text = canonical_json(g)
                rows.append(
                    (k, grader, version, text, stamp, grade_sha(k, shas.get(k), grader, version, text))
                )
            c.executemany(
                "INSERT OR REPLACE INTO grades(trial_key, grader, grader_version, grade_json, created_at, grade_sha)"
                " VALUES (?,?,?,?,?,?)",
                rows,
            )

    @staticmethod
    def _result_shas(c: sqlite3.Connection, keys: list[str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT key, result_sha FROM trials WHERE key IN ({','.join('?' * len(chunk))})"
            out.update({r[0]: r[1] for r in c.execute(q, chunk)})
        return out

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

    # -- claims: which process is running which trials ---------------------------------------

    def claim(self, keys: list[str], owner: ClaimOwner, lease_s: float) -> tuple[list[str], list[str], int]:
        """Claim `keys` for `owner` in one transaction, before running them: returns (claimed by
        us, held by another live run, claims taken over from dead runs). Done trials are neither."""
        mine: list[str] = []
        others: list[str] = []
        taken = 0
        now_s = time.time()
        with self.tx() as c:
            status = {}
            held = {}
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                marks = ",".join("?" * len(chunk))
                status.update(
                    {
                        r[0]: r[1]
                        for r in c.execute(f"SELECT key, status FROM trials WHERE key IN ({marks})", chunk)
                    }
                )
                held.update(
                    {
                        r["trial_key"]: r
                        for r in c.execute(f"SELECT * FROM claims WHERE trial_key IN ({marks})", chunk)
                    }
                )
            fresh = []
            for k in keys:
                if status.get(k) == "done":
                    continue
                row = held.get(k)
                if row is not None and row["owner"] != owner.token:
                    if claim_alive(row, now_s):
                        others.append(k)
                        continue
                    taken += 1
                mine.append(k)
                fresh.append(k)
            c.executemany(
                "INSERT OR REPLACE INTO claims(trial_key, owner, host, pid, pid_start, claimed_at, expires_at)"
                " VALUES (?,?,?,?,?,?,?)",
                [
                    (k, owner.token, owner.host, owner.pid, owner.pid_start, now(), now_s + lease_s)
                    for k in fresh
                ],
            )
        return mine, others, taken

    def release(self, owner: ClaimOwner, keys: Iterable[str] | None = None) -> None:
        """Drop `owner`'s claims (all of them when `keys` is None)."""
        with self.tx() as c:
            if keys is None:
                c.execute("DELETE FROM claims WHERE owner=?", (owner.token,))
            else:
                c.executemany(
                    "DELETE FROM claims WHERE owner=? AND trial_key=?", [(owner.token, k) for k in keys]
                )

    def live_claims_by_others(self, keys: Iterable[str], owner: ClaimOwner) -> set[str]:
        keys = list(keys)
        out: set[str] = set()
        now_s = time.time()
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT * FROM claims WHERE trial_key IN ({','.join('?' * len(chunk))})"
            out.update(
                r["trial_key"]
                for r in self.conn.execute(q, chunk)
                if r["owner"] != owner.token and claim_alive(r, now_s)
            )
        return out
