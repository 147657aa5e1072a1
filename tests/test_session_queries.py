"""Specs of the queries a session keeps for compaction (`agentmem.session_queries`) and its save mark
(`agentmem.saving`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import DynamicCache

from agentmem.errors import SessionNotFoundError, StaleSessionError
from agentmem.saving import SaveMark
from agentmem.session_queries import SessionQueries


def _capture(tokens: int, layers=(0, 2)) -> SimpleNamespace:
    parts = {i: [torch.randn(1, 4, 1, 8) for _ in range(tokens)] for i in layers}
    return SimpleNamespace(queries=parts, stacked=lambda i: torch.cat(parts[i], dim=2))


def test_decode_queries_fill_a_bounded_ring_only_for_fitting_methods():
    queries = SessionQueries((0, 2), recent=3)
    assert queries.capture_layers(decode=False, method="am-fast") == set()  # no sample: prefill is not recorded
    assert queries.capture_layers(decode=True, method="am-fast") == {0, 2}
    assert queries.capture_layers(decode=True, method="truncate") == set()
    queries.remember(_capture(5), 10, decode=True, method="am-fast")
    recent = queries.recent_queries()
    assert set(recent) == {0, 2} and recent[0].shape == (1, 4, 3, 8)
    queries.remember(_capture(2), 15, decode=True, method="truncate")  # not a fitting method: not kept
    assert queries.recent_queries()[0].shape[2] == 3
    assert SessionQueries((0,), recent=0).capture_layers(decode=True, method="am") == set()
    assert SessionQueries((0,)).recent_queries() is None


def test_a_sample_records_prefill_too_and_copies_are_independent():
    queries = SessionQueries((0, 2), recent=4, captured=8)
    assert queries.capture_layers(decode=False, method="truncate") == {0, 2}
    queries.remember(_capture(6), 0, decode=False, method="am")
    assert len(queries.sample) == 6 and queries.recent_queries() is None
    twin = queries.copy()
    twin.remember(_capture(2), 6, decode=True, method="am")
    assert len(twin.sample) == 8 and len(queries.sample) == 6 and queries.recent_queries() is None
    assert twin.recent_queries()[2].shape[2] == 2


def test_state_and_restore_round_trip_the_ring():
    queries = SessionQueries((0, 2), recent=4)
    queries.remember(_capture(3), 0, decode=True, method="am")
    entries = queries.state()
    assert [e["kind"] for e in entries] == ["queries", "queries"]
    again = SessionQueries((0, 2), recent=4)
    again.restore({e["meta"]["layer"]: e["blocks"][0]["queries"] for e in entries}, None)
    for idx, tensor in queries.recent_queries().items():
        assert torch.equal(again.recent_queries()[idx], tensor)
    off = SessionQueries((0, 2), recent=0)
    off.restore({0: torch.randn(1, 4, 2, 8)}, None)
    assert off.recent_queries() is None


# --------------------------------------------------------------------------- the save mark


def test_a_rewrite_lowers_the_stable_prefix():
    mark = SaveMark(stable=300)
    mark.changed(120)
    mark.changed(200)
    assert mark.stable == 120


@pytest.mark.parametrize("error", [StaleSessionError("someone else saved"), SessionNotFoundError("gone")])
def test_a_commit_another_writer_beat_leaves_the_mark_and_names_the_unsaved(error):
    def commit_turn(*args, **kwargs):
        raise error

    store = SimpleNamespace(commit_turn=commit_turn, path="s.db")
    mark = SaveMark(version=3, messages=1)
    messages = [{"role": "user", "content": "old"}, {"role": "user", "content": "new"}]
    with pytest.raises(StaleSessionError) as caught:
        mark.commit(store, "abc", messages=messages, segments=[], events=[], cache=DynamicCache(), cached=0,
                    queries=[], state={})
    assert caught.value.unsaved == messages[1:] and (mark.version, mark.messages) == (3, 1)
    if isinstance(error, SessionNotFoundError):
        assert "save_as_new()" in str(caught.value)
