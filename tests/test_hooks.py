"""Specs of a session's callbacks: removable handles (`agentmem.hooks`) and prefill progress."""

from __future__ import annotations

import pytest

from agentmem import engine
from agentmem.engine import Session
from agentmem.errors import ConfigError
from agentmem.hooks import RemovableHandle, register
from agentmem.policies import AnyPin, FixedRatio, PinSystem, Policy, TokenLimit

from conftest import tiny_chat_llama


def limited(limit: int = 120) -> Policy:
    return Policy(trigger=TokenLimit(limit), ratio=FixedRatio(4), pin=AnyPin((PinSystem(),)), method="am-fast",
                  protect_recent=24)


# --------------------------------------------------------------------------- handles


def test_a_handle_removes_its_own_registration_once():
    def hook():
        pass

    hooks: list = []
    first, second = register(hooks, hook, "test"), register(hooks, hook, "test")
    assert hooks == [hook, hook] and isinstance(first, RemovableHandle)
    first.remove()
    assert hooks == [hook]
    first.remove()  # twice is harmless and does not take the other registration
    assert hooks == [hook]
    second.remove()
    assert hooks == []


def test_a_handle_is_safe_after_the_hooks_were_cleared_and_works_as_a_context():
    hooks: list = []
    handle = register(hooks, print, "test")
    hooks.clear()
    handle.remove()
    with register(hooks, len, "test"):
        assert hooks == [len]
    assert hooks == []


def test_a_non_callable_is_refused_with_the_registration_named():
    with pytest.raises(ConfigError, match="on_after_compaction needs a function, got str"):
        register([], "print", "on_after_compaction")


def test_compaction_hooks_stop_after_remove(tokenizer):
    session = Session(tiny_chat_llama(), tokenizer, policy=limited(), system="sys")
    plans, events = [], []
    before = session.on_before_compaction(plans.append)
    after = session.on_after_compaction(events.append)
    session.add("user", "Go on and on.")
    session.generate(150)
    assert plans and events
    seen = (len(plans), len(events))
    before.remove()
    after.remove()
    after.remove()
    assert session.compactor.before == [] and session.compactor.after == []
    session.compact(ratio=2)
    assert (len(plans), len(events)) == seen


def test_a_fork_starts_without_the_callbacks(tokenizer):
    session = Session(tiny_chat_llama(), tokenizer, policy="off")
    session.on_after_compaction(print)
    session.on_prefill_progress(print)
    twin = session.fork()
    assert twin.compactor.after == [] and twin._progress == []
    assert session.compactor.after == [print] and session._progress == [print]


# --------------------------------------------------------------------------- prefill progress


def test_prefill_progress_counts_chunks_of_the_pending_tokens(tokenizer, monkeypatch):
    monkeypatch.setattr(engine, "PREFILL_CHUNK", 16)
    session = Session(tiny_chat_llama(), tokenizer, policy="off")
    calls = []
    handle = session.on_prefill_progress(lambda done, total: calls.append((done, total)))
    session.add("user", "x" * 40)
    total = len(session.ids)
    session.prefill()
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted({0, *range(16, total, 16), total})
    assert {t for _, t in calls} == {total}

    calls.clear()
    session.generate(5)  # one prefill of the reply's opener; decode steps are not reported
    opener = session.last_reply.prompt_tokens
    assert calls == [(0, opener), (opener, opener)]

    calls.clear()
    handle.remove()
    session.add("user", "more")
    session.prefill()
    assert calls == []


def test_compaction_passes_are_not_reported_as_prefill(tokenizer):
    session = Session(tiny_chat_llama(), tokenizer, policy=limited(), system="sys")
    calls = []
    session.on_prefill_progress(lambda done, total: calls.append((done, total)))
    session.add("user", "Go on and on.")
    session.generate(150)
    assert session.events  # it compacted while decoding
    assert len(calls) == 2 and calls[-1][0] == calls[-1][1]
