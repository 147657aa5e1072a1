"""The SQLite session store: migrations, round trips, content addressing, damage, concurrency."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
import torch
from sqlite_utils import Database

import agentmem.store
from agentmem import hf
from agentmem.errors import (
    ConfigError,
    CorruptSessionError,
    ModelMismatchError,
    SchemaVersionError,
    SessionNotFoundError,
)
from agentmem.schema import MIGRATIONS, migrate
from agentmem.segments import CompactionEvent, Segment
from agentmem.store import LoadedSession, Store

from conftest import prefill, tiny_gemma3, tiny_llama

TABLES = ("sessions", "messages", "segments", "compactions", "kv_checkpoints", "blobs")


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "sessions.db") as s:
        yield s


def message(index: int, text: str = "hi", **extra) -> dict:
    return {"index": index, "role": "user", "content": f"{text} {index}", "token_ids": [index, index + 1],
            "segment": index, "meta": None, **extra}


def event(**extra) -> CompactionEvent:
    fields = dict(time="2025-01-01T00:00:00+00:00", trigger="tokens>64", method="am-fast", ratio=4.0, start=0,
                  end=32, tokens_before=64, tokens_after=40, bytes_before=4096, bytes_after=2560,
                  logical_tokens=64, seconds=0.01, segments=(1, 2), quality={"cosine": 0.99})
    return CompactionEvent(**{**fields, **extra})


def checkpoint(slots: int, *, seed: int = 0, layers: int = 2, block: int = 16) -> list[dict]:
    """A `cache_state`-shaped list; the first slots of a bigger `slots` are the same tensors."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(layers):
        keys, values = torch.randn(1, 2, 256, 8, generator=gen), torch.randn(1, 2, 256, 8, generator=gen)
        blocks = [{"keys": keys[:, :, lo:min(lo + block, slots)].contiguous(),
                   "values": values[:, :, lo:min(lo + block, slots)].contiguous()} for lo in range(0, slots, block)]
        out.append({"kind": "dynamic", "meta": {}, "blocks": blocks})
    return out


def snapshot(path: Path) -> dict:
    """Every row of every table, to compare a database before and after."""
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in TABLES}
    finally:
        conn.close()


def sql(store: Store, query: str, *args) -> list[tuple]:
    """`query` on the store's file through a connection of our own, as any SQLite client would run it."""
    with closing(sqlite3.connect(store.path, isolation_level=None)) as conn:
        return conn.execute(query, args).fetchall()


def blob_hashes(store: Store) -> set[str]:
    return {r[0] for r in sql(store, "SELECT hash FROM blobs")}


def referenced_hashes(store: Store) -> set[str]:
    return {h for (text,) in sql(store, "SELECT blocks_json FROM kv_checkpoints") for h in json.loads(text)}


# --------------------------------------------------------------------------- migrations


def test_blank_database_migrates_once(tmp_path):
    path = tmp_path / "new" / "sessions.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    first = conn.execute("SELECT name, applied_at FROM _migrations ORDER BY rowid").fetchall()
    assert [name for name, _ in first] == [name for name, _ in MIGRATIONS]
    assert all(applied.endswith("+00:00") for _, applied in first)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        assert migrate(Database(conn)) == []
        assert set(TABLES) <= set(Database(conn).table_names())
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute("SELECT name, applied_at FROM _migrations ORDER BY rowid").fetchall() == first
    conn.execute("BEGIN IMMEDIATE")  # another process writing: opening and reading need no write lock
    with Store(path, timeout=0.2) as store:
        assert store.list_sessions() == []
    conn.execute("ROLLBACK")
    conn.close()


def test_older_schema_with_data_keeps_it_and_migrates_the_rest(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(Database(conn), MIGRATIONS[:1]) == [MIGRATIONS[0][0]]
    conn.execute("INSERT INTO sessions (id, title, model, fingerprint, config_json, state_json, turns, created_at, "
                 "updated_at) VALUES ('old', 'kept', 'tiny', 'fp', '{\"a\": 1}', '{}', 1, 't0', 't0')")
    conn.execute("INSERT INTO messages (session_id, idx, turn, role, content, token_ids_json, segment, meta_json, "
                 "created_at) VALUES ('old', 0, 1, 'user', 'hello', '[1, 2, 3]', 0, 'null', 't0')")
    conn.close()

    with Store(path) as store:
        names = [r[0] for r in sql(store, "SELECT name FROM _migrations ORDER BY rowid")]
        assert names == [name for name, _ in MIGRATIONS]
        session = store.get_session("old")
        assert (session["title"], session["config"], session["turns"]) == ("kept", {"a": 1}, 1)
        assert store.messages("old")[0]["token_ids"] == [1, 2, 3]
        assert store.commit_turn("old", messages=[message(1)], events=[event()], checkpoint=checkpoint(20)) == 2
        loaded = store.load_session("old", fingerprint="fp")
        assert [m["index"] for m in loaded.messages] == [0, 1] and len(loaded.events) == 1


def test_unknown_migration_means_a_newer_agentmem(tmp_path):
    path = tmp_path / "newer.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO _migrations (name, applied_at) VALUES ('m999_from_the_future', 'now')")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaVersionError, match="newer.db was written by a newer agentmem.*m999_from_the_futu"):
        Store(path)


def test_a_file_that_is_not_sqlite_is_reported_as_such(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database " * 100)
    with pytest.raises(CorruptSessionError, match="notes.db.*other files are fine"):
        Store(path)
    assert path.read_bytes().startswith(b"these are my notes")
    Store(tmp_path / "other.db").close()


# --------------------------------------------------------------------------- round trips


def _cache(name: str, ids: torch.Tensor):
    model = tiny_gemma3() if name == "gemma3" else tiny_llama()
    cache = prefill(model, ids)
    return model, hf.drop_span(cache, 4, 12) if name == "llama-dropped" else cache


@pytest.mark.parametrize("name", ["llama", "gemma3", "llama-dropped"])
def test_round_trip_gives_bitwise_equal_logits(store, ids, name):
    model, cache = _cache(name, ids)
    segments = [Segment(0, "system", "system", 0, 8, pinned=True, messages=[0]),
                Segment(1, "user", "user", 8, 48, turn=1, compactions=2, messages=[1])]
    msgs = [message(0, meta={"tool": None}), {**message(1), "token_ids": torch.arange(40)}]
    sid = store.create_session(model="tiny", fingerprint="fp1", config={"policy": "default"}, title="t")
    turn = store.commit_turn(sid, messages=msgs, segments=segments, events=[event(), event(status="fallback")],
                             checkpoint=hf.cache_state(cache, block=16), state={"pending": [7, 8]},
                             checkpoint_info={"logical_tokens": 48})

    nxt = torch.tensor([[5]])
    with hf.agentmem_attention(model), torch.no_grad():
        expected = model(input_ids=nxt, past_key_values=_cache(name, ids)[1]).logits
        loaded = store.load_session(sid, fingerprint="fp1")
        got = model(input_ids=nxt, past_key_values=hf.cache_from_state(loaded.checkpoint, model)).logits
    assert torch.equal(got, expected)

    assert isinstance(loaded, LoadedSession) and turn == loaded.turns == 1
    assert (loaded.model, loaded.config, loaded.state) == ("tiny", {"policy": "default"}, {"pending": [7, 8]})
    assert loaded.segments == segments
    assert [m["token_ids"] for m in loaded.messages] == [[0, 1], list(range(40))]
    assert loaded.messages[0] == msgs[0] and store.messages(sid) == loaded.messages
    assert [e["status"] for e in loaded.events] == ["ok", "fallback"]
    assert loaded.events[0] == {"turn": 1, **event().to_dict()}
    assert loaded.checkpoint_info["logical_tokens"] == 48 and loaded.checkpoint_info["turn"] == 1

    store.commit_turn(sid, state={"more": True})  # a turn without checkpoint keeps the last one
    again = store.load_session(sid)
    assert again.state == {"pending": [7, 8], "more": True} and again.turns == 2
    assert again.checkpoint_info == loaded.checkpoint_info
    exported = json.loads(json.dumps(store.export_session(sid)))
    assert exported["session"]["id"] == sid and exported["messages"][1]["turn"] == 1
    assert len(exported["checkpoint"]["layers"]) == len(loaded.checkpoint)
    listed = store.list_sessions()
    assert listed[0] | {"created_at": None, "updated_at": None} == {
        "id": sid, "title": "t", "model": "tiny", "created_at": None, "updated_at": None, "turns": 2,
        "messages": 2, "compactions": 2, "physical_tokens": 40 if name == "llama-dropped" else 48,
        "logical_tokens": 48}  # physical_tokens estimated from the tensors (widest layer)


def test_sessions_without_checkpoint_and_bad_input(store):
    sid = store.create_session(model="tiny", fingerprint="fp", session_id="mine")
    assert sid == "mine" and len(store.create_session(model="tiny", fingerprint="fp")) == 32
    with pytest.raises(ConfigError, match="already exists"):
        store.create_session(model="tiny", fingerprint="fp", session_id="mine")
    loaded = store.load_session("mine")
    assert loaded.checkpoint is None and loaded.checkpoint_info is None and loaded.turns == 0
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        store.commit_turn("mine", keep_checkpoints=0)
    with pytest.raises(ConfigError, match="JSON"):
        store.commit_turn("mine", state={"x": object()})
    with pytest.raises(ConfigError, match="no layers"):
        store.commit_turn("mine", checkpoint=[])


@pytest.mark.gpu
def test_device_tensors_are_stored_and_loaded_to_map_location(store):
    sid = store.create_session(model="tiny", fingerprint="fp")
    on_gpu = [{**layer, "blocks": [{k: t.cuda() for k, t in b.items()} for b in layer["blocks"]]}
              for layer in checkpoint(40)]
    store.commit_turn(sid, checkpoint=on_gpu)
    loaded = store.load_session(sid, map_location="cuda")
    block = loaded.checkpoint[1]["blocks"][2]["keys"]
    assert block.is_cuda and torch.equal(block.cpu(), checkpoint(40)[1]["blocks"][2]["keys"])


# --------------------------------------------------------------------------- content addressing


def test_consecutive_checkpoints_share_blocks_and_old_ones_are_pruned(store):
    sid = store.create_session(model="tiny", fingerprint="fp")
    store.commit_turn(sid, checkpoint=checkpoint(64))
    assert len(blob_hashes(store)) == 2 * 4
    store.commit_turn(sid, checkpoint=checkpoint(68))  # 4 more slots: one new block per layer
    assert len(blob_hashes(store)) == 2 * 4 + 2
    for slots in (72, 96, 130):
        store.commit_turn(sid, checkpoint=checkpoint(slots), keep_checkpoints=2)
    turns = [r[0] for r in sql(store, "SELECT DISTINCT turn FROM kv_checkpoints ORDER BY turn")]
    assert turns == [4, 5]
    assert blob_hashes(store) == referenced_hashes(store)  # no orphans
    assert store.load_session(sid).checkpoint_info["physical_tokens"] == 130
    store.commit_turn(sid, checkpoint=checkpoint(40), keep_checkpoints=1)
    assert blob_hashes(store) == referenced_hashes(store) and len(blob_hashes(store)) == 2 * 3


def test_delete_keeps_blobs_another_session_references(store):
    a = store.create_session(model="tiny", fingerprint="fp")
    b = store.create_session(model="tiny", fingerprint="fp")
    store.commit_turn(a, messages=[message(0)], events=[event()], segments=[Segment(0, "user", "user", 0, 2)],
                      checkpoint=checkpoint(40))
    store.commit_turn(b, checkpoint=checkpoint(20))  # shares block 0 of each layer with a
    before = referenced_hashes(store)
    store.delete_session(a)
    assert blob_hashes(store) == referenced_hashes(store) and len(blob_hashes(store)) == 2 * 2
    assert blob_hashes(store) < before
    for table in TABLES[1:5]:
        assert sql(store, f"SELECT count(*) FROM {table} WHERE session_id = ?", a) == [(0,)]
    assert [s["id"] for s in store.list_sessions()] == [b]
    assert torch.equal(store.load_session(b).checkpoint[1]["blocks"][1]["keys"], checkpoint(20)[1]["blocks"][1]["keys"])
    assert store.drop_checkpoints(b) == 1 and blob_hashes(store) == set()


def _file_bytes(path: Path) -> int:
    """The database and its WAL, as the file system counts them."""
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


@pytest.mark.parametrize("older", [False, True], ids=["new-file", "file-without-auto-vacuum"])
def test_deleting_a_large_session_shrinks_the_file(tmp_path, older):
    path = tmp_path / "s.db"
    if older:  # made before auto_vacuum: its first delete runs one VACUUM and switches it
        conn = sqlite3.connect(path, isolation_level=None)
        migrate(Database(conn))
        conn.close()
    gen = torch.Generator().manual_seed(0)
    big = [{"kind": "dynamic", "meta": {}, "blocks": [{"keys": torch.randn(1, 2, 1024, 64, generator=gen),
                                                       "values": torch.randn(1, 2, 1024, 64, generator=gen)}]}
           for _ in range(8)]  # 8 MB of tensors
    with Store(path) as store:
        small = store.create_session(model="tiny", fingerprint="fp")
        store.commit_turn(small, messages=[message(0)], checkpoint=checkpoint(20))
        large = store.create_session(model="tiny", fingerprint="fp")
        store.commit_turn(large, messages=[message(0)], checkpoint=big)
    full = _file_bytes(path)
    assert full > 8 * 2**20
    with Store(path) as store:
        store.delete_session(large)
        assert _file_bytes(path) < 2**20  # already while open: the WAL is truncated too
        assert [s["id"] for s in store.list_sessions()] == [small]
        assert store.load_session(small).checkpoint is not None
    assert _file_bytes(path) < 2**20
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental from now on
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_reclaiming_space_under_a_lock_is_logged_not_raised(tmp_path, caplog):
    path = tmp_path / "s.db"
    with Store(path, timeout=0.1) as store:
        sid = store.create_session(model="tiny", fingerprint="fp")
        store.commit_turn(sid, checkpoint=checkpoint(40))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process writing
        try:
            assert store.reclaim_space() is False
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert "freed pages stay in the file" in caplog.text
        assert store.reclaim_space() is True


# --------------------------------------------------------------------------- errors


def test_fingerprint_mismatch_leaves_sessions_loadable(store):
    a = store.create_session(model="smollm2-135m", fingerprint="fp-a")
    b = store.create_session(model="other", fingerprint="fp-b")
    store.commit_turn(a, checkpoint=checkpoint(20))
    store.commit_turn(b, checkpoint=checkpoint(20, seed=1))
    with pytest.raises(ModelMismatchError, match="'smollm2-135m'.*pass model 'smollm2-135m'.*new session"):
        store.load_session(a, fingerprint="fp-b")
    assert store.load_session(a, fingerprint="fp-a").checkpoint is not None
    assert store.load_session(b, fingerprint="fp-b").checkpoint is not None


def test_unknown_ids_raise_session_not_found(store):
    store.create_session(model="tiny", fingerprint="fp", session_id="real")
    calls = [store.get_session, store.load_session, store.commit_turn, store.delete_session, store.events,
             store.messages, store.export_session, store.drop_checkpoints]
    for call in calls:
        with pytest.raises(SessionNotFoundError) as info:
            call("nope")
        assert str(info.value) == f"no session 'nope' in {store.path}; `agentmem sessions list` shows the ids"
        assert isinstance(info.value, KeyError)


@pytest.mark.parametrize("damage", ["flip", "truncate", "unreadable"])
def test_a_damaged_blob_fails_its_session_only(store, damage):
    a = store.create_session(model="tiny", fingerprint="fp")
    b = store.create_session(model="tiny", fingerprint="fp")
    store.commit_turn(a, checkpoint=checkpoint(40))
    store.commit_turn(b, checkpoint=checkpoint(40, seed=1))
    (target,) = store.checkpoint_blocks(a)[1][1:2]  # the damage is done to the file, as a disk would
    if damage == "flip":
        data = bytearray(sql(store, "SELECT data FROM blobs WHERE hash = ?", target)[0][0])
        data[-1] ^= 0xFF
        sql(store, "UPDATE blobs SET data = ? WHERE hash = ?", bytes(data), target)
    elif damage == "truncate":
        sql(store, "UPDATE blobs SET data = substr(data, 1, 40) WHERE hash = ?", target)
    else:  # bytes that match their hash but are not safetensors
        garbage = b"\x08\x00\x00\x00\x00\x00\x00\x00not json"
        new = hashlib.sha256(garbage).hexdigest()
        sql(store, "INSERT INTO blobs VALUES (?, ?, ?)", new, garbage, len(garbage))
        sql(store, "UPDATE kv_checkpoints SET blocks_json = replace(blocks_json, ?, ?)", target, new)
        target = new
    with pytest.raises(CorruptSessionError) as info:
        store.load_session(a)
    message_text = str(info.value)
    assert a in message_text and target in message_text and "other sessions are unaffected" in message_text
    assert torch.equal(store.load_session(b).checkpoint[1]["blocks"][1]["values"],
                       checkpoint(40, seed=1)[1]["blocks"][1]["values"])
    assert store.drop_checkpoints(a) == 1 and store.load_session(a).checkpoint is None


def test_a_damaged_shared_blob_names_the_sessions_sharing_it(store):
    a = store.create_session(model="tiny", fingerprint="fp", session_id="a")
    store.create_session(model="tiny", fingerprint="fp", session_id="b")
    store.commit_turn("a", checkpoint=checkpoint(20))
    store.commit_turn("b", checkpoint=checkpoint(20))
    sql(store, "UPDATE blobs SET data = substr(data, 1, 40)")
    with pytest.raises(CorruptSessionError, match="sessions b share this block"):
        store.load_session(a)


# --------------------------------------------------------------------------- transactions


def test_a_failing_turn_leaves_the_database_as_it_was(store, monkeypatch):
    sid = store.create_session(model="tiny", fingerprint="fp")
    store.commit_turn(sid, messages=[message(0)], segments=[Segment(0, "user", "user", 0, 2)],
                      checkpoint=checkpoint(32), state={"a": 1})
    before = snapshot(store.path)
    bad = {k: v for k, v in message(1).items() if k != "token_ids"}
    with pytest.raises(ConfigError, match="token_ids"):
        store.commit_turn(sid, messages=[message(2), bad], checkpoint=checkpoint(48))
    with pytest.raises(ConfigError, match="append-only"):
        store.commit_turn(sid, messages=[message(1), message(0)], checkpoint=checkpoint(48))

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Store, "_prune", boom)  # runs after messages, events and blobs are written
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.commit_turn(sid, messages=[message(1)], segments=[], events=[event()], checkpoint=checkpoint(80),
                          state={"a": 2})
    assert snapshot(store.path) == before
    monkeypatch.undo()
    assert store.commit_turn(sid, messages=[message(1)], checkpoint=checkpoint(80)) == 2


WRITER = """
import sys, types
from pathlib import Path

# Import agentmem.store without agentmem/__init__ (which loads transformers): a faster start.
package = types.ModuleType("agentmem")
package.__path__ = [str(Path(sys.argv[3]))]
sys.modules["agentmem"] = package
import torch
from agentmem.store import Store

path, name, turns = sys.argv[1], sys.argv[2], int(sys.argv[4])
print("ready", flush=True)
sys.stdin.readline()  # the parent starts both writers together (the migrations too)
with Store(path) as store:
    sid = store.create_session(model="tiny", fingerprint="fp", session_id=name)
    shared = torch.ones(1, 2, 16, 8)
    gen = torch.Generator().manual_seed(len(name))
    for turn in range(turns):
        own = torch.randn(1, 2, 4 + turn, 8, generator=gen)
        layer = {"kind": "dynamic", "meta": {}, "blocks": [{"keys": shared, "values": shared.clone()},
                                                       {"keys": own, "values": own}]}
        store.commit_turn(sid, messages=[{"index": turn, "role": "user", "content": name, "token_ids": [turn],
                                          "segment": turn}], checkpoint=[layer], state={"last": turn})
"""


def test_two_processes_writing_one_database_lose_nothing(tmp_path):
    turns = 40
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "shared.db"
    package = Path(agentmem.store.__file__).parent  # the agentmem package directory
    procs = [subprocess.Popen([sys.executable, str(script), str(path), name, str(package), str(turns)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in ("a", "bb")]
    try:
        for p in procs:
            line = p.stdout.readline()
            assert line == "ready\n", line + p.stdout.read()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill() if p.poll() is None else None
    assert [p.returncode for p in procs] == [0, 0], outputs
    with Store(path) as store:
        for name in ("a", "bb"):
            loaded = store.load_session(name)
            assert loaded.turns == turns and loaded.state == {"last": turns - 1}
            assert [m["index"] for m in loaded.messages] == list(range(turns))
            assert loaded.checkpoint[0]["blocks"][1]["keys"].shape[-2] == 4 + turns - 1
        assert blob_hashes(store) == referenced_hashes(store)


# --------------------------------------------------------------------------- writers and readers


def test_a_stale_version_is_refused_and_nothing_is_written(store, tmp_path):
    from agentmem.errors import StaleSessionError

    sid = store.create_session(model="tiny", fingerprint="fp")
    assert store.load_session(sid).version == 0
    assert store.commit_turn(sid, messages=[message(0)], expect_version=0) == 1
    before = snapshot(store.path)
    with pytest.raises(StaleSessionError, match="another writer.*stored version 1, this writer last saw 0"):
        store.commit_turn(sid, messages=[message(1)], checkpoint=checkpoint(20), expect_version=0)
    assert snapshot(store.path) == before
    assert store.commit_turn(sid, messages=[message(1)], expect_version=1) == 2
    store.drop_checkpoints(sid)  # any write to the session moves its version
    assert store.get_session(sid)["version"] == 3


def test_a_lock_held_past_the_timeout_raises_store_busy_and_writes_nothing(tmp_path):
    from agentmem.errors import StoreBusyError

    path = tmp_path / "s.db"
    with Store(path, timeout=0.2) as store:
        sid = store.create_session(model="tiny", fingerprint="fp")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreBusyError, match="write lock for 0.2 s.*nothing was written"):
            store.commit_turn(sid, messages=[message(0)])
        other.execute("ROLLBACK")
        other.close()
        assert store.commit_turn(sid, messages=[message(0)]) == 1


def test_another_programs_database_is_refused_and_left_untouched(tmp_path):
    from agentmem.errors import NotAStoreError

    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.execute("INSERT INTO notes (text) VALUES ('mine')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    for readonly in (False, True):
        with pytest.raises(NotAStoreError, match="another program.*notes.*left untouched"):
            Store(path, readonly=readonly)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_a_read_only_store_never_creates_or_changes_anything(tmp_path):
    path = tmp_path / "s.db"
    with pytest.raises(ConfigError, match="no session database"):
        Store(path, readonly=True)
    assert not path.exists()
    with Store(path) as store:
        sid = store.create_session(model="tiny", fingerprint="fp")
        store.commit_turn(sid, messages=[message(0)], checkpoint=checkpoint(20))
    before = snapshot(path)
    with Store(path, readonly=True) as reader:
        assert [s["id"] for s in reader.list_sessions()] == [sid]
        assert reader.load_session(sid).messages[0]["content"] == "hi 0"
        for write in (lambda: reader.commit_turn(sid, messages=[message(1)]),
                      lambda: reader.create_session(model="tiny", fingerprint="fp"),
                      lambda: reader.delete_session(sid)):
            with pytest.raises(ConfigError, match="read-only"):
                write()
    assert snapshot(path) == before
