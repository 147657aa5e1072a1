"""`compact(repeat_mode="local")`: each piece of the span re-read right after itself."""

import logging

import pytest
import torch

from agentmem import ConfigError, compact, hf, queries

from conftest import VOCAB, prefill, tiny_gemma3, tiny_llama

PROMPT = torch.tensor([[5, 6, 7]])


@pytest.fixture
def local_runs(monkeypatch):
    """Completed local repeats (a fallback to the whole repeat leaves this empty)."""
    runs = []
    real = queries.local_repeat

    def spy(*args, **kwargs):
        capture = real(*args, **kwargs)
        runs.append(capture)
        return capture

    monkeypatch.setattr(queries, "local_repeat", spy)
    return runs


def _setup(seed: int, length: int):
    """A tiny model, `length` random ids, their prefilled cache as a view, and its full layers."""
    model = tiny_llama()
    torch.manual_seed(seed)
    ids = torch.randint(3, VOCAB, (1, length))
    hf.enable(model)
    view = hf.CompactedCache.from_cache(prefill(model, ids), scalings=hf.attention_scalings(model))
    return model, ids, view, set(hf.full_attention_layers(model))


def test_a_piece_asks_what_a_model_reading_it_then_repeating_it_asks():
    """The queries of chunk [a, b) are those of a fresh pass over tokens [0, b), the prompt, then [a, b)."""
    model, ids, view, layers = _setup(2, 40)
    prompt = PROMPT
    got = queries.local_repeat(model, view, ids, [(8, 30)], prompt, layers=layers, chunk=12)
    assert queries.local_groups(view, [(8, 30)], 12) == [(20, [(8, 20)]), (30, [(20, 30)])]
    for a, b in [(8, 20), (20, 30)]:
        with hf.capture_queries(layers=layers) as fresh:
            model(input_ids=torch.cat([ids[:, :b], prompt, ids[:, a:b]], dim=1), use_cache=False)
        for idx in layers:
            whole = fresh.stacked(idx)[:, :, b:]  # the prompt and the repeated chunk
            chunk = 0 if a == 8 else 1
            torch.testing.assert_close(got.queries[idx][chunk], whole, rtol=1e-4, atol=1e-5)
    assert view.get_seq_length() == 40 and all(view.layers[i].physical_length == 40 for i in layers)


def test_spread_pieces_are_repeated_together_after_the_cut_at_the_last():
    """Pieces of a capped repeat (`repeat_pieces`) within one stretch read as one repeat, as the whole
    repeat reads them, on the cache cut after the last of them."""
    model, ids, view, layers = _setup(5, 60)
    prompt = PROMPT
    pieces = [(0, 6), (12, 18), (24, 30), (40, 46)]
    assert queries.local_groups(view, pieces, 20) == [(18, [(0, 6), (12, 18)]), (30, [(24, 30)]), (46, [(40, 46)])]
    got = queries.local_repeat(model, view, ids, pieces[:2], prompt, layers=layers, chunk=20)
    with hf.capture_queries(layers=layers) as fresh:
        model(input_ids=torch.cat([ids[:, :18], prompt, ids[:, 0:6], ids[:, 12:18]], dim=1), use_cache=False)
    for idx in layers:
        torch.testing.assert_close(got.stacked(idx), fresh.stacked(idx)[:, :, 18:], rtol=1e-4, atol=1e-5)


def test_chunks_end_where_the_cache_can_be_cut():
    model = tiny_llama()
    torch.manual_seed(3)
    ids = torch.randint(3, VOCAB, (1, 64))
    compacted = compact(model, prefill(model, ids), ids, ratio=4, method="am-fast", start=10, end=30)
    # a chunk that would end inside the compacted run [10, 30) runs on to its end
    assert queries.local_groups(compacted, [(0, 64)], 16) == [(30, [(0, 30)]), (46, [(30, 46)]), (62, [(46, 62)]),
                                                               (64, [(62, 64)])]
    assert queries.local_groups(compacted, [(0, 8), (40, 50)], 16) == [(8, [(0, 8)]), (50, [(40, 50)])]
    with pytest.raises(ValueError, match="inside a compacted run"):
        hf.crop_cache(compacted, 16, model)  # why the chunk could not end there


@pytest.mark.parametrize("method", ["am", "am-fast", "kvzip"])
def test_local_repeat_compacts_to_the_same_size(ids, method, local_runs):
    model = tiny_llama()
    whole = compact(model, prefill(model, ids), ids, ratio=4, method=method, start=4)
    stats = {}
    local = compact(model, prefill(model, ids), ids, ratio=4, method=method, start=4, repeat_mode="local",
                    stats=stats)
    assert local.physical_length() == whole.physical_length()
    assert local.get_seq_length() == whole.get_seq_length() == ids.shape[1]
    for i in local.full_layers():
        assert torch.isfinite(local.layers[i].keys).all() and torch.isfinite(local.layers[i].values).all()
    assert stats["phases"]["queries"] > 0
    assert len(local_runs) == 1


def test_local_repeat_of_a_span_compacted_before(ids, local_runs):
    model = tiny_llama()
    once = compact(model, prefill(model, ids), ids, ratio=2, method="am-fast", start=4, end=30)
    twice = compact(model, once, ids, ratio=2, method="am-fast", start=4, end=44, repeat_mode="local")
    assert twice.get_seq_length() == ids.shape[1]
    assert twice.physical_length() < once.physical_length()
    assert len(local_runs) == 1  # cut at 44, after the run [4, 30): no fallback


def test_a_sliding_window_model_falls_back_to_the_whole_repeat(caplog, local_runs):
    """Gemma3's sliding layers no longer hold the window that ends at the span's end (token 30 of 48)."""
    model = tiny_gemma3()
    torch.manual_seed(4)
    ids = torch.randint(3, VOCAB, (1, 48))
    whole = compact(model, prefill(model, ids), ids, ratio=4, method="am-fast", start=4, end=30)
    with caplog.at_level(logging.INFO, logger="agentmem.compaction"):
        local = compact(model, prefill(model, ids), ids, ratio=4, method="am-fast", start=4, end=30,
                        repeat_mode="local")
    assert "local repeat not possible" in caplog.text and not local_runs
    for i in whole.full_layers():
        assert torch.equal(local.layers[i].keys, whole.layers[i].keys)


def test_an_on_policy_fit_keeps_the_whole_repeat(ids, local_runs):
    # the span ends at 30 of 48, where a local repeat (cut at 30) asks otherwise than the whole one
    model = tiny_llama()
    whole = compact(model, prefill(model, ids), ids, ratio=4, method="am-omp", start=4, end=30)
    local = compact(model, prefill(model, ids), ids, ratio=4, method="am-omp", start=4, end=30, repeat_mode="local")
    for i in whole.full_layers():
        assert torch.equal(local.layers[i].keys, whole.layers[i].keys)
    assert not local_runs


@pytest.mark.parametrize("bad", ["after", "", None, 1])
def test_a_bad_repeat_mode_is_refused_and_nothing_changes(ids, bad):
    model = tiny_llama()
    cache = prefill(model, ids)
    before = [layer.keys.clone() for layer in cache.layers]
    with pytest.raises(ConfigError, match="repeat_mode must be 'auto', 'whole'"):
        compact(model, cache, ids, ratio=4, method="am-fast", repeat_mode=bad)
    assert all(torch.equal(a, layer.keys) for a, layer in zip(before, cache.layers))


def test_auto_repeats_the_whole_span_inside_the_trained_context_and_locally_past_it(ids, local_runs):
    """tiny_llama is trained to 1024 positions: 48 tokens and their repeat fit; past 1024 the
    repeat goes stretch by stretch."""
    model = tiny_llama()
    auto = compact(model, prefill(model, ids), ids, ratio=4, method="am-fast", start=4)
    whole = compact(model, prefill(model, ids), ids, ratio=4, method="am-fast", start=4, repeat_mode="whole")
    assert not local_runs and all(torch.equal(auto.layers[i].keys, whole.layers[i].keys) for i in auto.full_layers())
    torch.manual_seed(6)
    long = torch.randint(3, VOCAB, (1, 600))  # 600 + its repeat > 1024
    compact(model, prefill(model, long), long, ratio=4, method="am-fast", start=4)
    assert local_runs
