"""Resume: a stored session continues with the same next-token logits, across processes too."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agentmem.engine import Session
from agentmem.errors import CorruptSessionError, ModelMismatchError
from agentmem.policies import AnyPin, FixedRatio, PinSystem, Policy, TokenLimit
from agentmem.store import Store

from conftest import tiny_chat_gemma3, tiny_chat_llama, tiny_tokenizer

CHILD = Path(__file__).parent / "session_child.py"
POLICY = Policy(trigger=TokenLimit(120), ratio=FixedRatio(4), pin=AnyPin((PinSystem(),)), method="am-fast",
                protect_recent=16)


@pytest.mark.parametrize("make", [tiny_chat_llama, tiny_chat_gemma3], ids=["llama", "gemma3"])
def test_resume_in_process_gives_same_logits(tmp_path, make):
    model, tokenizer = make(), tiny_tokenizer()
    store = Store(tmp_path / "s.db")
    session = Session(model, tokenizer, policy=POLICY, store=store, system="sys")
    for turn in range(3):
        session.add("user", f"message {turn}")
        session.generate(30)
    assert any(e.status == "ok" for e in session.events)  # the checkpoint holds a compacted cache
    if make is tiny_chat_llama:  # and heads at different counts, some slots borrowed (hf.ragged)
        assert any(getattr(layer, "borrowed", None) is not None for layer in session.cache.layers)
    expected = session.next_token_logits()

    again = Session.resume(Store(tmp_path / "s.db"), session.id, make(), tokenizer, policy=POLICY)
    assert again.messages == session.messages
    assert [s.to_dict() for s in again.segments] == [s.to_dict() for s in session.segments]
    assert len(again.events) == len(session.events)
    torch.testing.assert_close(again.next_token_logits(), expected, rtol=0, atol=1e-6)
    session.store = None  # one writer per stored session: the original goes on in memory only
    again.add("user", "and one more")
    session.add("user", "and one more")
    assert again.generate(10).token_ids == session.generate(10).token_ids


def _child(db, session_id, turns, out, *, resume=False):
    args = [sys.executable, str(CHILD), str(db), session_id, str(turns), str(out)]
    return subprocess.Popen(args + (["--resume"] if resume else []), stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONHASHSEED="0"))


def test_kill_9_between_turns_keeps_last_committed_turn(tmp_path):
    db = tmp_path / "s.db"
    child = _child(db, "-", 1000, tmp_path)
    committed = 0
    deadline = time.monotonic() + 300
    while committed < 3 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        committed = int(line.split()[1])
    time.sleep(0.05)  # let it get into the next turn (maybe mid-write)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert committed >= 3
    session_id = (tmp_path / "id").read_text()
    session = Session.resume(Store(db), session_id, tiny_chat_llama(), tiny_tokenizer(), policy=POLICY)
    assert session.turns >= committed
    expected = torch.load(tmp_path / f"turn-{session.turns}.pt")
    torch.testing.assert_close(session.next_token_logits(), expected, rtol=0, atol=1e-6)

    # and it goes on: a resumed child commits more turns on top, and after it exits this
    # process resumes them with the logits the child had
    more = _child(db, session_id, 2, tmp_path, resume=True)
    assert more.wait(timeout=300) == 0
    assert Store(db).get_session(session_id)["turns"] == session.turns + 2
    after_exit = Session.resume(Store(db), session_id, tiny_chat_llama(), tiny_tokenizer(), policy=POLICY)
    assert after_exit.turns == session.turns + 2
    expected = torch.load(tmp_path / f"turn-{after_exit.turns}.pt")
    torch.testing.assert_close(after_exit.next_token_logits(), expected, rtol=0, atol=1e-6)


def test_resume_with_another_model_is_refused(tmp_path):
    tokenizer = tiny_tokenizer()
    store = Store(tmp_path / "s.db")
    session = Session(tiny_chat_llama(), tokenizer, policy=POLICY, store=store)
    session.add("user", "hello")
    session.generate(5)
    with pytest.raises(ModelMismatchError):
        Session.resume(store, session.id, tiny_chat_llama(seed=1), tokenizer)
    with pytest.raises(ModelMismatchError):
        Session.resume(store, session.id, tiny_chat_gemma3(), tokenizer)
    assert Session.resume(store, session.id, tiny_chat_llama(), tokenizer).turns == 1


def test_corrupt_checkpoint_is_reported_and_other_sessions_load(tmp_path):
    tokenizer = tiny_tokenizer()
    store = Store(tmp_path / "s.db")
    sessions = []
    for text in ("first", "second"):
        session = Session(tiny_chat_llama(), tokenizer, policy=POLICY, store=store)
        session.add("user", text)
        session.generate(5)
        sessions.append(session)
    with contextlib.closing(sqlite3.connect(tmp_path / "s.db")) as db:
        rows = db.execute("select blocks_json from kv_checkpoints where session_id = ?", [sessions[0].id]).fetchall()
        victim = json.loads(rows[0][0])[-1]
        db.execute("update blobs set data = substr(data, 1, 20) where hash = ?", [victim])
        db.commit()
    with pytest.raises(CorruptSessionError):
        Session.resume(Store(tmp_path / "s.db"), sessions[0].id, tiny_chat_llama(), tokenizer)
    assert Session.resume(Store(tmp_path / "s.db"), sessions[1].id, tiny_chat_llama(), tokenizer).turns == 1


def test_a_corrupt_borrowed_slot_record_is_reported_and_the_session_is_kept(tmp_path):
    """A record of a borrowed slot (hf.ragged) that points outside its layer is refused on resume
    with CorruptSessionError, and the stored session is left as it was."""
    model, tokenizer = tiny_chat_llama(), tiny_tokenizer()
    session = Session(model, tokenizer, policy=POLICY, store=Store(tmp_path / "s.db"), system="sys")
    for turn in range(3):
        session.add("user", f"message {turn}")
        session.generate(30)
    with contextlib.closing(sqlite3.connect(tmp_path / "s.db")) as db:
        rows = db.execute("select rowid, meta_json from kv_checkpoints where kind = 'compacted' and checkpoint_id = "
                          "(select checkpoint_id from kv_checkpoints where session_id = ? order by turn desc limit 1)",
                          [session.id]).fetchall()
        rowid, meta = next((r, json.loads(m)) for r, m in rows if json.loads(m).get("borrowed"))
        before = db.execute("select count(*) from messages where session_id = ?", [session.id]).fetchone()
        meta["borrowed"][0][3] = 10**6  # a slot far past the layer's end
        db.execute("update kv_checkpoints set meta_json = ? where rowid = ?", [json.dumps(meta), rowid])
        db.commit()
    with pytest.raises(CorruptSessionError, match="borrowed"):
        Session.resume(Store(tmp_path / "s.db"), session.id, tiny_chat_llama(), tokenizer, policy=POLICY)
    with contextlib.closing(sqlite3.connect(tmp_path / "s.db")) as db:
        assert db.execute("select count(*) from messages where session_id = ?", [session.id]).fetchone() == before


def test_checkpoints_pass_unchanged_blocks_by_hash_and_resume_exactly(tmp_path):
    tokenizer = tiny_tokenizer()
    store = Store(tmp_path / "s.db")
    policy = Policy(trigger=TokenLimit(3000), ratio=FixedRatio(4), pin=AnyPin((PinSystem(),)), method="am-fast",
                    protect_recent=16)
    session = Session(tiny_chat_llama(), tokenizer, policy=policy, store=store, system="sys")
    blobs = []
    for turn in range(4):
        session.add("user", f"message number {turn} " * 8)
        session.generate(8)
        with contextlib.closing(sqlite3.connect(tmp_path / "s.db")) as db:
            blobs.append(db.execute("select count(*), sum(size) from blobs").fetchone())
    assert not session.events  # no compaction: each turn only appends
    checkpoint = session._saved.checkpoint(session.cache, session.cached)
    by_hash = [b for layer in checkpoint for b in layer["blocks"] if isinstance(b, str)]
    assert len(by_hash) >= len(session.cache.layers)  # the unchanged prefix is not serialized again
    layers = len(session.cache.layers)
    # later turns add at most the partly filled last block per layer (+ its successor) and the query ring
    for before, after in zip(blobs[1:], blobs[2:]):
        assert after[0] - before[0] <= 2 * layers * 2 + layers
    # a compaction changes the blocks after its start; a turn after it must still resume exactly
    assert session.compact(ratio=4)
    for text in ("after the compaction", "and once more"):  # the second save reuses compacted blocks
        session.add("user", text)
        session.generate(8)
    resumed = Session.resume(Store(tmp_path / "s.db"), session.id, tiny_chat_llama(), tokenizer, policy=policy)
    torch.testing.assert_close(resumed.next_token_logits(), session.next_token_logits(), rtol=0, atol=1e-6)
