"""Parsing the `<tool_call>` convention out of model text."""

from __future__ import annotations

from agentmem.toolcalls import format_tool_call, parse_tool_calls


def test_round_trip_of_formatted_calls():
    text = "Let me look.\n" + format_tool_call("read_file", {"path": "a.py", "start": 1}) + \
        format_tool_call("list_files", {})
    parsed = parse_tool_calls(text)
    assert parsed.content == "Let me look."
    assert [(c.name, c.arguments) for c in parsed.calls] == [("read_file", {"path": "a.py", "start": 1}),
                                                             ("list_files", {})]
    assert parsed.errors == [] and len({c.id for c in parsed.calls}) == 2


def test_lenient_forms():
    assert parse_tool_calls('<tool_call>{"name": "f", "arguments": {"x": 1}}').calls[0].arguments == {"x": 1}
    assert parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"x\\": 2}"}</tool_call>').calls[0] \
        .arguments == {"x": 2}
    assert parse_tool_calls('<tool_call> {"name": "f", "parameters": {"y": 3}} </tool_call>').calls[0] \
        .arguments == {"y": 3}
    assert parse_tool_calls('<tool_call>{"name": "f"}</tool_call>').calls[0].arguments == {}
    assert parse_tool_calls('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_').calls[0].arguments == {"x": 1}


def test_unreadable_calls_are_errors_not_calls():
    for body in ['{"name": "f", "arguments": {"x": }', '["f"]', '{"arguments": {}}', '{"name": "f"} extra',
                 '{"name": "f", "arguments": [1]}', '']:
        parsed = parse_tool_calls(f"ok <tool_call>{body}</tool_call>")
        assert parsed.calls == [] and len(parsed.errors) == 1, body
        assert parsed.content == "ok"


def test_text_without_calls_is_untouched():
    parsed = parse_tool_calls("  just an answer  ")
    assert parsed.content == "just an answer" and parsed.calls == [] and parsed.errors == []
