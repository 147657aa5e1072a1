"""Ratios: *how much* to compact each eligible segment.

A ratio of 5 keeps a fifth of a span's physical slots; 1 leaves it as it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from agentmem.errors import ConfigError
from agentmem.ratio import check_ratio
from agentmem.segments import KINDS, KVStats, Segment

from ._config import build, check_int, register, to_table


@runtime_checkable
class Ratio(Protocol):
    """Anything with a `ratio_for` method can decide how hard to compact."""

    def ratio_for(self, segment: Segment, stats: KVStats, eligible_physical: int) -> float:
        """Return the compaction ratio (>= 1) for one eligible segment.

        Args:
            segment: the segment about to be compacted.
            stats: the cache now.
            eligible_physical: physical slots of all segments about to be compacted.
        """
        ...


@dataclass(frozen=True)
class FixedRatio:
    """The same ratio for every segment, optionally overridden per segment kind.

    Attributes:
        ratio: ratio for kinds not in `by_kind`, >= 1.
        by_kind: ratio per `Segment.kind`, e.g. {"tool_call": 20, "user": 3}; stored read-only.
        again: ratio for a segment compacted before (its slots already stand for `ratio`
            times as many tokens), >= 1; None: the same as a fresh one. Every compaction
            compacts the whole unpinned history, so at `ratio` 5 the oldest turns stand at
            5x, 25x, 125x after one, two, three compactions; `again=2` gives 5x, 10x, 20x.
    """

    ratio: float = 5.0
    by_kind: Mapping[str, float] = field(default_factory=dict, hash=False)
    again: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratio", check_ratio("FixedRatio", "ratio", self.ratio))
        if not isinstance(self.by_kind, Mapping):
            raise ConfigError(f"FixedRatio: by_kind must map segment kinds to ratios, got {self.by_kind!r}")
        by_kind = {}
        for kind, value in self.by_kind.items():
            if kind not in KINDS:
                raise ConfigError(f"FixedRatio: unknown segment kind {kind!r} in by_kind; kinds: {', '.join(KINDS)}")
            by_kind[kind] = check_ratio("FixedRatio", f"by_kind[{kind!r}]", value)
        object.__setattr__(self, "by_kind", MappingProxyType(by_kind))
        if self.again is not None:
            object.__setattr__(self, "again", check_ratio("FixedRatio", "again", self.again))

    def ratio_for(self, segment: Segment, stats: KVStats, eligible_physical: int) -> float:
        if self.again is not None and segment.compactions > 0:
            return self.again
        return self.by_kind.get(segment.kind, self.ratio)


@dataclass(frozen=True)
class TargetSize:
    """Pick the ratio that brings the whole cache near `tokens` physical slots.

    Everything not being compacted stays; the eligible slots must shrink to what is left
    of the target: ratio = eligible / (tokens - untouched), clamped to [min_ratio, max_ratio].

    Attributes:
        tokens: physical tokens to aim for after compaction, >= 1.
        min_ratio: smallest ratio used (also when the target is already met), >= 1.
        max_ratio: largest ratio used, >= min_ratio.
    """

    tokens: int
    min_ratio: float = 2.0
    max_ratio: float = 50.0

    def __post_init__(self) -> None:
        check_int("TargetSize", "tokens", self.tokens, minimum=1)
        object.__setattr__(self, "min_ratio", check_ratio("TargetSize", "min_ratio", self.min_ratio))
        object.__setattr__(self, "max_ratio", check_ratio("TargetSize", "max_ratio", self.max_ratio))
        if self.max_ratio < self.min_ratio:
            raise ConfigError(
                f"TargetSize: max_ratio ({self.max_ratio:g}) must be >= min_ratio ({self.min_ratio:g}); swap them"
            )

    def ratio_for(self, segment: Segment, stats: KVStats, eligible_physical: int) -> float:
        keep = self.tokens - (stats.physical_tokens - eligible_physical)
        ratio = eligible_physical / max(keep, 1)
        if not math.isfinite(ratio):
            return self.max_ratio
        return min(max(ratio, self.min_ratio), self.max_ratio)


RATIOS: dict[str, type] = {
    "fixed": FixedRatio,
    "target": TargetSize,
}


def register_ratio(name: str, cls: type, *, replace: bool = False) -> type:
    """Make a ratio class selectable by `name` in config (`[ratio] kind = name`).

    Args:
        name: the config name.
        cls: a class with `ratio_for(segment, stats, eligible_physical)`; the table's other
            keys are its keyword arguments (or the argument of its classmethod `from_dict`).
        replace: allow replacing a class already registered under `name`.

    Returns:
        `cls`, unchanged.
    """
    return register("ratio", RATIOS, name, cls, "ratio_for", replace)


def ratio_from(data: object) -> Ratio:
    """Build a ratio from a config value: a number (a `FixedRatio`) or a table with `kind`.

    Raises:
        ConfigError: unknown kind, unknown keys or bad values.
    """
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return FixedRatio(data)
    return build("ratio", RATIOS, data)


def ratio_to_data(ratio: Ratio) -> dict[str, Any]:
    """The config value `ratio_from` turns back into `ratio`."""
    return to_table("ratio", RATIOS, ratio)
