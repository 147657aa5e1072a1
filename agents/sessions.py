"""Conversation memory across runs: the `Session` protocol, `MemorySession`, `SQLiteSession`.

Items are role/content dicts (``{"role": "user", "content": "hi"}``; roles user,
assistant, tool, system). An assistant item that calls a tool holds the call as the model
wrote it (``<tool_call>{...}</tool_call>``); the tool's output follows as a ``tool`` item.

*Any* `Session` implementation works with the Runner: before a run it reads
`get_items()` and replays them into a fresh engine session (one prefill of the history);
after the run it passes the run's new items to `add_items`.

`SQLiteSession` is different: it is backed by agentmem's own `Store`, where the engine
commits every turn together with a checkpoint of the (compacted) KV cache. The next run,
in this process or a new one, resumes that cache with `agentmem.engine.Session.resume`:
nothing is prefilled again, and compacted history stays compacted. Its methods mean:

- `get_items()`: the stored conversation (without the agent's instructions and tool
  schemas, which the store keeps as the session's first messages), plus pending items.
- `add_items(items)`: the items are *pending*, held in this object, and appended to the
  conversation at the start of the next run (before that run's input).
- `pop_item()`: removes the last item. A KV cache cannot forget its end, so the stored
  session is rebuilt from the remaining items at the next run (one prefill); until then
  the removal is held in this object (if the process ends first, it is lost).
- `clear_session()`: deletes the stored session now.
- A run with another model raises the engine's `ModelMismatchError`; a run with other
  instructions or tools rebuilds the stored session from its items (one prefill), since
  those are part of the cache.

One `SQLiteSession` object per session id at a time: it keeps the live engine session
between runs of this process, and the store has one writer per session.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from agentmem.claim import claim
from agentmem.engine import Session as EngineSession
from agentmem.errors import ConfigError, SessionNotFoundError
from agentmem.policies import policy_from
from agentmem.store import Store
from agentmem.toolcalls import CLOSE, OPEN

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")


@runtime_checkable
class Session(Protocol):
    """Stores the items of a conversation between runs (sync methods; runs call them from a worker thread)."""

    session_id: str

    def get_items(self, limit: int | None = None) -> list[dict]:
        """The items, oldest first (only the last `limit` if given)."""
        ...

    def add_items(self, items: Sequence[dict]) -> None:
        """Append items."""
        ...

    def pop_item(self) -> dict | None:
        """Remove and return the last item (None if empty)."""
        ...

    def clear_session(self) -> None:
        """Remove every item."""
        ...


class MemorySession:
    """Items in a list in this process (replayed into a fresh engine session at each run).

    Args:
        session_id: a name for it.
        items: items to start with.
    """

    def __init__(self, session_id: str = "memory", items: Sequence[dict] = ()):
        self.session_id = session_id
        self.items: list[dict] = check_items(items)

    def get_items(self, limit: int | None = None) -> list[dict]:
        return [dict(i) for i in (self.items if limit is None else self.items[-limit:] if limit > 0 else [])]

    def add_items(self, items: Sequence[dict]) -> None:
        self.items.extend(check_items(items))

    def pop_item(self) -> dict | None:
        return self.items.pop() if self.items else None

    def clear_session(self) -> None:
        self.items.clear()

    def __repr__(self) -> str:
        return f"MemorySession({self.session_id!r}, items={len(self.items)})"


class SQLiteSession:
    """A session stored with its KV cache in an agentmem SQLite `Store` (see the module docstring).

    Args:
        session_id: the id of the session in the store (created on the first run).
        db_path: the database file (created if missing).
    """

    def __init__(self, session_id: str, db_path: str | os.PathLike = "agentmem.db"):
        if not isinstance(session_id, str) or not session_id:
            raise ConfigError(f"session_id must be a non-empty string, got {session_id!r}")
        self.session_id, self.db_path = session_id, db_path
        self.store = Store(db_path)
        self._pending: list[dict] = []
        self._rebuild: list[dict] | None = None  # items a rebuilt session starts from (after pop_item)
        self._live: tuple[Any, str, EngineSession] | None = None  # (model, setup key, engine session)

    # ------------------------------------------------------------------ Session protocol
    def get_items(self, limit: int | None = None) -> list[dict]:
        if self._rebuild is not None:
            items = [dict(i) for i in self._rebuild]
        elif self._live is not None:
            items = _items(self._live[2].messages, _preamble_of(self._live[1]))
        else:
            items = self._stored_items()
        items += [dict(i) for i in self._pending]
        return items if limit is None else items[-limit:] if limit > 0 else []

    def add_items(self, items: Sequence[dict]) -> None:
        self._pending.extend(check_items(items))

    def pop_item(self) -> dict | None:
        if self._pending:
            return self._pending.pop()
        items = self.get_items()
        if not items:
            return None
        self._rebuild, self._live = items[:-1], None
        return items[-1]

    def clear_session(self) -> None:
        self._pending, self._rebuild, self._live = [], None, None
        try:
            self.store.delete_session(self.session_id)
        except SessionNotFoundError:
            pass

    def close(self) -> None:
        """Close the database connection."""
        self._live = None
        self.store.close()

    def __repr__(self) -> str:
        return f"SQLiteSession({self.session_id!r}, db_path={str(self.db_path)!r})"

    # ------------------------------------------------------------------ used by the Runner
    def open(self, model: Any, *, system: str | None, tools: Sequence[dict], policy: Any) -> EngineSession:
        """The engine session for a run: live, resumed from the store, or new (`agentmem.claim`); pending items added.

        The live session is used while it has this model, instructions and tools and no other
        writer committed since; a stored one with other instructions or tools is rebuilt.
        """
        if not hasattr(model, "resume") or not hasattr(model, "fingerprint"):
            raise ConfigError(f"SQLiteSession stores a KV cache, so it needs a LocalModel (got {model!r}); "
                              f"use MemorySession with a ScriptedModel")
        setup = _setup_key(system, tools)
        if self._rebuild is not None:
            conversation = self._create(model, setup, system, tools, policy, self._rebuild)
        else:
            live = self._live[2] if self._live is not None and self._live[0] is model and self._live[1] == setup \
                else None
            claimed = claim(*model.load(), store=self.store, session_id=self.session_id, policy=policy,
                            live=[live] if live is not None else [],
                            create=lambda sid, origin: self._create(model, setup, system, tools, policy, []))
            conversation = claimed.session
            if claimed.origin == "live" and policy is not None:  # None: it keeps its policy (stored or given)
                conversation.policy = policy_from(policy)
            elif claimed.origin == "resumed":
                conversation = self._rebuilt(conversation, model, setup, system, tools, policy)
        for item in self._pending:
            conversation.add(item["role"], item["content"])
        self._pending, self._rebuild = [], None
        self._live = (model, setup, conversation)
        return conversation

    def finish(self, conversation: EngineSession, *, ok: bool) -> None:
        """After a run: commit what the engine has not (tool results after the last reply).

        A run that broke off (`ok` False) leaves the store at its last committed turn and
        the next run resumes from there.
        """
        if not ok:
            self._live = None
            return
        if conversation.messages and conversation.messages[-1]["role"] != "assistant":
            conversation.save()

    # ------------------------------------------------------------------ helpers
    def _rebuilt(self, conversation: EngineSession, model: Any, setup: str, system: str | None,
                 tools: Sequence[dict], policy: Any) -> EngineSession:
        """A resumed session as it is, or rebuilt from its items when its instructions or tools changed."""
        stored = (self.store.get_session(self.session_id).get("config") or {}).get("agents") or {}
        if conversation.messages and stored.get("setup") == setup:
            log.info("session %s resumed: %d cached tokens", self.session_id, conversation.cached)
            return conversation
        items = _items(conversation.messages, int(stored.get("preamble", 0)))
        if conversation.messages:
            log.info("session %s: instructions or tools changed; rebuilding it from %d items (one prefill)",
                     self.session_id, len(items))
        # A rebuild keeps the policy the session was stored with unless the agent names one.
        return self._create(model, setup, system, tools, conversation.policy if policy is None else policy, items)

    def _create(self, model: Any, setup: str, system: str | None, tools: Sequence[dict], policy: Any,
                items: Sequence[dict]) -> EngineSession:
        try:
            self.store.delete_session(self.session_id)
        except SessionNotFoundError:
            pass
        self.store.create_session(model=model.name, fingerprint=model.fingerprint, session_id=self.session_id,
                                  config={"agents": {"setup": setup, "preamble": _preamble_of(setup)}})
        conversation = model.open(system=system, tools=tools, policy=policy, store=self.store,
                                  session_id=self.session_id)
        for item in items:
            conversation.add(item["role"], item["content"])
        return conversation

    def _stored_items(self) -> list[dict]:
        try:
            row = self.store.get_session(self.session_id)
            messages = self.store.messages(self.session_id)
        except SessionNotFoundError:
            return []
        preamble = int(((row.get("config") or {}).get("agents") or {}).get("preamble", 0))
        return _items(messages, preamble)


def check_items(items: Sequence[dict]) -> list[dict]:
    """Validated copies of role/content items."""
    if isinstance(items, dict):
        raise ConfigError("add_items takes a list of items, e.g. [{'role': 'user', 'content': 'hi'}]")
    out = []
    for item in items:
        if not isinstance(item, dict) or item.get("role") not in ROLES or not isinstance(item.get("content"), str):
            raise ConfigError(f"an item is a dict with role in {ROLES} and string content; got {item!r}")
        out.append({"role": item["role"], "content": item["content"]})
    return out


def close_call(text: str) -> str:
    """`text` with a tool call left open at its end closed (the engine leaves stop strings out)."""
    at = text.rfind(OPEN)
    if at >= 0 and CLOSE not in text[at:]:
        return text + CLOSE
    return text


def _items(messages: Sequence[dict], preamble: int) -> list[dict]:
    return [{"role": m["role"], "content": close_call(m["content"]) if m["role"] == "assistant" else m["content"]}
            for m in messages[preamble:]]


def _setup_key(system: str | None, tools: Sequence[dict]) -> str:
    """A key of what the cache starts with; its last character is the preamble's length."""
    digest = hashlib.sha256(json.dumps({"system": system or "", "tools": list(tools)}, sort_keys=True).encode())
    return digest.hexdigest()[:16] + str(int(bool(system)) + int(bool(tools)))


def _preamble_of(setup: str) -> int:
    return int(setup[-1])
