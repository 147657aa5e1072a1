"""`compact(query_dtype=...)`: reference queries gathered under bfloat16 autocast."""

import pytest
import torch

from agentmem import ConfigError, compact, hf, queries
from agentmem.bench.common import check_methods, split_method, suffix_options

from conftest import prefill, tiny_llama


def _keys(cache):
    return [cache.layers[i].keys.clone() for i in cache.full_layers()]


@pytest.mark.parametrize("method", ["am", "am-fast"])
def test_the_models_own_dtype_is_no_change(tiny_model, ids, method):
    plain = compact(tiny_model, prefill(tiny_model, ids), ids, ratio=4, method=method, start=4)
    same = compact(tiny_model, prefill(tiny_model, ids), ids, ratio=4, method=method, start=4, query_dtype="float32")
    assert all(torch.equal(a, b) for a, b in zip(_keys(plain), _keys(same)))


@pytest.mark.parametrize("method", ["am", "am-fast"])
def test_bfloat16_queries_fit_the_same_slots_in_the_models_dtype(tiny_model, ids, method):
    stats = {}
    plain = compact(tiny_model, prefill(tiny_model, ids), ids, ratio=4, method=method, start=4)
    low = compact(tiny_model, prefill(tiny_model, ids), ids, ratio=4, method=method, start=4,
                  query_dtype="bfloat16", stats=stats)
    assert low.physical_length() == plain.physical_length()
    for i in low.full_layers():  # the cache stays in the model's dtype; only the queries were bf16
        assert low.layers[i].keys.dtype == torch.float32 and torch.isfinite(low.layers[i].keys).all()
    assert stats["phases"]["queries"] > 0


def test_an_on_policy_fit_keeps_the_models_dtype(ids):
    # am-omp fits inside its repeat pass: under autocast its solves would run in bf16
    model = tiny_llama()
    plain = compact(model, prefill(model, ids), ids, ratio=4, method="am-omp", start=4)
    low = compact(model, prefill(model, ids), ids, ratio=4, method="am-omp", start=4, query_dtype="bfloat16")
    assert all(torch.equal(a, b) for a, b in zip(_keys(plain), _keys(low)))


def test_bfloat16_queries_are_close_to_the_float32_ones(ids):
    model = tiny_llama()
    hf.enable(model)
    view = hf.CompactedCache.from_cache(prefill(model, ids), scalings=hf.attention_scalings(model))
    layers = set(hf.full_attention_layers(model))
    runs = [queries.forward_pass(model, view.copy(), ids, layers=layers, normalisers=True, dtype=dtype)
            for dtype in (None, torch.bfloat16)]
    for idx in layers:
        full, low = runs[0].stacked(idx), runs[1].stacked(idx)
        assert low.dtype == torch.float32 and low.shape == full.shape
        assert torch.nn.functional.cosine_similarity(full, low, dim=-1).min() > 0.98
        assert (runs[0].stacked_lse(idx) - runs[1].stacked_lse(idx)).abs().max() < 0.1  # the normalisers too


def test_a_bad_query_dtype_is_refused_and_nothing_changes(ids):
    model = tiny_llama()
    cache = prefill(model, ids)
    before = [layer.keys.clone() for layer in cache.layers]
    with pytest.raises(ConfigError, match="query_dtype must be None .*'auto'.*'bfloat16'.*got 'bf16'"):
        compact(model, cache, ids, ratio=4, query_dtype="bf16")
    assert all(torch.equal(a, layer.keys) for a, layer in zip(before, cache.layers))


def test_auto_picks_bfloat16_only_where_the_cpu_multiplies_it(monkeypatch):
    model = tiny_llama()
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert queries.resolve_query_dtype("auto", model) is None  # an older CPU runs bf16 slower
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert queries.resolve_query_dtype("auto", model) is torch.bfloat16
    assert queries.resolve_query_dtype("float32", model) is None  # the model's own: no autocast
    assert queries.resolve_query_dtype(None, model) is None


def test_bench_method_names_take_bf16_and_local():
    assert split_method("am-fast:captured:bf16") == ("am-fast", "captured")
    assert suffix_options("am-fast:bf16") == {"query_dtype": "bfloat16"} and suffix_options("am-fast") == {}
    assert suffix_options("am-fast:captured:local:bf16") == {"repeat_mode": "local", "query_dtype": "bfloat16"}
    assert split_method("am:local") == ("am", None) and suffix_options("am:whole") == {"repeat_mode": "whole"}
    check_methods(["am-fast:bf16", "am:captured:bf16"])
    for bad in ("streaming:bf16", "streaming:local", "am:fp8"):  # streaming asks no reference queries
        with pytest.raises(ConfigError, match="unknown method"):
            check_methods([bad])


def test_a_session_gathers_queries_in_the_fast_dtype_unless_told(monkeypatch):
    from agentmem.engine import Session

    from conftest import tiny_chat_llama, tiny_tokenizer

    model, tokenizer = tiny_chat_llama(), tiny_tokenizer()
    assert Session(model, tokenizer).compactor.options["query_dtype"] == "auto"
    exact = Session(model, tokenizer, compaction_options={"query_dtype": None})
    assert exact.compactor.options["query_dtype"] is None  # the caller's choice wins
    seen = []
    real = queries.forward_pass
    monkeypatch.setattr(queries, "forward_pass", lambda *a, **k: seen.append(k.get("dtype")) or real(*a, **k))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    from agentmem.policies import Policy

    session = Session(model, tokenizer, policy=Policy.budget(100_000, pins=["system"], protect_recent=0))
    for n in range(4):
        session.add("user", f"note {n}: the code for slot {n} is {1000 + n}, remember it well.")
    session.prefill()
    assert session.compact(ratio=4, method="am-fast")
    assert seen and all(dtype is torch.bfloat16 for dtype in seen)
