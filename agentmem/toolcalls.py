"""Tool calls in model text: the one convention every surface (LangChain, agents, CLI) parses.

A model asks for a tool by writing a JSON object inside tags, as the tool prompt of
`agentmem.chat_format.TOOLS_PROMPT` tells it::

    <tool_call>{"name": "read_file", "arguments": {"path": "calc.py"}}</tool_call>

`format_tool_call` writes one; `call_prefix` is the start of one (what a forced reply
begins with) and `HEAD`, `MIDDLE` and `TAIL` the fixed text around its name and arguments,
all cut from `format_tool_call`'s own output so they cannot drift from it.
`parse_tool_calls` splits a reply into its plain text and its calls. Small models write
sloppy JSON, so the parser is lenient where the intent is unambiguous (a missing closing
tag at the end of the reply, `arguments` given as a JSON string, `parameters` instead of
`arguments`) and reports everything else as an error the caller can show the model. A
block ends after its JSON object when one parses there, so a string argument may contain
``</tool_call>``.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|$)", re.DOTALL)


@dataclass
class ToolCall:
    """One requested tool call (the shape LangChain's `ToolCall` and OpenAI's use)."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:12])

    def to_dict(self) -> dict:
        return {"name": self.name, "args": dict(self.arguments), "id": self.id}


@dataclass
class ParsedReply:
    """A reply split into the text meant for a reader and the tool calls it requests."""

    content: str
    calls: list[ToolCall]
    unreadable: list[tuple[str, str]]  # (block text, why) per block meant as a call that could not be read

    @property
    def errors(self) -> list[str]:
        """One line per unreadable block, to show the model."""
        return [f"could not read tool call {body[:120]!r}: {why}" for body, why in self.unreadable]


def format_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """The text a model writes to call `name` with `arguments`."""
    return f"{OPEN}{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}{CLOSE}"


_MARK = "\u2063NAME\u2063"  # a stand-in tool name, to cut the fixed parts out of a formatted call
_SHAPE = format_tool_call(_MARK, {})  # <tool_call>{"name": "<mark>", "arguments": {}}</tool_call>
_NAME_AT, _ARGUMENTS_AT = _SHAPE.index(_MARK), _SHAPE.rindex("{}")
HEAD = _SHAPE[len(OPEN):_NAME_AT]  # '{"name": "': after OPEN, before the name
MIDDLE = _SHAPE[_NAME_AT + len(_MARK):_ARGUMENTS_AT]  # '", "arguments": ': between the name and the arguments
TAIL = _SHAPE[_ARGUMENTS_AT + len("{}"):]  # '}</tool_call>': after the arguments' object


def call_prefix(name: str | None = None, *, argument: str | None = None, string: bool = False) -> str:
    """The start of a call, as `format_tool_call` writes it: what a forced reply begins with.

    Args:
        name: the tool; None stops where its name would begin.
        argument: also open the arguments' object and this first key, up to its value.
        string: the value is a string: include its opening quote.
    """
    if name is None:
        if argument is not None:
            raise ValueError("call_prefix: an argument needs the tool's name; pass name= too")
        return OPEN + HEAD
    text = format_tool_call(name, {})
    text = text[:text.rindex("{}")]
    if argument is None:
        return text
    opened = json.dumps({argument: None}, ensure_ascii=False)  # '{"key": null}'
    return text + opened[:-len("null}")] + ('"' if string else "")


def call_done(text: str, *, closed: bool = False) -> bool:
    """Whether `text` holds a call whose JSON object is complete: where a one-call reply can end.

    With `closed`, the object must also be followed by the closing tag (or by other text,
    which cannot continue the call).
    """
    start = text.find(OPEN)
    if start < 0:
        return False
    body = text[start + len(OPEN):].lstrip()
    try:
        value, end = json.JSONDecoder().raw_decode(body)
    except ValueError:
        return False
    if not isinstance(value, dict):
        return False
    if not closed:
        return True
    rest = body[end:].lstrip()
    return rest.startswith(CLOSE) or (bool(rest) and not CLOSE.startswith(rest))


def parse_tool_calls(text: str) -> ParsedReply:
    """Split `text` into plain content and tool calls (lenient; see the module docstring)."""
    calls: list[ToolCall] = []
    unreadable: list[tuple[str, str]] = []
    for size in range(len(CLOSE) - 1, 1, -1):  # a closing tag cut off by the token budget
        if text.endswith(CLOSE[:size]):
            text = text[:-size]
            break
    kept: list[str] = []  # the text outside the blocks
    at = 0
    while (start := text.find(OPEN, at)) >= 0:
        kept.append(text[at:start])
        end = _json_block_end(text, start + len(OPEN))
        if end is not None:  # a complete JSON object: the block ends with it (a closing tag inside a string is text)
            body, at = text[start + len(OPEN):end[0]].strip(), end[1]
        else:
            match = _BLOCK.match(text, start)
            body, at = match.group(1).strip(), match.end()
        try:
            calls.append(_call_from(body))
        except ValueError as exc:
            unreadable.append((body, str(exc)))
    kept.append(text[at:])
    content = "".join(kept).strip()
    return ParsedReply(content=content, calls=calls, unreadable=unreadable)


def _json_block_end(text: str, at: int) -> tuple[int, int] | None:
    """(end of the object, end of the block) when a JSON object starts at `at`, then a closing tag or the end."""
    body = text[at:]
    lead = len(body) - len(body.lstrip())
    try:
        _, end = json.JSONDecoder().raw_decode(body, lead)
    except ValueError:
        return None
    rest = body[end:]
    tail = len(rest) - len(rest.lstrip())
    if rest[tail:].startswith(CLOSE):
        return at + end, at + end + tail + len(CLOSE)
    if not rest.strip():
        return at + end, len(text)
    return None


def _call_from(body: str) -> ToolCall:
    if not body:
        raise ValueError("empty call")
    try:
        data, end = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if body[end:].strip():
        raise ValueError("text after the JSON object")
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object with 'name' and 'arguments'")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("missing 'name'")
    arguments = data.get("arguments", data.get("parameters", data.get("args", {})))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            raise ValueError("'arguments' is a string that is not a JSON object") from None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ValueError("'arguments' must be a JSON object")
    return ToolCall(name=name, arguments=arguments)
