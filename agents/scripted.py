"""`ScriptedModel`: a strict fake model for testing agents without weights.

A script is a list of entries, consumed in order, one per model reply:

- a string: the reply's text;
- a `ToolCall` (e.g. `ScriptedModel.call("read_file", path="a.py")`): a reply that calls it;
- a callable: called with the conversation's messages (role/content dicts), returns a
  string or a `ToolCall`;
- `ScriptedModel.compaction(...)`: not a reply but a compaction event the *next* reply
  fires through the compaction hooks (before its first token, or after `after_chunks`
  text pieces), so handlers and vetoes can be tested.

It is strict: a reply requested past the end of the script raises `ScriptError`, and
`assert_done()` raises if entries are left. `requests` records what each reply was asked
with (messages, tools, max_new_tokens, stop strings, forced prefix). Token counts are
word counts (a rough stand-in). No torch model is needed.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

from agentmem.engine import Reply
from agentmem.errors import CompactionVetoed, ConfigError, ScriptError
from agentmem.hooks import RemovableHandle, register
from agentmem.memory import AfterHook, BeforeHook, Plan, now
from agentmem.segments import CompactionEvent, KVStats
from agentmem.toolcalls import ToolCall, format_tool_call

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScriptedCompaction:
    """A compaction the next scripted reply reports through the hooks."""

    tokens_before: int = 1000
    tokens_after: int = 250
    reason: str = "scripted"
    after_chunks: int = 0  # text pieces of the reply yielded before it fires


@dataclass
class ScriptedRequest:
    """What the agent asked the scripted model for one reply."""

    messages: list[dict]
    tools: list[dict]
    max_new_tokens: int
    stop: list[str]
    prefix: str | None
    temperature: float | None


Entry = Union[str, ToolCall, ScriptedCompaction, Callable[[list[dict]], Union[str, ToolCall]]]


class ScriptedModel:
    """A fake model that answers from a script (see the module docstring).

    Args:
        script: the entries, in order.
        name: a name for logs and stores.
    """

    def __init__(self, script: Iterable[Entry], *, name: str = "scripted"):
        self.name = name
        self.script: collections.deque[Entry] = collections.deque()
        for entry in script:
            if not isinstance(entry, (str, ToolCall, ScriptedCompaction)) and not callable(entry):
                raise ConfigError(f"script entries are strings, ToolCall, ScriptedModel.compaction(...) or "
                                  f"callables; got {entry!r}")
            self.script.append(entry)
        self.requests: list[ScriptedRequest] = []
        self.replies = 0

    @staticmethod
    def call(name: str, /, **arguments: Any) -> ToolCall:
        """A scripted reply that calls tool `name` with `arguments`."""
        return ToolCall(name=name, arguments=arguments)

    @staticmethod
    def compaction(*, tokens_before: int = 1000, tokens_after: int = 250, reason: str = "scripted",
                   after_chunks: int = 0) -> ScriptedCompaction:
        """A compaction event fired by the next reply (see `ScriptedCompaction`)."""
        if tokens_after > tokens_before or tokens_after < 0:
            raise ConfigError(f"a compaction shrinks the cache: need 0 <= tokens_after <= tokens_before, "
                              f"got {tokens_after} and {tokens_before}")
        return ScriptedCompaction(tokens_before, tokens_after, reason, after_chunks)

    @property
    def remaining(self) -> int:
        """Script entries not used yet."""
        return len(self.script)

    def assert_done(self) -> None:
        """Raise `ScriptError` if the script has entries left over."""
        if self.script:
            raise ScriptError(f"{self.name}: {len(self.script)} scripted entries were never used "
                              f"(after {self.replies} replies), next: {self.script[0]!r}")

    def open(self, *, system: str | None, tools: Sequence[dict], policy: Any = None) -> ScriptedConversation:
        """A new conversation that takes its replies from this script."""
        return ScriptedConversation(self, system=system, tools=tools)

    def _next(self) -> tuple[list[ScriptedCompaction], Entry]:
        compactions = []
        while self.script and isinstance(self.script[0], ScriptedCompaction):
            compactions.append(self.script.popleft())
        if not self.script:
            raise ScriptError(f"{self.name}: asked for reply {self.replies + 1}, but the script has only "
                              f"{self.replies} replies" + (" (and compactions left with no reply after them)"
                                                           if compactions else ""))
        self.replies += 1
        return compactions, self.script.popleft()

    def __repr__(self) -> str:
        return f"ScriptedModel({self.name!r}, remaining={self.remaining})"


class ScriptedConversation:
    """A `Conversation` (see `agentmem.agents.models`) whose replies come from a `ScriptedModel`."""

    tokenizer = None

    def __init__(self, model: ScriptedModel, *, system: str | None, tools: Sequence[dict]):
        self.model, self.tools = model, list(tools)
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.before: list[BeforeHook] = []
        self.after: list[AfterHook] = []
        self.events: list[CompactionEvent] = []
        self.last_reply: Reply | None = None  # type: ignore[assignment]
        self._tokens = sum(_count(m["content"]) for m in self.messages) + _count(str(self.tools))
        self._cached = 0
        self._saved = 0  # tokens removed by scripted compactions

    def add(self, role: str, content: str) -> dict:
        """Append a message."""
        if role not in ("system", "user", "assistant", "tool"):
            raise ConfigError(f"unknown role {role!r}; use system, user, assistant or tool")
        if not isinstance(content, str):
            raise ConfigError(f"message content must be a string, got {type(content).__name__}")
        message = {"role": role, "content": content}
        self.messages.append(message)
        self._tokens += _count(content)
        return message

    def stream(self, max_new_tokens: int = 256, *, stop: Sequence[str] | str | None = None,
               temperature: float | None = None, prefix: str | None = None,
               logits_processor: Any = None, **_: Any) -> Iterator[str]:
        """Yield the next scripted reply in word-sized pieces; the `Reply` lands in `last_reply`."""
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        self.model.requests.append(ScriptedRequest([dict(m) for m in self.messages], self.tools, max_new_tokens,
                                                   stops, prefix, temperature))
        began, cached = time.perf_counter(), self._cached
        prompt = self._tokens - self._cached
        compactions, entry = self.model._next()
        text = self._text(entry)
        if prefix and not text.startswith(prefix):
            raise ScriptError(f"{self.model.name}: reply {self.model.replies} must start with {prefix!r} "
                              f"(the agent's tool_choice forces it), but the script says {text!r}")
        finish = "stop"
        cut = [i for s in stops if (i := text.find(s, len(prefix or ""))) >= 0]
        if cut:
            text, finish = text[: min(cut)], "stop_string"
        events: list[CompactionEvent] = []
        pieces = _pieces(text)
        for index, piece in enumerate(pieces + [""]):
            for compaction in [c for c in compactions if c.after_chunks == index or
                               index == len(pieces) and c.after_chunks > index]:
                events.append(self._compact(compaction))
            if piece:
                yield piece
        self.messages.append({"role": "assistant", "content": text})
        self._tokens += _count(text)
        self._cached = self._tokens
        ids = list(range(_count(text)))
        self.last_reply = Reply(text=text, token_ids=ids, finish_reason=finish, prompt_tokens=prompt,
                                cached_tokens=cached, seconds=time.perf_counter() - began, compactions=events)

    def on_before_compaction(self, hook: BeforeHook) -> RemovableHandle:
        return register(self.before, hook, "on_before_compaction")

    def on_after_compaction(self, hook: AfterHook) -> RemovableHandle:
        return register(self.after, hook, "on_after_compaction")

    def stats(self) -> KVStats:
        tokens = self._tokens - self._saved
        return KVStats(logical_tokens=self._tokens, physical_tokens=max(tokens, 0), bytes=0,
                       turns=sum(m["role"] == "user" for m in self.messages))

    # ------------------------------------------------------------------ helpers
    def _text(self, entry: Entry) -> str:
        if callable(entry) and not isinstance(entry, (str, ToolCall)):
            entry = entry([dict(m) for m in self.messages])
        if isinstance(entry, ToolCall):
            return format_tool_call(entry.name, entry.arguments)
        if isinstance(entry, str):
            return entry
        raise ScriptError(f"{self.model.name}: a scripted callable must return a string or a ToolCall, "
                          f"got {entry!r}")

    def _compact(self, compaction: ScriptedCompaction) -> CompactionEvent:
        plan = Plan(compaction.reason, [], self.stats())
        vetoed = False
        for hook in self.before:
            try:
                vetoed = hook(plan) is False
            except CompactionVetoed:
                vetoed = True
            if vetoed:
                break
        event = CompactionEvent(time=now(), trigger=compaction.reason, method="scripted",
                                ratio=compaction.tokens_before / max(compaction.tokens_after, 1), start=0,
                                end=compaction.tokens_before, tokens_before=compaction.tokens_before,
                                tokens_after=compaction.tokens_before if vetoed else compaction.tokens_after,
                                bytes_before=0, bytes_after=0, logical_tokens=self._tokens, seconds=0.0,
                                status="vetoed" if vetoed else "ok")
        self.events.append(event)
        if not vetoed:
            self._saved += compaction.tokens_before - compaction.tokens_after
            for hook in self.after:
                hook(event)
        return event


def _count(text: str) -> int:
    return len(text.split())


def _pieces(text: str) -> list[str]:
    """Word-sized pieces (each word with the whitespace before it) that join to `text`."""
    pieces: list[str] = []
    for word in text.split(" "):
        pieces.append(word if not pieces else " " + word)
    return [p for p in pieces if p] if text else []
