"""Agent loops that finish: the repeat guard, tool_choice reset, calls that end where their JSON ends."""

from __future__ import annotations

import warnings

import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool as lc_tool

from agentmem import tool_choice
from agentmem.agents import Agent, LocalModel, ModelSettings, RepeatGuard, Runner, ScriptedModel, tool
from agentmem.errors import ConfigError, MaxTurnsExceeded, ScriptError
from agentmem.forbid import ForbidText, call_texts, no_calls
from agentmem.langchain import ChatAgentMem, clear_sessions
from agentmem.toolcalls import OPEN, ToolCall, parse_tool_calls

from conftest import tiny_chat_llama, tiny_tokenizer

RUNS: list[str] = []


@tool
def lookup(key: str) -> str:
    """Look a key up.

    Args:
        key: What to look up.
    """
    RUNS.append(key)
    return f"value of {key}"


@pytest.fixture(autouse=True)
def _clean():
    RUNS.clear()
    yield
    clear_sessions()


# --------------------------------------------------------------------------- the repeat guard (scripted)


def test_a_repeated_call_is_not_run_and_the_next_reply_is_the_answer():
    model = ScriptedModel([ScriptedModel.call("lookup", key="a"), ScriptedModel.call("lookup", key="a"),
                           "It is the value of a."])
    result = Runner.run_sync(Agent("a", tools=[lookup], model=model), "what is a?", max_turns=5)
    model.assert_done()
    assert RUNS == ["a"]  # the identical second call did not run
    assert result.final_output == "It is the value of a." and result.turns == 3
    refusal = result.new_items[4]
    assert refusal["role"] == "tool" and refusal["content"].startswith("error: you already called lookup")
    assert model.requests[2].prefix is None and "</tool_call>" not in model.requests[2].stop


def test_the_guard_ends_a_loop_that_would_exhaust_max_turns():
    model = ScriptedModel([ScriptedModel.call("lookup", key="a")] * 3)
    result = Runner.run_sync(Agent("a", tools=[lookup], model=model), "go", max_turns=3)
    assert RUNS == ["a"] and result.turns == 3 and result.final_output is not None


def test_refuse_lets_the_model_go_on_and_none_turns_the_guard_off():
    script = [ScriptedModel.call("lookup", key="a"), ScriptedModel.call("lookup", key="a"),
              ScriptedModel.call("lookup", key="b"), "done"]
    result = Runner.run_sync(Agent("a", tools=[lookup], model=ScriptedModel(script),
                                   repeat_guard=RepeatGuard(then="refuse")), "go", max_turns=5)
    assert RUNS == ["a", "b"] and result.final_output == "done" and result.turns == 4
    RUNS.clear()
    result = Runner.run_sync(Agent("a", tools=[lookup], model=ScriptedModel(script), repeat_guard=None), "go")
    assert RUNS == ["a", "a", "b"] and result.final_output == "done"


def test_different_arguments_are_not_repeats():
    script = [ScriptedModel.call("lookup", key="a"), ScriptedModel.call("lookup", key="b"), "both"]
    result = Runner.run_sync(Agent("a", tools=[lookup], model=ScriptedModel(script)), "go")
    assert RUNS == ["a", "b"] and result.final_output == "both"


def test_repeat_guard_is_checked():
    with pytest.raises(ConfigError, match="then must be one of"):
        RepeatGuard(then="stop")
    with pytest.raises(ConfigError, match="repeat_guard must be"):
        Agent("a", tools=[lookup], model=ScriptedModel([]), repeat_guard="on")


# --------------------------------------------------------------------------- tool_choice (openai-agents' semantics)


def test_required_forces_the_first_reply_of_each_run_then_auto():
    model = ScriptedModel([ScriptedModel.call("lookup", key="a"), "answer one",
                           ScriptedModel.call("lookup", key="b"), "answer two"])
    agent = Agent("a", tools=[lookup], model=model, settings=ModelSettings(tool_choice="required"))
    assert Runner.run_sync(agent, "first").final_output == "answer one"
    assert Runner.run_sync(agent, "second").final_output == "answer two"  # a new run is forced again
    prefixes = [r.prefix for r in model.requests]
    assert prefixes[0].startswith(OPEN) and prefixes[2].startswith(OPEN)
    assert prefixes[1] is None and prefixes[3] is None


def test_a_named_choice_resets_too_and_reset_false_keeps_forcing():
    model = ScriptedModel([ScriptedModel.call("lookup", key="a"), "done"])
    agent = Agent("a", tools=[lookup], model=model, settings=ModelSettings(tool_choice="lookup"))
    Runner.run_sync(agent, "go")
    assert '"lookup"' in model.requests[0].prefix and model.requests[1].prefix is None

    model = ScriptedModel([ScriptedModel.call("lookup", key="a"), ScriptedModel.call("lookup", key="b")])
    agent = Agent("a", tools=[lookup], model=model, settings=ModelSettings(tool_choice="required"),
                  reset_tool_choice=False, stop_at_tools=["lookup"])
    Runner.run_sync(agent, "go")  # stop_at_tools ends the run after the first call
    model = ScriptedModel([ScriptedModel.call("lookup", key="a"), ScriptedModel.call("lookup", key="b")])
    agent = agent.clone(model=model, stop_at_tools=())
    with pytest.raises(ScriptError, match="asked for reply 3, but the script has only 2 replies"):  # forced each reply
        Runner.run_sync(agent, "go", max_turns=3)
    assert all(r.prefix and r.prefix.startswith(OPEN) for r in model.requests)


def test_an_unreadable_call_is_no_tool_use_so_the_choice_stays_forced():
    model = ScriptedModel(['<tool_call>{"name": "lookup", "arguments": {oops}}</tool_call>',
                           ScriptedModel.call("lookup", key="a"), "done"])
    agent = Agent("a", tools=[lookup], model=model, settings=ModelSettings(tool_choice="required"))
    assert Runner.run_sync(agent, "go").final_output == "done"
    assert [bool(r.prefix) for r in model.requests] == [True, True, False]


def test_reset_tool_choice_on_model_settings_is_deprecated():
    with pytest.warns(DeprecationWarning, match="Agent\\(reset_tool_choice"):
        agent = Agent("a", tools=[lookup], model=ScriptedModel([]),
                      settings=ModelSettings(reset_tool_choice=False))
    assert agent.reset_tool_choice is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Agent("a", tools=[lookup], model=ScriptedModel([])).reset_tool_choice is True


# --------------------------------------------------------------------------- parsing and token filters


def test_a_closing_tag_inside_a_string_argument_does_not_end_the_call():
    text = '<tool_call>{"name": "lookup", "arguments": {"key": "a</tool_call>b"}}</tool_call> after'
    parsed = parse_tool_calls(text)
    assert [c.arguments for c in parsed.calls] == [{"key": "a</tool_call>b"}] and parsed.content == "after"


def _logits(tokenizer, allowed: str | None = None) -> torch.Tensor:
    logits = torch.zeros(260)
    if allowed is not None:
        logits[:] = float("-inf")
        logits[tokenizer.convert_tokens_to_ids(allowed)] = 0.0
    return logits


def test_forbid_text_masks_the_completing_token_and_gives_way_at_a_dead_end():
    tokenizer = tiny_tokenizer()
    ids = tokenizer("xab", add_special_tokens=False)["input_ids"]
    forbid = ForbidText(tokenizer, ["abc"])
    out = forbid(ids, _logits(tokenizer))
    c = tokenizer.convert_tokens_to_ids("c")
    assert out[c] == float("-inf") and torch.isfinite(out).sum() == 259
    assert torch.isfinite(forbid(ids[:1], _logits(tokenizer))).all()  # "x": nothing to forbid yet
    stuck = ForbidText(tokenizer, ["abc"], inner=lambda g, logits: _logits(tokenizer, "c"))
    assert stuck(ids, _logits(tokenizer))[c] == 0.0 and stuck.gave_way  # the only way on: let it through


def test_no_calls_keeps_a_reply_from_opening_a_call():
    tokenizer = tiny_tokenizer()
    ids = tokenizer("see <too", add_special_tokens=False)["input_ids"]
    out = no_calls(tokenizer)(ids, _logits(tokenizer))
    assert out[tokenizer.convert_tokens_to_ids("l")] == float("-inf")


def test_call_texts_stop_before_the_closing_brackets():
    [text] = call_texts([ToolCall("lookup", {"key": "a"})])
    assert text == '<tool_call>{"name": "lookup", "arguments": {"key": "a"'


def test_forced_replies_on_a_tiny_model_never_run_a_call_twice():
    model = LocalModel.from_pretrained(tiny_chat_llama(seed=1), tiny_tokenizer())
    agent = Agent("a", tools=[lookup], model=model, policy="off", reset_tool_choice=False,
                  settings=ModelSettings(max_new_tokens=40, tool_choice="lookup"),
                  repeat_guard=RepeatGuard(forbid=True))
    try:
        Runner.run_sync(agent, "look things up", max_turns=4)
    except MaxTurnsExceeded:  # every reply is forced; the calls made are what matters
        pass
    assert len(RUNS) >= 3 and len(set(RUNS)) == len(RUNS)


# --------------------------------------------------------------------------- LangChain: after a ToolMessage


@lc_tool
def get_weather(city: str) -> str:
    """Current weather in a city."""
    return f"It is sunny in {city}."


def test_langchain_forbids_the_calls_answered_since_the_last_human_message(monkeypatch):
    seen: list[list[str]] = []

    class Spy(tool_choice.ForbidText):
        def __init__(self, tokenizer, texts, **kwargs):
            seen.append(list(texts))
            super().__init__(tokenizer, texts, **kwargs)

    monkeypatch.setattr(tool_choice, "ForbidText", Spy)
    llama, tokenizer = tiny_chat_llama(seed=0), tiny_tokenizer()
    forced = ChatAgentMem.from_model(llama, tokenizer, max_tokens=40, policy="off",
                                     repeat_guard=True).bind_tools([get_weather], tool_choice="get_weather")
    request = [HumanMessage("weather in Paris?")]
    first = forced.invoke(request)
    assert len(first.tool_calls) == 1 and seen == []  # nothing answered yet
    result = ToolMessage("It is sunny.", tool_call_id=first.tool_calls[0]["id"])
    second = forced.invoke(request + [first, result])
    assert seen == [call_texts([ToolCall("get_weather", first.tool_calls[0]["args"])])]
    assert len(second.tool_calls) == 1
    forced.invoke(request + [first, result, second, AIMessage("ok"), HumanMessage("and Oslo?")])
    assert len(seen) == 1  # a new human message: nothing is forbidden
    off = ChatAgentMem.from_model(llama, tokenizer, max_tokens=40, policy="off")
    off.bind_tools([get_weather], tool_choice="get_weather").invoke(request + [first, result])
    assert len(seen) == 1  # off by default
