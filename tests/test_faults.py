"""Fault injection for the session store: kill -9 at every SQL statement of a write, a torn
WAL, a copy without its WAL, a full disk, a read-only file and a held write lock.

Each writer runs in a forked child, not a fresh interpreter: importing agentmem (torch,
transformers) costs seconds, a fork a few milliseconds, so every statement boundary of a
write is covered. The parent closes its own connections before it forks, the child opens
its own `Store`, and it dies by SIGKILL from its SQL trace callback, which SQLite calls
just before each statement runs: what it leaves is what a crashed process leaves (a hot
WAL, locks the kernel drops, no rollback). Every check then runs in the parent.

Children build no tensors: the parent makes the commit arguments before it forks, as an
OpenMP pool an earlier test used in the parent hangs a forked child's parallel torch ops.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pwd
import re
import resource
import select
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from agentmem.errors import ConfigError, SessionNotFoundError, StoreBusyError, StoreWriteError
from agentmem.schema import MIGRATIONS
from agentmem.segments import Segment
from agentmem.store import LoadedSession, Store

TABLES = ("sessions", "messages", "segments", "compactions", "kv_checkpoints", "blobs")
BY_SESSION = {"messages": "session_id", "segments": "session_id", "compactions": "session_id",
              "kv_checkpoints": "session_id", "sessions": "id"}
VARIANTS = ("messages", "checkpoint", "reused")  # what the killed commit writes; see `turn`

# --------------------------------------------------------------------------- children


@dataclass
class Child:
    """A forked child: its pid and the read end of the pipe its JSON result comes back on."""

    pid: int
    pipe: int

    def wait(self, timeout: float = 30.0) -> tuple[int, object]:
        """Its exit code (-9 when killed by SIGKILL) and what its function returned."""
        deadline = time.monotonic() + timeout
        while not (done := os.waitpid(self.pid, os.WNOHANG))[0]:
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"child {self.pid} ran past {timeout} s")
            time.sleep(0.002)
        with os.fdopen(self.pipe, "rb") as pipe:
            data = pipe.read()
        payload = json.loads(data) if data else {}
        assert "error" not in payload, f"the child failed:\n{payload['error']}"
        return os.waitstatus_to_exitcode(done[1]), payload.get("result")

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.pipe)


def start(fn: Callable[[], object]) -> Child:
    """Run `fn()` in a forked child that never returns into pytest."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read)
            payload = {"result": fn()}
        except BaseException:
            payload, code = {"error": traceback.format_exc()}, 70
        try:
            os.write(write, json.dumps(payload).encode())
        finally:
            os._exit(code)
    os.close(write)
    return Child(pid, read)


def killed(fn: Callable[[], object]) -> None:
    """Run `fn()` in a child and check that SIGKILL ended it."""
    code, _ = start(fn).wait()
    assert code == -signal.SIGKILL, f"the child exited with {code} instead of being killed"


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at(conn: sqlite3.Connection, when: int | str, *, hold: float = 0.0) -> None:
    """SIGKILL this process just before `conn` runs its `when`-th SQL statement (1-based; each
    row of an `executemany` counts), or the first one that starts with `when`; `hold` seconds
    first, with whatever locks the transaction holds.

    A trace callback sees only its own connection's statements, so the tests hand this the
    store's private `_conn`: the one place they reach inside it."""
    seen = itertools.count(1)

    def trace(sql: str) -> None:
        if (next(seen) == when) if isinstance(when, int) else sql.startswith(when):
            time.sleep(hold)
            die()

    conn.set_trace_callback(trace)


def record(conn: sqlite3.Connection) -> list[str]:
    """The list the SQL statements `conn` runs from now on are appended to."""
    log: list[str] = []
    conn.set_trace_callback(log.append)
    return log


# --------------------------------------------------------------------------- sessions


def message(index: int, who: str = "s") -> dict:
    return {"index": index, "role": ("user", "assistant")[index % 2], "content": f"{who} {index}",
            "token_ids": [index, 7], "segment": index, "meta": {"who": who}}


def block(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"keys": torch.randn(1, 2, 4, 8, generator=gen), "values": torch.randn(1, 2, 4, 8, generator=gen)}


def checkpoint(seed: int, *, layers: int = 2) -> list[dict]:
    """`cache_state`-shaped: per layer two blocks every seed shares (one blob each, however many
    checkpoints use them), then one block of its own."""
    return [{"kind": "dynamic", "meta": {"logical_length": 12},
             "blocks": [block(1000 + 10 * layer), block(1001 + 10 * layer), block(10 * seed + layer)]}
            for layer in range(layers)]


def turn(store: Store | None, session_id: str, n: int, variant: str = "checkpoint") -> dict:
    """`commit_turn` arguments for turn `n` (two messages): `messages` writes only those;
    `checkpoint` adds segments, an event, state and a checkpoint of new tensors (which prunes
    the session's oldest); `reused` passes the shared blocks by hash (read from `store`)."""
    first = 2 * (n - 1)
    args: dict = {"messages": [message(first, session_id), message(first + 1, session_id)]}
    if variant == "messages":
        return args
    ck = checkpoint(n)
    if variant == "reused":
        for layer, hashes in zip(ck, store.checkpoint_blocks(session_id)):
            layer["blocks"][:2] = hashes[:2]
    segments = [Segment(index=i, role=("user", "assistant")[i % 2], kind="message", start=4 * i, end=4 * i + 4,
                        turn=i // 2 + 1, messages=[i]) for i in range(first + 2)]
    event = {"time": "2025-01-01T00:00:00+00:00", "trigger": "tokens>8", "method": "am-fast", "ratio": 2.0,
             "start": 0, "end": 8, "tokens_before": 8, "tokens_after": 4, "bytes_before": 64, "bytes_after": 32,
             "logical_tokens": 8, "seconds": 0.01, "segments": [0, 1], "quality": {"turn": n}}
    return {**args, "segments": segments, "events": [event], "checkpoint": ck, "state": {"turn": n}}


def summary(loaded: LoadedSession) -> dict:
    """What a resume depends on, comparable with ==."""
    info = loaded.checkpoint_info
    return {"turns": loaded.turns, "version": loaded.version, "messages": loaded.messages,
            "segments": [s.to_dict() for s in loaded.segments], "events": loaded.events, "state": loaded.state,
            "info": None if info is None else {k: v for k, v in info.items() if k not in ("id", "created_at")},
            "checkpoint": None if loaded.checkpoint is None else [
                (layer["kind"], layer["meta"], [{k: t.tolist() for k, t in b.items()} for b in layer["blocks"]])
                for layer in loaded.checkpoint]}


def loaded(path: Path, session_id: str) -> dict:
    with Store(path) as store:
        return summary(store.load_session(session_id))


def copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def two_sessions(path: Path, turns: int = 3) -> None:
    """Session `s` with `turns` turns (its oldest checkpoints pruned) and session `other`,
    whose checkpoint shares blobs with every one of `s`'s."""
    with Store(path) as store:
        for sid in ("s", "other"):
            store.create_session(model="tiny", fingerprint="fp", session_id=sid)
        store.commit_turn("other", **turn(store, "other", 1) | {"checkpoint": checkpoint(99)})
        for n in range(1, turns + 1):
            store.commit_turn("s", **turn(store, "s", n))


def check_database(path: Path) -> None:
    """SQLite's own checks, then the store's: every blob referenced, present and intact, every
    checkpoint whole, no row of a turn its session has not committed."""
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        if "blobs" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}:
            return
        blobs = {h: (data, size) for h, data, size in conn.execute("SELECT hash, data, size FROM blobs")}
        used = {h for (text,) in conn.execute("SELECT blocks_json FROM kv_checkpoints") for h in json.loads(text)}
        assert not set(blobs) - used, f"orphan blobs: {sorted(set(blobs) - used)}"
        assert not used - set(blobs), f"missing blobs: {sorted(used - set(blobs))}"
        for digest, (data, size) in blobs.items():
            assert hashlib.sha256(data).hexdigest() == digest and size == len(data)
        for checkpoint_id, layers, top in conn.execute(
                "SELECT checkpoint_id, count(*), max(layer) FROM kv_checkpoints GROUP BY checkpoint_id"):
            assert layers == top + 1, f"checkpoint {checkpoint_id} has {layers} of its {top + 1} layers"
        assert conn.execute("""
            SELECT s.id FROM sessions s WHERE s.turns < max(
              (SELECT coalesce(max(turn), 0) FROM messages m WHERE m.session_id = s.id),
              (SELECT coalesce(max(turn), 0) FROM kv_checkpoints k WHERE k.session_id = s.id),
              (SELECT coalesce(max(turn), 0) FROM compactions c WHERE c.session_id = s.id))""").fetchall() == []


# --------------------------------------------------------------------------- kill -9


@pytest.mark.parametrize("variant", VARIANTS)
def test_kill_at_every_statement_of_commit_turn(tmp_path, variant):
    base = tmp_path / "base.db"
    two_sessions(base)
    before, other = loaded(base, "s"), loaded(base, "other")
    with Store(copy(base, tmp_path / "dry.db")) as store:
        args = turn(store, "s", 4, variant)  # what every child commits: `base` is the same
        log = record(store._conn)
        store.commit_turn("s", **args, expect_version=before["version"])
        store._conn.set_trace_callback(None)
        after = summary(store.load_session("s"))
    assert log[-1] == "COMMIT" and after["turns"] == 4 and after["version"] == before["version"] + 1
    if variant != "messages":
        assert any(sql.startswith("DELETE FROM blobs") for sql in log)  # the pruning is covered too

    for n in range(1, len(log) + 2):  # before each statement, then just after the commit returned
        path = copy(base, tmp_path / f"killed-{n}.db")

        def commit(path=path, n=n):
            store = Store(path)
            kill_at(store._conn, n)
            store.commit_turn("s", **args, expect_version=before["version"])
            die()

        killed(commit)
        where = f"killed before statement {n}: {log[n - 1][:80]!r}" if n <= len(log) else "killed after COMMIT"
        check_database(path)
        assert loaded(path, "s") == (before if n <= len(log) else after), where
        assert loaded(path, "other") == other, where
        with Store(path) as store:
            now = store.load_session("s")
            assert store.commit_turn("s", **turn(store, "s", now.turns + 1, variant),
                                     expect_version=now.version) == now.turns + 1, where
        check_database(path)


def test_torn_wal_tail_drops_exactly_the_last_turn(tmp_path):
    """A kill (or power cut) inside COMMIT, while its WAL frames are written: the WAL cut at
    every frame boundary and inside frames, and a flipped byte; only the whole WAL has the turn."""
    base = tmp_path / "base.db"
    two_sessions(base)
    before = loaded(base, "s")
    crashed = copy(base, tmp_path / "crashed.db")
    args = turn(None, "s", 4)

    def commit():
        store = Store(crashed)
        store.commit_turn("s", **args)
        die()  # the WAL keeps the turn: nothing checkpointed it

    killed(commit)
    wal = Path(f"{crashed}-wal").read_bytes()
    frame = 24 + int.from_bytes(wal[8:12], "big")  # frame header + page
    frames, rest = divmod(len(wal) - 32, frame)
    assert rest == 0 and frames >= 2, (len(wal), frame)
    cases = [(cut, wal[:cut]) for cut in (0, 16)]
    cases += [(cut, wal[:cut]) for k in range(frames) for cut in (32 + k * frame, 32 + k * frame + 24 + 100)]
    for k in (0, frames - 1):  # a torn sector inside the first and the commit frame
        flip = 32 + k * frame + 24 + 200
        cases.append((f"flip@{flip}", wal[:flip] + bytes([wal[flip] ^ 0xFF]) + wal[flip + 1:]))
    cases.append(("whole", wal))
    for i, (case, data) in enumerate(cases):
        path = copy(crashed, tmp_path / f"torn-{i}.db")
        copy(Path(f"{crashed}-shm"), Path(f"{path}-shm"))  # a stale wal-index that counts every frame
        Path(f"{path}-wal").write_bytes(data)
        check_database(path)
        turns = loaded(path, "s")["turns"]
        assert turns == (4 if case == "whole" else 3), f"WAL {case}: {turns} turns"
        if case != "whole":
            assert loaded(path, "s") == before, f"WAL {case}"


def test_kill_at_every_statement_of_the_first_migration(tmp_path):
    connect = sqlite3.connect
    log: list[str] = []

    def traced(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(log.append)
        return conn

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sqlite3, "connect", traced)
        Store(tmp_path / "dry.db").close()
    committed = log.index("COMMIT") + 1
    assert log[committed - 1:] == ["COMMIT"]
    # Most statements are sqlite-utils reading the schema; a kill before a statement that
    # follows a read leaves the same file as a kill before that read, so it is skipped.
    reads = re.compile(r"(?i)(select |pragma (table_info|database_list))")
    points = [n for n in range(1, len(log) + 2) if n == 1 or not reads.match(log[n - 2])]
    assert committed in points

    for n in points:
        path = tmp_path / f"killed-{n}.db"

        def open_store(path=path, n=n):
            def connect_and_arm(*args, **kwargs):
                conn = connect(*args, **kwargs)
                kill_at(conn, n)
                return conn

            sqlite3.connect = connect_and_arm  # this child's copy of the module only
            Store(path)
            die()

        killed(open_store)
        where = f"killed before statement {n}: {log[n - 1][:80]!r}" if n <= len(log) else "killed after it"
        with closing(connect(path)) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert (tables >= {"_migrations", *TABLES}) if n > committed else (tables == set()), (where, tables)
        check_database(path)
        with Store(path) as store:
            with closing(connect(path)) as conn:
                assert [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY rowid")] == [
                    name for name, _ in MIGRATIONS], where
                assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal", where
            store.create_session(model="tiny", fingerprint="fp", session_id="s")
            assert store.commit_turn("s", **turn(store, "s", 1)) == 1, where
            assert store.load_session("s").checkpoint_info["turn"] == 1, where
        check_database(path)


def test_kill_at_every_statement_of_delete_session(tmp_path):
    base = tmp_path / "base.db"
    two_sessions(base, turns=2)
    before, other = loaded(base, "s"), loaded(base, "other")
    with Store(copy(base, tmp_path / "dry.db")) as store:
        log = record(store._conn)
        store.delete_session("s")
    committed = log.index("COMMIT") + 1  # then only the space reclaim (incremental vacuum, WAL checkpoint)
    assert any(sql.startswith("DELETE FROM blobs") for sql in log[:committed])
    assert log[committed:] and all(sql.startswith("PRAGMA") for sql in log[committed:]), log[committed:]

    for n in range(1, len(log) + 2):
        path = copy(base, tmp_path / f"killed-{n}.db")

        def delete(path=path, n=n):
            store = Store(path)
            kill_at(store._conn, n)
            store.delete_session("s")
            die()

        killed(delete)
        where = f"killed before statement {n}: {log[n - 1][:80]!r}" if n <= len(log) else "killed after it all"
        check_database(path)
        if n <= committed:
            assert loaded(path, "s") == before, where
        else:
            with Store(path) as store, pytest.raises(SessionNotFoundError):
                store.load_session("s")
            with closing(sqlite3.connect(path)) as conn:
                left = {t: conn.execute(f"SELECT count(*) FROM {t} WHERE {col} = 's'").fetchone()[0]
                        for t, col in BY_SESSION.items()}
            assert set(left.values()) == {0}, (where, left)
        assert loaded(path, "other") == other, where
        with Store(path) as store:
            assert store.commit_turn("other", **turn(store, "other", 2)) == 2, where
        check_database(path)


def test_kill_of_one_writer_leaves_the_other_writers_turns_whole(tmp_path):
    """Writer A commits to session x in a loop; writer B is killed holding the write lock
    inside its fourth commit to session y; A waits it out and loses nothing."""
    path = tmp_path / "shared.db"
    with Store(path) as store:
        for sid in ("x", "y"):
            store.create_session(model="tiny", fingerprint="fp", session_id=sid)
    ready, tell_ready = os.pipe()
    stop, tell_stop = os.pipe()

    def writer_a():
        store = Store(path)
        waits: list[float] = []
        stopped_at, deadline = None, time.monotonic() + 20
        while stopped_at is None or len(waits) < stopped_at + 3:
            n = len(waits)
            start_at = time.monotonic()
            store.commit_turn("x", messages=[message(n, "A")], state={"n": n})
            waits.append(time.monotonic() - start_at)
            if n == 4:
                os.write(tell_ready, b"5")
            if stopped_at is None and select.select([stop], [], [], 0)[0]:
                stopped_at = len(waits)
            if time.monotonic() > deadline:
                raise RuntimeError("writer A was never told to stop")
            time.sleep(0.005)  # a window for B: SQLite's busy handler polls, it does not queue
        store.close()
        return {"turns": len(waits), "longest_wait": max(waits)}

    turns_of_b = [turn(None, "y", n) for n in range(1, 5)]

    def writer_b():
        store = Store(path)
        for args in turns_of_b[:3]:
            store.commit_turn("y", **args)
        kill_at(store._conn, "UPDATE sessions", hold=0.3)  # every other row of the turn is written
        store.commit_turn("y", **turns_of_b[3])

    a = start(writer_a)
    try:
        if not select.select([ready], [], [], 20)[0]:
            a.kill()
            pytest.fail("writer A did not commit 5 turns in 20 s")
        try:
            killed(writer_b)
        finally:
            os.write(tell_stop, b"stop")
            code, result = a.wait()
    finally:
        for fd in (ready, tell_ready, stop, tell_stop):
            os.close(fd)
    assert code == 0
    assert result["longest_wait"] >= 0.2, f"writer A never waited for B's lock: {result}"
    check_database(path)
    with Store(path) as store:
        x = store.export_session("x")
        assert x["session"]["turns"] == result["turns"] and x["session"]["state"] == {"n": result["turns"] - 1}
        assert [(m["index"], m["content"], m["turn"]) for m in x["messages"]] == [
            (n, f"A {n}", n + 1) for n in range(result["turns"])]
        y = store.load_session("y")
        assert y.turns == 3 and [m["content"] for m in y.messages] == [f"y {n}" for n in range(6)]
        assert y.checkpoint_info["turn"] == 3 and y.state == {"turn": 3} and len(y.events) == 3
        assert store.commit_turn("y", **turn(store, "y", 4)) == 4
    check_database(path)


# --------------------------------------------------------------------------- a copy without its WAL


def test_copy_without_its_wal_is_the_older_consistent_store(tmp_path):
    path, lone = tmp_path / "live.db", tmp_path / "copy.db"
    with Store(path) as store:
        store.create_session(model="tiny", fingerprint="fp", session_id="s")
        for n in (1, 2):
            store.commit_turn("s", **turn(store, "s", n))
    assert not Path(f"{path}-wal").exists()  # closing the last connection checkpointed it
    older = loaded(path, "s")
    with Store(path) as store:
        for n in (3, 4):  # turn 4 prunes the checkpoints of turns 1 and 2: their blobs live on only in the copy
            store.commit_turn("s", **turn(store, "s", n))
        assert Path(f"{path}-wal").stat().st_size > 0
        shutil.copyfile(path, lone)  # the main file alone, while the writer is open
        newer = summary(store.load_session("s"))
    check_database(lone)
    assert loaded(lone, "s") == older
    assert loaded(path, "s") == newer
    with Store(lone) as store:
        assert store.commit_turn("s", **turn(store, "s", 3)) == 3
    check_database(lone)

    # A store whose every transaction, the migration included, is still in the WAL: the
    # copy is an empty WAL-mode file, which opens as a new store.
    fresh, lone = tmp_path / "fresh.db", tmp_path / "fresh-copy.db"
    with Store(fresh) as store:
        store.create_session(model="tiny", fingerprint="fp", session_id="s")
        store.commit_turn("s", **turn(store, "s", 1))
        shutil.copyfile(fresh, lone)
    with Store(lone) as store:
        assert store.list_sessions() == []
        store.create_session(model="tiny", fingerprint="fp", session_id="s")
        assert store.commit_turn("s", **turn(store, "s", 1)) == 1
    check_database(lone)


# --------------------------------------------------------------------------- full disk


def commit_past_file_size_limit(path: Path, before: dict) -> dict:
    """In a child: a commit whose WAL writes pass RLIMIT_FSIZE (SIGXFSZ ignored, so they fail
    with EFBIG as on a full disk), a load, then the limit lifted and the turn committed again."""
    small, big = turn(None, "s", 3), turn(None, "s", 3)
    big["checkpoint"][0]["blocks"].append({"keys": torch.zeros(1, 2, 8192, 8), "values": torch.ones(1, 2, 8192, 8)})

    def child():
        store = Store(path)
        store.commit_turn("other", messages=[message(2, "other")])  # the WAL exists now
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        sizes = [os.path.getsize(path), os.path.getsize(f"{path}-wal")]
        resource.setrlimit(resource.RLIMIT_FSIZE, (max(sizes) + 32 * 1024, hard))
        try:
            store.commit_turn("s", **big)
        except Exception as exc:  # reported to the parent
            error = {"type": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(exc),
                     "ours": isinstance(exc, StoreWriteError),
                     "own_cause": exc.__cause__ is exc}
        else:
            error = None
        unchanged = summary(store.load_session("s")) == before
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
        store.commit_turn("s", **small)
        store.close()
        return {"error": error, "unchanged": unchanged}

    code, result = start(child).wait()
    assert code == 0
    assert result["error"] is not None, "a commit past the file size limit raised nothing"
    return result


def test_commit_past_the_file_size_limit_raises_and_keeps_the_session(tmp_path):
    path = tmp_path / "limited.db"
    two_sessions(path, turns=2)
    before = loaded(path, "s")
    result = commit_past_file_size_limit(path, before)
    error = result["error"]  # StoreWriteError over SQLite's "disk I/O error" (SQLITE_IOERR_WRITE)
    assert error["ours"] and re.search("disk I/O error|full", error["message"]), error
    assert "save again" in error["message"] and str(path) in error["message"]
    assert result["unchanged"]
    check_database(path)
    assert loaded(path, "s")["turns"] == 3


def test_a_write_error_is_not_its_own_cause(tmp_path):
    path = tmp_path / "limited.db"
    two_sessions(path, turns=2)
    assert not commit_past_file_size_limit(path, loaded(path, "s"))["error"]["own_cause"]


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 1 MiB tmpfs mounted at a folder (needs root in a container that allows mounts)."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_commit_on_a_full_filesystem_raises_and_keeps_the_session(tiny_filesystem):
    path = tiny_filesystem / "full.db"
    two_sessions(path, turns=2)
    before = loaded(path, "s")
    with Store(path) as store:
        stats = os.statvfs(tiny_filesystem)
        filler = tiny_filesystem / "filler"
        filler.write_bytes(bytes(stats.f_bavail * stats.f_frsize - 64 * 1024))  # 64 KiB left
        big = turn(store, "s", 3)
        big["checkpoint"][0]["blocks"].append({"keys": torch.zeros(1, 2, 4096, 8), "values": torch.ones(1, 2, 4096, 8)})
        with pytest.raises(StoreWriteError, match="full.*free disk space"):  # SQLITE_FULL
            store.commit_turn("s", **big)
        assert summary(store.load_session("s")) == before
        filler.unlink()  # the user frees space and goes on
        assert store.commit_turn("s", **big) == 3
    check_database(path)
    assert loaded(path, "s")["turns"] == 3


# --------------------------------------------------------------------------- read-only, busy


def test_readonly_store_refuses_every_write_and_changes_nothing(tmp_path):
    path = tmp_path / "ro.db"
    two_sessions(path, turns=2)
    before, image = loaded(path, "s"), path.read_bytes()
    with Store(path, readonly=True) as store:
        assert summary(store.load_session("s")) == before
        writes = [lambda: store.commit_turn("s", **turn(store, "s", 3)), lambda: store.delete_session("s"),
                  lambda: store.drop_checkpoints("s"),
                  lambda: store.create_session(model="tiny", fingerprint="fp", session_id="new")]
        for write in writes:
            with pytest.raises(ConfigError, match="read-only"):
                write()
    assert path.read_bytes() == image
    assert loaded(path, "s") == before
    check_database(path)


def test_write_to_a_read_only_file_raises_and_loses_nothing(tmp_path):
    """chmod 0444; as root (which chmod does not stop) the writer drops to user `nobody`."""
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("running as root, and there is no user 'nobody' to write as")
    folder = Path(tempfile.mkdtemp(prefix="agentmem-ro-"))  # tmp_path's parents are closed to `nobody`
    try:
        path = folder / "ro.db"
        two_sessions(path, turns=2)
        before = loaded(path, "s")
        if user is not None:
            for p in (folder, path):
                os.chown(p, user.pw_uid, user.pw_gid)
        path.chmod(0o444)
        args = turn(None, "s", 3)

        def write():
            if user is not None:
                os.setgroups([])
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)
            with Store(path) as store:
                try:
                    store.commit_turn("s", **args)
                except Exception as exc:  # reported to the parent
                    error = {"type": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(exc),
                             "ours": isinstance(exc, StoreWriteError)}
                else:
                    error = None
                return {"error": error, "unchanged": summary(store.load_session("s")) == before}

        code, result = start(write).wait()
        assert code == 0
        assert result["error"] is not None, "a write to a read-only file raised nothing"
        assert result["error"]["ours"] and re.search("read-?only", result["error"]["message"]), result["error"]
        assert result["unchanged"]
        path.chmod(0o644)
        assert loaded(path, "s") == before
        check_database(path)
    finally:
        shutil.rmtree(folder)


def test_commit_past_the_busy_timeout_raises_store_busy(tmp_path):
    path = tmp_path / "busy.db"
    two_sessions(path, turns=1)
    before = loaded(path, "s")
    with closing(sqlite3.connect(path, isolation_level=None)) as holder, Store(path, timeout=0.2) as store:
        holder.execute("BEGIN IMMEDIATE")  # another process's long write
        args = turn(store, "s", 2)
        started = time.monotonic()
        with pytest.raises(StoreBusyError) as caught:
            store.commit_turn("s", **args)
        waited = time.monotonic() - started
        assert 0.15 <= waited < 5, waited
        assert str(path) in str(caught.value) and "timeout" in str(caught.value)
        assert summary(store.load_session("s")) == before  # reads go on under the lock (WAL)
        holder.execute("ROLLBACK")
        assert store.commit_turn("s", **args) == 2
    check_database(path)


def test_a_read_only_folder_is_still_readable_read_only(tmp_path):
    """A WAL database needs its -shm file to be read; in a folder its reader cannot write, the
    read-only store falls back to reading the file as immutable (as user `nobody` when root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the folder to another user")
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")
    folder = Path(tempfile.mkdtemp(prefix="agentmem-rofolder-"))
    try:
        path = folder / "s.db"
        two_sessions(path, turns=2)  # closed: no -wal or -shm left, the file stays in WAL mode
        assert not Path(f"{path}-shm").exists()
        before = loaded(path, "s")
        image = path.read_bytes()
        folder.chmod(0o555)
        path.chmod(0o444)

        def read():
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            with Store(path, readonly=True) as store:
                return {"ids": sorted(s["id"] for s in store.list_sessions()),
                        "same": summary(store.load_session("s")) == before}

        code, result = start(read).wait()
        assert code == 0, result
        assert result == {"ids": ["other", "s"], "same": True}
        assert path.read_bytes() == image
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)
