"""The session database file: its schema, opening it, and SQLite's errors as agentmem's.

The schema grows by named, append-only migrations recorded in `_migrations`; a file whose
`_migrations` names one this agentmem does not know was written by a newer one. Opening
refuses another program's SQLite file without touching it, and a read-only opening uses
SQLite's own read-only mode. `Store` (agentmem/store.py) builds on the connection this
module returns and knows only sessions.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from sqlite_utils import Database

from .errors import (
    ConfigError,
    CorruptSessionError,
    NotAStoreError,
    SchemaVersionError,
    StoreBusyError,
    StoreWriteError,
)

logger = logging.getLogger(__name__)

SESSION_FK = [("session_id", "sessions", "id")]
Migration = Callable[[Database], None]

# --------------------------------------------------------------------------- migrations
# Append only: never edit, rename or reorder a migration that has shipped; add a new one.


def _m001_sessions(db: Database) -> None:
    db.create_table("sessions", {
        "id": str, "title": str, "model": str, "fingerprint": str, "config_json": str, "state_json": str,
        "turns": int, "created_at": str, "updated_at": str,
    }, pk="id", not_null={"model", "fingerprint", "turns", "created_at", "updated_at"},
        defaults={"config_json": "{}", "state_json": "{}", "turns": 0})
    db.create_table("messages", {
        "session_id": str, "idx": int, "turn": int, "role": str, "content": str, "token_ids_json": str,
        "segment": int, "meta_json": str, "created_at": str,
    }, pk=("session_id", "idx"), foreign_keys=SESSION_FK)
    db.create_table("segments", {
        "session_id": str, "idx": int, "role": str, "kind": str, "start": int, "end": int, "turn": int,
        "pinned": int, "compactions": int, "messages_json": str,
    }, pk=("session_id", "idx"), foreign_keys=SESSION_FK)


def _m002_compactions(db: Database) -> None:
    db.create_table("compactions", {
        "id": int, "session_id": str, "turn": int, "time": str, "trigger": str, "method": str, "ratio": float,
        "start": int, "end": int, "tokens_before": int, "tokens_after": int, "bytes_before": int,
        "bytes_after": int, "logical_tokens": int, "seconds": float, "status": str, "error": str,
        "segments_json": str, "quality_json": str,
    }, pk="id", foreign_keys=SESSION_FK)
    db.execute("CREATE INDEX compactions_by_session ON compactions (session_id, id)")


def _m003_kv_checkpoints(db: Database) -> None:
    db.create_table("kv_checkpoints", {
        "checkpoint_id": str, "layer": int, "session_id": str, "turn": int, "created_at": str, "kind": str,
        "meta_json": str, "blocks_json": str, "logical_tokens": int, "physical_tokens": int, "bytes": int,
    }, pk=("checkpoint_id", "layer"), foreign_keys=SESSION_FK)
    db.execute("CREATE INDEX kv_checkpoints_by_session ON kv_checkpoints (session_id, turn)")
    db.create_table("blobs", {"hash": str, "data": bytes, "size": int}, pk="hash")


def _m004_session_version(db: Database) -> None:
    # Bumped by every write to a session: a writer that loaded an older version is stale.
    db.execute("ALTER TABLE sessions ADD COLUMN version INTEGER NOT NULL DEFAULT 0")


MIGRATIONS: list[tuple[str, Migration]] = [
    ("m001_sessions", _m001_sessions),
    ("m002_compactions", _m002_compactions),
    ("m003_kv_checkpoints", _m003_kv_checkpoints),
    ("m004_session_version", _m004_session_version),
]


def _enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch a new file to WAL (persistent). Retried by hand: SQLite fails this switch at once,
    without its busy handler, while another connection is creating the same file."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _connect_readonly(path: Path, timeout: float) -> sqlite3.Connection:
    """A connection SQLite itself keeps from writing (mode=ro), so reading never changes the file.

    A WAL database needs its `-shm` file even to read; in a folder that cannot be written,
    SQLite cannot create it, and the file is opened as immutable instead (what the last
    checkpoint holds: in such a folder no one can have written more since).
    """
    uri = path.resolve().as_uri()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()
        if os.access(path.parent, os.W_OK):
            raise
    except sqlite3.DatabaseError:  # not a database at all: the caller's checks report it
        return conn
    logger.info("%s: its folder is read-only; reading it as immutable", path)
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=timeout, isolation_level=None,
                           check_same_thread=False)


def _check_ours(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse an SQLite file that holds tables but no `_migrations`: another program's database.

    Raises:
        NotAStoreError: nothing is created or changed in it.
    """
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if names and "_migrations" not in names:
        shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        raise NotAStoreError(f"{path} is an SQLite database of another program (tables: {shown}), not an agentmem "
                             f"session store; it was left untouched: pass another --store path")


def _check_version(conn: sqlite3.Connection, path: Path) -> None:
    """Raise `SchemaVersionError` when `_migrations` names one this agentmem does not know."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = '_migrations'").fetchone():
        return
    unknown = sorted({row[0] for row in conn.execute("SELECT name FROM _migrations")} - {n for n, _ in MIGRATIONS})
    if unknown:
        raise SchemaVersionError(f"{path} was written by a newer agentmem (unknown migrations: "
                                 f"{', '.join(unknown)}); upgrade agentmem to open it")


def write_error(exc: sqlite3.OperationalError, path: Path, timeout: float | None = None) -> StoreWriteError:
    """The agentmem error for a write SQLite refused: a lock held too long, a full disk, a read-only file."""
    text = str(exc)
    if "database is locked" in text or "busy" in text:
        waited = f" for {timeout:g} s" if timeout is not None else ""
        return StoreBusyError(f"{path}: another process held the database's write lock{waited} ({text}); "
                              f"nothing was written: retry, or pass a longer timeout to Store()")
    if "full" in text or "I/O" in text:
        hint = "free disk space (or raise the process's file-size limit)"
    elif "readonly" in text or "read-only" in text:
        hint = "make the file and its folder writable, or pass another --store path"
    else:
        hint = "fix the cause"
    return StoreWriteError(f"{path}: SQLite could not write ({text}); nothing was written. {hint}, then save again: "
                           f"the session keeps its unsaved turns in memory until then")


def migrate(db: Database, migrations: Sequence[tuple[str, Migration]] = MIGRATIONS) -> list[str]:
    """Apply the pending `migrations` in one transaction and return their names.

    Raises:
        SchemaVersionError: `_migrations` names one that `MIGRATIONS` does not know.
    """
    conn = db.conn
    known = {name for name, _ in MIGRATIONS}
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = '_migrations'").fetchone():  # up to date: no lock
        applied = {row[0] for row in conn.execute("SELECT name FROM _migrations")}
        if applied <= known and all(name in applied for name, _ in migrations):
            return []
    conn.execute("BEGIN IMMEDIATE")  # two processes opening a new file migrate it once
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        _check_version(conn, Path(conn.execute("PRAGMA database_list").fetchone()[2]))
        applied = {row[0] for row in conn.execute("SELECT name FROM _migrations")}
        done = []
        for name, migration in migrations:
            if name not in applied:
                migration(db)
                conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (name, _now()))
                done.append(name)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return done


def open_database(path: Path, *, timeout: float, readonly: bool) -> Database:
    """The session database at `path` (sqlite-utils over one connection), migrated unless `readonly`.

    Raises:
        ConfigError: `readonly` and there is no file at `path`.
        NotAStoreError: the file is another program's SQLite database (left untouched).
        SchemaVersionError: the file was written by a newer agentmem.
        CorruptSessionError: the file is not an SQLite database.
        StoreWriteError: SQLite cannot open or write it (`StoreBusyError` for a lock).
    """
    if readonly:
        if not path.is_file():
            raise ConfigError(f"no session database at {path}; a read-only store never creates one")
        conn = _connect_readonly(path, timeout)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        _check_ours(conn, path)
        db = Database(conn)
        if readonly:
            _check_version(conn, path)
        else:
            if not conn.execute("SELECT 1 FROM sqlite_master").fetchone():
                # A new file frees the pages of deleted sessions with `PRAGMA incremental_vacuum`
                # (Store.delete_session); only settable before the first table.
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            _enable_wal(conn, timeout)
            applied = migrate(db)
            if applied:
                logger.info("%s: applied migrations %s", path, ", ".join(applied))
    except sqlite3.DatabaseError as exc:
        conn.close()
        if isinstance(exc, sqlite3.OperationalError):  # locked or unwritable, not damaged
            raise write_error(exc, path, timeout) from exc
        raise CorruptSessionError(f"{path} is not a usable agentmem session database (SQLite: {exc}); "
                                  f"other files are fine: pass another path, or move this one away") from exc
    except BaseException:
        conn.close()
        raise
    return db


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
