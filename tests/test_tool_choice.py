"""The one tool-call protocol both surfaces use: call prefixes, call ends, tool choice, usage."""

from __future__ import annotations

import json

import pytest

from agentmem.errors import ConfigError
from agentmem.forbid import ForbidText
from agentmem.tool_choice import AUTO, NONE, REQUIRED, forcing, resolve_choice, tool_name
from agentmem.toolcalls import (
    CLOSE,
    HEAD,
    MIDDLE,
    OPEN,
    TAIL,
    call_done,
    call_prefix,
    format_tool_call,
    parse_tool_calls,
)
from agentmem.usage import Usage

from conftest import tiny_tokenizer


def schema(name: str, **properties: str) -> dict:
    """An OpenAI tool schema whose arguments are all required, typed as given."""
    return {"type": "function", "function": {"name": name, "description": name, "parameters": {
        "type": "object", "properties": {k: {"type": t} for k, t in properties.items()},
        "required": list(properties)}}}


TOOLS = [schema("read_file", path="string", start="integer"), schema("count", n="integer"), schema("ping")]
CALLS = [("read_file", {"path": "a \"b\" </tool_call>", "start": 3}), ("count", {"n": 7}), ("ping", {}),
         ("naïve", {"ü": "ß"})]


# --------------------------------------------------------------------------- the call format
@pytest.mark.parametrize(("name", "arguments"), CALLS)
def test_the_fixed_parts_rebuild_every_formatted_call(name, arguments):
    assert format_tool_call(name, arguments) == \
        OPEN + HEAD + name + MIDDLE + json.dumps(arguments, ensure_ascii=False) + TAIL
    assert TAIL.endswith(CLOSE) and HEAD.startswith("{")


@pytest.mark.parametrize(("name", "arguments"), CALLS)
def test_call_prefixes_start_the_call_they_force(name, arguments):
    whole = format_tool_call(name, arguments)
    assert whole.startswith(call_prefix()) and whole.startswith(call_prefix(name))
    for key, value in list(arguments.items())[:1]:  # the first argument: what a forced reply opens
        opened = call_prefix(name, argument=key, string=isinstance(value, str))
        assert whole.startswith(opened) and opened.endswith('"' if isinstance(value, str) else ": ")
    assert parse_tool_calls(call_prefix(name) + json.dumps(arguments) + "}").calls[0].name == name


def test_an_argument_prefix_needs_a_name():
    with pytest.raises(ValueError, match="pass name="):
        call_prefix(argument="path")


@pytest.mark.parametrize(("name", "arguments"), CALLS)
def test_a_call_is_done_exactly_when_its_object_is_complete(name, arguments):
    whole = "Sure. " + format_tool_call(name, arguments)
    object_end = len(whole) - len(CLOSE)
    for end in range(len(whole) + 1):
        text = whole[:end]
        assert call_done(text) == (end >= object_end), text
        assert call_done(text, closed=True) == (end == len(whole)), text
    assert call_done(whole[:object_end] + " and more", closed=True)  # other text cannot continue the call
    assert not call_done("plain text") and not call_done(OPEN + "[1, 2]")


# --------------------------------------------------------------------------- tool choice
@pytest.mark.parametrize(("spelling", "choice"), [
    (None, AUTO), (False, AUTO), ("auto", AUTO), ("none", NONE), (True, REQUIRED), ("any", REQUIRED),
    ("required", REQUIRED), ("count", "count"), ({"name": "count"}, "count"),
    ({"type": "function", "function": {"name": "ping"}}, "ping")])
def test_every_spelling_resolves_to_one_choice(spelling, choice):
    assert resolve_choice(spelling, [tool_name(t) for t in TOOLS]) == choice


@pytest.mark.parametrize("bad", ["nope", {"name": "nope"}, 3, ""])
def test_a_choice_that_names_no_tool_says_what_to_use(bad):
    with pytest.raises(ConfigError, match=r"names no bound tool; use 'auto', 'any', .* \['read_file', 'count'"):
        resolve_choice(bad, [tool_name(t) for t in TOOLS[:2]])


@pytest.mark.parametrize("fill", [False, True])
@pytest.mark.parametrize("constrain", [False, True])
@pytest.mark.parametrize("choice", [AUTO, NONE, REQUIRED, "read_file", "count", "ping"])
def test_a_forced_reply_starts_a_call_to_a_callable_tool(choice, constrain, fill):
    forced = forcing(choice, TOOLS, constrain=constrain, fill=fill)
    assert forced.calls == (choice != NONE)
    assert forced.ends_at_call == (constrain and forced.calls)
    assert (CLOSE in forced.stops) == (forced.calls and not constrain)  # unconstrained: one call, closed
    if forced.complete is not None:  # a call the schema fixes whole: no model step
        assert fill and parse_tool_calls(forced.complete).calls[0].name == choice and forced.prefix is None
    elif choice in (AUTO, NONE):
        assert forced.prefix is None
    else:
        calls = [format_tool_call(*c) for c in CALLS if c[0] in (choice, "read_file", "count", "ping")]
        assert any(c.startswith(forced.prefix) for c in calls)
        assert (choice in forced.prefix) == (choice != REQUIRED)


def test_fill_names_the_only_tool_and_opens_its_first_required_argument():
    forced = forcing(REQUIRED, TOOLS[:1], fill=True)
    assert forced.choice == "read_file"
    assert forced.prefix == '<tool_call>{"name": "read_file", "arguments": {"path": "'
    assert forcing("count", TOOLS, fill=True).prefix == '<tool_call>{"name": "count", "arguments": {"n": '
    assert forcing(REQUIRED, TOOLS[:1]).prefix == OPEN + HEAD  # without fill the model writes the name


def test_allowed_narrows_the_choice():
    assert forcing("count", TOOLS, allowed=["read_file"]).choice == REQUIRED
    narrowed = forcing(AUTO, TOOLS, allowed=["count"])
    assert [tool_name(t) for t in narrowed.tools] == ["count"]
    nothing = forcing("count", TOOLS, allowed=[])
    assert nothing.choice == NONE and nothing.mask_calls  # tools are in the prompt: none may be called


def test_the_two_ways_to_keep_a_reply_from_calling():
    assert forcing(NONE, TOOLS).mask_calls and forcing(NONE, TOOLS).stops == ()
    assert forcing(NONE, TOOLS, none="stop").stops == (OPEN,) and not forcing(NONE, TOOLS, none="stop").mask_calls
    assert not forcing(NONE, TOOLS, constrain=False).mask_calls  # the mask is the constraint's
    assert forcing(AUTO, []).choice == NONE and forcing(AUTO, [], none="stop").stops == ()  # no tools, nothing held
    with pytest.raises(ConfigError, match="none must be one of"):
        forcing(NONE, TOOLS, none="drop")


def test_the_token_filter_follows_the_choice():
    tokenizer = tiny_tokenizer()
    assert forcing(AUTO, TOOLS).processor(None, max_new_tokens=8) is None  # a scripted model
    assert forcing(AUTO, TOOLS, constrain=False).processor(tokenizer, max_new_tokens=8) is None
    assert isinstance(forcing(NONE, TOOLS).processor(tokenizer, max_new_tokens=8), ForbidText)
    assert forcing(NONE, TOOLS, none="stop").processor(tokenizer, max_new_tokens=8) is None
    constrained = forcing("count", TOOLS).processor(tokenizer, max_new_tokens=32)
    assert constrained is not None and not isinstance(constrained, ForbidText)
    guarded = forcing("count", TOOLS).processor(tokenizer, max_new_tokens=32, forbidden=[OPEN + HEAD + "count"])
    assert isinstance(guarded, ForbidText) and guarded.inner is not None


# --------------------------------------------------------------------------- usage
class _Reply:
    def __init__(self, prompt: int, cached: int, completion: int):
        self.prompt_tokens, self.cached_tokens, self.completion_tokens = prompt, cached, completion


@pytest.mark.parametrize(("prompt", "cached", "completion"), [(0, 0, 0), (12, 0, 5), (3, 400, 17)])
def test_usage_metadata_adds_up(prompt, cached, completion):
    usage = Usage.of(_Reply(prompt, cached, completion))
    meta = usage.metadata()
    details = meta["input_token_details"]
    assert (details["cache_read"], details["cache_creation"], meta["output_tokens"]) == (cached, prompt, completion)
    assert meta["input_tokens"] == details["cache_read"] + details["cache_creation"]
    assert meta["total_tokens"] == meta["input_tokens"] + meta["output_tokens"]
    assert usage.total_tokens == prompt + completion and usage.requests == 1
    twice = Usage()
    twice.add(usage)
    twice.add(usage)
    assert twice.metadata()["total_tokens"] == 2 * meta["total_tokens"] and twice.requests == 2
