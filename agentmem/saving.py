"""How far a session's store is behind it, and the commit of one turn.

A `SaveMark` records what this copy of a session last wrote or loaded: the stored
version (for optimistic concurrency), how many messages and events are stored, and the
block hashes of the last KV checkpoint with how many cache tokens still match them.
`SaveMark.commit` writes everything after the mark in one transaction (`Store.commit_turn`),
passing unchanged KV blocks by hash, then moves the mark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from . import hf
from .checkpoint import checkpoint_layers
from .errors import SessionNotFoundError, StaleSessionError
from .segments import CompactionEvent, Segment


@dataclass
class SaveMark:
    """What the store holds of a session already (see the module docstring)."""

    version: int = 0  # the stored session's version this copy last saw or wrote
    messages: int = 0  # messages stored
    events: int = 0  # compaction events stored
    blocks: list[list[str]] = field(default_factory=list)  # block hashes of the last checkpoint, per layer
    stable: int = 0  # cache tokens whose slots are unchanged since that checkpoint

    @classmethod
    def stored(cls, store, session_id: str, *, version: int, messages: int, events: int, cached: int) -> SaveMark:
        """The mark of a session just loaded from `store` with `cached` tokens in its cache."""
        return cls(version=version, messages=messages, events=events, blocks=store.checkpoint_blocks(session_id),
                   stable=cached)

    def changed(self, start: int) -> None:
        """The cache's slots from logical token `start` on were rewritten (a compaction or a drop)."""
        self.stable = min(self.stable, start)

    def checkpoint(self, cache, cached: int) -> list[dict]:
        """`cache` as checkpoint layers, blocks unchanged since the mark passed by hash."""
        return checkpoint_layers(cache, self.blocks, min(self.stable, cached))

    def commit(self, store, session_id: str, *, messages: Sequence[dict], segments: Sequence[Segment],
               events: Sequence[CompactionEvent], cache, cached: int, queries: list[dict], state: dict) -> None:
        """Store what came after the mark in one transaction, with a checkpoint of `cache`; move the mark.

        `queries` are further checkpoint entries (the session's kept queries); `state` is the
        session's stored state row.

        Raises:
            StaleSessionError: another writer committed to the session, or deleted it, since
                the mark; nothing was written, and the error's `unsaved` holds the messages.
            StoreBusyError: the database stayed locked past the store's timeout.
        """
        logical, physical, nbytes = hf.cache_size(cache)
        unsaved = list(messages[self.messages:])
        try:
            store.commit_turn(
                session_id,
                messages=unsaved,
                segments=segments,
                events=list(events[self.events:]),
                checkpoint=self.checkpoint(cache, cached) + queries,
                checkpoint_info={"logical_tokens": logical, "physical_tokens": physical, "bytes": nbytes},
                state=state,
                expect_version=self.version,
            )
        except StaleSessionError as exc:
            raise StaleSessionError(str(exc), unsaved=unsaved) from None
        except SessionNotFoundError:
            raise StaleSessionError(
                f"session {session_id!r} was deleted from {store.path} by another writer after this copy "
                f"loaded it; nothing was written. session.save_as_new() stores this copy as a new session",
                unsaved=unsaved) from None
        self.version += 1
        self.messages, self.events = len(messages), len(events)
        self.blocks, self.stable = store.checkpoint_blocks(session_id), cached
