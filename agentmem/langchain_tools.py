"""Tools for `ChatAgentMem`: which call a `tool_choice` forces, and splitting a reply.

The model writes calls in agentmem's `<tool_call>` convention (`agentmem.toolcalls`);
here they become LangChain `tool_calls` / `invalid_tool_calls`, a forced choice becomes the
text the reply starts with, and `_Visible` decides what a stream may show before the
reply is complete (never the inside of a call).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages.tool import invalid_tool_call, tool_call

from .errors import ConfigError
from .toolcalls import OPEN, format_tool_call, parse_tool_calls

_NAME = re.compile(r'"name"\s*:\s*"([^"]*)"')
_ARGUMENTS = re.compile(r'"(?:arguments|parameters|args)"\s*:\s*')
_ANY = ("any", "required")


def _split_reply(text: str, parse: bool) -> tuple[str, list[dict], list[dict]]:
    """A reply's content, tool calls and unreadable calls (only `content` without tools)."""
    if not parse:
        return text, [], []
    parsed = parse_tool_calls(text)
    calls = [tool_call(name=c.name, args=c.arguments, id=c.id) for c in parsed.calls]
    invalid = []
    for (body, _), error in zip(parsed.unreadable, parsed.errors):
        name = _NAME.search(body)
        invalid.append(invalid_tool_call(name=name.group(1) if name else None, args=_arguments_text(body),
                                         id="call_" + uuid.uuid4().hex[:12], error=error))
    return parsed.content, calls, invalid


def _arguments_text(body: str) -> str:
    """The raw text a broken call gives as its arguments (the whole body if none is marked).

    LangChain keeps `args` of an invalid call as the unparsed argument text; in streams it
    re-parses that text leniently, as it does for any provider's truncated call.
    """
    found = _ARGUMENTS.search(body)
    if found is None:
        return body
    text = body[found.end():].rstrip()
    if text.endswith("}") and text.count("}") > text.count("{"):  # the call object's own closing brace
        text = text[:-1].rstrip()
    return text


# --------------------------------------------------------------------------- tools


def _tool_name(tool: dict) -> str:
    return tool["function"]["name"] if "function" in tool else tool["name"]


def _tool_parameters(tool: dict) -> dict:
    spec = tool["function"] if "function" in tool else tool
    return spec.get("parameters") or {}


def _choice(tool_choice: Any, tools: Sequence[dict]) -> str | None:
    """The tool a choice forces: a name, "any" (some tool), or None (the model decides)."""
    if tool_choice is None or tool_choice is False or tool_choice in ("auto", "none"):
        return None
    names = [_tool_name(t) for t in tools]
    if tool_choice is True or tool_choice in _ANY:
        return names[0] if len(names) == 1 else "any"
    if isinstance(tool_choice, dict):
        tool_choice = (tool_choice.get("function") or tool_choice).get("name")
    if isinstance(tool_choice, str) and tool_choice in names:
        return tool_choice
    raise ConfigError(f"tool_choice {tool_choice!r} names no bound tool; use 'auto', 'any', 'required', None "
                      f"or one of {names}")


@dataclass
class _Forcing:
    prefix: str | None = None  # text the reply starts with (the call constraint does the rest)
    complete: str | None = None  # a whole call: written without running the model


def _forcing(tools: Sequence[dict], choice: str | None) -> _Forcing:
    if choice is None or not tools:
        return _Forcing()
    if choice == "any":
        return _Forcing(prefix=OPEN + '{"name": "')
    tool = next(t for t in tools if _tool_name(t) == choice)
    parameters = _tool_parameters(tool)
    properties = parameters.get("properties") or {}
    if not properties:
        return _Forcing(complete=format_tool_call(choice, {}))
    # Start the arguments with the schema's first required key (in the schema's order, which the
    # grammar keeps keys in): small models otherwise copy the prompt's `{...}` placeholder.
    required = set(parameters.get("required") or [])
    first = next((k for k in properties if k in required), next(iter(properties)))
    opening = json.dumps(first, ensure_ascii=False) + ": " + ('"' if properties[first].get("type") == "string" else "")
    return _Forcing(prefix=OPEN + '{"name": ' + json.dumps(choice, ensure_ascii=False) + ', "arguments": {' + opening)


class _Visible:
    """The part of a reply a stream may show before it is complete.

    With tools bound, content is what lies outside `<tool_call>` blocks, stripped: text is
    shown up to the first block (holding back what could start one, and trailing spaces).
    """

    def __init__(self, parse: bool) -> None:
        self.parse, self.text, self.sent = parse, "", ""

    def push(self, piece: str) -> str:
        self.text += piece
        if not self.parse:
            self.sent = self.text
            return piece
        head = self.text.split(OPEN, 1)[0]
        if OPEN not in self.text:
            for size in range(min(len(OPEN) - 1, len(head)), 0, -1):
                if head.endswith(OPEN[:size]):
                    head = head[:-size]
                    break
        head = head.strip()
        if len(head) > len(self.sent) and head.startswith(self.sent):
            delta, self.sent = head[len(self.sent):], head
            return delta
        return ""


def _ends_with_call(text: str) -> bool:
    """Whether `text` holds a `<tool_call>` whose JSON object is complete (closing tag or not)."""
    start = text.find(OPEN)
    if start < 0:
        return False
    body = text[start + len(OPEN):].lstrip()
    try:
        value, _ = json.JSONDecoder().raw_decode(body)
    except ValueError:
        return False
    return isinstance(value, dict)
