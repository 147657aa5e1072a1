"""Triggers: *when* to compact.

A trigger looks at `KVStats` and the number of tokens about to be prefilled and returns
a short reason ("physical tokens 2050 > limit 2048") when the cache must be compacted
first, or None. Triggers are stateless: what they need of the session's history comes in
`KVStats` (e.g. `last_compaction_turn`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from agentmem.errors import ConfigError
from agentmem.segments import KVStats

from ._config import build, check_fraction, check_int, format_bytes, parse_bytes, register, to_table


@runtime_checkable
class Trigger(Protocol):
    """Anything with a `should_compact` method can decide when to compact."""

    def should_compact(self, stats: KVStats, incoming: int) -> str | None:
        """Return why the cache must be compacted before prefilling `incoming` tokens, or None."""
        ...


@dataclass(frozen=True)
class TokenLimit:
    """Fire when the physical slots would exceed `limit` after the next prefill.

    Attributes:
        limit: most physical tokens (slots of the widest full-attention layer) allowed.
    """

    limit: int

    def __post_init__(self) -> None:
        check_int("TokenLimit", "limit", self.limit, minimum=1)

    def should_compact(self, stats: KVStats, incoming: int) -> str | None:
        total = stats.physical_tokens + incoming
        return f"physical tokens {total} > limit {self.limit}" if total > self.limit else None


@dataclass(frozen=True)
class ByteLimit:
    """Fire when the cache's bytes would exceed `limit` after the next prefill.

    Attributes:
        limit: most bytes of all layers allowed; `from_dict` also takes "512MB" or "2GiB".
    """

    limit: int

    def __post_init__(self) -> None:
        check_int("ByteLimit", "limit", self.limit, minimum=1)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ByteLimit:
        """Build from a config table, parsing size strings such as "512MB" (KB = 1000, KiB = 1024)."""
        if "limit" not in data:
            raise ConfigError("trigger 'bytes' needs a limit, e.g. limit = \"2GiB\"")
        return cls(limit=parse_bytes(data["limit"]))

    def should_compact(self, stats: KVStats, incoming: int) -> str | None:
        total = stats.bytes + incoming * stats.bytes_per_token
        if total <= self.limit:
            return None
        return f"cache bytes {format_bytes(total)} > limit {format_bytes(self.limit)}"


@dataclass(frozen=True)
class ContextFraction:
    """Fire when physical tokens would exceed `fraction` of the model's context length.

    Does nothing when the context length is unknown (`stats.context_length` is None).

    Attributes:
        fraction: share of the context length, in (0, 1].
    """

    fraction: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraction", check_fraction("ContextFraction", "fraction", self.fraction))

    def should_compact(self, stats: KVStats, incoming: int) -> str | None:
        if stats.context_length is None:
            return None
        total = stats.physical_tokens + incoming
        if total <= self.fraction * stats.context_length:
            return None
        return f"physical tokens {total} > {self.fraction:g} of context length {stats.context_length}"


@dataclass(frozen=True)
class EveryNTurns:
    """Fire once at every `n`-th user turn (at turn n, 2n, ...), not again until the next one.

    Attributes:
        n: turns between compactions, >= 1.
    """

    n: int

    def __post_init__(self) -> None:
        check_int("EveryNTurns", "n", self.n, minimum=1)

    def should_compact(self, stats: KVStats, incoming: int) -> str | None:
        turns = stats.turns
        if turns > 0 and turns % self.n == 0 and turns != stats.last_compaction_turn:
            return f"turn {turns} is a multiple of {self.n}"
        return None


@dataclass(frozen=True)
class DeviceMemory:
    """Fire when the device's free memory falls below `min_free_fraction` of its total.

    Does nothing when free memory is not measured (`stats.device_free_fraction` is None).

    Attributes:
        min_free_fraction: free / total below which to compact, in (0, 1].
    """

    min_free_fraction: float

    def __post_init__(self) -> None:
        value = check_fraction("DeviceMemory", "min_free_fraction", self.min_free_fraction)
        object.__setattr__(self, "min_free_fraction", value)

    def should_compact(self, stats: KVStats, incoming: int) -> str | None:
        free = stats.device_free_fraction
        if free is None or free >= self.min_free_fraction:
            return None
        return f"device free memory {free:.1%} < {self.min_free_fraction:.1%}"


@dataclass(frozen=True)
class Never:
    """Never fire (compaction only when asked for by hand)."""

    def should_compact(self, stats: KVStats, incoming: int) -> str | None:
        return None


@dataclass(frozen=True)
class AnyTrigger:
    """Fire when any member fires, with the first member's reason.

    Attributes:
        triggers: the members, asked in order.
    """

    triggers: tuple[Trigger, ...]

    def __post_init__(self) -> None:
        members = tuple(self.triggers) if isinstance(self.triggers, (list, tuple)) else None
        if not members or not all(isinstance(t, Trigger) for t in members):
            raise ConfigError(f"AnyTrigger needs a non-empty tuple of triggers (objects with should_compact), "
                              f"got {self.triggers!r}")
        object.__setattr__(self, "triggers", members)

    def should_compact(self, stats: KVStats, incoming: int) -> str | None:
        for trigger in self.triggers:
            reason = trigger.should_compact(stats, incoming)
            if reason:
                return reason
        return None


TRIGGERS: dict[str, type] = {
    "tokens": TokenLimit,
    "bytes": ByteLimit,
    "context": ContextFraction,
    "turns": EveryNTurns,
    "memory": DeviceMemory,
    "never": Never,
}


def register_trigger(name: str, cls: type, *, replace: bool = False) -> type:
    """Make a trigger class selectable by `name` in config (`[trigger] kind = name`).

    Args:
        name: the config name.
        cls: a class with `should_compact(stats, incoming)`; the table's other keys are
            its keyword arguments (or the argument of its classmethod `from_dict`).
        replace: allow replacing a class already registered under `name`.

    Returns:
        `cls`, unchanged.
    """
    return register("trigger", TRIGGERS, name, cls, "should_compact", replace)


def trigger_from(data: object) -> Trigger:
    """Build a trigger from a config value: a table, a kind name, or a list of those (any fires).

    Raises:
        ConfigError: unknown kind, unknown keys or bad values.
    """
    if isinstance(data, Sequence) and not isinstance(data, str):
        return AnyTrigger(tuple(trigger_from(item) for item in data))
    return build("trigger", TRIGGERS, data)


def trigger_to_data(trigger: Trigger) -> dict[str, Any] | list[Any]:
    """The config value `trigger_from` turns back into `trigger`."""
    if isinstance(trigger, AnyTrigger):
        return [trigger_to_data(t) for t in trigger.triggers]
    return to_table("trigger", TRIGGERS, trigger)
