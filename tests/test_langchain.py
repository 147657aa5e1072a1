"""`ChatAgentMem` on tiny models: sessions across calls, usage, tools, store, compaction."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

import agentmem.langchain as lc
from agentmem import loading
from agentmem.errors import ConfigError
from agentmem.langchain import ChatAgentMem, clear_sessions
from agentmem.policies import AnyPin, FixedRatio, PinSystem, Policy, TokenLimit
from agentmem.tool_choice import Forcing
from agentmem.toolcalls import format_tool_call

from conftest import tiny_chat_gemma3


@pytest.fixture(autouse=True)
def fresh_registry():
    clear_sessions()
    yield
    clear_sessions()


@pytest.fixture(params=["llama", "gemma3"])
def chat(request, tokenizer, llama):
    model = llama if request.param == "llama" else tiny_chat_gemma3()
    return ChatAgentMem.from_model(model, tokenizer, model=f"tiny-{request.param}", max_tokens=16)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def ping() -> str:
    """Check the service is up."""
    return "pong"


def merged(chunks):
    full = None
    for chunk in chunks:
        full = chunk if full is None else full + chunk
    return full


def usage(message):
    u = message.usage_metadata
    return u["input_tokens"], u["output_tokens"], u["input_token_details"]["cache_read"], \
        u["input_token_details"]["cache_creation"]


# ---------------------------------------------------------------------------- construction


def test_construction_loads_nothing_and_first_use_shares_one_model(monkeypatch, tokenizer, llama):
    loads = []

    def fake_load(name, **kwargs):
        loads.append(name)
        return llama, tokenizer

    monkeypatch.setattr(loading, "load_model", fake_load)
    monkeypatch.setattr(loading, "_SHARED", {})
    first = ChatAgentMem(model="smollm2-135m", policy="aggressive", max_tokens=4)
    second = ChatAgentMem(model="smollm2-135m", max_tokens=4)
    assert loads == []
    first.invoke("hi")
    second.invoke("hi")
    assert second.get_num_tokens("hello") == 5
    assert loads == ["smollm2-135m"]


@pytest.mark.parametrize("fields, words", [
    ({"temperature": -1}, "temperature must be >= 0"), ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"max_tokens": 0}, "max_tokens must be >= 1"), ({"policy": "nope"}, "unknown policy 'nope'"),
    ({"model": "no such model"}, "unknown model 'no such model'"), ({"dtype": "float99"}, "bad dtype 'float99'"),
    ({"timeout": 0}, "timeout must be > 0 seconds"),
    ({"max_tokens_typo": 3}, r"max_tokens_typo\s+Extra inputs are not permitted"),
])
def test_bad_fields_raise_at_construction(fields, words):
    with pytest.raises(ValueError, match=words):
        ChatAgentMem(**fields)


def test_hosted_options_are_accepted_and_ls_params(tokenizer, llama):
    chat = ChatAgentMem(api_key="unused", max_retries=2, timeout=60, model="smollm2-135m", stop=["x"],
                        max_new_tokens=7, temperature=0.5)
    params = chat._get_ls_params()
    assert params["ls_provider"] == "agentmem" and params["ls_model_name"] == "smollm2-135m"
    assert params["ls_max_tokens"] == 7 and params["ls_temperature"] == 0.5 and params["ls_stop"] == ["x"]
    assert chat._get_ls_params(model="other")["ls_model_name"] == "other"
    assert chat._llm_type == "agentmem" and chat._identifying_params["model"] == "smollm2-135m"


# ---------------------------------------------------------------------------- calls and the cache


def test_stream_concatenates_to_invoke(chat):
    reply = chat.invoke("Hello there")
    clear_sessions()  # else the stream regenerates: a fork that reads the prompt from the cache
    chunks = list(chat.stream("Hello there"))
    full = merged(chunks)
    assert full.content == reply.content and len(chunks) > 2
    assert chunks[-1].usage_metadata == reply.usage_metadata
    assert sum(1 for c in chunks if c.usage_metadata) == 1
    assert full.response_metadata["model_name"] == chat.model
    assert full.response_metadata["agentmem"]["compactions"] == []


def test_growing_history_prefills_only_new_messages(chat, tokenizer):
    first = chat.invoke([HumanMessage("First question")])
    n_in, n_out, read, created = usage(first)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "First question"}],
                                           add_generation_prompt=True, tokenize=False)
    assert (read, created) == (0, n_in) and n_in == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert n_out == 16

    history = [HumanMessage("First question"), first, HumanMessage("Second")]
    second = chat.invoke(history)
    n_in2, _, read2, created2 = usage(second)
    # The new tokens: the first reply's closing tag, the new user message and the reply opener
    # (measured with a one-token stand-in reply), plus the first reply's last sampled token,
    # which is fed together with them.
    stand_in = tokenizer.apply_chat_template(
        [{"role": "user", "content": "First question"}, {"role": "assistant", "content": "X"},
         {"role": "user", "content": "Second"}], add_generation_prompt=True, tokenize=False)
    new = len(tokenizer(stand_in, add_special_tokens=False)["input_ids"]) - n_in - 1
    assert (read2, created2) == (n_in + n_out - 1, new + 1) and n_in2 == read2 + created2
    assert second.response_metadata["agentmem"]["session_id"] == first.response_metadata["agentmem"]["session_id"]
    assert second.response_metadata["agentmem"]["branch"] is False


def test_batch_and_async(chat):
    solo = [chat.invoke(text).content for text in ("a b", "c d")]
    clear_sessions()
    assert [m.content for m in chat.batch(["a b", "c d"])] == solo

    import asyncio

    async def run():
        one = await chat.ainvoke("a b")
        chunks = [c async for c in chat.astream("a b")]
        return one, merged(chunks)

    one, streamed = asyncio.run(run())
    assert one.content == streamed.content == solo[0]


def test_unrelated_history_starts_a_branch_and_the_old_one_stays(chat):
    a = chat.invoke("Topic A", session_id="t")
    b = chat.invoke([SystemMessage("Other rules"), HumanMessage("Topic B")], session_id="t")
    meta = b.response_metadata["agentmem"]
    assert meta["branch"] is True and meta["session_id"] == "t/2" and usage(b)[2] == 0
    again = chat.invoke(["Topic A", a, "More on A"], session_id="t")
    assert again.response_metadata["agentmem"]["session_id"] == "t" and usage(again)[2] > 0
    assert again.response_metadata["agentmem"]["branch"] is False


def test_session_id_from_config_thread_id(chat):
    first = chat.invoke("Hi", config={"configurable": {"thread_id": "lg-1"}})
    assert first.response_metadata["agentmem"]["session_id"] == "lg-1"
    chunks = list(chat.stream(["Hi", first, "Again"], config={"configurable": {"session_id": "lg-1"}}))
    assert chunks[-1].response_metadata["agentmem"]["session_id"] == "lg-1" and usage(chunks[-1])[2] > 0


def test_stop_sequences(tokenizer, llama):
    chat = ChatAgentMem.from_model(llama, tokenizer, max_tokens=40)
    text = chat.invoke("Count").content
    stop = text[10:13]
    if not stop or stop in text[:10]:
        pytest.skip("random output too repetitive for this check")
    assert chat.invoke("Count", stop=[stop]).content == text[: text.index(stop)]
    with_field = ChatAgentMem.from_model(llama, tokenizer, max_tokens=40, stop=[stop])
    assert with_field.invoke("Count").content == text[: text.index(stop)]
    assert merged(with_field.stream("Count")).content == text[: text.index(stop)]


def test_abandoned_stream_leaves_a_usable_model(tokenizer, llama):
    chat = ChatAgentMem.from_model(llama, tokenizer, max_tokens=200)
    for chunk in chat.stream("Long answer please"):
        break
    assert chat.invoke("Next", max_tokens=4).usage_metadata["output_tokens"] == 4  # the lock was released


def test_timeout_cuts_the_reply(tokenizer, llama):
    chat = ChatAgentMem.from_model(llama, tokenizer, max_tokens=200, timeout=1e-6)
    reply = chat.invoke("Go")
    assert reply.response_metadata["agentmem"]["finish_reason"] == "timeout"
    assert reply.usage_metadata["output_tokens"] < 200


def test_errors_are_clear_and_leave_sessions_intact(chat):
    with pytest.raises(ConfigError, match="text only"):
        chat.invoke([HumanMessage(content=[{"type": "image", "url": "https://x/y.png"}])])
    with pytest.raises(ConfigError, match="unknown option"):
        chat.invoke("Hi", frequency_penalty=1.0)
    first = chat.invoke("Hi")
    with pytest.raises(ConfigError, match="temperature"):
        chat.invoke(["Hi", first, "x"], temperature=-2)
    assert usage(chat.invoke(["Hi", first, "x"]))[2] > 0


# ---------------------------------------------------------------------------- tools


def test_forced_call_without_parameters_and_tool_message_round_trip(chat):
    bound = chat.bind_tools([add, ping], tool_choice="ping")
    call = bound.invoke("Is it up?")
    assert [(c["name"], c["args"]) for c in call.tool_calls] == [("ping", {})]
    assert call.response_metadata["finish_reason"] == "tool_calls"
    streamed = merged(bound.stream("Is it up?"))
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [("ping", {})]

    result = ping.invoke(call.tool_calls[0])
    assert isinstance(result, ToolMessage)
    free = chat.bind_tools([add, ping])  # same tools, the model decides now
    answer = free.invoke(["Is it up?", call, result])
    # The forced call ran no decode step: its context is cached, the call itself is new.
    assert usage(answer)[2] == usage(call)[0]
    assert answer.response_metadata["agentmem"]["session_id"] == call.response_metadata["agentmem"]["session_id"]


def test_tool_calls_are_parsed_from_the_reply(chat, monkeypatch):
    whole = format_tool_call("add", {"a": 1, "b": 2})
    monkeypatch.setattr(lc, "forcing", lambda choice, tools, **_: Forcing("auto", tuple(tools), prefix=whole,
                                                                           constrained=True))
    bound = chat.bind_tools([add], tool_choice="auto")
    reply = bound.invoke("Add one and two")
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("add", {"a": 1, "b": 2})]
    assert OPEN_TAG not in reply.content
    streamed = merged(bound.stream("Add one and two"))
    assert streamed.tool_calls == [dict(c, id=s["id"]) for c, s in zip(reply.tool_calls, streamed.tool_calls)]
    assert streamed.content == reply.content
    # An AIMessage carrying that call is recognized as the engine's own reply.
    follow = bound.invoke(["Add one and two", reply, ToolMessage("3", tool_call_id=reply.tool_calls[0]["id"])])
    assert usage(follow)[2] >= usage(reply)[0]


OPEN_TAG = "<tool_call>"


def test_forced_calls_from_a_random_model_are_well_formed(chat):
    for _ in range(2):
        reply = chat.bind_tools([add], tool_choice="any").invoke("Add", max_tokens=64)
        assert not reply.invalid_tool_calls and len(reply.tool_calls) == 1
        call = reply.tool_calls[0]
        assert call["name"] == "add" and {"a", "b"} <= set(call["args"])  # required arguments are enforced
    two = chat.bind_tools([add, ping], tool_choice="required").invoke("Something", max_tokens=64)
    assert len(two.tool_calls) == 1 and two.tool_calls[0]["name"] in ("add", "ping")


def test_unreadable_calls_are_invalid_not_lost():
    from agentmem.langchain import _split_reply

    content, calls, invalid = _split_reply('Sure. <tool_call>{"name": "add", "arguments": {"a": }</tool_call>', True)
    assert content == "Sure." and calls == [] and len(invalid) == 1
    assert invalid[0]["name"] == "add" and "could not read" in invalid[0]["error"]


def test_tool_choice_none_keeps_tools_in_the_prompt_but_allows_no_call(chat):
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from agentmem.toolcalls import OPEN

    call = chat._prepare([HumanMessage("Add")], None, None, {"tools": [convert_to_openai_tool(add)],
                                                             "tool_choice": "none"})
    assert call.tools and not call.parse and not call.single_call and OPEN in call.stop
    reply = chat.bind_tools([add], tool_choice="none").invoke("Add")
    assert not reply.tool_calls and not reply.invalid_tool_calls and OPEN not in reply.content


def test_bad_tool_choice_fails_at_bind(chat):
    with pytest.raises(ConfigError, match="names no bound tool"):
        chat.bind_tools([add], tool_choice="subtract")


# ---------------------------------------------------------------------------- tokens, store, compaction


def test_token_counts_use_the_model_tokenizer(chat, tokenizer):
    messages = [SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello!"), HumanMessage("Bye")]
    dicts = [{"role": r, "content": c} for r, c in
             [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye")]]
    expected = tokenizer.apply_chat_template(dicts, tokenize=False)
    want = len(tokenizer(expected, add_special_tokens=False)["input_ids"])
    assert chat.get_num_tokens_from_messages(messages) == want
    with_tools = chat.get_num_tokens_from_messages(messages, tools=[add])
    assert with_tools > chat.get_num_tokens_from_messages(messages)
    assert chat.get_token_ids("héllo") == tokenizer("héllo", add_special_tokens=False)["input_ids"]


def test_store_resumes_across_instances(tmp_path, tokenizer, llama):
    path = str(tmp_path / "sessions.db")
    first_chat = ChatAgentMem.from_model(llama, tokenizer, store=path, session_id="persist", max_tokens=8)
    first = first_chat.invoke("Remember this")
    clear_sessions()  # as if the process restarted
    later_chat = ChatAgentMem.from_model(llama, tokenizer, store=path, max_tokens=8)
    later = later_chat.invoke(["Remember this", first, "What was it?"], session_id="persist")
    meta = later.response_metadata["agentmem"]
    assert meta["resumed"] is True and meta["session_id"] == "persist"
    assert usage(later)[2] > 0
    clear_sessions()
    other = later_chat.invoke(["Something else"], session_id="persist")
    assert other.response_metadata["agentmem"]["branch"] is True
    assert other.response_metadata["agentmem"]["session_id"] == "persist/2"


def test_a_resumed_conversation_keeps_its_stored_policy(tmp_path, tokenizer, llama):
    from agentmem.store import Store

    path = str(tmp_path / "sessions.db")
    small = Policy(trigger=TokenLimit(300), ratio=FixedRatio(4), pin=AnyPin((PinSystem(),)), protect_recent=16)
    first = ChatAgentMem.from_model(llama, tokenizer, store=path, session_id="p", policy=small, max_tokens=8)
    reply = first.invoke("Remember this")
    clear_sessions()  # as if the process restarted
    later = ChatAgentMem.from_model(llama, tokenizer, store=path, max_tokens=8)  # no policy: the stored one
    again = later.invoke(["Remember this", reply, "What was it?"], session_id="p")
    assert again.response_metadata["agentmem"]["resumed"] is True
    assert Policy.from_dict(Store(path).get_session("p")["state"]["policy"]) == small


def test_a_conversation_another_writer_changed_is_not_overwritten(tmp_path, tokenizer, llama):
    from agentmem.engine import Session
    from agentmem.store import Store

    path = str(tmp_path / "sessions.db")
    chat = ChatAgentMem.from_model(llama, tokenizer, store=path, session_id="t", max_tokens=6)
    first = chat.invoke("hello")
    other = Session.resume(Store(path), "t", llama, tokenizer)  # another process goes on with it
    other.add("user", "from elsewhere")
    other.generate(4)
    stored = Store(path).messages("t")
    reply = chat.invoke(["hello", first, "next"])  # its in-memory copy is stale now: no StaleSessionError
    assert reply.response_metadata["agentmem"]["session_id"] != "t"  # a branch, since the histories differ
    assert Store(path).messages("t") == stored


def test_compaction_events_reach_response_metadata(tokenizer, llama):
    policy = Policy(trigger=TokenLimit(160), ratio=FixedRatio(4), pin=AnyPin((PinSystem(),)), method="am-fast",
                    protect_recent=24)
    chat = ChatAgentMem.from_model(llama, tokenizer, policy=policy, max_tokens=220)
    reply = chat.invoke([SystemMessage("sys"), HumanMessage("Write a long answer.")])
    events = reply.response_metadata["agentmem"]["compactions"]
    assert events and {"status", "tokens_before", "tokens_after"} <= set(events[0])
    assert reply.response_metadata["agentmem"]["kv"]["physical_tokens"] <= 160
