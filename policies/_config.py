"""Shared plumbing for the policy registries: checks, building from tables, writing back.

Private: the public face is `register_trigger`/`register_ratio`/`register_pin` and
`Policy.from_dict`. A *table* is a mapping such as `{"kind": "tokens", "limit": 2048}`:
`kind` names a registered class, the remaining keys are its keyword arguments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import MISSING, fields, is_dataclass
from typing import Any

from agentmem.errors import ConfigError


def check_int(owner: str, name: str, value: object, *, minimum: int) -> int:
    """Return `value` if it is an int >= `minimum`, else raise `ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{owner}: {name} must be a whole number >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return value


def check_fraction(owner: str, name: str, value: object) -> float:
    """Return `value` as a float if 0 < value <= 1, else raise `ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"{owner}: {name} must be a number in (0, 1], e.g. 0.8, got {value!r}")
    return float(value)


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*")


def parse_bytes(value: int | str) -> int:
    """Turn 1000000, "512MB", "1.5 GiB" into a byte count (KB = 1000, KiB = 1024).

    Raises:
        ConfigError: `value` is neither an int nor a size string with a known unit.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None or match.group(2).lower() not in _UNITS:
        raise ConfigError(
            f"byte size must be an int or a string like '512MB' or '2GiB' "
            f"(units {', '.join(u for u in _UNITS if u)}), got {value!r}"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(value: float) -> str:
    """Short human form of a byte count, e.g. "1.50 GiB"."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value:.0f} B"


def register(what: str, registry: dict[str, type], name: str, cls: type, method: str, replace: bool) -> type:
    """Add `cls` under `name` to `registry` after checking it has `method`."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"register_{what}: name must be a non-empty string, got {name!r}")
    if not isinstance(cls, type) or not callable(getattr(cls, method, None)):
        raise ConfigError(f"register_{what}: {cls!r} must be a class with a `{method}` method")
    if registry.get(name, cls) is not cls and not replace:
        raise ConfigError(
            f"register_{what}: {name!r} is already {registry[name].__name__}; pick another name or pass replace=True"
        )
    registry[name] = cls
    return cls


def build(what: str, registry: Mapping[str, type], data: object) -> Any:
    """Instantiate `registry[data["kind"]]` with the table's other keys as keyword arguments.

    A registered class may define a classmethod `from_dict(kwargs)` to parse its own table
    (e.g. `ByteLimit` accepts "2GiB").
    """
    if isinstance(data, str):
        data = {"kind": data}
    if not isinstance(data, Mapping):
        raise ConfigError(f"a {what} must be a table like {{kind = ...}}, got {data!r}")
    if "kind" not in data:
        raise ConfigError(f"{what} table {dict(data)} needs a 'kind' key: one of {', '.join(registry)}")
    name = data["kind"]
    if name not in registry:
        raise ConfigError(f"unknown {what} kind {name!r}; known: {', '.join(registry)}")
    cls = registry[name]
    kwargs = {k: v for k, v in data.items() if k != "kind"}
    if is_dataclass(cls):
        known = [f.name for f in fields(cls) if f.init]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} for {what} {name!r}; it takes {known or 'no keys'}")
        missing = [f.name for f in fields(cls) if f.init and f.name not in kwargs
                   and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise ConfigError(f"{what} {name!r} needs {', '.join(missing)} (keys of its table)")
    factory = getattr(cls, "from_dict", None)
    try:
        return factory(kwargs) if callable(factory) else cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as exc:
        raise ConfigError(f"cannot build {what} {name!r} from {kwargs}: {exc}") from exc


def to_table(what: str, registry: Mapping[str, type], obj: object) -> dict[str, Any]:
    """The table `build` turns back into `obj`: its registry name and its init fields."""
    name = next((n for n, c in registry.items() if type(obj) is c), None)
    if name is None or not is_dataclass(obj):
        raise ConfigError(
            f"cannot write {what} {obj!r} as a dict: make it a dataclass and register it "
            f"with register_{what}(name, cls)"
        )
    table: dict[str, Any] = {"kind": name}
    for f in fields(obj):
        if f.init:
            table[f.name] = _plain(getattr(obj, f.name))
    return table


def _plain(value: object) -> object:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value
