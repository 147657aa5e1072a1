"""Pluggable compaction policies: *when* (triggers), *how much* (ratios), *what never* (pins).

Each part is a small frozen dataclass behind a `typing.Protocol`, so any object with the
right method works too. A `Policy` bundles one of each with the compaction settings; the
engine accepts whatever `policy_from` does: None, a preset name ("default", "aggressive",
"quality", "off"), a path to a TOML file, a dict, or a `Policy`.

    from agentmem.policies import AnyTrigger, ByteLimit, Policy, TokenLimit

    policy = Policy.named("default").with_(
        trigger=AnyTrigger((TokenLimit(4096), ByteLimit(512 * 2**20))),
    )

A physical budget alone is one call: `Policy.budget(4096, 4, pins=["system", "first_user"])`
compacts everything else but the newest tokens x4 whenever the cache would pass 4096 slots.

The dict / TOML format (every key optional; missing ones keep the preset's value):

    preset = "default"          # start from a preset, then override
    method = "am-fast"          # a compaction method (agentmem.compaction.METHODS)
    protect_recent = 64         # tokens at the end never compacted
    min_segment_tokens = 8      # smaller spans are left alone
    enabled = true

    [trigger]                   # or [[trigger]] tables: compact when any fires
    kind = "tokens"             # tokens | bytes | context | turns | memory | never
    limit = 2048                # bytes: limit = "512MB"; context: fraction = 0.8;
                                # turns: n = 4; memory: min_free_fraction = 0.1

    [ratio]                     # or `ratio = 5` for a fixed ratio
    kind = "fixed"              # fixed | target (tokens, min_ratio, max_ratio)
    ratio = 5
    by_kind = { tool_call = 20 }

    [pin]
    kinds = ["system", "tools", "first_user", "user"]   # names of pins without arguments
    last_turns = 2                                      # a pin's name = its argument

`[[pin]]` tables with a `kind` key (e.g. `kind = "kinds"`, `kinds = ["tool_call"]` to pin
segment kinds) work like `[[trigger]]`. A class registered with `register_trigger`,
`register_ratio` or `register_pin` is selected by its name; the rest of its table are its
keyword arguments. Unknown keys or kinds raise `agentmem.errors.ConfigError`, which lists
the known ones.
"""

from __future__ import annotations

from .pins import (
    PINS,
    AnyPin,
    Pin,
    PinFirstUser,
    PinKinds,
    PinLastTurns,
    PinSystem,
    PinToolSchemas,
    PinUser,
    pin_from,
    register_pin,
)
from .policy import PRESETS, Policy, PolicyLike, Span, policy_from
from .ratios import RATIOS, FixedRatio, Ratio, TargetSize, ratio_from, register_ratio
from .triggers import (
    TRIGGERS,
    AnyTrigger,
    ByteLimit,
    ContextFraction,
    DeviceMemory,
    EveryNTurns,
    Never,
    TokenLimit,
    Trigger,
    register_trigger,
    trigger_from,
)

__all__ = [
    "PINS",
    "PRESETS",
    "RATIOS",
    "TRIGGERS",
    "AnyPin",
    "AnyTrigger",
    "ByteLimit",
    "ContextFraction",
    "DeviceMemory",
    "EveryNTurns",
    "FixedRatio",
    "Never",
    "Pin",
    "PinFirstUser",
    "PinKinds",
    "PinLastTurns",
    "PinSystem",
    "PinToolSchemas",
    "PinUser",
    "Policy",
    "PolicyLike",
    "Ratio",
    "Span",
    "TargetSize",
    "TokenLimit",
    "Trigger",
    "pin_from",
    "policy_from",
    "ratio_from",
    "register_pin",
    "register_ratio",
    "register_trigger",
    "trigger_from",
]
