"""Tool calls and structured output held to their whole JSON schema (llguidance), tiny models, CPU."""

from __future__ import annotations

import json
import logging
from typing import Literal, Optional, Union

import pydantic
import pytest

from agentmem.agents import Agent, LocalModel, ModelSettings, Runner, tool
from agentmem.constrain import CallConstraint, call_constraint
from agentmem.errors import ConfigError, MaxTurnsExceeded
from agentmem.toolcalls import CLOSE, parse_tool_calls

from conftest import tiny_chat_gemma3, tiny_chat_llama, tiny_tokenizer

llguidance = pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from agentmem import grammar  # noqa: E402  (after the importorskip: it needs llguidance)


class Inner(pydantic.BaseModel):
    a: int


class Item(pydantic.BaseModel):
    name: str
    qty: int


@tool
def plan(loud: bool, days: list[str], ratio: float, nested: Inner, mode: Literal["fast", "slow"],
         key: Union[int, str], note: Optional[str] = None) -> str:
    """Plan a week.

    Args:
        loud: Whether to shout.
        days: Which days.
        ratio: How much.
        nested: Inner settings.
        mode: How fast.
        key: An id.
        note: Anything else.
    """
    return "ok"


class Report(pydantic.BaseModel):
    """A shopping report."""

    count: int
    ratio: float
    ok: bool
    tags: list[str]
    items: list[Item]
    note: Optional[str] = None


def _valid(arguments: dict, schema: dict) -> None:
    jsonschema.validate(arguments, schema)


# --------------------------------------------------------------------------- the shortest completion


def _tools():
    from langchain_core.utils.function_calling import convert_to_openai_tool

    def other(x: int) -> str:
        """Other."""

    return [plan.schema(), convert_to_openai_tool(Report), convert_to_openai_tool(other)]


@pytest.mark.parametrize("call", [
    {"name": "plan", "arguments": {"loud": False, "days": ["mo", "tu\\"], "ratio": -1.5e3, "nested": {"a": 3},
                                   "mode": "slow", "key": "k", "note": None}},
    {"name": "Report", "arguments": {"count": 2, "ratio": 0.5, "ok": True, "tags": [],
                                     "items": [{"name": "x", "qty": 1}, {"name": "y", "qty": 22}], "note": "n"}},
    {"name": "other", "arguments": {"x": -12}},
])
def test_every_prefix_of_a_call_closes_into_a_schema_valid_call(call):
    tools = _tools()
    schema = grammar.call_schema(tools)
    tokens = grammar.ll_tokenizer(tiny_tokenizer(), 260)
    compiled = llguidance.LLMatcher.grammar_from_lark(grammar.call_grammar(tools))
    text = json.dumps(call, ensure_ascii=False) + CLOSE
    for cut in range(len(text) + 1):
        follower = grammar.ShortestClose(schema, CLOSE)
        follower.feed(text[:cut])
        closed = text[:cut] + follower.closer()
        matcher = llguidance.LLMatcher(tokens, compiled, log_level=0)
        assert matcher.consume_tokens(tokens.tokenize_str(closed)) and matcher.is_accepting(), (text[:cut], closed)
        parsed = parse_tool_calls("<tool_call>" + closed)
        assert len(parsed.calls) == 1, closed
        spec = next(t["function"] for t in tools if t["function"]["name"] == parsed.calls[0].name)
        _valid(parsed.calls[0].arguments, spec["parameters"])


def test_schema_closes_objects_and_keeps_defs():
    schema = grammar.call_schema([_tools()[1]])
    arguments = schema["properties"]["arguments"]
    assert arguments["additionalProperties"] is False
    item = arguments["properties"]["items"]["items"]
    item = schema["$defs"][item["$ref"].rsplit("/", 1)[1]] if "$ref" in item else item
    assert item["additionalProperties"] is False


# --------------------------------------------------------------------------- decoding with tiny models


def _forced_call(model_factory, seed: int, temperature: float, budget: int):
    model = LocalModel.from_pretrained(model_factory(seed=seed), tiny_tokenizer())
    agent = Agent("a", tools=[plan], model=model, policy="off",
                  settings=ModelSettings(max_new_tokens=budget, tool_choice="plan", temperature=temperature))
    events = []
    try:
        for event in Runner.run_streamed(agent, "plan my week", max_turns=1):
            events.append(event)
    except MaxTurnsExceeded:
        pass
    return [e for e in events if e.type == "turn_done"][0].text


@pytest.mark.parametrize("factory", [tiny_chat_llama, tiny_chat_gemma3])
@pytest.mark.parametrize("seed,temperature", [(0, 0.0), (1, 0.7), (2, 1.0), (3, 1.0), (4, 1.5)])
def test_forced_call_always_parses_and_fits_the_schema(factory, seed, temperature):
    text = _forced_call(factory, seed, temperature, budget=160)
    parsed = parse_tool_calls(text)
    assert parsed.errors == [] and [c.name for c in parsed.calls] == ["plan"], text
    arguments = parsed.calls[0].arguments
    _valid(arguments, plan.parameters)
    assert isinstance(arguments["loud"], bool) and isinstance(arguments["days"], list)
    assert isinstance(arguments["nested"]["a"], int) and arguments["mode"] in ("fast", "slow")
    assert plan.invoke(arguments) == "ok"  # the tool's own pydantic validation agrees


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("slack", [1, 8])
def test_forced_call_is_closed_within_a_tight_budget(seed, slack):
    follower = grammar.ShortestClose(grammar.call_schema([plan.schema()]), CLOSE)
    follower.feed('{"name": "plan", "arguments": ')  # the forced prefix; the byte tokenizer writes 1 char a token
    shortest = len(follower.closer())
    text = _forced_call(tiny_chat_llama, seed, 1.0, budget=shortest + slack)
    parsed = parse_tool_calls(text)
    assert parsed.errors == [] and len(parsed.calls) == 1, text
    _valid(parsed.calls[0].arguments, plan.parameters)


@pytest.mark.parametrize("seed", range(4))
def test_structured_output_fits_the_pydantic_model(seed):
    from agentmem.langchain import ChatAgentMem, clear_sessions

    clear_sessions()
    chat = ChatAgentMem.from_model(tiny_chat_llama(seed=seed), tiny_tokenizer(), max_tokens=200, temperature=1.0,
                                   seed=seed)
    structured = chat.with_structured_output(Report, include_raw=True)
    out = structured.invoke("Report on the shopping")
    assert out["parsing_error"] is None and isinstance(out["parsed"], Report), out["raw"].content
    _valid(out["parsed"].model_dump(mode="json"), Report.model_json_schema())
    clear_sessions()


# --------------------------------------------------------------------------- which engine


def test_call_constraint_picks_the_engine_and_says_so(caplog, monkeypatch):
    from agentmem import constrain

    monkeypatch.setattr(constrain, "_announced", set())
    with caplog.at_level(logging.INFO, logger="agentmem.constrain"):
        auto = call_constraint(tiny_tokenizer(), [plan.schema()], max_new_tokens=32)
        call_constraint(tiny_tokenizer(), [plan.schema()], max_new_tokens=32)
    assert isinstance(auto, grammar.SchemaConstraint)
    assert [r.getMessage() for r in caplog.records].count(
        "tool calls are held to their JSON schemas by llguidance") == 1
    assert isinstance(call_constraint(tiny_tokenizer(), [plan.schema()], max_new_tokens=32, engine="builtin"),
                      CallConstraint)
    monkeypatch.setattr(grammar, "available", lambda: False)
    with caplog.at_level(logging.INFO, logger="agentmem.constrain"):
        fallback = call_constraint(tiny_tokenizer(), [plan.schema()], max_new_tokens=32)
    assert isinstance(fallback, CallConstraint)
    assert any("hand-written" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match="llguidance is not installed"):
        call_constraint(tiny_tokenizer(), [plan.schema()], max_new_tokens=32, engine="llguidance")
    with pytest.raises(ConfigError, match="engine must be"):
        call_constraint(tiny_tokenizer(), [plan.schema()], max_new_tokens=32, engine="xgrammar")
