"""What `ChatAgentMem` remembers between calls: the process's engine sessions, and
LangChain messages in the normalized form that decides whether a call extends one.

LangChain hands a chat model the whole history on every call. Each message becomes a
`_Turn` (role and the raw text the engine holds, tool calls rendered back into it) whose
`key` compares equal to the engine message it came from, so a call that extends a
session's history is recognized and only its new messages are prefilled.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from .engine import Session
from .errors import ConfigError
from .toolcalls import format_tool_call, parse_tool_calls

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- registry


@dataclass
class _Entry:
    """One engine session and the normalized keys of its messages (one per engine message)."""

    id: str
    thread: str | None
    session: Session
    keys: list[tuple]


class _Registry:
    """The process's engine sessions (least recently used first), model locks and stores."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: OrderedDict[str, _Entry] = OrderedDict()
        self.model_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
        self.stores: dict[str, Any] = {}

    def model_lock(self, model: Any) -> threading.Lock:
        with self.lock:
            return self.model_locks.setdefault(model, threading.Lock())

    def store(self, path: str) -> Any:
        from .store import Store

        resolved = str(Path(path).expanduser().resolve())
        with self.lock:
            if resolved not in self.stores:
                self.stores[resolved] = Store(resolved)
            return self.stores[resolved]

    def candidates(self, thread: str | None, model: Any) -> list[_Entry]:
        with self.lock:
            return [e for e in self.entries.values() if e.thread == thread and e.session.model is model]

    def put(self, entry: _Entry, limit: int) -> None:
        with self.lock:
            self.entries[entry.id] = entry
            self.entries.move_to_end(entry.id)
            while len(self.entries) > max(1, limit):
                old_id, old = self.entries.popitem(last=False)
                log.debug("evicted session %s from memory (%d kept)", old_id, limit)

    def discard(self, entry: _Entry) -> None:
        with self.lock:
            if self.entries.get(entry.id) is entry:
                del self.entries[entry.id]

    def ids(self) -> set[str]:
        with self.lock:
            return set(self.entries)


_REGISTRY = _Registry()


def clear_sessions() -> None:
    """Forget every in-memory session of this process (stored sessions stay in their store)."""
    with _REGISTRY.lock:
        _REGISTRY.entries.clear()


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class _Turn:
    """A message as the engine sees it: role, raw text, and `tools` for the tool prompt."""

    role: str
    text: str
    kind: str = ""

    @property
    def key(self) -> tuple:
        return _key(self.role, self.text, self.kind)


def _key(role: str, text: str, kind: str = "") -> tuple:
    """The normalized form two messages are compared in (tool calls by name and arguments)."""
    if kind == "tools":
        return ("tools", text)
    if role == "assistant":
        parsed = parse_tool_calls(text)
        calls = tuple((c.name, json.dumps(c.arguments, sort_keys=True, ensure_ascii=False)) for c in parsed.calls)
        return ("assistant", parsed.content, calls)
    return (role, text)


_ROLES = {"human": "user", "user": "user", "ai": "assistant", "assistant": "assistant", "system": "system",
          "developer": "system", "tool": "tool", "function": "tool"}
_SKIPPED_BLOCKS = {"tool_use", "tool_call", "tool_call_chunk", "invalid_tool_call", "reasoning", "thinking"}


def _text(content: str | list, role: str) -> str:
    """The text of a message's content; text-only models refuse images, audio and files."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") in _SKIPPED_BLOCKS:
            continue  # tool calls travel in `tool_calls`; reasoning is not replayed
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ConfigError(f"agentmem models read text only, but a {role} message holds a {kind!r} content "
                              f"block; pass its text (or a description of it) instead")
    return "".join(parts)


def _turns(messages: Sequence[BaseMessage], tools_prompt: str | None) -> list[_Turn]:
    """LangChain messages as engine messages; the tool prompt (if any) comes first."""
    turns = [_Turn("system", tools_prompt, "tools")] if tools_prompt else []
    for message in messages:
        if isinstance(message, ChatMessage):
            role = _ROLES.get(message.role)
            if role is None:
                raise ConfigError(f"unknown chat message role {message.role!r}; use user, assistant, system or tool")
        elif isinstance(message, (ToolMessage, FunctionMessage)):
            role = "tool"
        elif isinstance(message, SystemMessage):
            role = "system"
        elif isinstance(message, HumanMessage):
            role = "user"
        elif isinstance(message, AIMessage):
            role = "assistant"
        else:
            raise ConfigError(f"cannot send a {type(message).__name__} to the model; use Human/AI/System/Tool messages")
        text = _text(message.content, role)
        if isinstance(message, AIMessage):
            text += "".join(format_tool_call(c["name"], c["args"]) for c in message.tool_calls)
        turns.append(_Turn(role, text))
    if not messages:
        raise ConfigError("no messages to answer; pass at least one message")
    return turns
