"""Records shared by the engine, the policies and the store.

A session's cache is a sequence of *segments*: each message (or an assistant tool call
together with its tool results) owns a logical token span [start, end) of the cache.
Policies look at segments and `KVStats` to decide when and what to compact; they never
see tensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

ROLES = ("system", "user", "assistant", "tool")
# Kinds: "system", "tools" (tool schemas), "user", "assistant", "tool_call" (an assistant
# tool call with its tool results), "generation" (the reply being decoded right now).
KINDS = ("system", "tools", "user", "assistant", "tool_call", "generation")


@dataclass
class Segment:
    """One message (or tool-call group) and the logical cache tokens it owns."""

    index: int
    role: str
    kind: str
    start: int  # logical token span [start, end) in the cache
    end: int
    turn: int = 0  # user turns before it, counting its own (the system prompt is turn 0)
    pinned: bool = False  # pinned by the user: never compacted
    compactions: int = 0  # how often this span was compacted
    messages: list[int] = field(default_factory=list)  # indices into the session's messages

    @property
    def tokens(self) -> int:
        return self.end - self.start

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Segment:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class KVStats:
    """What a trigger may look at: the cache's size now and the session's progress."""

    logical_tokens: int  # tokens the cache stands for
    physical_tokens: int  # slots actually stored per full-attention layer (mean over layers)
    bytes: int  # physical bytes of all layers
    turns: int = 0  # user turns so far
    context_length: int | None = None  # the model's maximum positions, if known
    bytes_per_token: float = 0.0  # bytes one more uncompacted token adds
    device_free_fraction: float | None = None  # free / total device memory, if measured
    # Added for policies.EveryNTurns: the `turns` value at the last compaction (-1: none yet),
    # so a stateless every-N-turns trigger fires once per turn, not on every prefill.
    last_compaction_turn: int = -1


@dataclass(frozen=True)
class CompactionEvent:
    """One compaction (or fallback drop) as the store keeps it."""

    time: str  # ISO-8601 UTC
    trigger: str  # why: a trigger's reason, "manual" or "online"
    method: str  # compaction method, or "drop" for the fallback
    ratio: float
    start: int  # logical span compacted
    end: int
    tokens_before: int  # physical tokens of the whole cache
    tokens_after: int
    bytes_before: int
    bytes_after: int
    logical_tokens: int
    seconds: float
    status: str = "ok"  # ok | fallback | failed | vetoed | over_budget (pins and recent tokens hold it over)
    error: str | None = None
    segments: tuple[int, ...] = ()
    quality: dict | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["segments"] = list(self.segments)
        return data
