"""Sessions under faults: repeated fallback drops, stale writers, bad compaction arguments,
and resuming under the policy a session was stored with."""

from __future__ import annotations

import pytest
import torch

from agentmem.engine import Session
from agentmem.errors import ConfigError, StaleSessionError
from agentmem.policies import Policy
from agentmem.store import Store

from conftest import tiny_chat_llama, tiny_tokenizer

# Spans never reach min_segment_tokens, so every trigger ends in a fallback drop.
DROPPING = {"method": "am-fast", "protect_recent": 16, "min_segment_tokens": 100000,
            "trigger": {"kind": "tokens", "limit": 200}, "pin": {"kinds": ["system"]}}
SMALL = {"method": "am-fast", "protect_recent": 16, "trigger": {"kind": "tokens", "limit": 150},
         "ratio": {"kind": "fixed", "ratio": 4}, "pin": {"kinds": ["system"]}}


@pytest.fixture
def model():
    return tiny_chat_llama()


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()


def _turns(session, n, start=0):
    for i in range(start, start + n):
        session.add("user", f"fact {i}: the code is {1000 + i}. " + "pad " * 15)
        session.generate(8)


def test_repeated_fallback_drops_still_save_and_resume(tmp_path, model, tokenizer):
    store = Store(tmp_path / "s.db")
    session = Session(model, tokenizer, policy=DROPPING, store=store)
    _turns(session, 6)  # each turn saves; this raised "token ... lies inside a compacted run" from turn 3 on
    drops = [e for e in session.events if e.method == "drop"]
    assert len(drops) >= 3 and all(e.status == "fallback" for e in drops)
    assert store.get_session(session.id)["turns"] == 6
    assert len(store.messages(session.id)) == len(session.messages)
    expected = session.next_token_logits()
    again = Session.resume(Store(tmp_path / "s.db"), session.id, tiny_chat_llama(), tokenizer)
    torch.testing.assert_close(again.next_token_logits(), expected, rtol=0, atol=1e-6)


def test_stale_second_writer_is_refused_and_the_stored_session_stays_intact(tmp_path, model, tokenizer):
    db = tmp_path / "s.db"
    first = Session(model, tokenizer, policy=SMALL, store=Store(db), system="sys")
    _turns(first, 1)
    a = Session.resume(Store(db), first.id, model, tokenizer)
    b = Session.resume(Store(db), first.id, tiny_chat_llama(), tokenizer)
    _turns(a, 1, start=1)  # A commits
    b.add("user", "B's message")
    with pytest.raises(StaleSessionError, match="another writer") as caught:
        b.save()
    assert [m["content"] for m in caught.value.unsaved] == ["B's message"]
    with pytest.raises(StaleSessionError):
        b.compact(ratio=2)
        b.save()
    stored = Session.resume(Store(db), first.id, tiny_chat_llama(), tokenizer)  # no CorruptSessionError
    assert stored.messages == a.messages
    torch.testing.assert_close(stored.next_token_logits(), a.next_token_logits(), rtol=0, atol=1e-6)
    # The way out keeps B's turn without touching A's session.
    new_id = b.save_as_new()
    assert new_id != first.id
    branch = Session.resume(Store(db), new_id, tiny_chat_llama(), tokenizer)
    assert branch.messages[-1]["content"] == "B's message"
    assert Store(db).messages(first.id) == a.messages


def _one_saved_turn(tmp_path, model, tokenizer):
    db = tmp_path / "s.db"
    session = Session(model, tokenizer, policy=SMALL, store=Store(db))
    _turns(session, 1)
    return db, session


def test_saving_a_session_deleted_by_another_writer_keeps_the_reply(tmp_path, model, tokenizer):
    db, session = _one_saved_turn(tmp_path, model, tokenizer)
    Store(db).delete_session(session.id)
    session.add("user", "after the delete")
    with pytest.raises(StaleSessionError, match="deleted"):
        session.generate(4)
    assert session.messages[-1]["role"] == "assistant"  # the reply is kept in memory
    new_id = session.save_as_new()
    assert [m["content"] for m in Store(db).messages(new_id)] == [m["content"] for m in session.messages]


def test_dropping_checkpoints_makes_a_live_copy_stale(tmp_path, model, tokenizer):
    db, session = _one_saved_turn(tmp_path, model, tokenizer)
    Store(db).drop_checkpoints(session.id)
    session.add("user", "more")
    with pytest.raises(StaleSessionError):
        session.save()


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": 0}, "ratio"), ({"ratio": float("nan")}, "ratio"), ({"ratio": "5"}, "ratio"),
    ({"method": "am-fsat"}, "unknown method"),
])
def test_bad_compact_arguments_raise_and_drop_nothing(model, tokenizer, kwargs, match):
    session = Session(model, tokenizer, policy=SMALL)
    _turns(session, 2)
    before = (len(session.events), session.stats().physical_tokens, [s.to_dict() for s in session.segments])
    with pytest.raises(ConfigError, match=match):
        session.compact(**kwargs)
    assert (len(session.events), session.stats().physical_tokens, [s.to_dict() for s in session.segments]) == before


def test_unknown_method_in_a_policy_file_fails_at_construction(tmp_path, model, tokenizer):
    path = tmp_path / "p.toml"
    path.write_text('method = "am-fsat"\n[trigger]\nkind = "tokens"\nlimit = 200\n')
    with pytest.raises(ConfigError, match="am-fsat"):
        Session(model, tokenizer, policy=str(path))
    with pytest.raises(ConfigError, match="am-fsat"):
        Policy(method="am-fsat")


def test_a_bad_compaction_option_raises_instead_of_dropping(model, tokenizer):
    with pytest.raises(ConfigError, match="unknown compaction option"):
        Session(model, tokenizer, policy=SMALL, compaction_options={"max_querys": 10})


def test_a_runtime_failure_still_falls_back_to_a_drop(model, tokenizer, monkeypatch):
    import agentmem.memory

    def failing(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(agentmem.memory, "compact", failing)
    session = Session(model, tokenizer, policy=SMALL)
    _turns(session, 4)
    statuses = [e.status for e in session.events]
    assert "failed" in statuses and "fallback" in statuses


def test_resume_keeps_the_stored_policy_unless_overridden(tmp_path, model, tokenizer):
    db = tmp_path / "s.db"
    session = Session(model, tokenizer, policy=SMALL, store=Store(db))
    _turns(session, 1)
    again = Session.resume(Store(db), session.id, model, tokenizer)
    assert again.policy == Policy.from_dict(SMALL)
    other = Session.resume(Store(db), session.id, model, tokenizer, policy="aggressive")
    assert other.policy == Policy.named("aggressive")
    _turns(other, 1, start=1)  # the override is stored with the next save
    assert Session.resume(Store(db), session.id, model, tokenizer).policy == Policy.named("aggressive")


def test_resumed_session_compacts_under_its_stored_policy(tmp_path, model, tokenizer):
    db = tmp_path / "s.db"
    session = Session(model, tokenizer, policy=SMALL, store=Store(db))
    _turns(session, 1)
    again = Session.resume(Store(db), session.id, model, tokenizer)
    _turns(again, 4, start=1)
    assert any(e.status == "ok" for e in again.events[len(session.events):])
    # The default policy (2048 slots) would not compact these 450-odd tokens at all.
    assert again.stats().physical_tokens < again.stats().logical_tokens / 2


# ---------------------------------------------------------------- damaged rows and blobs


@pytest.fixture(scope="module")
def stored_template(tmp_path_factory):
    """A database holding one session with a compacted checkpoint (built once, copied per test)."""
    db = tmp_path_factory.mktemp("template") / "s.db"
    store = Store(db)
    session = Session(tiny_chat_llama(), tiny_tokenizer(), policy=SMALL, store=store, system="sys")
    _turns(session, 3)
    assert any(e.status == "ok" for e in session.events)
    store.close()  # the last connection folds the WAL into the file
    return db, session.id


@pytest.fixture
def stored(tmp_path, stored_template):
    import shutil

    template, sid = stored_template
    shutil.copy(template, tmp_path / "s.db")
    return tmp_path / "s.db", sid


def _rewrite_blob(conn, change):
    """Replace the first block of the newest checkpoint's first layer by `change(tensors)`, stored under
    its new (valid) sha256."""
    import hashlib
    import json

    from safetensors.torch import load, save

    blocks = conn.execute("SELECT blocks_json FROM kv_checkpoints WHERE kind != 'queries' "
                          "ORDER BY turn DESC, created_at DESC, layer LIMIT 1").fetchone()[0]
    digest = json.loads(blocks)[0]
    data = conn.execute("SELECT data FROM blobs WHERE hash = ?", (digest,)).fetchone()[0]
    tensors = load(data)
    change(tensors)
    new = save(tensors)
    new_digest = hashlib.sha256(new).hexdigest()
    conn.execute("INSERT INTO blobs (hash, data, size) VALUES (?, ?, ?)", (new_digest, new, len(new)))
    conn.execute("UPDATE kv_checkpoints SET blocks_json = replace(blocks_json, ?, ?)", (digest, new_digest))


def _nan_keys(tensors):
    tensors["keys"][..., 0, 0] = float("nan")


def _shape(tensors):
    tensors["keys"] = tensors["keys"][:, :1]


DAMAGE = {
    "missing layer row": ("DELETE FROM kv_checkpoints WHERE layer = 1", "layers"),
    "meta not an object": ("UPDATE kv_checkpoints SET meta_json = '\"x\"' WHERE layer = 0", "meta"),
    "meta missing fields": ("UPDATE kv_checkpoints SET meta_json = '{}' WHERE layer = 0", "cannot be rebuilt"),
    "cached not an integer": ("UPDATE sessions SET state_json = json_set(state_json, '$.cached', 'abc')",
                              "'cached'"),
    "cached too large": ("UPDATE sessions SET state_json = json_set(state_json, '$.cached', 100000)", "tokens"),
    "out-of-vocabulary id": ("UPDATE messages SET token_ids_json = '[9999]' WHERE idx = 1", "vocabulary"),
    "float id": ("UPDATE messages SET token_ids_json = '[1.5]' WHERE idx = 1", "integers"),
    "segment past the end": ("UPDATE segments SET \"end\" = 100000 WHERE idx = 1", "segment 1"),
    "overlapping segments": ("UPDATE segments SET start = 0 WHERE idx = 1", "segment 1"),
    "message gap": ("DELETE FROM messages WHERE idx = 1", "index"),
    "NaN keys": (_nan_keys, "NaN"),
    "wrong head count": (_shape, "heads"),
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_damaged_rows_and_blobs_give_corrupt_session_error(stored, model, tokenizer, damage):
    import sqlite3

    from agentmem.errors import CorruptSessionError

    db, sid = stored
    action, match = DAMAGE[damage]
    conn = sqlite3.connect(db, isolation_level=None)
    if callable(action):
        _rewrite_blob(conn, action)
    else:
        conn.execute(action)
    conn.close()
    with pytest.raises(CorruptSessionError, match=match):
        Session.resume(Store(db), sid, model, tokenizer)


def test_a_dropped_checkpoint_resumes_by_prefilling(stored, model, tokenizer):
    db, sid = stored
    Store(db).drop_checkpoints(sid)
    again = Session.resume(Store(db), sid, model, tokenizer)
    assert again.cached == 0
    again.add("user", "still there?")
    again.generate(4)  # prefills everything under the stored policy, then saves
    assert Store(db).get_session(sid)["turns"] == 4


# ---------------------------------------------------------------- sizes


def test_a_message_longer_than_the_context_is_refused_and_nothing_is_added(model, tokenizer):
    model.config.max_position_embeddings = 256
    session = Session(model, tokenizer, policy=SMALL, system="sys")
    before = (list(session.ids), list(session.messages), [s.to_dict() for s in session.segments])
    with pytest.raises(ConfigError, match="context of 256"):
        session.add("user", "x" * 400)
    assert (session.ids, session.messages, [s.to_dict() for s in session.segments]) == before
    session.add("user", "short")
    session.generate(4)


def test_a_pin_that_holds_the_cache_over_its_limit_says_so_once(tmp_path, model, tokenizer, caplog):
    policy = {**SMALL, "trigger": {"kind": "tokens", "limit": 100}, "pin": {"kinds": ["system"]}}
    store = Store(tmp_path / "s.db")
    session = Session(model, tokenizer, policy=policy, store=store, system="rules " * 40)  # ~250 pinned tokens
    with caplog.at_level("WARNING", logger="agentmem.engine"):
        for i in range(3):
            session.add("user", f"question {i}")
            session.generate(20)
    over = [e for e in session.events if e.status == "over_budget"]
    assert len(over) == 1, [e.status for e in session.events]
    assert 0 in over[0].segments and "pinned" in over[0].error
    assert over[0].tokens_before > 100
    assert sum("over budget" in r.getMessage() for r in caplog.records) == 1
    assert [e["status"] for e in store.events(session.id)].count("over_budget") == 1


def test_a_failed_save_keeps_the_reply_and_the_next_save_stores_it(tmp_path, model, tokenizer):
    from agentmem.errors import StoreWriteError

    store = Store(tmp_path / "s.db")
    session = Session(model, tokenizer, policy=SMALL, store=store)
    _turns(session, 1)
    # query_only holds for one connection, so this fault goes through the store's own (a chmod does not stop root)
    store._conn.execute("PRAGMA query_only = ON")  # every write fails, as on a read-only file
    session.add("user", "kept through a failed save")
    with pytest.raises(StoreWriteError, match="nothing was written.*save again"):
        session.generate(6)
    reply = session.last_reply.text
    assert session.messages[-1] == {**session.messages[-1], "role": "assistant", "content": reply}
    store._conn.execute("PRAGMA query_only = OFF")  # the cause is fixed
    session.save()
    stored = Store(tmp_path / "s.db").messages(session.id)
    assert [m["content"] for m in stored[-2:]] == ["kept through a failed save", reply]


def test_a_policy_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "p.toml"
    path.write_bytes(b'method = "am-fast"\n# caf\xe9\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        Policy.from_toml(path)
