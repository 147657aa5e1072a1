"""Every built-in trigger, ratio, pin and preset through the same invariants (no model needed)."""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass

import pytest

from agentmem.errors import ConfigError
from agentmem.policies import (
    PRESETS,
    TRIGGERS,
    AnyPin,
    AnyTrigger,
    ByteLimit,
    ContextFraction,
    DeviceMemory,
    EveryNTurns,
    FixedRatio,
    Never,
    Pin,
    PinFirstUser,
    PinKinds,
    PinLastTurns,
    PinSystem,
    PinToolSchemas,
    PinUser,
    Policy,
    Ratio,
    Span,
    TargetSize,
    TokenLimit,
    Trigger,
    policy_from,
    ratio_from,
    register_trigger,
)
from agentmem.segments import KINDS, KVStats, Segment

# ---------------------------------------------------------------- fixtures


def session() -> list[Segment]:
    """A hand-built session: every kind, two user turns, one user pin, a reply being decoded."""
    spans = [  # (role, kind, tokens, turn, pinned)
        ("system", "system", 30, 0, False),
        ("system", "tools", 60, 0, False),
        ("user", "user", 40, 1, False),
        ("assistant", "tool_call", 200, 1, False),
        ("assistant", "assistant", 50, 1, True),
        ("user", "user", 20, 2, False),
        ("assistant", "tool_call", 300, 2, False),
        ("assistant", "assistant", 5, 2, False),
        ("user", "user", 25, 3, False),
        ("assistant", "generation", 400, 3, False),
    ]
    segments, start = [], 0
    for i, (role, kind, tokens, turn, pinned) in enumerate(spans):
        segments.append(Segment(i, role, kind, start, start + tokens, turn=turn, pinned=pinned))
        start += tokens
    return segments


def random_session(seed: int) -> tuple[list[Segment], KVStats, dict[int, int]]:
    """A random session with some segments already compacted, its stats and physical slots."""
    rng = random.Random(seed)
    segments: list[Segment] = []
    start = 0

    def add(role: str, kind: str, turn: int) -> None:
        nonlocal start
        tokens = rng.choice([1, 4, 8, 30, 120, 600])
        segments.append(Segment(len(segments), role, kind, start, start + tokens, turn=turn,
                                pinned=rng.random() < 0.15, compactions=rng.randint(0, 2)))
        start += tokens

    add("system", "system", 0)
    if rng.random() < 0.7:
        add("system", "tools", 0)
    for turn in range(1, rng.randint(1, 6) + 1):
        add("user", "user", turn)
        for _ in range(rng.randint(0, 3)):
            add("assistant", rng.choice(["assistant", "tool_call"]), turn)
    if rng.random() < 0.5:
        add("assistant", "generation", segments[-1].turn)
    physical = {s.index: max(1, s.tokens // (5 ** s.compactions)) for s in segments}
    used = sum(physical.values())
    stats = KVStats(logical_tokens=start, physical_tokens=used, bytes=used * 1000, turns=segments[-1].turn,
                    context_length=rng.choice([None, 2048, 8192]), bytes_per_token=1000.0,
                    device_free_fraction=rng.choice([None, 0.05, 0.5]), last_compaction_turn=rng.randint(-1, 3))
    return segments, stats, physical


def stats_grid() -> list[KVStats]:
    rng = random.Random(1)
    grid = []
    for _ in range(60):
        physical = rng.randint(0, 10_000)
        grid.append(KVStats(
            logical_tokens=physical + rng.randint(0, 5000), physical_tokens=physical, bytes=physical * 2000,
            turns=rng.randint(0, 12), context_length=rng.choice([None, 4096, 32768]), bytes_per_token=2000.0,
            device_free_fraction=rng.choice([None, rng.random()]), last_compaction_turn=rng.randint(-1, 12),
        ))
    return grid


def grow(stats: KVStats) -> KVStats:
    """The same cache, bigger in every way a size trigger looks at."""
    free = None if stats.device_free_fraction is None else stats.device_free_fraction / 2
    return KVStats(stats.logical_tokens + 500, stats.physical_tokens + 500, stats.bytes + 500 * 2000,
                   turns=stats.turns, context_length=stats.context_length, bytes_per_token=stats.bytes_per_token,
                   device_free_fraction=free, last_compaction_turn=stats.last_compaction_turn)


class UserTrigger:
    """A plain object (not a dataclass, not registered) that fires on odd physical counts."""

    def should_compact(self, stats: KVStats, incoming: int) -> str | None:
        return "odd" if stats.physical_tokens % 2 else None


class HalfRatio:
    """A broken user ratio."""

    def ratio_for(self, segment: Segment, stats: KVStats, eligible_physical: int) -> float:
        return 0.5


# ---------------------------------------------------------------- triggers

# (trigger, grows: fires on a bigger cache whenever it fires on the smaller one)
TRIGGER_CASES = {
    "tokens": (TokenLimit(2048), True),
    "bytes": (ByteLimit(4_000_000), True),
    "context": (ContextFraction(0.5), True),
    "turns": (EveryNTurns(3), False),
    "memory": (DeviceMemory(0.2), True),
    "never": (Never(), True),
    "any": (AnyTrigger((TokenLimit(5000), EveryNTurns(4))), False),
    "any-sizes": (AnyTrigger((ByteLimit(10**7), ContextFraction(0.9))), True),
    "user": (UserTrigger(), False),
}
STATS = stats_grid()


@pytest.mark.parametrize("name", TRIGGER_CASES)
def test_trigger_returns_reason_or_none_and_grows(name: str) -> None:
    trigger, grows = TRIGGER_CASES[name]
    assert isinstance(trigger, Trigger)
    for stats in STATS:
        for incoming in (0, 1, 700):
            reason = trigger.should_compact(stats, incoming)
            assert reason is None or (isinstance(reason, str) and reason)
            assert trigger.should_compact(stats, incoming) == reason  # stateless
            if grows and reason:
                assert trigger.should_compact(grow(stats), incoming)


@pytest.mark.parametrize("name", [n for n in TRIGGER_CASES if n not in ("never", "user")])
def test_trigger_fires_somewhere(name: str) -> None:
    trigger = TRIGGER_CASES[name][0]
    assert any(trigger.should_compact(s, 1) for s in STATS)
    assert not all(trigger.should_compact(s, 1) for s in STATS)


def test_never_never_fires() -> None:
    assert not any(Never().should_compact(s, n) for s in STATS for n in (0, 10**9))


@pytest.mark.parametrize("a", ["tokens", "bytes", "turns", "memory", "never", "user"])
@pytest.mark.parametrize("b", ["context", "turns", "never"])
def test_any_trigger_fires_iff_a_member_fires(a: str, b: str) -> None:
    first, second = TRIGGER_CASES[a][0], TRIGGER_CASES[b][0]
    both = AnyTrigger((first, second))
    for stats in STATS:
        expected = first.should_compact(stats, 10) or second.should_compact(stats, 10)
        assert both.should_compact(stats, 10) == expected


def test_trigger_thresholds() -> None:
    stats = KVStats(logical_tokens=3000, physical_tokens=2040, bytes=2040 * 100, turns=6, context_length=4096,
                    bytes_per_token=100.0, device_free_fraction=0.1)
    assert TokenLimit(2048).should_compact(stats, 8) is None
    assert TokenLimit(2048).should_compact(stats, 10) == "physical tokens 2050 > limit 2048"
    assert ByteLimit(2048 * 100).should_compact(stats, 9) and not ByteLimit(2048 * 100).should_compact(stats, 8)
    assert ContextFraction(0.5).should_compact(stats, 9) and not ContextFraction(0.5).should_compact(stats, 8)
    assert ContextFraction(0.1).should_compact(KVStats(3000, 2040, 0), 1) is None  # context length unknown
    assert DeviceMemory(0.2).should_compact(stats, 0) and not DeviceMemory(0.05).should_compact(stats, 0)
    assert DeviceMemory(0.5).should_compact(KVStats(1, 1, 1), 0) is None  # not measured


def test_every_n_turns_fires_once_per_turn() -> None:
    every = EveryNTurns(3)
    fired = [t for t in range(10) if every.should_compact(KVStats(10, 10, 10, turns=t), 5)]
    assert fired == [3, 6, 9]
    assert every.should_compact(KVStats(10, 10, 10, turns=6, last_compaction_turn=6), 5) is None


@pytest.mark.parametrize("make, words", [
    (lambda: TokenLimit(0), r"TokenLimit: limit must be >= 1"),
    (lambda: TokenLimit(2.5), "TokenLimit: limit must be a whole number"),
    (lambda: TokenLimit(True), "TokenLimit: limit must be a whole number"),
    (lambda: ByteLimit(-1), "ByteLimit: limit must be >= 1"),
    (lambda: ContextFraction(0), r"ContextFraction: fraction must be a number in \(0, 1\]"),
    (lambda: ContextFraction(1.5), r"ContextFraction: fraction must be a number in \(0, 1\]"),
    (lambda: ContextFraction(float("nan")), r"ContextFraction: fraction must be a number in \(0, 1\]"),
    (lambda: EveryNTurns(0), "EveryNTurns: n must be >= 1"),
    (lambda: DeviceMemory(2), r"DeviceMemory: min_free_fraction must be a number in \(0, 1\]"),
    (lambda: AnyTrigger(()), "AnyTrigger needs a non-empty tuple of triggers"),
    (lambda: AnyTrigger((object(),)), "AnyTrigger needs a non-empty tuple of triggers"),
], ids=["tokens0", "tokens-float", "tokens-bool", "bytes-neg", "frac0", "frac1.5", "frac-nan", "turns0",
        "memory2", "any-empty", "any-object"])
def test_bad_trigger_parameters(make, words) -> None:
    with pytest.raises(ConfigError, match=words):
        make()


@pytest.mark.parametrize("text, expected", [
    ("512MB", 512 * 10**6), ("2GiB", 2 * 2**30), ("1.5 kib", 1536), (1000, 1000), ("77", 77)])
def test_byte_limit_sizes(text, expected) -> None:
    assert ByteLimit.from_dict({"limit": text}) == ByteLimit(expected)
    assert Policy.from_dict({"trigger": {"kind": "bytes", "limit": text}}).trigger == ByteLimit(expected)


@pytest.mark.parametrize("text", ["2 parsecs", "", "GB", "-5MB", [1]])
def test_byte_limit_bad_sizes(text) -> None:
    with pytest.raises(ConfigError, match="512MB"):
        ByteLimit.from_dict({"limit": text})


# ---------------------------------------------------------------- ratios

RATIO_CASES = {
    "fixed": FixedRatio(),
    "fixed-1": FixedRatio(1),
    "fixed-by-kind": FixedRatio(3, by_kind={"tool_call": 20, "user": 1.5}),
    "target": TargetSize(512),
    "target-wide": TargetSize(100, min_ratio=1, max_ratio=1000),
}


@pytest.mark.parametrize("name", RATIO_CASES)
def test_ratio_is_finite_and_at_least_one(name: str) -> None:
    ratio = RATIO_CASES[name]
    assert isinstance(ratio, Ratio)
    rng = random.Random(2)
    for stats in STATS:
        for kind in KINDS:
            segment = Segment(0, "assistant", kind, 0, rng.randint(1, 3000))
            eligible = rng.randint(0, stats.physical_tokens)
            value = ratio.ratio_for(segment, stats, eligible)
            assert math.isfinite(value) and value >= 1
            if isinstance(ratio, TargetSize):
                assert ratio.min_ratio <= value <= ratio.max_ratio


def test_fixed_ratio_values() -> None:
    stats = STATS[0]
    assert all(FixedRatio(1).ratio_for(Segment(0, "user", k, 0, 9), stats, 9) == 1 for k in KINDS)
    by_kind = FixedRatio(3, by_kind={"tool_call": 20})
    assert by_kind.ratio_for(Segment(0, "assistant", "tool_call", 0, 9), stats, 9) == 20
    assert by_kind.ratio_for(Segment(0, "assistant", "assistant", 0, 9), stats, 9) == 3


def test_fixed_ratio_again_applies_to_segments_compacted_before() -> None:
    stats = STATS[0]
    ratio = FixedRatio(5, by_kind={"tool_call": 8}, again=2)
    fresh, old = Segment(0, "assistant", "tool_call", 0, 9), Segment(1, "user", "user", 9, 20, compactions=1)
    assert ratio.ratio_for(fresh, stats, 20) == 8 and ratio.ratio_for(old, stats, 20) == 2
    assert FixedRatio(5).ratio_for(old, stats, 20) == 5  # None: compounding, as before
    with pytest.raises(ConfigError, match="FixedRatio: again must be a finite number >= 1"):
        FixedRatio(5, again=0.5)
    assert Policy.budget(512, 5, again=2).ratio == ratio_from({"kind": "fixed", "ratio": 5, "again": 2})
    assert policy_from(Policy.budget(512, 5, again=2).to_dict()).ratio.again == 2  # config round trip


def test_fixed_ratio_is_immutable_and_hashable() -> None:
    source = {"tool_call": 20}
    ratio = FixedRatio(3, by_kind=source)
    source["tool_call"] = 2
    assert ratio.by_kind["tool_call"] == 20
    with pytest.raises(TypeError, match="does not support item assignment"):
        ratio.by_kind["user"] = 2  # type: ignore[index]
    assert hash(ratio) == hash(FixedRatio(3, by_kind={"tool_call": 20}))
    assert ratio == FixedRatio(3, by_kind={"tool_call": 20}) != FixedRatio(3)


def test_target_size_math() -> None:
    stats = KVStats(logical_tokens=5000, physical_tokens=3000, bytes=0)
    segment = Segment(0, "assistant", "tool_call", 0, 2000)
    # 1000 slots stay; 2000 eligible must fit in 1500 - 1000 = 500 -> ratio 4
    assert TargetSize(1500).ratio_for(segment, stats, 2000) == 4
    assert TargetSize(900).ratio_for(segment, stats, 2000) == 50  # target unreachable: max_ratio
    assert TargetSize(10_000).ratio_for(segment, stats, 2000) == 2  # already met: min_ratio


@pytest.mark.parametrize("make, words", [
    (lambda: FixedRatio(0.5), "FixedRatio: ratio must be a finite number >= 1"),
    (lambda: FixedRatio(float("inf")), "FixedRatio: ratio must be a finite number >= 1"),
    (lambda: FixedRatio(5, by_kind={"user": 0}), r"FixedRatio: by_kind\['user'\] must be a finite number >= 1"),
    (lambda: FixedRatio(5, by_kind={"tool_calls": 5}), "unknown segment kind 'tool_calls' in by_kind; kinds: system"),
    (lambda: TargetSize(0), "TargetSize: tokens must be >= 1"),
    (lambda: TargetSize(10, min_ratio=0.5), "TargetSize: min_ratio must be a finite number >= 1"),
    (lambda: TargetSize(10, min_ratio=10, max_ratio=5), r"max_ratio \(5\) must be >= min_ratio \(10\); swap them"),
], ids=["half", "inf", "by-kind-0", "by-kind-typo", "target0", "min-below-1", "min>max"])
def test_bad_ratio_parameters(make, words) -> None:
    with pytest.raises(ConfigError, match=words):
        make()


# ---------------------------------------------------------------- pins

# (pin, indices of session() it pins)
PIN_CASES = {
    "system": (PinSystem(), {0}),
    "tools": (PinToolSchemas(), {1}),
    "first_user": (PinFirstUser(), {2}),
    "last_turns-0": (PinLastTurns(0), set()),
    "last_turns-1": (PinLastTurns(), {8, 9}),
    "last_turns-2": (PinLastTurns(2), {5, 6, 7, 8, 9}),
    "user": (PinUser(), {4}),
    "kinds": (PinKinds(("tool_call", "tools")), {1, 3, 6}),
    "any": (AnyPin((PinSystem(), PinUser(), PinLastTurns(1))), {0, 4, 8, 9}),
    "any-empty": (AnyPin(()), set()),
}


@pytest.mark.parametrize("name", PIN_CASES)
def test_pin_pins_expected_segments_without_mutation(name: str) -> None:
    pin, expected = PIN_CASES[name]
    assert isinstance(pin, Pin)
    segments = session()
    before = copy.deepcopy(segments)
    first = {s.index for s in segments if pin.pinned(s, segments)}
    assert first == expected
    assert {s.index for s in segments if pin.pinned(s, segments)} == first  # deterministic
    assert all(isinstance(pin.pinned(s, segments), bool) for s in segments)
    assert segments == before


@pytest.mark.parametrize("make, words", [
    (lambda: PinLastTurns(-1), "PinLastTurns: k must be >= 0"),
    (lambda: PinKinds("user"), "PinKinds: kinds must be a list of segment kinds, got 'user'"),
    (lambda: PinKinds(("usr",)), r"PinKinds: unknown segment kind\(s\) \['usr'\]; kinds: system"),
    (lambda: AnyPin((object(),)), "AnyPin needs a tuple of pins"),
], ids=["k-neg", "kinds-str", "kinds-typo", "any-obj"])
def test_bad_pin_parameters(make, words) -> None:
    with pytest.raises(ConfigError, match=words):
        make()


# ---------------------------------------------------------------- policies and plans

POLICY_CASES = {
    **{f"preset-{name}": policy for name, policy in PRESETS.items()},
    "target": Policy(ratio=TargetSize(256), protect_recent=0),
    "by-kind-with-ones": Policy(ratio=FixedRatio(4, by_kind={"user": 1, "tool_call": 8}), pin=AnyPin(())),
    "no-pins-min-1": Policy(pin=AnyPin(()), min_segment_tokens=1, protect_recent=0),
    "kinds-big-tail": Policy(pin=PinKinds(("assistant",)), protect_recent=1000),
    "user-trigger": Policy(trigger=AnyTrigger((UserTrigger(), Never())), ratio=FixedRatio(2)),
}


def check_plan(policy: Policy, segments: list[Segment], stats: KVStats, physical: dict[int, int]) -> list[Span]:
    before = copy.deepcopy(segments)
    spans = policy.plan(segments, stats, physical=physical)
    assert segments == before
    by_index = {s.index: s for s in segments}
    boundary = stats.logical_tokens - policy.protect_recent
    previous_end = -1
    for span in spans:
        assert previous_end <= span.start < span.end <= boundary  # sorted, disjoint, before the tail
        previous_end = span.end
        assert math.isfinite(span.ratio) and span.ratio > 1
        members = [by_index[i] for i in span.segments]
        assert members[0].start == span.start and members[-1].end == span.end  # on segment boundaries
        assert all(a.end == b.start for a, b in zip(members, members[1:]))
        for member in members:
            assert not member.pinned and not policy.pin.pinned(member, segments)
        assert sum(physical[m.index] for m in members) >= policy.min_segment_tokens
    return spans


@pytest.mark.parametrize("name", POLICY_CASES)
def test_plan_invariants(name: str) -> None:
    policy = POLICY_CASES[name]
    segments = session()
    check_plan(policy, segments, KVStats(1130, 1130, 0, turns=3), {s.index: s.tokens for s in segments})
    for seed in range(40):
        check_plan(policy, *random_session(seed))
    assert policy.plan([], STATS[0], physical={}) == []


@pytest.mark.parametrize("name", POLICY_CASES)
def test_disabled_policy_plans_nothing_and_never_fires(name: str) -> None:
    policy = POLICY_CASES[name].with_(enabled=False)
    for seed in range(10):
        segments, stats, physical = random_session(seed)
        assert policy.plan(segments, stats, physical=physical) == []
        assert policy.should_compact(stats, 10**6) is None


@pytest.mark.parametrize("name", POLICY_CASES)
def test_policy_should_compact_delegates(name: str) -> None:
    policy = POLICY_CASES[name]
    for stats in STATS:
        expected = policy.trigger.should_compact(stats, 3) if policy.enabled else None
        assert policy.should_compact(stats, 3) == expected


def test_default_plan_merges_adjacent_segments() -> None:
    segments = session()
    stats = KVStats(1130, 1130, 0, turns=3)
    spans = Policy().plan(segments, stats, physical={s.index: s.tokens for s in segments})
    # system, tools, first user, user-pinned (4), last turn (8, 9) stay; 5-7 merge (7's 5 slots too)
    assert spans == [Span(130, 330, 5.0, (3,)), Span(380, 705, 5.0, (5, 6, 7))]


def test_plan_splits_on_ratio_and_skips_ratio_one() -> None:
    segments = session()
    policy = Policy(ratio=FixedRatio(4, by_kind={"tool_call": 8, "user": 1}), pin=AnyPin(()), protect_recent=0,
                    min_segment_tokens=1)
    spans = policy.plan(segments, KVStats(1130, 1130, 0), physical={s.index: s.tokens for s in segments})
    assert [(s.segments, s.ratio) for s in spans] == [
        ((0, 1), 4), ((3,), 8), ((6,), 8), ((7,), 4), ((9,), 4)]  # 4 is user-pinned


def test_generation_up_to_the_protected_tail() -> None:
    segments = session()[:9] + [Segment(9, "assistant", "generation", 730, 1066, turn=3)]
    tail = Segment(10, "assistant", "generation", 1066, 1130, turn=3)
    policy = Policy(pin=PinSystem(), protect_recent=64)
    physical = {s.index: s.tokens for s in [*segments, tail]}
    spans = policy.plan([*segments, tail], KVStats(1130, 1130, 0), physical=physical)
    assert spans[-1].segments[-1] == 9 and spans[-1].end == 1066
    crossing = session()  # the one generation segment crosses the boundary: left alone
    spans = policy.plan(crossing, KVStats(1130, 1130, 0), physical={s.index: s.tokens for s in crossing})
    assert spans[-1].end == 730


def test_user_pins_hold_without_pin_user() -> None:
    segments = session()
    policy = Policy(pin=PinSystem(), protect_recent=0)
    spans = policy.plan(segments, KVStats(1130, 1130, 0), physical={s.index: s.tokens for s in segments})
    assert [s.segments for s in spans] == [(1, 2, 3), (5, 6, 7, 8, 9)]  # 4 is user-pinned; 7 (5 slots) joins


def test_min_segment_tokens_counts_physical_slots_per_span() -> None:
    segments = session()
    physical = {s.index: s.tokens for s in segments}
    physical[3] = 7  # compacted before: 200 logical tokens in 7 slots
    policy = Policy(pin=AnyPin((PinSystem(), PinToolSchemas(), PinFirstUser())), protect_recent=0)
    spans = policy.plan(segments, KVStats(1130, 1130, 0, turns=3), physical=physical)
    assert all(3 not in s.segments for s in spans)  # a lone 7-slot span is too small to compact
    physical[2] = 40
    spans = Policy(pin=PinSystem(), protect_recent=0).plan(segments, KVStats(1130, 1130, 0), physical=physical)
    assert spans[0].segments == (1, 2, 3)  # next to other eligible segments the residue is compacted again


def test_plan_errors() -> None:
    segments = session()
    physical = {s.index: s.tokens for s in segments}
    with pytest.raises(ConfigError, match=r"segment \d+'s ratio must be a finite number >= 1, got 0.5"):
        Policy(ratio=HalfRatio()).plan(segments, KVStats(1130, 1130, 0), physical=physical)
    del physical[3]
    with pytest.raises(ConfigError, match="segment 3"):
        Policy().plan(segments, KVStats(1130, 1130, 0), physical=physical)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("name", PRESETS)
def test_preset_round_trips(name: str) -> None:
    policy = Policy.named(name)
    assert Policy.from_dict(policy.to_dict()) == policy
    assert Policy.from_dict({"preset": name}) == policy == policy_from(name)


def test_default_preset_is_policy_default() -> None:
    assert Policy() == Policy.named("default") == policy_from(None)
    assert Policy.named("off").should_compact(STATS[0], 10**9) is None


def test_toml_file(tmp_path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("""
preset = "aggressive"
method = "am"
protect_recent = 16

[[trigger]]
kind = "tokens"
limit = 4096

[[trigger]]
kind = "bytes"
limit = "2GiB"

[ratio]
kind = "fixed"
ratio = 5
by_kind = { tool_call = 20 }

[pin]
kinds = ["system", "tools", "first_user", "user"]
last_turns = 2
""")
    policy = Policy.from_toml(path)
    assert policy == policy_from(path) == policy_from(str(path))
    assert policy.trigger == AnyTrigger((TokenLimit(4096), ByteLimit(2 * 2**30)))
    assert policy.ratio == FixedRatio(5, by_kind={"tool_call": 20})
    assert policy.pin == AnyPin((PinSystem(), PinToolSchemas(), PinFirstUser(), PinUser(), PinLastTurns(2)))
    assert (policy.method, policy.protect_recent, policy.min_segment_tokens) == ("am", 16, 8)


def test_config_short_forms() -> None:
    policy = Policy.from_dict({"trigger": "never", "ratio": 7, "pin": ["system", {"kind": "kinds", "kinds": ["user"]}]})
    assert policy.trigger == Never() and policy.ratio == FixedRatio(7)
    assert policy.pin == AnyPin((PinSystem(), PinKinds(("user",))))
    target = Policy.from_dict({"ratio": {"kind": "target", "tokens": 900, "max_ratio": 20}})
    assert target.ratio == TargetSize(900, max_ratio=20)


@pytest.mark.parametrize("data, match", [
    ({"trigger": {"kind": "nope"}}, "known: tokens, bytes"),
    ({"trigger": {"limit": 5}}, "needs a 'kind'"),
    ({"trigger": {"kind": "tokens"}}, "needs limit"),
    ({"trigger": {"kind": "tokens", "limit": 9, "extra": 1}}, "extra"),
    ({"trigger": {"kind": "context", "fraction": 1.5}}, "fraction"),
    ({"ratio": 0.5}, "must be a finite number >= 1"),
    ({"ratio": {"kind": "fixed", "ratio": 0}}, "must be a finite number >= 1"),
    ({"ratio": {"kind": "magic"}}, "known: fixed, target"),
    ({"pin": {"bogus": True}}, "known: system"),
    ({"pin": {"kinds": "system"}}, "list of pin names"),
    ({"pin": {"system": 3}}, "system"),
    ({"preset": "turbo"}, "presets: default"),
    ({"protect_recent": -1}, "protect_recent"),
    ({"enabled": "yes"}, "enabled"),
    ({"method": ""}, "method"),
    ({"limit": 5}, "known: preset, trigger"),
])
def test_bad_config(data, match) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        Policy.from_dict(data)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value, words", [
    (42, "policy must be None, a preset name, a .toml path, a mapping or a Policy, got int"),
    (["default"], "policy must be None, .* got list"),
    ("turbo", r"unknown policy 'turbo': pass a preset \(default, aggressive, quality, off\)"),
    (object(), "policy must be None, .* got object"),
])
def test_policy_from_rejects(value, words) -> None:
    with pytest.raises(ConfigError, match=words):
        policy_from(value)


def test_bad_toml_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Policy.from_toml(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[trigger\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        policy_from(str(broken))
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[trigger]\nkind = "nope"\n')
    with pytest.raises(ConfigError, match="wrong.toml: unknown trigger kind"):
        Policy.from_toml(wrong)


@dataclass(frozen=True)
class OverLogical:
    """A user trigger: fires when the logical tokens pass `tokens`."""

    tokens: int

    def should_compact(self, stats: KVStats, incoming: int) -> str | None:
        return f"logical {stats.logical_tokens} > {self.tokens}" if stats.logical_tokens > self.tokens else None


def test_registered_user_trigger_is_selectable_by_name() -> None:
    register_trigger("logical", OverLogical)
    try:
        policy = Policy.from_dict({"trigger": {"kind": "logical", "tokens": 100}})
        assert policy.trigger == OverLogical(100)
        assert policy.should_compact(KVStats(101, 5, 0), 0) == "logical 101 > 100"
        assert Policy.from_dict(policy.to_dict()) == policy
        with pytest.raises(ConfigError, match="already"):
            register_trigger("logical", UserTrigger)
        with pytest.raises(ConfigError, match="should_compact"):
            register_trigger("broken", HalfRatio)
    finally:
        TRIGGERS.pop("logical", None)


# ---------------------------------------------------------------- protocols


def test_plain_user_objects_work_in_policies() -> None:
    user = UserTrigger()
    assert isinstance(user, Trigger) and not isinstance(user, Ratio)
    policy = Policy(trigger=AnyTrigger((TokenLimit(10**6), user)))
    assert policy.should_compact(KVStats(3, 3, 0), 0) == "odd"
    assert Policy(trigger=user).should_compact(KVStats(4, 4, 0), 0) is None
    with pytest.raises(ConfigError, match="register"):
        Policy(trigger=user).to_dict()
    with pytest.raises(ConfigError, match="should_compact"):
        Policy(trigger=HalfRatio())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ratio_for"):
        Policy(ratio=UserTrigger())  # type: ignore[arg-type]
