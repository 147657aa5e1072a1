"""Every error agentmem raises on purpose.

`ConfigError` (a `ValueError`) means the caller passed a bad value; the message says what
to pass instead. The other classes name a state the caller can act on.
"""

from __future__ import annotations


class AgentmemError(Exception):
    """Base class of every error agentmem raises on purpose."""


class ConfigError(AgentmemError, ValueError):
    """A bad argument or setting: the message says which value and what to use instead."""


class ModelNotAvailableError(AgentmemError):
    """The weights of a model cannot be found here; the message says how to install them."""


class UnsupportedModelError(AgentmemError, ValueError):
    """The model's architecture or attention layout is one agentmem cannot compact."""


class ModelMismatchError(AgentmemError, ValueError):
    """A cache, session or profile was made by another model than the one given."""


class CompactionError(AgentmemError):
    """Compaction produced an unusable result (e.g. non-finite values); the input is untouched."""


class TransformersVersionError(AgentmemError, ImportError):
    """The installed transformers is outside the range agentmem is tested with."""


class SessionNotFoundError(AgentmemError, KeyError):
    """No session with that id in the store; `agentmem sessions list` shows the ids."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CorruptSessionError(AgentmemError):
    """A stored session (a KV checkpoint or a row) is damaged; other sessions are unaffected."""


class SchemaVersionError(AgentmemError):
    """The database was written by a newer agentmem (unknown migrations); upgrade agentmem."""


class CompactionVetoed(AgentmemError):
    """Raised by a `before_compaction` hook to stop one compaction (the engine catches it)."""


class MaxTurnsExceeded(AgentmemError):
    """An agent run used up `max_turns` model replies without a final output.

    `result` holds the partial run (`agentmem.agents.RunResult`): items, usage, compactions.
    """

    def __init__(self, message: str, result: object = None):
        super().__init__(message)
        self.result = result


class ScriptError(AgentmemError, AssertionError):
    """A `ScriptedModel` was asked for more replies than scripted, or has replies left over."""


class StaleSessionError(AgentmemError):
    """Another writer committed to this session after this copy loaded it.

    Nothing was written. Resume the session again (`Session.resume`) to continue from what
    is stored; the unsaved turns of this copy are in the exception's `unsaved` list.
    """

    def __init__(self, message: str, unsaved: list | None = None):
        super().__init__(message)
        self.unsaved = list(unsaved or [])


class StoreWriteError(AgentmemError, OSError):
    """SQLite refused a write (a full disk, a read-only file, a lock held too long).

    Nothing was written; the session keeps its unsaved turns, so `save()` can be retried
    once the cause is fixed.
    """


class StoreBusyError(StoreWriteError):
    """Another process held the database's write lock longer than the store's timeout."""


class NotAStoreError(AgentmemError):
    """The file is an SQLite database, but not one agentmem made; it is left untouched."""
