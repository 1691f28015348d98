"""The results store: one SQLite database (stdlib sqlite3, WAL) under the results folder.

One row per run, keyed by (task hash, optimiser config hash, seed). A batch of runs is
written in one transaction, so a run is stored whole or not at all; a completed run is
never overwritten (no duplicates when two processes race), while a failed run is replaced
by a later successful attempt. The schema version lives in ``PRAGMA user_version``; a
store written by an older version is migrated (``MIGRATIONS``) or refused, one written by
a newer version or with other columns is refused, with a message: never misread.

Several processes may share a store: WAL lets readers run beside the writer, every write
takes the write lock up front (``BEGIN IMMEDIATE``) and waits up to ``BUSY_TIMEOUT_S`` for
it, so two ``l2lbench run`` on one results folder queue their writes instead of failing
with "database is locked".
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from l2lbench.errors import RunError, UsageError

SCHEMA_VERSION = 2
DB_FILENAME = "l2lbench.sqlite"
BUSY_TIMEOUT_S = 60  # how long a write waits for another process's transaction to end
FINISHED = ("ok", "diverged")  # statuses a re-run skips; "failed" runs are retried

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    task_hash        TEXT    NOT NULL,
    optimizer_hash   TEXT    NOT NULL,
    seed             INTEGER NOT NULL,
    task_name        TEXT    NOT NULL,
    optimizer_name   TEXT    NOT NULL,
    task_config      TEXT    NOT NULL,
    optimizer_config TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('ok', 'diverged', 'failed')),
    diverged_step    INTEGER,
    error            TEXT,
    train_loss       TEXT    NOT NULL,
    eval_steps       TEXT    NOT NULL,
    test_loss        TEXT    NOT NULL,
    test_accuracy    TEXT    NOT NULL,
    wall_time_s      REAL    NOT NULL,
    provenance       TEXT    NOT NULL,
    created_at       TEXT    NOT NULL,
    validation_loss     TEXT NOT NULL DEFAULT '[]',
    validation_accuracy TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (task_hash, optimizer_hash, seed)
);
CREATE INDEX IF NOT EXISTS runs_by_name ON runs (task_name, optimizer_name);
"""

_COLUMNS = (
    "task_hash", "optimizer_hash", "seed", "task_name", "optimizer_name", "task_config",
    "optimizer_config", "status", "diverged_step", "error", "train_loss", "eval_steps",
    "test_loss", "test_accuracy", "wall_time_s", "provenance", "created_at",
    "validation_loss", "validation_accuracy",
)


def _add_validation_curves(db: sqlite3.Connection) -> None:
    # Version 2 records validation curves. Runs stored before have none (empty lists); they
    # belong to an older benchmark protocol, which the report leaves out by default anyway.
    for column in ("validation_loss", "validation_accuracy"):
        db.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT NOT NULL DEFAULT '[]'")


# Migrations of older stores, each from version ``n`` to ``n + 1``, run in the opening
# transaction (all or nothing); a store of a version with no path here to SCHEMA_VERSION
# is refused.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _add_validation_curves}


def _encode_curve(values: Sequence[float]) -> str:
    # JSON has no NaN/inf; a diverged value is stored as null and read back as nan.
    return json.dumps([v if math.isfinite(v) else None for v in map(float, values)])


def _decode_curve(text: str) -> list[float]:
    return [math.nan if v is None else float(v) for v in json.loads(text)]


@dataclass
class RunRecord:
    """One run of one optimiser on one task with one seed, as stored."""

    task_hash: str
    optimizer_hash: str
    seed: int
    task_name: str
    optimizer_name: str
    task_config: dict[str, Any]
    optimizer_config: dict[str, Any]
    status: str  # "ok", "diverged" or "failed"
    train_loss: list[float] = field(default_factory=list)  # every step, before the update
    eval_steps: list[int] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)  # at eval_steps, like test
    validation_accuracy: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)
    diverged_step: int | None = None
    error: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.task_hash, self.optimizer_hash, self.seed)

    def _row(self) -> tuple:
        return (
            self.task_hash, self.optimizer_hash, self.seed, self.task_name, self.optimizer_name,
            json.dumps(self.task_config, sort_keys=True), json.dumps(self.optimizer_config, sort_keys=True),
            self.status, self.diverged_step, self.error, _encode_curve(self.train_loss),
            json.dumps(list(map(int, self.eval_steps))), _encode_curve(self.test_loss),
            _encode_curve(self.test_accuracy), float(self.wall_time_s),
            json.dumps(self.provenance, sort_keys=True), self.created_at,
            _encode_curve(self.validation_loss), _encode_curve(self.validation_accuracy),
        )

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> "RunRecord":
        record = cls._decode(row)
        curves = {"eval_steps": record.eval_steps, "test_loss": record.test_loss, "test_accuracy": record.test_accuracy}
        if record.validation_loss or record.validation_accuracy:  # none in runs stored before schema 2
            curves.update(validation_loss=record.validation_loss, validation_accuracy=record.validation_accuracy)
        if record.status != "failed" and len({len(c) for c in curves.values()}) > 1:
            lengths = ", ".join(f"{name} {len(c)}" for name, c in curves.items())
            raise ValueError(f"its curves disagree in length ({lengths}; expected equal)")
        return record

    @classmethod
    def _decode(cls, row: sqlite3.Row) -> "RunRecord":
        return cls(
            task_hash=row["task_hash"], optimizer_hash=row["optimizer_hash"], seed=row["seed"],
            task_name=row["task_name"], optimizer_name=row["optimizer_name"],
            task_config=json.loads(row["task_config"]), optimizer_config=json.loads(row["optimizer_config"]),
            status=row["status"], diverged_step=row["diverged_step"], error=row["error"],
            train_loss=_decode_curve(row["train_loss"]), eval_steps=json.loads(row["eval_steps"]),
            test_loss=_decode_curve(row["test_loss"]), test_accuracy=_decode_curve(row["test_accuracy"]),
            wall_time_s=row["wall_time_s"], provenance=json.loads(row["provenance"]),
            created_at=row["created_at"], validation_loss=_decode_curve(row["validation_loss"]),
            validation_accuracy=_decode_curve(row["validation_accuracy"]),
        )


class ResultsStore:
    """The runs of one results folder.

    Args:
        folder: the results folder; created if missing. The database is
            ``folder/l2lbench.sqlite``.
    """

    @classmethod
    def read_only(cls, folder: Path | str) -> "ResultsStore":
        """The store of ``folder`` opened for reading only (a report): it must exist; the
        folder may be read-only (a shared archive, a read-only mount), and nothing is
        created, migrated or written."""
        store = cls.__new__(cls)
        store.folder = Path(folder)
        store.path = store.folder / DB_FILENAME
        if not store.path.is_file():
            raise UsageError(f"no results store at {str(store.path)!r} (expected a folder written by l2lbench run)")
        # mode=ro reads the write-ahead log too but needs its shared-memory file, which a
        # read-only folder may not let SQLite create; then the file is read as it stands
        # (immutable: no other process can be writing to a read-only folder).
        for options in ("mode=ro", "immutable=1"):
            uri = f"{store.path.resolve().as_uri()}?{options}"
            try:
                store._db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
                store._db.row_factory = sqlite3.Row
                version = store._db.execute("PRAGMA user_version").fetchone()[0]
                break
            except sqlite3.DatabaseError as exc:
                error = exc
                if hasattr(store, "_db"):
                    store._db.close()
        else:
            raise store._error("cannot be opened for reading", error)
        if version != SCHEMA_VERSION:
            store._db.close()
            raise RunError(f"results store {str(store.path)!r} has schema version {version}; this l2lbench reads "
                           f"version {SCHEMA_VERSION} (open it with a matching l2lbench, or run l2lbench run on it "
                           "once to migrate it)")
        store._check_columns()
        return store

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create results folder {str(self.folder)!r}: {exc.strerror or exc}") from None
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise UsageError(f"results folder {str(self.folder)!r} is not writable (expected a folder you can write to)")
        self.path = self.folder / DB_FILENAME
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below).
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise self._error("cannot be opened", exc) from None
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except BaseException as exc:
            self._db.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise self._error("cannot be opened", exc) from None
            raise

    def _error(self, doing: str, exc: sqlite3.Error) -> Exception:
        """One line for an SQLite failure: bad input (exit 2) or a runtime failure (exit 1)."""
        name = getattr(exc, "sqlite_errorname", "")
        where = f"results store {str(self.path)!r}"
        if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
            return UsageError(f"{where} {doing}: {exc} (expected a results folder you can write to)")
        if name.startswith("SQLITE_FULL"):
            return RunError(f"{where} {doing}: {exc} (free some space, then run the same command again: finished runs are kept)")
        return RunError(f"{where} {doing}: {exc}")

    def _migrate(self) -> None:
        # Checked inside an IMMEDIATE transaction so two processes creating or migrating
        # the same store at once cannot both do it.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version == 0:
                if "runs" in tables:
                    raise RunError(
                        f"results store {str(self.path)!r} has a runs table but no schema version "
                        f"(user_version 0): not written by l2lbench, or by a version before {SCHEMA_VERSION}; "
                        "refusing to read it (use another --results folder)"
                    )
                if tables:
                    raise RunError(f"{str(self.path)!r} is not an l2lbench results store (it has other tables)")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version > SCHEMA_VERSION:
                raise RunError(
                    f"results store {str(self.path)!r} has schema version {version}; this l2lbench reads "
                    f"version {SCHEMA_VERSION} (a newer l2lbench wrote it: upgrade, or use another --results folder)"
                )
            elif version < SCHEMA_VERSION:
                if any(v not in MIGRATIONS for v in range(version, SCHEMA_VERSION)):
                    raise RunError(
                        f"results store {str(self.path)!r} has schema version {version}; this l2lbench reads "
                        f"version {SCHEMA_VERSION} and cannot migrate it (use a matching l2lbench or another "
                        "--results folder)"
                    )
                for v in range(version, SCHEMA_VERSION):
                    MIGRATIONS[v](self._db)
                    self._db.execute(f"PRAGMA user_version = {v + 1}")
            self._check_columns()
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _check_columns(self) -> None:
        """Refuse a store whose runs table lacks a column (or has unknown ones): reading it
        would misplace values."""
        columns = [row["name"] for row in self._db.execute("PRAGMA table_info(runs)")]
        missing = [c for c in _COLUMNS if c not in columns]
        extra = [c for c in columns if c not in _COLUMNS]
        if missing or extra:
            problems = ([f"missing column(s) {', '.join(missing)}"] if missing else []) + (
                [f"unknown column(s) {', '.join(extra)}"] if extra else []
            )
            raise RunError(
                f"results store {str(self.path)!r} claims schema version {SCHEMA_VERSION} but its runs table has "
                f"{' and '.join(problems)}; refusing to read it (use another --results folder)"
            )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def finished_seeds(self, task_hash: str, optimizer_hash: str) -> set[int]:
        """Seeds of this pair already stored as ok or diverged (a re-run skips them)."""
        try:
            rows = self._db.execute(
                "SELECT seed FROM runs WHERE task_hash = ? AND optimizer_hash = ? AND status IN (?, ?)",
                (task_hash, optimizer_hash, *FINISHED),
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._error("cannot be read", exc) from None
        return {row[0] for row in rows}

    def put(self, records: Iterable[RunRecord], *, replace: bool = False) -> int:
        """Store ``records`` in one transaction; returns how many rows were written.

        A key already stored as ok/diverged is left alone (the first finished result
        wins) unless ``replace`` and the new record finished too (``run --rerun``: a rerun
        that fails never costs a finished result); a stored failure is replaced.
        """
        rows = [r._row() for r in records]
        if not rows:
            return 0
        placeholders = ", ".join("?" for _ in _COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[3:])
        condition = "runs.status = 'failed'"
        if replace:
            condition += f" OR excluded.status IN {FINISHED!r}"
        sql = (
            f"INSERT INTO runs ({', '.join(_COLUMNS)}) VALUES ({placeholders}) "
            f"ON CONFLICT (task_hash, optimizer_hash, seed) DO UPDATE SET {updates} "
            f"WHERE {condition}"
        )
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                before = self._db.total_changes
                self._db.executemany(sql, rows)
                written = self._db.total_changes - before
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself on some errors (e.g. a full disk).
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError:
            raise  # a record that violates the schema: a bug, not an input or a machine problem
        except sqlite3.DatabaseError as exc:
            raise self._error("cannot be written", exc) from None
        return written

    def runs(
        self,
        *,
        task_hashes: Iterable[str] | None = None,
        optimizer_hashes: Iterable[str] | None = None,
        status: Iterable[str] | None = None,
    ) -> list[RunRecord]:
        """Stored runs, optionally filtered, ordered by task, optimiser and seed."""
        clauses, params = [], []
        for column, values in (("task_hash", task_hashes), ("optimizer_hash", optimizer_hashes), ("status", status)):
            if values is not None:
                values = list(values)
                clauses.append(f"{column} IN ({', '.join('?' for _ in values)})" if values else "0")
                params += values
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        try:
            rows = self._db.execute(f"SELECT * FROM runs {where} ORDER BY task_name, optimizer_name, seed", params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._error("cannot be read", exc) from None
        records = []
        for row in rows:
            try:
                records.append(RunRecord._from_row(row))
            except (ValueError, TypeError, KeyError) as exc:  # JSON or curves that are not ours
                raise UsageError(
                    f"results store {str(self.path)!r} has a malformed run ({row['optimizer_name']} on "
                    f"{row['task_name']}, seed {row['seed']}): {type(exc).__name__}: {exc} (expected rows written "
                    "by l2lbench; delete or fix that row)"
                ) from None
        return records

    def count(self) -> int:
        try:
            return self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise self._error("cannot be read", exc) from None
