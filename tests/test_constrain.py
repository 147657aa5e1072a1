"""Specs of the hand-written tool-call machine (`agentmem.constrain`), the fallback without llguidance."""

from __future__ import annotations

import json

import pytest
import torch

from agentmem.constrain import CallConstraint, CallMachine, builtin_constraint, string_enums
from agentmem.toolcalls import CLOSE, OPEN, parse_tool_calls

from conftest import CHAT_VOCAB, tiny_tokenizer

TOOLS = [
    {"type": "function", "function": {"name": "read_file", "description": "Read a file.", "parameters": {
        "type": "object", "properties": {"path": {"type": "string"}, "lines": {"type": "integer"}},
        "required": ["path"]}}},
    {"type": "function", "function": {"name": "run", "description": "Run a command.", "parameters": {
        "type": "object", "properties": {"mode": {"type": "string", "enum": ["fast", "slow"]},
                                         "args": {"type": "array"}},
        "required": ["mode"]}}},
]
NAMES = ["read_file", "run"]


def _machine() -> CallMachine:
    """The machine `builtin_constraint` builds for TOOLS."""
    return builtin_constraint(tiny_tokenizer(), TOOLS, max_new_tokens=64, prefix=OPEN).machine.copy()


CALLS = [
    '{"name": "read_file", "arguments": {"path": "a \\"b\\".py", "lines": 12}}' + CLOSE,
    '{"name": "run", "arguments": {"args": [1, -2.5e3, "x", {"k": [true, null]}], "mode": "slow"}}' + CLOSE,
    '{"name": "run", "arguments": {"mode": "fast"}}' + CLOSE,
]


@pytest.mark.parametrize("call", CALLS)
def test_a_valid_call_is_accepted_and_every_prefix_closes_into_one(call):
    machine = _machine()
    assert machine.feed(call) and machine.done
    for cut in range(len(call)):
        machine = _machine()
        assert machine.feed(call[:cut]), call[:cut]
        closed = call[:cut] + machine.closer()
        assert machine.feed(machine.closer()) and machine.done, closed
        parsed = parse_tool_calls(OPEN + closed)
        assert parsed.errors == [] and len(parsed.calls) == 1, closed
        name, arguments = parsed.calls[0].name, parsed.calls[0].arguments
        assert name in NAMES and set(arguments) >= {"read_file": {"path"}, "run": {"mode"}}[name], closed


@pytest.mark.parametrize("text, why", [
    ('{"name": "write_file"', "an unknown tool"),
    ('{"name": "read_file", "arguments": {"pth"', "an unknown argument"),
    ('{"name": "read_file", "arguments": {"path": "a", "path"', "an argument given twice"),
    ('{"name": "read_file", "arguments": {"lines": 3}', "a required argument missing"),
    ('{"name": "read_file", "arguments": {"path": 3', "a number where a string is declared"),
    ('{"name": "read_file", "arguments": {"path": "a", "lines": 1.5', "a fraction where an integer is declared"),
    ('{"name": "read_file", "arguments": {"path": "a", "lines": "3"', "a string where an integer is declared"),
    ('{"name": "run", "arguments": {"mode": "medium"', "a value outside the enum"),
    ('{"name": "run", "arguments": ["fast"]', "arguments that are not an object"),
    ('{"name": "run", "arguments": {"mode": "fast"}}  ', "text after the call closes"),
    ('{"name": "run", "arguments": {"mode":  "fast"', "runaway whitespace"),
])
def test_a_broken_call_is_refused(text, why):
    assert not _machine().feed(text + CLOSE), why


def test_string_enums_reads_literal_and_const_arguments():
    parameters = {"properties": {"mode": {"enum": ["a", "b"]}, "one": {"const": "x"}, "n": {"enum": [1, 2]},
                                 "free": {"type": "string"}}}
    assert string_enums(parameters) == {"mode": ["a", "b"], "one": ["x"]}


def test_a_constraint_needs_a_tool():
    with pytest.raises(ValueError, match="CallConstraint needs at least one tool name"):
        CallConstraint(tiny_tokenizer(), [], max_new_tokens=8)


def _decode(seed: int, budget: int, prefix: str = OPEN) -> str:
    """Greedy decoding over random logits (a model that wants anything) through the constraint."""
    tokenizer = tiny_tokenizer()
    constraint = builtin_constraint(tokenizer, TOOLS, max_new_tokens=budget, prefix=prefix)
    generator = torch.Generator().manual_seed(seed)
    generated: list[int] = []
    while len(generated) < budget and not (constraint.machine and constraint.machine.done):
        logits = constraint(generated, torch.randn(CHAT_VOCAB, generator=generator))
        generated.append(int(logits.argmax()))
    constraint(generated, torch.zeros(CHAT_VOCAB))  # feed the last token
    assert not constraint.broken
    return prefix + tokenizer.decode(generated)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget", [60, 200])
def test_a_constrained_decode_parses_and_names_a_known_tool(seed, budget):
    text = _decode(seed, budget)
    parsed = parse_tool_calls(text)
    assert parsed.errors == [] and len(parsed.calls) == 1, text
    call = parsed.calls[0]
    assert call.name in NAMES, text
    if call.name == "run":
        assert call.arguments["mode"] in ("fast", "slow")
    else:
        assert isinstance(call.arguments["path"], str)
        assert isinstance(call.arguments.get("lines", 0), int)


def test_a_forced_name_is_kept():
    prefix = OPEN + '{"name": "run", "arguments": '
    call = parse_tool_calls(_decode(0, 40, prefix)).calls[0]
    assert call.name == "run" and json.dumps(call.arguments)


def test_before_the_call_opens_nothing_is_masked():
    constraint = builtin_constraint(tiny_tokenizer(), TOOLS, max_new_tokens=32)
    logits = torch.randn(CHAT_VOCAB)
    assert torch.equal(constraint([], logits), logits) and constraint.machine is None
