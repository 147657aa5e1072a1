"""agentmem: keep long-running LLM agents inside a fixed KV-cache budget.

The heart is `compact`, which replaces a span of a transformers KV cache by far fewer
slots with Attention Matching (keys, per-key log-weights beta, least-squares values).
"""

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

__version__ = "0.1.0"

# Public names and the module each comes from. `import agentmem` imports only the errors:
# torch and transformers (about 2 s, more than the CLI's `--help` or `sessions list` need)
# load on first use of a name below.
_LAZY = {"compact": ".compaction", "METHODS": ".compaction",
         "CompactedCache": ".hf", "CompactedLayer": ".hf", "agentmem_attention": ".hf",
         "capture_queries": ".hf", "disable": ".hf", "enable": ".hf",
         "Session": ".engine", "Reply": ".engine", "Store": ".store", "Policy": ".policies",
         "Segment": ".segments", "CompactionEvent": ".segments", "KVStats": ".segments"}


def __getattr__(name: str):
    """Import a public name's module on first use; `agentmem.hf` and other submodules likewise."""
    import importlib
    import importlib.util

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'agentmem' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def load_model(name_or_path: str = "smollm2-135m", **kwargs):
    """Load a model and its tokenizer; see `agentmem.loading.load_model`."""
    from .loading import load_model as _load

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
