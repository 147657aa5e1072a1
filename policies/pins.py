"""Pins: *what never* to compact.

A pin says whether one segment must keep its full cache. Pins read segments and never
change them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from agentmem.errors import ConfigError
from agentmem.segments import KINDS, Segment

from ._config import build, check_int, register, to_table


@runtime_checkable
class Pin(Protocol):
    """Anything with a `pinned` method can keep segments out of compaction."""

    def pinned(self, segment: Segment, segments: Sequence[Segment]) -> bool:
        """Return True if `segment` (one of `segments`, the whole session) must not be compacted."""
        ...


@dataclass(frozen=True)
class PinSystem:
    """Pin the system prompt (segments of kind "system")."""

    def pinned(self, segment: Segment, segments: Sequence[Segment]) -> bool:
        return segment.kind == "system"


@dataclass(frozen=True)
class PinToolSchemas:
    """Pin the tool schemas (segments of kind "tools")."""

    def pinned(self, segment: Segment, segments: Sequence[Segment]) -> bool:
        return segment.kind == "tools"


@dataclass(frozen=True)
class PinFirstUser:
    """Pin the first user message (usually the task)."""

    def pinned(self, segment: Segment, segments: Sequence[Segment]) -> bool:
        first = next((s for s in segments if s.role == "user"), None)
        return first is not None and first.index == segment.index


@dataclass(frozen=True)
class PinLastTurns:
    """Pin the segments of the last `k` user turns (k = 0 pins nothing).

    Attributes:
        k: how many of the most recent turns to keep whole, >= 0.
    """

    k: int = 1

    def __post_init__(self) -> None:
        check_int("PinLastTurns", "k", self.k, minimum=0)

    def pinned(self, segment: Segment, segments: Sequence[Segment]) -> bool:
        if self.k == 0:
            return False
        last = max((s.turn for s in segments), default=segment.turn)
        return segment.turn > last - self.k


@dataclass(frozen=True)
class PinUser:
    """Pin what the user pinned on the session (`Segment.pinned`)."""

    def pinned(self, segment: Segment, segments: Sequence[Segment]) -> bool:
        return segment.pinned


@dataclass(frozen=True)
class PinKinds:
    """Pin every segment of the given kinds.

    Attributes:
        kinds: segment kinds, from `agentmem.segments.KINDS` (e.g. ("user", "tools")).
    """

    kinds: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.kinds, str) or not isinstance(self.kinds, (list, tuple)):
            raise ConfigError(f"PinKinds: kinds must be a list of segment kinds, got {self.kinds!r}")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise ConfigError(f"PinKinds: unknown segment kind(s) {unknown}; kinds: {', '.join(KINDS)}")
        object.__setattr__(self, "kinds", tuple(self.kinds))

    def pinned(self, segment: Segment, segments: Sequence[Segment]) -> bool:
        return segment.kind in self.kinds


@dataclass(frozen=True)
class AnyPin:
    """Pin a segment when any member pins it.

    Attributes:
        pins: the members (may be empty: pins nothing).
    """

    pins: tuple[Pin, ...]

    def __post_init__(self) -> None:
        members = tuple(self.pins) if isinstance(self.pins, (list, tuple)) else None
        if members is None or not all(isinstance(p, Pin) for p in members):
            raise ConfigError(f"AnyPin needs a tuple of pins (objects with a `pinned` method), got {self.pins!r}")
        object.__setattr__(self, "pins", members)

    def pinned(self, segment: Segment, segments: Sequence[Segment]) -> bool:
        return any(p.pinned(segment, segments) for p in self.pins)


PINS: dict[str, type] = {
    "system": PinSystem,
    "tools": PinToolSchemas,
    "first_user": PinFirstUser,
    "last_turns": PinLastTurns,
    "user": PinUser,
    "kinds": PinKinds,
}


def register_pin(name: str, cls: type, *, replace: bool = False) -> type:
    """Make a pin class selectable by `name` in config (`[[pin]] kind = name`).

    Args:
        name: the config name.
        cls: a class with `pinned(segment, segments)`; the table's other keys are its
            keyword arguments (or the argument of its classmethod `from_dict`).
        replace: allow replacing a class already registered under `name`.

    Returns:
        `cls`, unchanged.
    """
    return register("pin", PINS, name, cls, "pinned", replace)


def pin_from(data: object) -> Pin:
    """Build a pin from a config value.

    Accepted forms: a pin name ("system"); a table with `kind` (`{kind = "last_turns", k = 2}`);
    a `Pin` object (returned as is); a list of those (any pins); or the short table
    `{kinds = ["system", "user"], last_turns = 2}`, where `kinds` lists pins without
    arguments and every other key names a pin whose value is its one argument (a table for
    several, `true` for none).

    Raises:
        ConfigError: unknown pin name, unknown keys or bad values.
    """
    if isinstance(data, Pin):
        return data
    if isinstance(data, Sequence) and not isinstance(data, str):
        return AnyPin(tuple(pin_from(item) for item in data))
    if isinstance(data, Mapping) and "kind" not in data:
        return AnyPin(tuple(_short_table(data)))
    return build("pin", PINS, data)


def _short_table(data: Mapping[str, Any]) -> list[Pin]:
    members: list[Pin] = []
    names = data.get("kinds", [])
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ConfigError(f"[pin] kinds must be a list of pin names ({', '.join(PINS)}), got {names!r}")
    members.extend(build("pin", PINS, name) for name in names)
    for name, value in data.items():
        if name == "kinds" or value is False:
            continue
        if name not in PINS:
            raise ConfigError(f"unknown pin {name!r} in [pin]; known: {', '.join(PINS)}")
        if value is True:
            members.append(build("pin", PINS, name))
        elif isinstance(value, Mapping):
            members.append(build("pin", PINS, {**value, "kind": name}))
        else:
            try:
                members.append(PINS[name](value))
            except TypeError as exc:
                raise ConfigError(f"pin {name!r} = {value!r}: {exc}; write a table of its arguments") from exc
    return members


def pin_to_data(pin: Pin) -> dict[str, Any] | list[Any]:
    """The config value `pin_from` turns back into `pin`."""
    if isinstance(pin, AnyPin):
        return [pin_to_data(p) for p in pin.pins]
    return to_table("pin", PINS, pin)
