"""`Policy.budget`: fires past its limit, never compacts a pin or the protected tail, compacts at its ratio."""

from __future__ import annotations

import pytest
from test_policies import check_plan, random_session, session

from agentmem.errors import ConfigError
from agentmem.policies import PRESETS, AnyPin, PinFirstUser, PinKinds, PinLastTurns, PinSystem, Policy, pin_from
from agentmem.segments import KVStats

# (limit, ratio, keyword arguments), the shapes the benchmarks, the scenario and the coding agent build
BUDGETS = {
    "defaults": (2048, 5.0, {}),
    "soak": (700, 3, {"method": "am"}),
    "recall": (1000, 4.0, {"pins": ["system", PinLastTurns(1)]}),
    "aime": (900, 4, {"pins": ["system", "first_user"], "protect_recent": 32, "min_segment_tokens": 4}),
    "coding-agent": (256, 4.0, {"pins": ["system", "tools", "first_user"], "protect_recent": 32}),
    "one-pin-object": (50, 10, {"pins": PinKinds(("tool_call",)), "protect_recent": 0, "min_segment_tokens": 1}),
    "no-pins": (1, 2.5, {"pins": [], "protect_recent": 0}),
}


def _budget(name: str) -> Policy:
    limit, ratio, kwargs = BUDGETS[name]
    return Policy.budget(limit, ratio, **kwargs)


@pytest.mark.parametrize("name", BUDGETS)
def test_it_fires_exactly_when_the_next_prefill_passes_the_limit(name: str) -> None:
    limit = BUDGETS[name][0]
    policy = _budget(name)
    for physical in (0, limit // 2, limit - 1, limit, limit + 1, 3 * limit):
        for incoming in (0, 1, 7, limit):
            fired = policy.should_compact(KVStats(physical + 50, physical, physical * 1000), incoming)
            assert (fired is not None) == (physical + incoming > limit), (physical, incoming)


@pytest.mark.parametrize("name", BUDGETS)
def test_it_compacts_only_unpinned_old_segments_at_its_ratio(name: str) -> None:
    limit, ratio, kwargs = BUDGETS[name]
    policy = _budget(name)
    expected_pin = PRESETS["default"].pin if "pins" not in kwargs else pin_from(kwargs["pins"])
    assert policy.pin == expected_pin and policy.method == kwargs.get("method", "am-fast")
    cases = [(session(), KVStats(1130, 1130, 0, turns=3), {s.index: s.tokens for s in session()})]
    cases += [random_session(seed) for seed in range(40)]
    planned = 0
    for segments, stats, physical in cases:
        spans = check_plan(policy, segments, stats, physical)  # no pin, no tail, sizes above the minimum
        assert all(span.ratio == float(ratio) for span in spans)
        planned += len(spans)
    assert planned > 0  # the cases exercise it


@pytest.mark.parametrize("name", BUDGETS)
def test_it_round_trips_through_a_dict(name: str) -> None:
    policy = _budget(name)
    assert Policy.from_dict(policy.to_dict()) == policy


def test_the_default_budget_is_the_default_policy() -> None:
    assert Policy.budget(2048) == Policy()
    assert Policy.budget(900, pins=[PinSystem(), "first_user"]).pin == AnyPin((PinSystem(), PinFirstUser()))


@pytest.mark.parametrize("args, kwargs, words", [
    ((0,), {}, "Policy.budget: limit must be >= 1, got 0"),
    ((2048.0,), {}, "Policy.budget: limit must be a whole number >= 1"),
    ((True,), {}, "Policy.budget: limit must be a whole number >= 1"),
    ((2048, 0.5), {}, "Policy.budget: ratio must be a finite number >= 1, got 0.5; pass e.g. 5"),
    ((2048, "5"), {}, "Policy.budget: ratio must be a finite number >= 1, got '5'"),
    ((2048,), {"method": "fast"}, "Policy.method must be one of am, am-fast"),
    ((2048,), {"pins": ["system", "nope"]}, "unknown pin kind 'nope'; known: system, tools"),
    ((2048,), {"pins": "first"}, "unknown pin kind 'first'"),
    ((64,), {}, r"protect_recent \(64\) must be below limit \(64\).*lower protect_recent or raise limit"),
    ((2048,), {"protect_recent": -1}, "Policy.budget: protect_recent must be >= 0, got -1"),
    ((2048,), {"min_segment_tokens": 0}, "min_segment_tokens must be >= 1, got 0"),
], ids=["limit-0", "limit-float", "limit-bool", "ratio-half", "ratio-text", "method", "pin-typo", "pin-name",
        "tail-fills-limit", "tail-negative", "min-segment-0"])
def test_bad_arguments_say_what_to_pass(args: tuple, kwargs: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Policy.budget(*args, **kwargs)
