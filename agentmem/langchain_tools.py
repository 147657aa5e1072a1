"""Tool calls for `ChatAgentMem`: splitting a reply, and what a stream may show.

The model writes calls in agentmem's `<tool_call>` convention (`agentmem.toolcalls`);
here they become LangChain `tool_calls` / `invalid_tool_calls`, and `_Visible` decides
what a stream may show before the reply is complete (never the inside of a call). Which
call a `tool_choice` forces is `agentmem.tool_choice`, shared with the agents.
"""

from __future__ import annotations

import re
import uuid

from langchain_core.messages.tool import invalid_tool_call, tool_call

from .toolcalls import OPEN, parse_tool_calls

_NAME = re.compile(r'"name"\s*:\s*"([^"]*)"')
_ARGUMENTS = re.compile(r'"(?:arguments|parameters|args)"\s*:\s*')


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
