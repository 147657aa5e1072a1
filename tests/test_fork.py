"""`Session.fork(messages=k)` and `hf.crop_cache`: a copy rolled back to a message boundary is the
session as it was at that boundary, and the original is never touched."""

from __future__ import annotations

import pytest
import torch

from agentmem import hf
from agentmem.engine import Session
from agentmem.errors import ConfigError
from agentmem.policies import AnyPin, FixedRatio, PinSystem, Policy, TokenLimit
from agentmem.store import Store

from conftest import prefill, tiny_chat_gemma3, tiny_gemma3, tiny_llama


def kv(cache) -> list[torch.Tensor]:
    """Every layer's keys and values (clones), to compare caches by value."""
    return [t.clone() for layer in cache.layers if layer.is_initialized for t in (layer.keys, layer.values)]


def grow(session: Session, snaps: list) -> None:
    """Four turns (one a tool call with its result); a full `fork()` snapshot at every message boundary."""
    for i, text in enumerate(["First question", "Call the tool", "Thanks", "Last one"]):
        session.add("user", text)
        snaps.append(session.fork())
        session.generate(5)
        snaps.append(session.fork())
        if i == 1:
            session.add("tool", '{"result": 42}')
            snaps.append(session.fork())
            session.generate(4)
            snaps.append(session.fork())


def test_a_fork_at_a_message_boundary_is_the_session_as_it_was_there(llama, tokenizer):
    session = Session(llama, tokenizer, policy="off", system="Be brief.")
    snaps: list[Session] = []
    grow(session, snaps)
    for snap in snaps:
        k = len(snap.messages)
        fork = session.fork(messages=k)
        assert fork.ids == snap.ids and fork.messages == snap.messages and fork.store is None
        assert [s.to_dict() for s in fork.segments] == [s.to_dict() for s in snap.segments]
        assert fork.cached <= len(fork.ids)
        fork.add("user", "And then?")
        snap.add("user", "And then?")
        torch.testing.assert_close(fork.next_token_logits(), snap.next_token_logits(), rtol=1e-5, atol=1e-5)
        again, before = fork.generate(6), snap.generate(6)
        assert again.token_ids == before.token_ids  # greedy: the same reply
        assert again.prompt_tokens + again.cached_tokens == before.prompt_tokens + before.cached_tokens


def test_regenerating_the_last_reply_prefills_only_its_opener(llama, tokenizer):
    session = Session(llama, tokenizer, policy="off", system="Be brief.")
    for text in ["one", "two", "three"]:
        session.add("user", text)
        last = session.generate(6)
    fork = session.fork(messages=len(session.messages) - 1)
    again = fork.generate(6)
    opener = len(session.format.generation_prompt_ids(fork.messages[:-1]))
    assert again.token_ids == last.token_ids and again.text == last.text
    assert again.prompt_tokens == opener  # only the reply's opener
    assert again.prompt_tokens + again.cached_tokens == last.prompt_tokens + last.cached_tokens


def test_a_fork_leaves_the_original_and_its_stored_rows_alone(llama, tokenizer, tmp_path):
    store = Store(tmp_path / "fork.db")
    session = Session(llama, tokenizer, policy="off", store=store, system="Be brief.")
    for text in ["one", "two"]:
        session.add("user", text)
        session.generate(5)
    ids, messages, cached, values = list(session.ids), [dict(m) for m in session.messages], session.cached, \
        kv(session.cache)
    rows, version = store.messages(session.id), store.get_session(session.id)["version"]
    fork = session.fork(messages=2)
    fork.add("user", "elsewhere")
    fork.generate(5)
    assert session.ids == ids and session.messages == messages and session.cached == cached
    for a, b in zip(kv(session.cache), values):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert store.messages(session.id) == rows and store.get_session(session.id)["version"] == version
    session.add("user", "three")  # the original goes on as before
    session.generate(3)
    store.close()


def test_an_attached_fork_is_stored_whole_under_its_new_id(llama, tokenizer, tmp_path):
    from agentmem.loading import model_fingerprint

    store = Store(tmp_path / "fork.db")
    session = Session(llama, tokenizer, policy="off", store=store)
    for text in ["one", "two"]:
        session.add("user", text)
        session.generate(5)
    fork = session.fork(messages=3)
    store.create_session(model="tiny", fingerprint=model_fingerprint(llama), session_id="branch")
    fork.attach_store(store, "branch")
    fork.add("user", "edited")
    reply = fork.generate(5)
    resumed = Session.resume(store, "branch", llama, tokenizer)
    assert [m["content"] for m in resumed.messages] == [m["content"] for m in fork.messages]
    assert resumed.messages[-1]["content"] == reply.text and resumed.ids == fork.ids
    resumed.add("user", "more")
    fork.add("user", "more")
    torch.testing.assert_close(resumed.next_token_logits(), fork.next_token_logits(), rtol=1e-5, atol=1e-5)
    store.close()


def compacted(model, tokenizer) -> Session:
    """A session whose first messages were compacted together into one span."""
    policy = Policy(trigger=TokenLimit(10_000), ratio=FixedRatio(4), pin=AnyPin((PinSystem(),)), method="am-fast",
                    protect_recent=8)
    session = Session(model, tokenizer, policy=policy, system="sys")
    for text in ["alpha " * 8, "beta " * 8, "gamma " * 8]:
        session.add("user", text)
        session.generate(4)
    session.compact()
    return session


def boundaries(session: Session) -> list[int]:
    """The logical token where each message starts."""
    out, total = [], 0
    for m in session.messages:
        out.append(total)
        total += len(m["token_ids"])
    return out


def test_a_boundary_inside_a_compacted_span_cannot_be_cut(llama, tokenizer):
    session = compacted(llama, tokenizer)
    runs = [(lo, hi) for lo, hi, slots in hf.compacted_runs(session.cache) if slots != hi - lo]
    assert runs
    starts = boundaries(session)
    inside = [k for k, t in enumerate(starts) if any(lo < t - 1 and t < hi for lo, hi in runs)]
    assert inside
    ids, cached, values = list(session.ids), session.cached, kv(session.cache)
    with pytest.raises(ConfigError, match=r"cannot be cut before message .*compacted run.*new session"):
        session.fork(messages=inside[0])
    assert session.ids == ids and session.cached == cached
    assert all(torch.equal(a, b) for a, b in zip(kv(session.cache), values))
    # A boundary after the compacted span keeps it: the fork is the session as it was there.
    snap = session.fork()
    session.add("user", "delta")
    session.generate(4)
    fork = session.fork(messages=len(snap.messages))
    assert fork.ids == snap.ids and fork.events == snap.events and fork.cached == snap.cached
    assert all(torch.equal(a, b) for a, b in zip(kv(fork.cache), kv(snap.cache)))  # the compacted cache as it was
    fork.add("user", "epsilon")
    snap.add("user", "epsilon")
    torch.testing.assert_close(fork.next_token_logits(), snap.next_token_logits(), rtol=1e-5, atol=1e-5)


def test_a_sliding_window_that_moved_on_cannot_be_cut(tokenizer):
    session = Session(tiny_chat_gemma3(), tokenizer, policy="off")
    session.add("user", "a message longer than the window")
    session.generate(4)
    with pytest.raises(ConfigError, match="slides over 8 tokens"):
        session.fork(messages=1)
    assert session.fork(messages=2).ids == session.ids  # nothing past the boundary: nothing to cut


@pytest.mark.parametrize("messages", [-1, 4, True, "1"])
def test_bad_message_counts_say_the_range(llama, tokenizer, messages):
    session = Session(llama, tokenizer, policy="off")
    session.add("user", "hi")
    session.generate(2)
    with pytest.raises(ConfigError, match=r"messages must be an int from 0 to 2"):
        session.fork(messages=messages)


@pytest.mark.parametrize("make, length, cut", [(tiny_llama, 20, 13), (tiny_gemma3, 6, 4), (tiny_gemma3, 20, 20),
                                               (tiny_llama, 20, 0)])
def test_crop_cache_equals_prefilling_the_prefix(ids, make, length, cut):
    model = make()
    full = prefill(model, ids[:, :length])
    before = kv(full)
    cropped = hf.crop_cache(full, cut, model)
    assert cropped.get_seq_length() == cut and all(torch.equal(a, b) for a, b in zip(kv(full), before))
    if cut:
        for a, b in zip(kv(cropped), kv(prefill(model, ids[:, :cut]))):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    nxt = ids[:, cut : cut + 3]
    with torch.no_grad():
        got = model(input_ids=nxt, past_key_values=cropped).logits
        want = model(input_ids=nxt, past_key_values=prefill(model, ids[:, :cut]) if cut else None).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_crop_cache_refuses_to_split_a_compacted_run(ids):
    model = tiny_llama()
    cache = hf.drop_span(prefill(model, ids[:, :30]), 8, 16)
    with pytest.raises(ValueError, match="inside a compacted run"):
        hf.crop_cache(cache, 12, model)
    kept = hf.crop_cache(cache, 20, model)
    assert kept.get_seq_length() == 20 and kept.physical_length() == 12
    assert hf.compacted_runs(kept) == [(0, 8, 8), (8, 16, 0), (16, 20, 4)]


@pytest.mark.parametrize("make, at", [(tiny_llama, 13), (tiny_gemma3, 20)])  # gemma's window holds only the end
def test_copies_and_crops_share_the_tensors_and_growing_them_leaves_the_original_alone(ids, make, at):
    model = make()
    full = prefill(model, ids[:, :20])
    before = kv(full)
    twin, cut = hf.copy_cache(full, model), hf.crop_cache(full, at, model)
    def raw(cache):
        return [t for layer in cache.layers if layer.is_initialized for t in (layer.keys, layer.values)]

    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(raw(twin), raw(full)))  # no copy of the KV
    with torch.no_grad():
        model(input_ids=ids[:, 20:23], past_key_values=twin)
        model(input_ids=ids[:, at:at + 3], past_key_values=cut)
    assert twin.get_seq_length() == 23 and cut.get_seq_length() == at + 3 and full.get_seq_length() == 20
    assert all(torch.equal(a, b) for a, b in zip(kv(full), before))
