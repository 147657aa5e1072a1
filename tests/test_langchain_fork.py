"""`ChatAgentMem` regenerates and edits of the last turn fork at the common prefix: only the tail
is prefilled, the reply and cache are a from-scratch session's, the original is never touched."""

from __future__ import annotations

import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

import agentmem.langchain as lc
from agentmem import hf
from agentmem.langchain import ChatAgentMem, clear_sessions
from agentmem.policies import AnyPin, FixedRatio, PinSystem, Policy, TokenLimit
from agentmem.store import Store

from conftest import tiny_chat_gemma3


@pytest.fixture(autouse=True)
def fresh_registry():
    clear_sessions()
    yield
    clear_sessions()


def history(turns: int = 10) -> list:
    """A system prompt and `turns` question/answer pairs written out (not generated), then a question."""
    messages: list = [SystemMessage("You are terse.")]
    for i in range(turns):
        messages += [HumanMessage(f"Question {i}: what is {i} + {i}?"), AIMessage(f"It is {2 * i}.")]
    return messages + [HumanMessage("And the last one?")]


def counts(reply) -> tuple[int, int, int]:
    """(input tokens, read from the cache, prefilled)."""
    u = reply.usage_metadata
    return u["input_tokens"], u["input_token_details"]["cache_read"], u["input_token_details"]["cache_creation"]


def rendered(tokenizer, messages, *, prompt: bool) -> int:
    """Tokens of `messages` in the chat template (with the reply opener if `prompt`)."""
    dicts = [{"role": {"system": "system", "human": "user", "ai": "assistant"}[m.type], "content": m.content}
             for m in messages]
    text = tokenizer.apply_chat_template(dicts, add_generation_prompt=prompt, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def session(session_id: str):
    return lc._REGISTRY.entries[session_id].session


def kv(cache) -> list[torch.Tensor]:
    return [t.clone() for layer in cache.layers if layer.is_initialized for t in (layer.keys, layer.values)]


@pytest.mark.parametrize("change", ["regenerate", "edit"])
def test_a_changed_last_turn_prefills_only_the_tail_and_matches_a_fresh_session(llama, tokenizer, change):
    chat = ChatAgentMem.from_model(llama, tokenizer, max_tokens=8)
    messages = history()
    chat.invoke(messages, session_id="t")
    original = session("t")
    ids, stored, values = list(original.ids), [dict(m) for m in original.messages], kv(original.cache)
    changed = messages if change == "regenerate" else messages[:-1] + [HumanMessage("And the very last?")]
    kept = changed if change == "regenerate" else changed[:-1]  # the common prefix

    reply = chat.invoke(changed, session_id="t")
    meta = reply.response_metadata["agentmem"]
    assert meta["forked_from"] == "t" and meta["session_id"] == "t/2" and meta["branch"] is True
    total, read, prefilled = counts(reply)
    assert total == rendered(tokenizer, changed, prompt=True) and read == rendered(tokenizer, kept, prompt=False)
    assert prefilled == total - read  # regenerate: the opener only; edit: the new message and the opener
    fork = session("t/2")
    assert original.ids == ids and original.messages == stored  # the session forked from is untouched
    assert all(torch.equal(a, b) for a, b in zip(kv(original.cache), values))

    clear_sessions()
    scratch = chat.invoke(changed, session_id="fresh")
    assert counts(scratch) == (total, 0, total) and scratch.content == reply.content
    fresh = session("fresh")
    assert fresh.ids == fork.ids
    for a, b in zip(kv(fork.cache), kv(fresh.cache)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_a_stored_conversation_is_forked_and_its_rows_stay(tmp_path, llama, tokenizer):
    path = str(tmp_path / "sessions.db")
    chat = ChatAgentMem.from_model(llama, tokenizer, store=path, max_tokens=6)
    messages = history(4)
    chat.invoke(messages, session_id="t")
    store = Store(path)
    rows, version = store.messages("t"), store.get_session("t")["version"]
    again = chat.invoke(messages, session_id="t")  # regenerate, live
    assert again.response_metadata["agentmem"]["forked_from"] == "t"
    clear_sessions()  # as if the process restarted: the edit resumes a stored session and forks it
    edited = messages[:-1] + [HumanMessage("Edited?")]
    reply = chat.invoke(edited, session_id="t")
    meta = reply.response_metadata["agentmem"]
    assert meta["forked_from"] in ("t", "t/2") and meta["session_id"] == "t/3" and meta["resumed"] is False
    assert counts(reply)[1] == rendered(tokenizer, edited[:-1], prompt=False)
    assert store.messages("t") == rows and store.get_session("t")["version"] == version
    contents = [m["content"] for m in store.messages("t/3")]
    assert contents == [m.content for m in edited] + [reply.content]
    clear_sessions()
    follow = chat.invoke(edited + [reply, HumanMessage("More?")], session_id="t")  # the stored fork resumes
    assert follow.response_metadata["agentmem"]["session_id"] == "t/3"
    assert follow.response_metadata["agentmem"]["resumed"] is True
    store.close()


def test_a_prefix_inside_a_compacted_span_prefills_from_scratch(llama, tokenizer, caplog):
    policy = Policy(trigger=TokenLimit(200), ratio=FixedRatio(4), pin=AnyPin((PinSystem(),)), method="am-fast",
                    protect_recent=16)
    chat = ChatAgentMem.from_model(llama, tokenizer, policy=policy, max_tokens=4)
    messages = history(6)
    chat.invoke(messages, session_id="t")
    base = session("t")
    runs = [(lo, hi) for lo, hi, slots in hf.compacted_runs(base.cache) if slots != hi - lo]
    starts, total = [], 0
    for m in base.messages:
        starts.append(total)
        total += len(m["token_ids"])
    inside = [k for k, t in enumerate(starts) if any(lo < t < hi for lo, hi in runs)]
    assert inside, "the first call should have compacted several messages into one span"
    k = inside[-1]
    edited = messages[:k] + [type(messages[k])("changed")] + messages[k + 1:]
    with caplog.at_level("INFO", logger="agentmem.claim"):
        reply = chat.invoke(edited, session_id="t")
    meta = reply.response_metadata["agentmem"]
    assert meta["forked_from"] is None and meta["branch"] is True and counts(reply)[1] == 0
    assert f"cannot fork session 't' at its {k} shared messages" in caplog.text and "compacted run" in caplog.text
    clear_sessions()
    assert chat.invoke(edited, session_id="fresh").content == reply.content  # as a new session answers it


def test_a_sliding_window_that_moved_on_regenerates_from_scratch(tokenizer):
    chat = ChatAgentMem.from_model(tiny_chat_gemma3(), tokenizer, max_tokens=6)
    messages = history(3)
    first = chat.invoke(messages, session_id="t")
    again = chat.invoke(messages, session_id="t")
    assert again.response_metadata["agentmem"]["forked_from"] is None and counts(again)[1] == 0
    assert again.content == first.content


def test_a_batch_sharing_a_prefix_prefills_it_once(llama, tokenizer):
    chat = ChatAgentMem.from_model(llama, tokenizer, max_tokens=6)
    shared = history(5)[:-1]
    batch = [shared + [HumanMessage(q)] for q in ("One?", "Two?", "Three?")]
    replies = chat.batch(batch)
    prefix = rendered(tokenizer, shared, prompt=False)
    assert sorted(counts(r)[1] for r in replies) == [0, prefix, prefix]
    solo = []
    for messages in batch:
        clear_sessions()
        solo.append(chat.invoke(messages).content)
    assert [r.content for r in replies] == solo
