"""SQLite session store: messages, segments, compaction events and KV checkpoints.

One database file holds many sessions and survives restarts. Each write is one
`BEGIN IMMEDIATE` transaction in WAL mode, so several processes, each with its own
`Store`, can write different sessions of one file at once; a per-session `version`
turns a stale second writer of one session into `StaleSessionError`. The schema, its
migrations and how the file is opened live in `agentmem/schema.py`.

A KV checkpoint is the list `hf.cache_state` returns: one row per layer in
`kv_checkpoints`, whose `blocks_json` lists the sha256 of each block. A block (a dict of
tensors) is saved with safetensors into `blobs` once, so consecutive checkpoints share
their unchanged blocks; blobs no longer referenced are deleted in the same transaction.
The store knows no model code: the engine calls `hf.cache_from_state` on what it loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigError,
    CorruptSessionError,
    ModelMismatchError,
    SessionNotFoundError,
    StaleSessionError,
    StoreBusyError,
    StoreWriteError,
)
from .schema import open_database, write_error
from .segments import CompactionEvent, Segment

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

MESSAGE_KEYS = ("index", "role", "content", "token_ids", "segment")  # and optionally "meta"
EVENT_COLUMNS = ("time", "trigger", "method", "ratio", "start", "end", "tokens_before", "tokens_after",
                 "bytes_before", "bytes_after", "logical_tokens", "seconds", "status", "error")
# --------------------------------------------------------------------------- store


@dataclass
class LoadedSession:
    """Everything needed to resume a session; `checkpoint` is in `hf.cache_state` format."""

    id: str
    model: str
    fingerprint: str
    config: dict
    state: dict
    turns: int
    messages: list[dict]
    segments: list[Segment]
    events: list[dict]
    checkpoint: list[dict] | None
    checkpoint_info: dict | None = None  # id, turn, created_at, logical_tokens, physical_tokens, bytes
    version: int = 0  # pass it back as `commit_turn(expect_version=...)`


class Store:
    """Sessions in one SQLite file; each instance owns its connection (threads may share it:
    calls are serialized). Each process opens its own `Store`.

    Args:
        path: the database file (created, with its folders, if missing, unless `readonly`).
        timeout: seconds to wait for another writer before failing with `StoreBusyError`.
        readonly: open with SQLite's read-only mode: nothing is created, migrated or
            written (every write method raises `ConfigError`).

    Raises:
        SchemaVersionError: the file was written by a newer agentmem.
        CorruptSessionError: the file is not a SQLite database.
        NotAStoreError: the file is another program's SQLite database (left untouched).
        ConfigError: `readonly` and there is no file at `path`.
    """

    def __init__(self, path: str | os.PathLike, *, timeout: float = 30.0, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.timeout = timeout
        self._lock = threading.RLock()
        self._db = open_database(self.path, timeout=timeout, readonly=readonly)
        self._conn = self._db.conn

    def check_writable(self) -> None:
        """Fail now, not after a reply was generated, if this database cannot be written.

        Takes the write lock and runs an UPDATE that matches no row (`BEGIN IMMEDIATE` alone
        succeeds on a read-only file); nothing changes.

        Raises:
            ConfigError: the store was opened read-only.
            StoreWriteError: SQLite refuses to write (read-only file or folder, full disk);
                `StoreBusyError` when another process holds the lock past the timeout.
        """
        try:
            with self._transaction(write=True) as conn:
                conn.execute("UPDATE _migrations SET name = name WHERE 0")
        except StoreBusyError:
            raise
        except StoreWriteError as exc:
            cause = exc.__cause__ or exc
            raise StoreWriteError(f"cannot write the session database {self.path} (SQLite: {cause}); make the file "
                                  f"and its folder writable, or pass another path") from exc.__cause__

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- plumbing

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE` to write; a plain `BEGIN` gives reads one consistent snapshot."""
        if write and self.readonly:
            raise ConfigError(f"{self.path} was opened read-only (Store(readonly=True)); open it without "
                              f"readonly to change it")
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.OperationalError as exc:
                raise write_error(exc, self.path, self.timeout) from exc
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError) and write:
                    raise write_error(exc, self.path, self.timeout) from exc
                raise

    @staticmethod
    def _rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[dict]:
        cursor = conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor]

    @staticmethod
    def _insert(conn: sqlite3.Connection, table: str, rows: Sequence[dict], *, verb: str = "INSERT") -> None:
        if rows:
            cols = list(rows[0])
            sql = f"{verb} INTO {table} ({', '.join(f'[{c}]' for c in cols)}) VALUES ({', '.join('?' * len(cols))})"
            conn.executemany(sql, [[row[c] for c in cols] for row in rows])

    def _session_row(self, conn: sqlite3.Connection, session_id: str) -> dict:
        rows = self._rows(conn, "SELECT * FROM sessions WHERE id = ?", (session_id,))
        if not rows:
            raise SessionNotFoundError(
                f"no session {session_id!r} in {self.path}; `agentmem sessions list` shows the ids")
        row = {k: v for k, v in rows[0].items() if not k.endswith("_json")}
        return {**row, "config": self._json(rows[0]["config_json"], session_id, "config"),
                "state": self._json(rows[0]["state_json"], session_id, "state")}

    def _json(self, text: str | None, session_id: str, what: str) -> Any:
        try:
            return None if text is None else json.loads(text)
        except ValueError as exc:
            raise CorruptSessionError(f"session {session_id!r} in {self.path}: its {what} is not valid JSON "
                                      f"({exc}); other sessions are unaffected; delete this session") from exc

    # ----------------------------------------------------------------- sessions

    def create_session(self, *, model: str, fingerprint: str, config: dict | None = None,
                       session_id: str | None = None, title: str | None = None) -> str:
        """Create an empty session and return its id (a uuid4 hex unless `session_id` is given).

        Raises:
            ConfigError: `session_id` is taken, or an argument is empty or not JSON-able.
        """
        sid = uuid.uuid4().hex if session_id is None else session_id
        if not isinstance(sid, str) or not sid or not model or not fingerprint:
            raise ConfigError(f"create_session needs a model, its fingerprint and a non-empty string id "
                              f"(got model={model!r}, fingerprint={fingerprint!r}, session_id={sid!r})")
        now = _now()
        row = {"id": sid, "title": title, "model": model, "fingerprint": fingerprint,
               "config_json": _dumps(config or {}, "config"), "created_at": now, "updated_at": now}
        with self._transaction(write=True) as conn:
            try:
                self._insert(conn, "sessions", [row])
            except sqlite3.IntegrityError:
                raise ConfigError(f"a session {sid!r} already exists in {self.path}; pass another "
                                  f"session_id, or none to get a new one") from None
        return sid

    def list_sessions(self) -> list[dict]:
        """Every session, most recently updated first, with counts and its last checkpoint's size."""
        last = "(SELECT k.{} FROM kv_checkpoints k WHERE k.session_id = s.id ORDER BY k.turn DESC LIMIT 1) AS {}"
        with self._transaction(write=False) as conn:
            return self._rows(conn, f"""
                SELECT s.id, s.title, s.model, s.created_at, s.updated_at, s.turns,
                  (SELECT count(*) FROM messages m WHERE m.session_id = s.id) AS messages,
                  (SELECT count(*) FROM compactions c WHERE c.session_id = s.id) AS compactions,
                  {last.format("physical_tokens", "physical_tokens")},
                  {last.format("logical_tokens", "logical_tokens")}
                FROM sessions s ORDER BY s.updated_at DESC, s.id""")

    def get_session(self, session_id: str) -> dict:
        """The session's row with `config` and `state` parsed; raises `SessionNotFoundError`."""
        with self._transaction(write=False) as conn:
            return self._session_row(conn, session_id)

    def delete_session(self, session_id: str) -> None:
        """Delete a session, its rows, and the blobs no other checkpoint references, and give
        the freed pages back to the file system (`reclaim_space`)."""
        with self._transaction(write=True) as conn:
            self._session_row(conn, session_id)
            self._prune(conn, session_id, 0)
            for table in ("messages", "segments", "compactions"):
                conn.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))
            conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        self.reclaim_space()

    def reclaim_space(self) -> bool:
        """Shrink the file to the pages in use; returns whether it could (best effort).

        A file made by this agentmem (`auto_vacuum = INCREMENTAL`) frees its unused pages
        with `PRAGMA incremental_vacuum`, which touches only those pages. An older file gets
        one full `VACUUM` (a rewrite of the whole file, which needs that much free disk)
        that also switches it to incremental. Then the WAL is checkpointed and truncated.
        A lock held by another process or a full disk is logged, not raised: nothing is lost,
        the space is only reused by later writes instead.

        Raises:
            ConfigError: the store was opened read-only.
        """
        if self.readonly:
            raise ConfigError(f"{self.path} was opened read-only (Store(readonly=True)); open it without "
                              f"readonly to change it")
        with self._lock:
            try:
                if self._conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
                    # executescript steps it to the end; execute() frees a single page per call
                    self._conn.executescript("PRAGMA incremental_vacuum")
                else:
                    self._conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                    self._conn.execute("VACUUM")
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                return True
            except sqlite3.OperationalError as exc:
                logger.warning("%s: freed pages stay in the file for reuse (SQLite: %s)", self.path, exc)
                return False

    def checkpoint_blocks(self, session_id: str) -> list[list[str]]:
        """Block hashes of each layer of the session's newest checkpoint ([] if it has none).

        An engine passes a hash instead of tensors for a block it knows is unchanged.
        """
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                "SELECT layer, blocks_json FROM kv_checkpoints WHERE checkpoint_id = (SELECT checkpoint_id FROM "
                "kv_checkpoints WHERE session_id = ? ORDER BY turn DESC, created_at DESC LIMIT 1) ORDER BY layer",
                (session_id,)).fetchall()
        return [json.loads(blocks) for _, blocks in rows]

    def drop_checkpoints(self, session_id: str) -> int:
        """Delete a session's KV checkpoints (it resumes by prefilling its messages); return how many."""
        with self._transaction(write=True) as conn:
            self._session_row(conn, session_id)
            conn.execute("UPDATE sessions SET version = version + 1 WHERE id = ?", (session_id,))
            return self._prune(conn, session_id, 0)

    # ----------------------------------------------------------------- writing a turn

    def commit_turn(self, session_id: str, *, messages: Sequence[dict] = (), segments: Sequence[Segment] | None = None,
                    events: Sequence[CompactionEvent] = (), checkpoint: list[dict] | None = None,
                    checkpoint_info: dict | None = None, state: dict | None = None, keep_checkpoints: int = 2,
                    expect_version: int | None = None) -> int:
        """Store one turn in one transaction: all of it is written, or nothing.

        Args:
            session_id: the session.
            messages: the new messages (append-only): dicts with `index`, `role`, `content`,
                `token_ids`, `segment` and optionally `meta` (JSON).
            segments: all the session's segments now (replacing the stored ones), or None.
            events: the compactions since the last commit.
            checkpoint: the KV cache as `hf.cache_state` describes it, or None.
            checkpoint_info: its `logical_tokens`, `physical_tokens`, `bytes` (else estimated).
            state: JSON values the engine needs to resume, merged into the stored state.
            keep_checkpoints: how many of the session's newest checkpoints to keep.
            expect_version: the session's `version` this writer last saw (`load_session`,
                `get_session`, or 0 for a session it created, plus one per own commit);
                checked inside the write lock, so of two writers that loaded the same
                version only the first commits. None skips the check.

        Returns:
            The new turn number (1 for the first commit). The version grows by one.

        Raises:
            SessionNotFoundError: no session has this id.
            StaleSessionError: `expect_version` is not the stored version: another writer
                committed since; nothing was written.
            ConfigError: a malformed message or checkpoint, or a message index already stored.
        """
        if keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1, got {keep_checkpoints}")
        message_rows = [_message_row(m) for m in messages]
        segment_rows = None if segments is None else [_segment_row(s) for s in segments]
        event_rows = [_event_row(e) for e in events]
        state = dict(state or {})
        _dumps(state, "state")
        encoded = None if checkpoint is None else _encode_checkpoint(checkpoint, checkpoint_info)  # before locking
        now = _now()
        with self._transaction(write=True) as conn:
            current = self._session_row(conn, session_id)
            if expect_version is not None and current["version"] != expect_version:
                raise StaleSessionError(
                    f"session {session_id!r} in {self.path} was changed by another writer (stored version "
                    f"{current['version']}, this writer last saw {expect_version}); nothing was written. Resume "
                    f"the session again to continue from what is stored, or save this copy as a new session")
            turn = current["turns"] + 1
            extra = {"session_id": session_id, "turn": turn}
            try:
                self._insert(conn, "messages", [{**extra, **m, "created_at": now} for m in message_rows])
            except sqlite3.IntegrityError:
                raise ConfigError(f"a message index in {[m['idx'] for m in message_rows]} is already stored for "
                                  f"session {session_id!r}; messages are append-only: pass only new ones") from None
            if segment_rows is not None:
                conn.execute("DELETE FROM segments WHERE session_id = ?", (session_id,))
                self._insert(conn, "segments", [{"session_id": session_id, **s} for s in segment_rows])
            self._insert(conn, "compactions", [{**extra, **e} for e in event_rows])
            if encoded is not None:
                layers, blobs, info, reused = encoded
                if reused:
                    marks = ",".join("?" * len(reused))
                    found = conn.execute(f"SELECT count(*) FROM blobs WHERE hash IN ({marks})", list(reused))
                    if found.fetchone()[0] != len(reused):
                        raise ConfigError("checkpoint reuses a block this database does not hold; pass its tensors")
                self._insert(conn, "blobs", [{"hash": h, "data": d, "size": len(d)} for h, d in blobs.items()],
                             verb="INSERT OR IGNORE")
                head = {"checkpoint_id": uuid.uuid4().hex, **extra, "created_at": now, **info}
                self._insert(conn, "kv_checkpoints", [{**head, **layer} for layer in layers])
                self._prune(conn, session_id, keep_checkpoints)
            state = {**current["state"], **state}
            conn.execute("UPDATE sessions SET turns = ?, updated_at = ?, state_json = ?, version = version + 1 "
                         "WHERE id = ?", (turn, now, json.dumps(state), session_id))
        return turn

    @staticmethod
    def _prune(conn: sqlite3.Connection, session_id: str, keep: int) -> int:
        """Delete the session's checkpoints beyond the newest `keep`, then the blobs no checkpoint uses.

        Only the deleted checkpoints' blobs are candidates, so blobs other sessions share stay.
        Returns how many checkpoints were deleted.
        """
        old = [r[0] for r in conn.execute(
            "SELECT checkpoint_id FROM kv_checkpoints WHERE session_id = ? GROUP BY checkpoint_id "
            "ORDER BY max(turn) DESC LIMIT -1 OFFSET ?", (session_id, keep))]
        if old:
            where = "checkpoint_id IN (SELECT value FROM json_each(?))"
            hashes = [r[0] for r in conn.execute(
                f"SELECT DISTINCT j.value FROM kv_checkpoints k, json_each(k.blocks_json) j WHERE k.{where}",
                (json.dumps(old),))]
            conn.execute(f"DELETE FROM kv_checkpoints WHERE {where}", (json.dumps(old),))
            conn.execute("DELETE FROM blobs WHERE hash IN (SELECT value FROM json_each(?)) AND hash NOT IN "
                         "(SELECT j.value FROM kv_checkpoints k, json_each(k.blocks_json) j)", (json.dumps(hashes),))
        return len(old)

    # ----------------------------------------------------------------- reading

    def load_session(self, session_id: str, *, fingerprint: str | None = None,
                     map_location: str | torch.device = "cpu") -> LoadedSession:
        """Everything needed to resume a session, with its newest checkpoint's tensors.

        Args:
            session_id: the session.
            fingerprint: the fingerprint of the model it will run on, checked against the session's.
            map_location: the device for the checkpoint's tensors.

        Raises:
            SessionNotFoundError: no session has this id.
            ModelMismatchError: `fingerprint` is not the one the session was made with.
            CorruptSessionError: a checkpoint block is missing or damaged (nothing is returned).
        """
        with self._transaction(write=False) as conn:
            row = self._session_row(conn, session_id)
            if fingerprint is not None and fingerprint != row["fingerprint"]:
                raise ModelMismatchError(
                    f"session {session_id!r} was made with model {row['model']!r} (fingerprint "
                    f"{row['fingerprint']}), not with this one ({fingerprint}); pass model {row['model']!r} "
                    f"to resume it, or start a new session")
            info, layers = self._checkpoint(conn, session_id)
            hashes = json.dumps(sorted({h for layer in layers for h in layer["blocks"]}))
            blobs = dict(conn.execute("SELECT hash, data FROM blobs WHERE hash IN (SELECT value FROM json_each(?))",
                                      (hashes,)).fetchall())
            return LoadedSession(
                id=row["id"], model=row["model"], fingerprint=row["fingerprint"], config=row["config"],
                state=row["state"], turns=row["turns"], version=row.get("version", 0),
                messages=self._messages(conn, session_id),
                segments=self._segments(conn, session_id), events=self._events(conn, session_id),
                checkpoint=self._decode(conn, session_id, layers, blobs, map_location) if info else None,
                checkpoint_info=info)

    def _decode(self, conn: sqlite3.Connection, session_id: str, layers: list[dict], blobs: dict[str, bytes],
                map_location: str | torch.device) -> list[dict]:
        """Checked tensors for each layer's blocks; any bad block raises `CorruptSessionError`."""
        from safetensors.torch import load as load_tensors  # torch loads here, not for `sessions list`

        out = []
        for layer in layers:
            blocks = []
            for digest in layer["blocks"]:
                data = blobs.get(digest)
                problem = ("is missing" if data is None else
                           "does not match its sha256" if hashlib.sha256(data).hexdigest() != digest else None)
                if problem is None:
                    try:
                        tensors = load_tensors(data)
                    except Exception as exc:  # safetensors raises several types on bad bytes
                        problem = f"cannot be read by safetensors ({exc})"
                    else:
                        blocks.append({name: t.to(map_location) for name, t in tensors.items()})
                        continue
                sharing = sorted({r[0] for r in conn.execute(
                    "SELECT k.session_id FROM kv_checkpoints k, json_each(k.blocks_json) j "
                    "WHERE j.value = ? AND k.session_id != ?", (digest, session_id))})
                others = (f"sessions {', '.join(sharing)} share this block and need the same repair"
                          if sharing else "other sessions are unaffected")
                raise CorruptSessionError(
                    f"session {session_id!r} in {self.path}: KV checkpoint blob {digest} (layer {layer['layer']}) "
                    f"{problem}; {others}. Delete the session (Store.delete_session) or drop its checkpoint "
                    f"(Store.drop_checkpoints) to rebuild the cache from its messages")
            out.append({"kind": layer["kind"], "meta": layer["meta"], "blocks": blocks})
        return out

    def _checkpoint(self, conn: sqlite3.Connection, session_id: str) -> tuple[dict | None, list[dict]]:
        """The newest checkpoint's summary and its layers (meta, block hashes), or (None, [])."""
        rows = self._rows(conn, "SELECT * FROM kv_checkpoints WHERE checkpoint_id = (SELECT checkpoint_id FROM "
                          "kv_checkpoints WHERE session_id = ? ORDER BY turn DESC LIMIT 1) ORDER BY layer",
                          (session_id,))
        if not rows:
            return None, []
        info = {"id": rows[0]["checkpoint_id"],
                **{k: rows[0][k] for k in ("turn", "created_at", "logical_tokens", "physical_tokens", "bytes")}}
        layers = [{"layer": r["layer"], "kind": r["kind"], "meta": self._json(r["meta_json"], session_id, "checkpoint"),
                   "blocks": self._json(r["blocks_json"], session_id, "checkpoint")} for r in rows]
        return info, layers

    def _messages(self, conn: sqlite3.Connection, session_id: str, *, when: bool = False) -> list[dict]:
        """Messages as committed; `when` adds the `turn` and `created_at` they were stored in."""
        return [{"index": r["idx"], "role": r["role"], "content": r["content"],
                 "token_ids": self._json(r["token_ids_json"], session_id, "messages"), "segment": r["segment"],
                 "meta": self._json(r["meta_json"], session_id, "messages"),
                 **({"turn": r["turn"], "created_at": r["created_at"]} if when else {})}
                for r in self._rows(conn, "SELECT * FROM messages WHERE session_id = ? ORDER BY idx", (session_id,))]

    def _segments(self, conn: sqlite3.Connection, session_id: str) -> list[Segment]:
        return [Segment(index=r["idx"], role=r["role"], kind=r["kind"], start=r["start"], end=r["end"], turn=r["turn"],
                        pinned=bool(r["pinned"]), compactions=r["compactions"],
                        messages=self._json(r["messages_json"], session_id, "segments"))
                for r in self._rows(conn, "SELECT * FROM segments WHERE session_id = ? ORDER BY idx", (session_id,))]

    def _events(self, conn: sqlite3.Connection, session_id: str) -> list[dict]:
        return [{"turn": r["turn"], **{k: r[k] for k in EVENT_COLUMNS},
                 "segments": self._json(r["segments_json"], session_id, "compactions") or [],
                 "quality": self._json(r["quality_json"], session_id, "compactions")}
                for r in self._rows(conn, "SELECT * FROM compactions WHERE session_id = ? ORDER BY id", (session_id,))]

    def events(self, session_id: str) -> list[dict]:
        """The session's compaction events, oldest first: `CompactionEvent` fields and `turn`."""
        with self._transaction(write=False) as conn:
            self._session_row(conn, session_id)
            return self._events(conn, session_id)

    def messages(self, session_id: str) -> list[dict]:
        """The session's messages in index order, as committed (`token_ids` included)."""
        with self._transaction(write=False) as conn:
            self._session_row(conn, session_id)
            return self._messages(conn, session_id)

    def export_session(self, session_id: str) -> dict:
        """A JSON-able copy of a session: row, messages, segments, events and a checkpoint summary."""
        with self._transaction(write=False) as conn:
            session = self._session_row(conn, session_id)
            info, layers = self._checkpoint(conn, session_id)
            return {"format": "agentmem.session/1", "exported_at": _now(), "session": session,
                    "messages": self._messages(conn, session_id, when=True),
                    "segments": [s.to_dict() for s in self._segments(conn, session_id)],
                    "events": self._events(conn, session_id),
                    "checkpoint": None if info is None else {**info, "layers": layers}}


# --------------------------------------------------------------------------- rows


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must be JSON-serializable (dicts, lists, str, numbers): {exc}") from None


def _message_row(message: Mapping[str, Any]) -> dict:
    missing = [k for k in MESSAGE_KEYS if k not in message]
    if missing:
        raise ConfigError(f"a message dict lacks {missing}; each needs {list(MESSAGE_KEYS)} (and optionally 'meta')")
    segment = message["segment"]
    return {"idx": int(message["index"]), "role": str(message["role"]), "content": str(message["content"]),
            "token_ids_json": json.dumps([int(t) for t in message["token_ids"]]),
            "segment": None if segment is None else int(segment), "meta_json": _dumps(message.get("meta"), "meta")}


def _segment_row(s: Segment) -> dict:
    return {"idx": s.index, "role": s.role, "kind": s.kind, "start": s.start, "end": s.end, "turn": s.turn,
            "pinned": int(s.pinned), "compactions": s.compactions, "messages_json": json.dumps(list(s.messages))}


def _event_row(event: CompactionEvent | Mapping[str, Any]) -> dict:
    data = event.to_dict() if isinstance(event, CompactionEvent) else dict(event)
    return {**{k: data.get(k) for k in EVENT_COLUMNS}, "status": data.get("status") or "ok",
            "segments_json": json.dumps(list(data.get("segments") or ())),
            "quality_json": _dumps(data.get("quality"), "event quality")}


def _encode_checkpoint(checkpoint: list[dict], info: dict | None) -> tuple[list[dict], dict[str, bytes], dict, set]:
    """Layer rows, blobs by sha256, the sizes (`info` wins over the estimate) of a `cache_state` list,
    and the hashes of blocks passed by hash (reused from an earlier checkpoint)."""
    if not checkpoint:
        raise ConfigError("checkpoint has no layers; pass hf.cache_state(cache), or None for no checkpoint")
    import torch
    from safetensors.torch import save as save_tensors

    layers: list[dict] = []
    blobs: dict[str, bytes] = {}
    reused: set[str] = set()
    logical = physical = nbytes = 0
    for idx, layer in enumerate(checkpoint):
        if not (isinstance(layer, Mapping) and {"kind", "meta", "blocks"} <= layer.keys()
                and isinstance(layer["meta"], Mapping)):
            raise ConfigError(f"checkpoint layer {idx} is not a dict with kind, meta and blocks (hf.cache_state)")
        hashes, slots = [], 0
        for block in layer["blocks"]:
            if isinstance(block, str):  # the hash of a block this database already holds
                hashes.append(block)
                reused.add(block)
                continue
            tensors, storages = {}, set()
            for name, t in block.items():
                if not isinstance(t, torch.Tensor):
                    raise ConfigError(f"checkpoint layer {idx}: block entry {name!r} is not a tensor")
                t = t.detach().cpu().contiguous()
                if t.numel() and t.untyped_storage().data_ptr() in storages:
                    t = t.clone()  # safetensors refuses tensors that share memory
                storages.add(t.untyped_storage().data_ptr())
                tensors[name] = t
            data = save_tensors(tensors)
            digest = hashlib.sha256(data).hexdigest()
            blobs[digest] = data
            hashes.append(digest)
            nbytes += sum(t.nbytes for t in tensors.values())
            slots += tensors["keys"].shape[-2] if "keys" in tensors else 0  # keys: (B, H, T, D)
        meta = layer["meta"]
        physical = max(physical, slots)
        logical = max(logical, int(meta.get("logical_length") or meta.get("cumulative_length") or slots))
        layers.append({"layer": idx, "kind": str(layer["kind"]), "meta_json": _dumps(meta, "checkpoint meta"),
                       "blocks_json": json.dumps(hashes)})
    sizes = {"logical_tokens": logical, "physical_tokens": physical, "bytes": nbytes}
    sizes.update({k: int(v) for k, v in (info or {}).items() if k in sizes and v is not None})
    return layers, blobs, sizes, reused - set(blobs)
