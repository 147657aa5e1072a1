"""The agent SDK: tools, the run loop (ScriptedModel and tiny models), events, sessions."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from agentmem.agents import (
    Agent,
    FunctionTool,
    LocalModel,
    MaxTurnsExceeded,
    MemorySession,
    ModelSettings,
    RunHooks,
    Runner,
    ScriptedModel,
    ScriptError,
    SQLiteSession,
    function_tool,
    tool,
)
from agentmem.errors import ConfigError, ModelMismatchError
from agentmem.policies import AnyPin, FixedRatio, PinSystem, Policy, TokenLimit
from agentmem.toolcalls import parse_tool_calls

from conftest import tiny_chat_gemma3, tiny_chat_llama, tiny_tokenizer

CHILD = Path(__file__).parent / "agents_child.py"


@tool
def read_file(path: str, start: int = 1, tags: list[str] | None = None) -> str:
    """Read a text file.

    Args:
        path: File to read,
            relative to the project.
        start (int): First line to return.
    """
    if path == "missing.py":
        raise FileNotFoundError(path)
    return f"contents of {path} from line {start}"


@tool(name="add_numbers", description="Add two numbers.")
async def add(a: float, b: float = 0.0) -> dict:
    await asyncio.sleep(0)
    return {"sum": a + b}


def limited(limit: int = 120) -> Policy:
    return Policy(trigger=TokenLimit(limit), ratio=FixedRatio(4), pin=AnyPin((PinSystem(),)), method="am-fast",
                  protect_recent=16)


@pytest.fixture(scope="module")
def tiny() -> LocalModel:
    return LocalModel.from_pretrained(tiny_chat_llama(), tiny_tokenizer(), name="tiny-llama")


# ---------------------------------------------------------------------- tools
def test_tool_schema_from_hints_and_docstring():
    schema = read_file.schema()
    assert schema["type"] == "function"
    function = schema["function"]
    assert function["name"] == "read_file" and function["description"] == "Read a text file."
    params = function["parameters"]
    assert params["required"] == ["path"]
    assert params["properties"]["path"] == {"type": "string", "description": "File to read, relative to the project."}
    assert params["properties"]["start"] == {"type": "integer", "default": 1, "description": "First line to return."}
    assert params["properties"]["tags"]["default"] is None and "description" not in params["properties"]["tags"]
    assert add.name == "add_numbers" and add.description == "Add two numbers." and add.is_async
    assert add.parameters["properties"]["a"]["type"] == "number" and add.parameters["required"] == ["a"]


def test_tool_failures_are_observations():
    assert read_file.invoke({"path": "a.py"}) == "contents of a.py from line 1"
    assert read_file.invoke({"path": "a.py", "start": "3"}) == "contents of a.py from line 3"  # pydantic coerces
    assert read_file.invoke({"start": 2}).startswith("error: invalid arguments for read_file: path")
    assert "Extra inputs" in read_file.invoke({"path": "a", "bogus": 1})
    assert read_file.invoke({"path": "missing.py"}) == "error: FileNotFoundError: missing.py"
    out = read_file.run({"path": "missing.py"})
    assert out.is_error and not read_file.run({"path": "x"}).is_error
    assert add.invoke({"a": 1, "b": 2}) == '{"sum": 3.0}'  # non-strings are JSON-dumped
    assert asyncio.run(add.ainvoke({"a": 2})) == '{"sum": 2.0}'


def test_tool_forms_and_bad_tools():
    def plain(x: int) -> int:
        return x * 2

    agent = Agent("a", tools=[plain], model=ScriptedModel([]))
    assert isinstance(agent.tools[0], FunctionTool) and agent.tools[0].invoke({"x": 4}) == "8"
    assert tool()(plain).name == "plain" and tool(plain).invoke({"x": 1}) == "2"
    with pytest.raises(ConfigError, match="tool name '<lambda>' must be 1-64 letters, digits, '_' or '-'"):
        tool(lambda *args: None)
    with pytest.raises(ConfigError, match=r"tool 'star': \*args / \*\*kwargs cannot be described to a model"):
        tool(name="star")(lambda *args: None)
    with pytest.raises(ConfigError, match="tool names must be unique"):
        Agent("a", tools=[plain, plain], model=ScriptedModel([]))
    with pytest.raises(ConfigError, match="tool_choice must be one of .* got 'nope'"):
        Agent("a", tools=[plain], model=ScriptedModel([]), settings=ModelSettings(tool_choice="nope"))
    with pytest.raises(ConfigError, match=r"stop_at_tools names unknown tools \['other'\]"):
        Agent("a", tools=[plain], model=ScriptedModel([]), stop_at_tools=["other"])


# ---------------------------------------------------------------------- the loop, scripted
def test_loop_calls_tool_then_answers():
    model = ScriptedModel([ScriptedModel.call("read_file", path="a.py"), "It holds the contents."])
    agent = Agent("reader", instructions="Read files.", tools=[read_file], model=model)
    result = Runner.run_sync(agent, "What is in a.py?")
    model.assert_done()
    assert result.final_output == "It holds the contents." and result.turns == 2
    assert [i["role"] for i in result.new_items] == ["user", "assistant", "tool", "assistant"]
    assert result.new_items[1]["content"].endswith("</tool_call>")
    assert result.new_items[2]["content"] == "contents of a.py from line 1"
    second = model.requests[1]
    assert second.messages[0] == {"role": "system", "content": "Read files."}
    assert second.messages[-1] == {"role": "tool", "content": "contents of a.py from line 1"}
    assert "</tool_call>" in second.stop and second.tools == [read_file.schema()]
    assert result.usage.requests == 2 and result.usage.cached_tokens > 0


def test_openai_agents_spellings_mean_the_same():
    @function_tool(name_override="read", description_override="Read a file.")
    def read(path: str) -> str:
        return f"contents of {path}"

    assert read.name == "read" and read.description == "Read a file." and read.params_json_schema == read.parameters
    model = ScriptedModel([ScriptedModel.call("read", path="a.py"), "done"])
    agent = Agent(name="reader", tools=[read], model=model,
                  model_settings=ModelSettings(max_tokens=40, tool_choice="required"))
    assert agent.settings is agent.model_settings and agent.settings.max_new_tokens == 40
    result = Runner.run_sync(agent, "Read a.py")
    assert [r.max_new_tokens for r in model.requests] == [40, 40] and result.final_output == "done"
    assert result.usage.input_tokens == result.usage.prompt_tokens + result.usage.cached_tokens
    assert result.usage.output_tokens == result.usage.completion_tokens > 0
    assert agent.settings.with_(max_new_tokens=12).max_new_tokens == 12
    assert agent.settings.with_(max_tokens=14).max_new_tokens == 14
    assert agent.clone(settings=ModelSettings(max_tokens=9)).model_settings.max_new_tokens == 9
    assert agent.clone(model_settings=ModelSettings(max_tokens=7)).settings.max_new_tokens == 7
    with pytest.raises(ConfigError, match="disagree"):
        ModelSettings(max_tokens=10, max_new_tokens=20)
    with pytest.raises(ConfigError, match="not both"):
        Agent("a", model=model, settings=ModelSettings(max_tokens=8), model_settings=ModelSettings(max_tokens=9))


def test_model_mistakes_become_observations():
    model = ScriptedModel([ScriptedModel.call("delete_everything"), '<tool_call>{"name": oops}</tool_call>',
                           ScriptedModel.call("read_file", path="missing.py"), ScriptedModel.call("add_numbers", a=1),
                           "done"])
    agent = Agent("a", tools=[read_file, add], model=model)
    result = Runner.run_sync(agent, "go")
    tools = [i["content"] for i in result.new_items if i["role"] == "tool"]
    assert tools[0].startswith("error: there is no tool 'delete_everything'")
    assert tools[1].startswith("error: could not read tool call")
    assert tools[2] == "error: FileNotFoundError: missing.py"
    assert tools[3] == '{"sum": 1.0}'  # an async tool
    assert result.final_output == "done"


def test_stop_at_tools_and_max_turns():
    model = ScriptedModel([ScriptedModel.call("read_file", path="x.py"), "never used"])
    agent = Agent("a", tools=[read_file], model=model, stop_at_tools=["read_file"])
    result = Runner.run_sync(agent, "go")
    assert result.final_output == "contents of x.py from line 1" and result.turns == 1
    with pytest.raises(ScriptError):
        model.assert_done()

    looping = ScriptedModel([ScriptedModel.call("read_file", path="x.py")] * 3)
    agent = Agent("a", tools=[read_file], model=looping, repeat_guard=None)  # the guard would end this loop
    with pytest.raises(MaxTurnsExceeded) as info:
        Runner.run_sync(agent, "go", max_turns=3)
    partial = info.value.result
    assert partial.turns == 3 and partial.final_output is None and len(partial.new_items) == 7
    looping.assert_done()


def test_scripted_model_is_strict():
    agent = Agent("a", tools=[read_file], model=ScriptedModel([ScriptedModel.call("read_file", path="a")]))
    with pytest.raises(ScriptError, match="asked for reply 2"):
        Runner.run_sync(agent, "go")
    forced = Agent("a", tools=[read_file], model=ScriptedModel(["plain text"]),
                   settings=ModelSettings(tool_choice="required"))
    with pytest.raises(ScriptError, match="must start with"):
        Runner.run_sync(forced, "go")
    assert forced.model.requests[0].prefix == '<tool_call>{"name": "'
    named = Agent("a", tools=[read_file], model=ScriptedModel([ScriptedModel.call("read_file", path="b"), "ok"]),
                  settings=ModelSettings(tool_choice="read_file"))
    result = Runner.run_sync(named, "go")
    assert named.model.requests[0].prefix == '<tool_call>{"name": "read_file", "arguments": '
    assert named.model.requests[1].prefix is None  # reset to "auto" after the call
    assert result.final_output == "ok"
    with pytest.raises(ConfigError, match="script entries are strings, ToolCall"):
        ScriptedModel([42])


def test_scripted_compactions_reach_hooks_and_can_be_vetoed():
    seen = []

    class Hooks(RunHooks):
        def on_compaction(self, agent, plan):
            seen.append(plan.reason)
            return len(seen) != 2  # veto the second one

    model = ScriptedModel([ScriptedModel.compaction(reason="first"), "one two three",
                           ScriptedModel.compaction(reason="second", after_chunks=1), ScriptedModel.call("read_file",
                                                                                                          path="q"),
                           "end"])
    agent = Agent("a", tools=[read_file], model=model)
    events = list(Runner.run_streamed(agent, "hi", hooks=Hooks()))
    types = [e.type for e in events]
    assert types[:2] == ["compaction_started", "compaction_finished"] and types[2] == "token"
    assert seen == ["first"] and model.remaining == 3
    result = Runner.run_streamed(agent, "again", hooks=Hooks())
    events = list(result)
    started = [e for e in events if e.type == "compaction_started"]
    assert started[0].vetoed and not any(e.type == "compaction_finished" for e in events)
    assert [e.type for e in events][:2] == ["token", "compaction_started"]  # after one piece of text
    assert [c.status for c in result.compactions] == ["vetoed"]
    model.assert_done()


# ---------------------------------------------------------------------- tiny real models
def test_streamed_events_with_online_compaction_and_veto(tiny):
    agent = Agent("long", instructions="sys", model=tiny, policy=limited(),
                  settings=ModelSettings(max_new_tokens=160, tool_choice="none"))
    result = Runner.run_streamed(agent, "Write a long answer.")
    events = list(result)
    types = [e.type for e in events]
    assert types[-2:] == ["turn_done", "final_output"] and result.is_complete
    assert types.count("compaction_started") >= 1 and types.count("compaction_finished") >= 1
    first = types.index("compaction_started")
    assert types[first + 1] == "compaction_finished" and "token" in types[:first] and "token" in types[first:]
    finished = [e.event for e in events if e.type == "compaction_finished"]
    assert finished == result.compactions and all(e.status == "ok" for e in finished)
    started = next(e for e in events if e.type == "compaction_started")
    assert started.plan.reason and started.plan.spans and started.plan.stats.physical_tokens >= 120
    assert "".join(e.text for e in events if e.type == "token") == result.replies[0].text

    plans = []
    vetoing = agent.clone(on_compaction=lambda plan: plans.append(plan) or False)
    result = Runner.run_streamed(vetoing, "Write a long answer.")
    events = list(result)
    assert plans and all(e.vetoed for e in events if e.type == "compaction_started")
    assert not any(e.type == "compaction_finished" for e in events)
    assert {c.status for c in result.compactions} == {"vetoed"}


@pytest.mark.parametrize("make", [tiny_chat_llama, tiny_chat_gemma3], ids=["llama", "gemma3"])
@pytest.mark.parametrize("choice", ["required", "read_file"])
def test_forced_tool_choice_gives_parsable_calls_from_random_models(make, choice):
    model = LocalModel.from_pretrained(make(seed=3), tiny_tokenizer())
    agent = Agent("a", tools=[read_file, add], model=model, policy="off",
                  settings=ModelSettings(max_new_tokens=64, tool_choice=choice))
    result = Runner.run_sync(agent, "call something", max_turns=4)
    call_text = result.new_items[1]["content"]
    parsed = parse_tool_calls(call_text)
    assert parsed.errors == [] and len(parsed.calls) == 1, call_text
    call = parsed.calls[0]
    assert call.name in ("read_file", "add_numbers") and (choice == "required" or call.name == choice)
    allowed = read_file.parameters["properties"] if call.name == "read_file" else add.parameters["properties"]
    assert set(call.arguments) <= set(allowed)
    schema = (read_file if call.name == "read_file" else add).parameters
    assert set(schema["required"]) <= set(call.arguments), call_text  # required arguments are enforced
    if call.name == "read_file":
        assert isinstance(call.arguments["path"], str), call_text  # string-typed arguments are strings
        assert isinstance(call.arguments.get("start", 1), int), call_text  # and integers integers
    assert result.replies[0].finish_reason == "stopped"  # the runner ends the reply once the call is closed
    assert result.replies[0].text.endswith("</tool_call>")


@tool
def open_file(path: Literal["a.py", "b/c.py", "a.pyi"], mode: Literal["r"] = "r", lines: int = 10) -> str:
    """Open one of the project's files.

    Args:
        path: Which file.
        mode: How.
        lines: How many lines.
    """
    return f"{path} {mode} {lines}"


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("budget", [96, 48])
def test_enum_arguments_are_enforced_even_when_the_budget_runs_out(seed, budget):
    model = LocalModel.from_pretrained(tiny_chat_llama(seed=seed), tiny_tokenizer())
    conversation = model.open(system=None, tools=[open_file.schema()], policy="off")
    conversation.add("user", "open something")
    from agentmem.constrain import CallConstraint, string_enums

    assert string_enums(open_file.parameters) == {"path": ["a.py", "b/c.py", "a.pyi"], "mode": ["r"]}
    prefix = '<tool_call>{"name": "open_file", "arguments": {"path": ' if budget > 48 else \
        '<tool_call>{"name": "open_file", "arguments": {'
    processor = CallConstraint(conversation.tokenizer, ["open_file"], max_new_tokens=budget, prefix=prefix,
                               keys={"open_file": ["path", "mode", "lines"]},
                               enums={"open_file": string_enums(open_file.parameters)},
                               required={"open_file": ["path", "lines"]}, strings={"open_file": ["note"]},
                               integers={"open_file": ["lines"]})
    for _ in conversation.stream(budget, prefix=prefix, stop="</tool_call>", temperature=1.0,
                                 logits_processor=processor):
        pass
    parsed = parse_tool_calls(conversation.last_reply.text)
    assert parsed.errors == [] and len(parsed.calls) == 1, conversation.last_reply.text
    arguments = parsed.calls[0].arguments
    assert arguments["path"] in ("a.py", "b/c.py", "a.pyi") and arguments.get("mode", "r") == "r"
    assert isinstance(arguments["lines"], int)  # required (here by the test) and an integer


class OnlyAdd(RunHooks):
    def allowed_tools(self, agent, turn):
        return ["add_numbers"] if turn == 1 else None


def test_allowed_tools_hook_narrows_each_turn():
    model = ScriptedModel([ScriptedModel.call("read_file", path="a.py"), ScriptedModel.call("read_file", path="a.py"),
                           "done"])
    agent = Agent("a", tools=[read_file, add], model=model)
    result = Runner.run_sync(agent, "go", hooks=OnlyAdd())
    model.assert_done()
    assert result.new_items[2]["content"].startswith("error: read_file cannot be used now")
    assert result.new_items[4]["content"] == "contents of a.py from line 1"


def one_forced_reply(seed, tools, hooks, *, max_new_tokens=40):
    """The calls of one sampled, tool-forced reply of a tiny model under `hooks`, and the agent."""
    model = LocalModel.from_pretrained(tiny_chat_llama(seed=seed), tiny_tokenizer())
    agent = Agent("a", tools=tools, model=model, policy="off",
                  settings=ModelSettings(max_new_tokens=max_new_tokens, tool_choice="required", temperature=1.0))
    events = []
    try:
        for event in Runner.run_streamed(agent, "go", hooks=hooks, max_turns=1):
            events.append(event)
    except MaxTurnsExceeded:
        pass
    return [e.call for e in events if e.type == "tool_call"], agent


@pytest.mark.parametrize("seed", range(3))
def test_allowed_tools_constrain_decoding(seed):
    calls, _ = one_forced_reply(seed, [read_file, add], OnlyAdd())
    assert [c.name for c in calls] == ["add_numbers"]


class OnlyTheseFiles(RunHooks):
    """Narrows read_file's path to two names for every reply."""

    def tool_parameters(self, agent, turn, tool):
        if tool.name != "read_file":
            return None
        return {"type": "object", "properties": {"path": {"enum": ["x.py", "y.py"]}}, "required": ["path"]}


@pytest.mark.parametrize("seed", range(3))
def test_tool_parameters_hook_narrows_what_a_call_may_say(seed):
    calls, agent = one_forced_reply(seed, [read_file], OnlyTheseFiles(), max_new_tokens=80)
    assert len(calls) == 1 and calls[0].arguments in ({"path": "x.py"}, {"path": "y.py"})  # no start, no tags
    assert agent.tool("read_file").parameters["properties"]["path"] == {"type": "string",
                                                                      "description": read_file.parameters[
                                                                          "properties"]["path"]["description"]}


def test_run_sync_run_and_streamed_agree(tiny):
    agent = Agent("a", instructions="Be brief.", tools=[read_file], model=tiny, policy="off",
                  settings=ModelSettings(max_new_tokens=24, tool_choice="read_file"))
    sync = Runner.run_sync(agent, "read a file")
    async_result = asyncio.run(Runner.run(agent, "read a file"))

    async def consume():
        streamed = Runner.run_streamed(agent, "read a file")
        events = [e async for e in streamed.stream_events()]
        return streamed, events

    streamed, events = asyncio.run(consume())
    iterated = Runner.run_streamed(agent, "read a file")
    events_sync = list(iterated)
    for other in (async_result, streamed, iterated):
        assert other.new_items == sync.new_items and other.final_output == sync.final_output
        assert other.usage == sync.usage
    assert [e.type for e in events] == [e.type for e in events_sync]
    with pytest.raises(ConfigError, match="events can be consumed only once"):
        list(iterated)


def test_memory_session_replays_history(tiny):
    agent = Agent("a", instructions="Be brief.", model=tiny, policy="off", settings=ModelSettings(max_new_tokens=8))
    session = MemorySession()
    first = Runner.run_sync(agent, "first", session=session)
    assert session.get_items() == first.new_items
    second = Runner.run_sync(agent, "second", session=session)
    assert second.replies[0].cached_tokens == 0  # replayed: the history is prefilled again
    assert [i["content"] for i in session.get_items() if i["role"] == "user"] == ["first", "second"]
    # the same conversation passed as input gives the same reply
    chained = Runner.run_sync(agent, first.to_input_list() + [{"role": "user", "content": "second"}])
    assert chained.final_output == second.final_output
    assert session.pop_item()["role"] == "assistant" and len(session.get_items()) == 3
    session.clear_session()
    assert session.get_items() == []


def test_sqlite_session_resumes_the_cache(tiny, tmp_path):
    db = tmp_path / "agents.db"
    agent = Agent("a", instructions="Be brief.", tools=[read_file], model=tiny, policy="off",
                  settings=ModelSettings(max_new_tokens=16, tool_choice="read_file"))
    session = SQLiteSession("chat-1", db)
    first = Runner.run_sync(agent, "read a file", session=session)
    stored = session.get_items()
    assert stored == first.new_items and [i["role"] for i in stored][:3] == ["user", "assistant", "tool"]

    again = SQLiteSession("chat-1", db)  # a new object: resumes from the store
    assert again.get_items() == stored
    second = Runner.run_sync(agent.clone(settings=agent.settings.with_(tool_choice="auto")), "and now?",
                             session=again)
    reply = second.replies[0]
    assert reply.cached_tokens > 0 and reply.prompt_tokens < reply.cached_tokens
    assert again.get_items() == stored + second.new_items

    again.add_items([{"role": "user", "content": "pending note"}])
    assert again.get_items()[-1]["content"] == "pending note"
    assert again.pop_item()["content"] == "pending note"
    last = again.pop_item()
    assert last == second.new_items[-1] and again.get_items() == stored + second.new_items[:-1]
    third = Runner.run_sync(agent.clone(settings=agent.settings.with_(tool_choice="none")), "x", session=again)
    assert third.replies[0].cached_tokens == 0  # rebuilt after the pop: one prefill
    assert SQLiteSession("chat-1", db).get_items() == stored + second.new_items[:-1] + third.new_items

    with pytest.raises(ModelMismatchError):
        other = LocalModel.from_pretrained(tiny_chat_llama(seed=5), tiny_tokenizer(), name="other")
        Runner.run_sync(agent.clone(model=other), "hi", session=SQLiteSession("chat-1", db))
    again.clear_session()
    assert again.get_items() == [] and SQLiteSession("chat-1", db).get_items() == []


def test_sqlite_session_keeps_its_stored_policy_unless_the_agent_names_one(tiny, tmp_path):
    db = tmp_path / "agents.db"
    small = Policy(trigger=TokenLimit(150), ratio=FixedRatio(4), pin=AnyPin((PinSystem(),)), protect_recent=16)
    agent = Agent("a", instructions="Be brief.", model=tiny, policy=small,
                  settings=ModelSettings(max_new_tokens=8, tool_choice="none"))
    Runner.run_sync(agent, "hello", session=SQLiteSession("chat-p", db))
    plain = agent.clone(policy=None)
    again = SQLiteSession("chat-p", db)  # a new object, as in a new process: resumes from the store
    Runner.run_sync(plain, "and again", session=again)
    assert again._live[2].policy == small
    Runner.run_sync(plain.clone(policy="aggressive"), "once more", session=again)
    assert again._live[2].policy == Policy.named("aggressive")


def test_two_sqlite_session_objects_on_one_id_share_the_history(tiny, tmp_path):
    db = tmp_path / "agents.db"
    agent = Agent("a", instructions="Be brief.", model=tiny, policy="off",
                  settings=ModelSettings(max_new_tokens=6, tool_choice="none"))
    first, second = SQLiteSession("shared-id", db), SQLiteSession("shared-id", db)
    Runner.run_sync(agent, "one", session=first)
    Runner.run_sync(agent, "two", session=second)
    Runner.run_sync(agent, "three", session=first)  # its live cache is stale: it resumes from the store
    users = [i["content"] for i in SQLiteSession("shared-id", db).get_items() if i["role"] == "user"]
    assert users == ["one", "two", "three"]


def test_sqlite_session_resumes_across_processes(tmp_path):
    db = tmp_path / "agents.db"
    child = subprocess.run([sys.executable, str(CHILD), str(db), "shared"], capture_output=True, text=True,
                           timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["items"] == 2
    model = LocalModel.from_pretrained(tiny_chat_llama(), tiny_tokenizer())
    agent = Agent("child", instructions="Be brief.", model=model, policy="off",
                  settings=ModelSettings(max_new_tokens=12))
    result = Runner.run_sync(agent, "hello from the second process", session=SQLiteSession("shared", db))
    assert result.replies[0].cached_tokens > 0
    assert result.replies[0].prompt_tokens < report["prompt_tokens"]  # the history was not prefilled again


# ---------------------------------------------------------------------- compaction hooks
def test_a_hook_handle_unregisters_just_that_hook(tiny):
    session = tiny.open(system=None, tools=[], policy="off")
    first, second = (lambda plan: None), (lambda plan: None)
    drop_first = session.on_before_compaction(first)
    session.on_before_compaction(second)
    drop_after = session.on_after_compaction(first)
    drop_first.remove()
    drop_first.remove()  # a second call does nothing
    assert session.compactor.before == [second] and session.compactor.after == [first]
    drop_after.remove()
    assert session.compactor.after == []


def test_runs_leave_no_hooks_on_a_conversation_they_share(tiny, tmp_path):
    agent = Agent("a", instructions="Be brief.", model=tiny, policy="off",
                  settings=ModelSettings(max_new_tokens=4, tool_choice="none"))
    session = SQLiteSession("hooks", tmp_path / "hooks.db")
    for text in ("one", "two"):
        Runner.run_sync(agent, text, session=session)
        conversation = session._live[2]  # the same live engine session for both runs
        assert conversation.compactor.before == [] and conversation.compactor.after == []


def test_a_conversation_whose_hooks_return_no_handle_is_refused():
    class Old(ScriptedModel):
        def open(self, **kwargs):
            conversation = super().open(**kwargs)
            conversation.on_before_compaction = lambda hook: None
            return conversation

    with pytest.raises(ConfigError, match=r"must return a handle whose remove\(\) unregisters the hook"):
        Runner.run_sync(Agent("a", model=Old(["hi"])), "go")
