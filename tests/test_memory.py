"""Specs of `agentmem.memory.Compactor` on its own: plan -> snap -> run, and the result a session applies."""

from __future__ import annotations

import torch

from agentmem import hf
from agentmem.memory import Compaction, Compactor
from agentmem.policies import AnyPin, FixedRatio, PinSystem, Policy, TokenLimit
from agentmem.segments import Segment

from conftest import prefill, tiny_chat_llama, tiny_tokenizer

POLICY = Policy(trigger=TokenLimit(64), ratio=FixedRatio(4), pin=AnyPin((PinSystem(),)), method="am-fast",
                protect_recent=16)


def _setup():
    model = tiny_chat_llama()
    hf.enable(model)
    ids = torch.randint(0, model.config.vocab_size, (1, 96), generator=torch.Generator().manual_seed(0))
    cache = prefill(model, ids)
    segments = [Segment(index=0, role="system", kind="system", start=0, end=16),
                Segment(index=1, role="user", kind="user", start=16, end=48, turn=1),
                Segment(index=2, role="assistant", kind="assistant", start=48, end=80, turn=1),
                Segment(index=3, role="user", kind="user", start=80, end=96, turn=2)]
    return model, ids[0].tolist(), cache, segments


def test_held_names_pinned_hand_pinned_and_recent_segments():
    _, _, _, segments = _setup()
    segments[2].pinned = True
    assert Compactor.held(segments, policy=POLICY, cached=96) == {0, 2, 3}
    assert Compactor.held(segments, policy=POLICY, cached=200) == {0, 2}


def test_compact_plans_snaps_and_returns_what_the_session_applies():
    model, ids, cache, segments = _setup()
    compactor = Compactor(model, tiny_tokenizer())
    plans = []
    compactor.on_before(plans.append)
    stats = hf.cache_size(cache)
    kv = _stats(cache)
    result = compactor.compact(cache, ids, segments, policy=POLICY, stats=kv, reason="token_limit")
    assert isinstance(result, Compaction) and result.applied == result.events
    (plan,) = plans
    assert plan.reason == "token_limit" and plan.spans and all(s.segments for s in plan.spans)
    assert all(s.start >= 16 and s.end <= 80 for s in plan.spans)  # not the system prompt, not the recent tail
    assert hf.cache_size(result.cache)[1] < stats[1]
    assert {i for e in result.events for i in e.segments} <= {1, 2}
    assert hf.cache_size(cache) == stats  # the cache handed in is left as it was


def test_a_veto_leaves_the_cache_and_reports_it():
    model, ids, cache, segments = _setup()
    compactor = Compactor(model, tiny_tokenizer())
    compactor.on_before(lambda plan: False)
    result = compactor.compact(cache, ids, segments, policy=POLICY, stats=_stats(cache), reason="manual")
    assert result.cache is cache and [e.status for e in result.events] == ["vetoed"] and result.applied == []


def test_nothing_to_plan_falls_back_to_dropping_the_oldest_unpinned():
    model, ids, cache, segments = _setup()
    compactor = Compactor(model, tiny_tokenizer())
    off = Policy(trigger=TokenLimit(64), ratio=FixedRatio(1), pin=AnyPin((PinSystem(),)), method="am-fast",
                 protect_recent=16)
    result = compactor.compact(cache, ids, segments, policy=off, stats=_stats(cache), reason="manual")
    (event,) = result.events
    assert event.status == "fallback" and event.segments == (1,) and result.applied == [event]


def _stats(cache):
    from agentmem.segments import KVStats

    logical, physical, nbytes = hf.cache_size(cache)
    return KVStats(logical_tokens=logical, physical_tokens=physical, bytes=nbytes, turns=2)


def test_snapped_spans_merge_when_they_overlap_or_touch_at_one_ratio():
    """A fresh turn at x5 beside an old run at x2 (`FixedRatio.again`) stays its own span; touching
    spans of one ratio, and spans that overlap once widened to whole runs, merge."""
    from agentmem.memory import snap_spans
    from agentmem.policies import Span

    cache = hf.CompactedCache([hf.CompactedLayer.from_tensors(
        torch.zeros(1, 1, 30, 4), torch.zeros(1, 1, 30, 4), torch.zeros(1, 1, 30),
        logical_length=60, runs=[[40, 10], [20, 20]])])
    old, fresh = Span(0, 40, 2.0, (0, 1)), Span(40, 50, 5.0, (2,))
    assert snap_spans(cache, [old, fresh], None) == [old, fresh]
    assert snap_spans(cache, [old, Span(40, 50, 2.0, (2,))], None) == [Span(0, 50, 2.0, (0, 1, 2))]
    inside = Span(10, 20, 5.0, (7,))  # widened to the whole run [0, 40): it overlaps `old`
    assert snap_spans(cache, [old, inside], None) == [Span(0, 40, 2.0, (0, 1, 7))]
    assert snap_spans(cache, [old, fresh], 3.0) == [Span(0, 50, 3.0, (0, 1, 2))]  # one ratio for all
