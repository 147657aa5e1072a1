"""`Policy`: a trigger, a ratio and a pin bundled with the compaction settings.

A policy holds configuration only. The engine asks `should_compact` before each prefill
and, when it fires, compacts the spans `plan` returns. Per-session state (turns, the last
compaction) lives on the session and reaches the policy through `KVStats`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from agentmem.errors import ConfigError
from agentmem.ratio import check_ratio
from agentmem.segments import KVStats, Segment

from ._config import check_int
from .pins import AnyPin, Pin, PinFirstUser, PinLastTurns, PinSystem, PinToolSchemas, PinUser, pin_from, pin_to_data
from .ratios import FixedRatio, Ratio, ratio_from, ratio_to_data
from .triggers import Never, TokenLimit, Trigger, trigger_from, trigger_to_data

PolicyLike = Union["Policy", str, "os.PathLike[str]", Mapping[str, Any], None]


@dataclass(frozen=True)
class Span:
    """One logical span [start, end) to compact at `ratio`, made of whole segments.

    Attributes:
        start: first logical token.
        end: one past the last logical token.
        ratio: compaction ratio, >= 1.
        segments: `Segment.index` of each segment in the span, in order.
    """

    start: int
    end: int
    ratio: float
    segments: tuple[int, ...]

    @property
    def tokens(self) -> int:
        return self.end - self.start


def _default_pin() -> AnyPin:
    return AnyPin((PinSystem(), PinToolSchemas(), PinFirstUser(), PinLastTurns(1), PinUser()))


_SETTINGS = ("method", "protect_recent", "min_segment_tokens", "enabled")
_KEYS = ("preset", "trigger", "ratio", "pin", *_SETTINGS)


@dataclass(frozen=True)
class Policy:
    """When, how much and what never to compact. `Policy()` is the "default" preset.

    Attributes:
        trigger: when to compact (see `agentmem.policies.triggers`).
        ratio: how hard to compact each segment (see `agentmem.policies.ratios`).
        pin: which segments are never compacted (see `agentmem.policies.pins`).
        method: compaction method name, e.g. "am-fast" or "am" (`agentmem.compaction.METHODS`).
        protect_recent: logical tokens at the end of the cache never compacted, also
            during one long generation.
        min_segment_tokens: segments with fewer physical slots are not worth compacting.
        enabled: False turns the policy off: it never fires and plans nothing.
    """

    trigger: Trigger = field(default_factory=lambda: TokenLimit(2048))
    ratio: Ratio = field(default_factory=FixedRatio)
    pin: Pin = field(default_factory=_default_pin)
    method: str = "am-fast"
    protect_recent: int = 64
    min_segment_tokens: int = 8
    enabled: bool = True

    def __post_init__(self) -> None:
        for name, protocol, method in (("trigger", Trigger, "should_compact"), ("ratio", Ratio, "ratio_for"),
                                       ("pin", Pin, "pinned")):
            if not isinstance(getattr(self, name), protocol):
                raise ConfigError(f"Policy.{name} must have a `{method}` method, got {getattr(self, name)!r}")
        from agentmem.compaction import METHODS  # lazy: compaction imports torch

        if not isinstance(self.method, str) or self.method not in METHODS:
            raise ConfigError(f"Policy.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        check_int("Policy", "protect_recent", self.protect_recent, minimum=0)
        check_int("Policy", "min_segment_tokens", self.min_segment_tokens, minimum=1)
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"Policy.enabled must be true or false, got {self.enabled!r}")

    def should_compact(self, stats: KVStats, incoming: int) -> str | None:
        """Why the cache must be compacted before prefilling `incoming` tokens, or None.

        Args:
            stats: the cache now.
            incoming: tokens about to be prefilled (1 while decoding).
        """
        if not self.enabled:
            return None
        return self.trigger.should_compact(stats, incoming) or None

    def plan(self, segments: Sequence[Segment], stats: KVStats, *, physical: Mapping[int, int]) -> list[Span]:
        """The spans to compact now, sorted by start, each made of adjacent whole segments.

        A segment is eligible when it is not pinned (by `pin`, or by the user:
        `Segment.pinned` always holds) and ends at or before
        `stats.logical_tokens - protect_recent` (a segment crossing that boundary is left
        alone: the engine splits a long generation there first). Adjacent eligible segments
        with the same ratio merge into one span; segments whose ratio is 1 are skipped, and
        so are spans holding fewer than `min_segment_tokens` physical slots. The size rule
        is per span, not per segment: a segment compacted down to a few slots joins its
        neighbours at the next compaction, so such residues cannot pile up over hundreds of
        turns (they did, one per segment, before).

        Args:
            segments: every segment of the session.
            stats: the cache now.
            physical: `Segment.index` -> that segment's physical slots now.

        Returns:
            The spans, or [] when the policy is disabled or nothing is eligible.

        Raises:
            ConfigError: `physical` lacks an eligible segment, or the ratio returned a
                value below 1.
        """
        if not self.enabled or not segments:
            return []
        boundary = stats.logical_tokens - self.protect_recent
        eligible: list[Segment] = []
        for segment in sorted(segments, key=lambda s: s.start):
            if segment.end > boundary or segment.tokens <= 0:
                continue
            if segment.index not in physical:
                raise ConfigError(f"plan: physical has no entry for segment {segment.index}; pass all segments")
            if segment.pinned or physical[segment.index] <= 0:
                continue  # a user's pin on the session holds whatever the policy's pins say
            if not self.pin.pinned(segment, segments):
                eligible.append(segment)
        eligible_physical = sum(physical[s.index] for s in eligible)
        spans: list[Span] = []
        for segment in eligible:
            ratio = check_ratio(f"{type(self.ratio).__name__}.ratio_for", f"segment {segment.index}'s ratio",
                                self.ratio.ratio_for(segment, stats, eligible_physical))
            if ratio == 1:
                continue
            last = spans[-1] if spans else None
            if last is not None and last.end == segment.start and last.ratio == ratio:
                spans[-1] = Span(last.start, segment.end, last.ratio, (*last.segments, segment.index))
            else:
                spans.append(Span(segment.start, segment.end, float(ratio), (segment.index,)))
        return [span for span in spans if sum(physical[i] for i in span.segments) >= self.min_segment_tokens]

    def with_(self, **changes: Any) -> Policy:
        """A copy with some fields changed, e.g. `policy.with_(method="am")`."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def named(cls, name: str) -> Policy:
        """The preset called `name`: one of `PRESETS` ("default", "aggressive", "quality", "off")."""
        if name not in PRESETS:
            raise ConfigError(f"unknown policy preset {name!r}; presets: {', '.join(PRESETS)}")
        return PRESETS[name]

    @classmethod
    def budget(cls, limit: int, ratio: float = 5.0, *, method: str = "am-fast", pins: Any = None,
               protect_recent: int = 64, min_segment_tokens: int = 8, again: float | None = None) -> Policy:
        """A policy that holds the cache near `limit` physical slots by compacting at `ratio`.

        When the next prefill would take the cache past `limit`, every segment that is not
        pinned and ends before the newest `protect_recent` tokens is compacted `ratio` times
        with `method`. The benchmarks, the AIME scenario and the coding agent build theirs
        this way:

            Policy.budget(2048)                                  # x5, am-fast, the default pins
            Policy.budget(1024, 4, pins=["system", "first_user"])  # keep only the prompt whole

        Args:
            limit: physical KV slots allowed (of the widest full-attention layer), >= 1.
            ratio: compaction ratio of every compacted span, a finite number >= 1.
            method: compaction method, one of `agentmem.compaction.METHODS`.
            pins: what is never compacted: None for the "default" preset's pins (system
                prompt, tool schemas, first user message, last turn, the user's pins), or
                whatever `pin_from` takes: a pin name ("system"), a `Pin`, or a list of
                those (a segment any of them pins stays whole).
            protect_recent: newest logical tokens never compacted, below `limit`.
            min_segment_tokens: spans with fewer physical slots are left alone, >= 1.
            again: ratio for segments compacted before (`FixedRatio.again`); None: `ratio`.

        Raises:
            ConfigError: a bad argument; the message names it and what to pass.
        """
        check_int("Policy.budget", "limit", limit, minimum=1)
        check_int("Policy.budget", "protect_recent", protect_recent, minimum=0)
        if protect_recent >= limit:
            raise ConfigError(f"Policy.budget: protect_recent ({protect_recent}) must be below limit ({limit}), or "
                              f"the newest tokens alone fill the budget; lower protect_recent or raise limit")
        fixed = FixedRatio(check_ratio("Policy.budget", "ratio", ratio), again=again)
        return cls(trigger=TokenLimit(limit), ratio=fixed,
                   pin=_default_pin() if pins is None else pin_from(pins), method=method,
                   protect_recent=protect_recent, min_segment_tokens=min_segment_tokens)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Build a policy from a config mapping (the format in `agentmem.policies`' docstring).

        Keys not given keep the value of `preset` (or of the "default" preset).

        Raises:
            ConfigError: unknown keys, kinds or presets, or bad values.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a policy config must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise ConfigError(f"unknown policy key(s) {unknown}; known: {', '.join(_KEYS)}")
        base = cls.named(data["preset"]) if "preset" in data else cls()
        changes: dict[str, Any] = {k: data[k] for k in _SETTINGS if k in data}
        if "trigger" in data:
            changes["trigger"] = trigger_from(data["trigger"])
        if "ratio" in data:
            changes["ratio"] = ratio_from(data["ratio"])
        if "pin" in data:
            changes["pin"] = pin_from(data["pin"])
        return dataclasses.replace(base, **changes)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Policy:
        """Read a policy from a TOML file (the `from_dict` format).

        Raises:
            ConfigError: the file is missing, not TOML, or not a valid policy.
        """
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ModuleNotFoundError:
                raise ConfigError("reading TOML needs Python 3.11+ or `pip install tomli`") from None
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read policy file {path}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"policy file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it "
                              f"as UTF-8 TOML") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"policy file {path} is not valid TOML: {exc}") from exc
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping that `from_dict` turns back into an equal policy.

        Raises:
            ConfigError: a member's class is not a registered dataclass.
        """
        return {
            "trigger": trigger_to_data(self.trigger),
            "ratio": ratio_to_data(self.ratio),
            "pin": pin_to_data(self.pin),
            "method": self.method,
            "protect_recent": self.protect_recent,
            "min_segment_tokens": self.min_segment_tokens,
            "enabled": self.enabled,
        }


PRESETS: dict[str, Policy] = {
    "default": Policy(),
    "aggressive": Policy(
        trigger=TokenLimit(1024),
        ratio=FixedRatio(10.0, by_kind={"tool_call": 20.0}),
        pin=AnyPin((PinSystem(), PinToolSchemas(), PinUser())),
        protect_recent=32,
    ),
    "quality": Policy(trigger=TokenLimit(4096), ratio=FixedRatio(4.0), method="am"),
    "off": Policy(trigger=Never(), enabled=False),
}


def policy_from(value: PolicyLike) -> Policy:
    """Turn what a user passes as `policy=` into a `Policy`.

    Args:
        value: None (the "default" preset), a preset name, a path to a .toml file, a
            config mapping, or a `Policy` (returned as is).

    Raises:
        ConfigError: anything else, or a bad preset, file or mapping.
    """
    if value is None:
        return Policy.named("default")
    if isinstance(value, Policy):
        return value
    if isinstance(value, str) and value in PRESETS:
        return PRESETS[value]
    is_file = isinstance(value, str) and (value.endswith(".toml") or os.path.isfile(value))
    if isinstance(value, os.PathLike) or is_file:
        return Policy.from_toml(value)
    if isinstance(value, Mapping):
        return Policy.from_dict(value)
    if isinstance(value, str):
        raise ConfigError(f"unknown policy {value!r}: pass a preset ({', '.join(PRESETS)}) or a path to a .toml file")
    raise ConfigError(
        f"policy must be None, a preset name, a .toml path, a mapping or a Policy, got {type(value).__name__}"
    )
