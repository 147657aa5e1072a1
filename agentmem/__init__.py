"""agentmem: keep long-running LLM agents inside a fixed KV-cache budget.

The heart is `compact`, which replaces a span of a transformers KV cache by far fewer
slots with Attention Matching (keys, per-key log-weights beta, least-squares values).
"""

from .compaction import METHODS, compact
from .errors import (
    AgentmemError,
    CompactionError,
    ConfigError,
    CorruptSessionError,
    ModelMismatchError,
    ModelNotAvailableError,
    NotAStoreError,
    SchemaVersionError,
    SessionNotFoundError,
    StaleSessionError,
    StoreBusyError,
    StoreWriteError,
    TransformersVersionError,
    UnsupportedModelError,
)
from .hf import CompactedCache, CompactedLayer, agentmem_attention, capture_queries, disable, enable

__version__ = "0.1.0"


_LAZY = {"Session": ".engine", "Reply": ".engine", "Store": ".store", "Policy": ".policies",
         "Segment": ".segments", "CompactionEvent": ".segments", "KVStats": ".segments"}


def __getattr__(name: str):
    """Import the engine, store and policies on first use (they are not needed to compact)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'agentmem' has no attribute {name!r}")


def load_model(name_or_path: str = "smollm2-135m", **kwargs):
    """Load a model and its tokenizer; see `agentmem.models.load_model`."""
    from .models import load_model as _load

    return _load(name_or_path, **kwargs)


__all__ = [
    "AgentmemError",
    "CompactionEvent",
    "KVStats",
    "Policy",
    "Reply",
    "Segment",
    "Session",
    "Store",
    "CompactedCache",
    "CompactedLayer",
    "CompactionError",
    "ConfigError",
    "METHODS",
    "ModelMismatchError",
    "CorruptSessionError",
    "ModelNotAvailableError",
    "NotAStoreError",
    "SchemaVersionError",
    "SessionNotFoundError",
    "StaleSessionError",
    "StoreBusyError",
    "StoreWriteError",
    "TransformersVersionError",
    "UnsupportedModelError",
    "agentmem_attention",
    "capture_queries",
    "compact",
    "disable",
    "enable",
    "load_model",
]
