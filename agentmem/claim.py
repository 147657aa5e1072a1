"""Which engine session a turn continues: the live one, one resumed from the store, or a new one.

`ChatAgentMem`, the agents' `SQLiteSession` and `agentmem chat` decide it the same way,
with `claim`, in this order:

1. **live**: a session this process holds, while it is current (`is_current`: its store
   still holds the version this copy last saw, so no other process or object committed
   since) and its messages fit the turn. A stale copy is not used: the store has newer turns.
2. **resumed**: else a stored session whose messages fit, resumed from its KV checkpoint
   (`Session.resume`: nothing is prefilled again; `policy=None` keeps the stored policy).
3. **new** or **branch**: else a new session, made by the caller (its store row, system
   prompt and tools are the caller's). It is a *branch* when the conversation already has
   sessions but none fits; with `branches` it then gets the id ``"<id>/2"``, ``"<id>/3"``, ...
   With `shared` (how many leading messages a session has in common with the turn), the
   new session is instead a *fork* of the live or stored session sharing the most, rolled
   back to the common prefix (`Session.fork(messages=n)`), so a regenerated or edited last
   turn prefills only what follows it; `adopt` gives the fork its id and store row. Where
   the cache cannot be cut there (inside a compacted span, or past a sliding window), the
   next candidate is tried, and then a new session is made as before (logged).

A conversation is named by a session id; with `branches` its sessions are that id and its
branch ids. Where several fit, the one that keeps the most messages wins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, SessionNotFoundError

log = logging.getLogger(__name__)

ORIGINS = ("live", "resumed", "new", "branch")

Fits = Callable[[Sequence[dict]], "int | None"]
Shared = Callable[[Sequence[dict]], int]


@dataclass
class Claim:
    """The session a turn continues, and how it was found (one of `ORIGINS`).

    `forked_from` names the session a new or branch session was forked from (None: it
    starts empty); `shared` is how many of its messages the fork kept.
    """

    session: Any
    origin: str
    forked_from: str | None = None
    shared: int = 0


def is_current(session: Any) -> bool:
    """Whether `session` still is what its store holds (True without a store).

    False when another process or object committed to the stored session (or deleted it)
    after this copy loaded or last saved it.
    """
    if session.store is None:
        return True
    try:
        return session.store.get_session(session.id)["version"] == session.version
    except SessionNotFoundError:
        return False


def branch_id(session_id: str | None, taken: Collection[str]) -> str | None:
    """`session_id` if it is free, else its first free branch id ``"<id>/N"`` (None stays None)."""
    if session_id is None or session_id not in taken:
        return session_id
    n = 2
    while f"{session_id}/{n}" in taken:
        n += 1
    return f"{session_id}/{n}"


def _everything(messages: Sequence[dict]) -> int:
    return len(messages)


def claim(model: Any, tokenizer: Any, *, create: Callable[[str | None, str], Any] | None,
          store: Any = None, session_id: str | None = None, live: Sequence[Any] = (),
          fits: Fits = _everything, branches: bool = False, taken: Collection[str] = (),
          shared: Shared | None = None, adopt: Callable[[Any, str | None], Any] | None = None,
          policy: Any = None, **options: Any) -> Claim:
    """The session a turn continues (see the module docstring).

    Args:
        model, tokenizer: the loaded model; a stored session resumes on it.
        create: `create(session_id, origin)` makes a new session ("new" or "branch"). None:
            the stored session must exist (`Session.resume` raises `SessionNotFoundError`).
        store: the `Store` to resume from (None: nothing is stored).
        session_id: the conversation's id (None: an unnamed one; nothing is resumed).
        live: the sessions this process holds for the conversation.
        fits: how many of a session's messages the turn keeps (None: it does not fit);
            applied to live sessions' and stored sessions' messages alike.
        branches: the conversation has branch sessions ``"<id>/N"``; a stored one made
            with another model is passed over (logged) instead of raising.
        taken: ids a new session may not get (e.g. sessions held in memory).
        shared: how many leading messages of a session the turn has in common with it; with
            it, a new or branch session is forked from the session sharing the most (>= 1).
        adopt: `adopt(fork, session_id)` gives a fork (an in-memory `Session`) the id a new
            session would get (None: an unnamed one) and its store row; returns the session
            to use. Needed with `shared`.
        policy, options: `Session.resume` keywords (policy None keeps the stored one).

    Raises:
        ModelMismatchError: without `branches`, the stored session was made with another model.
        SessionNotFoundError: `create` is None and the store has no session `session_id`.
    """
    if create is None and (store is None or session_id is None):
        raise ConfigError("claim: without create, a store and a session_id are needed to resume from")
    if shared is not None and (adopt is None or create is None):
        raise ConfigError("claim: shared needs adopt (to name and store a fork) and create")
    current = [s for s in live if is_current(s)]  # a stale copy is not used, nor does it hide the stored one
    fitting = [(n, s) for s in current if (n := fits(s.messages)) is not None]
    if fitting:
        return Claim(max(fitting, key=lambda pair: pair[0])[1], "live")
    held = {s.id for s in current}
    stored = _stored_ids(store, session_id, branches) if store is not None and session_id is not None else []
    if create is None and not stored:
        stored = [session_id]  # resumed below: the store says what is missing
    best = _best_stored(store, stored, held, fits, model, branches, strict=create is None)
    if best is not None:
        from .engine import Session

        session = Session.resume(store, best, model, tokenizer, policy=policy, **options)
        return Claim(session, "resumed")
    origin = "branch" if session_id is not None and (current or stored) else "new"
    new_id = branch_id(session_id, set(stored) | set(taken)) if branches else session_id
    if shared is not None and adopt is not None:
        fork = _fork(model, tokenizer, current, store, stored, held, shared, policy, options)
        if fork is not None:
            base, kept, session = fork
            log.info("the messages share %d messages with session %r; forking it as %r", kept, base, new_id)
            return Claim(adopt(session, new_id), origin, forked_from=base, shared=kept)
    if origin == "branch":
        log.info("the messages do not fit any session of conversation %r; starting %r", session_id, new_id)
    return Claim(create(new_id, origin), origin)


def _fork(model: Any, tokenizer: Any, current: Sequence[Any], store: Any, stored: Sequence[str], held: set[str],
          shared: Shared, policy: Any, options: dict) -> tuple[str, int, Any] | None:
    """(base id, messages kept, fork) of the session sharing the most messages that can be cut there."""
    candidates: list[tuple[int, int, Any]] = [(shared(s.messages), 1, s) for s in current]  # live first on ties
    if store is not None:
        fingerprint = _fingerprint(model)  # a fork saves work; a session of another model is no error here
        candidates += [(shared(store.messages(sid)), 0, sid) for sid in stored
                       if sid not in held and store.get_session(sid)["fingerprint"] == fingerprint]
    for kept, _, base in sorted(candidates, key=lambda c: c[:2], reverse=True):
        if kept < 1:
            break
        if isinstance(base, str):
            from .engine import Session

            base = Session.resume(store, base, model, tokenizer, policy=policy, **options)
        try:
            return base.id, kept, base.fork(messages=kept)
        except ConfigError as exc:
            log.info("cannot fork session %r at its %d shared messages: %s", base.id, kept, exc)
    return None


def _fingerprint(model: Any) -> str:
    from .loading import model_fingerprint

    return model_fingerprint(model)


def _stored_ids(store: Any, session_id: str, branches: bool) -> list[str]:
    if branches:
        return [s["id"] for s in store.list_sessions()
                if s["id"] == session_id or s["id"].startswith(session_id + "/")]
    try:
        store.get_session(session_id)
    except SessionNotFoundError:
        return []
    return [session_id]


def _best_stored(store: Any, ids: Sequence[str], held: set[str], fits: Fits, model: Any, branches: bool, *,
                 strict: bool) -> str | None:
    """The stored session (not held live) whose messages fit the most; with `branches`, of this model only."""
    if strict:
        return ids[0] if ids else None
    fingerprint = _fingerprint(model) if branches else None
    best: tuple[int, str] | None = None
    for sid in ids:
        if sid in held:
            continue  # its live copy is newer and did not fit
        if fingerprint is not None and store.get_session(sid)["fingerprint"] != fingerprint:
            log.warning("stored session %r was made with another model; not resuming it", sid)
            continue
        kept = fits(store.messages(sid))
        if kept is not None and (best is None or kept > best[0]):
            best = (kept, sid)
    return None if best is None else best[1]
