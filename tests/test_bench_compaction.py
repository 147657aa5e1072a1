"""The compaction benchmark program and its kvpress peers (the presses run only where kvpress is installed)."""

from __future__ import annotations

import math

import pytest
import torch

from agentmem import hf
from agentmem.bench import compaction as bench
from agentmem.bench import kvpress_peers
from agentmem.errors import ConfigError

from conftest import tiny_chat_gemma3, tiny_chat_llama, tiny_tokenizer

HAVE_KVPRESS = kvpress_peers.unavailable() is None


def run_small(methods, ratios=(4,), model=None):
    return bench.run(model or tiny_chat_llama(), tiny_tokenizer(), ratios=list(ratios), methods=methods,
                     context=96, continuation=16, decode_steps=0, progress=lambda *_: None)


def test_rows_cover_every_method_and_ratio_and_shrink_the_cache():
    result = run_small(["am-fast", "streaming", "truncate"], ratios=(2, 4))
    rows = {(r["method"], r["ratio"]): r for r in result["rows"]}
    assert set(rows) == {(m, r) for m in ("am-fast", "streaming", "truncate") for r in (2, 4)}
    for row in rows.values():
        assert row["bytes_after"] < row["bytes_before"]
        assert row["kl"] >= -1e-6 and math.isfinite(row["nll_gap"])
    assert rows[("am-fast", 4)]["bytes_after"] < rows[("am-fast", 2)]["bytes_after"]
    assert rows[("streaming", 4)]["recovered"] == pytest.approx(0.0)  # the baseline recovers 0% of its own gap
    assert "am-fast" in bench.table(result) and '"bench": "compaction"' in bench.summary_line(result, "tiny")


def test_decode_speeds_cover_every_ratio_as_a_ratio_to_the_full_cache():
    result = bench.run(tiny_chat_llama(), tiny_tokenizer(), ratios=[4], methods=["truncate"], context=96,
                       continuation=16, decode_steps=2, decode_ratios=(5, 10, 20, 50), decode_rounds=2,
                       progress=lambda *_: None)
    s = result["summary"]
    keys = {f"{r}{layout}" for r in ("5", "10", "20", "50") for layout in ("", " ragged")}
    assert set(s["decode_vs_full"]) == set(s["decode_tokens_per_s"]) == keys
    assert s["full_tokens_per_s"] > 0 and all(v > 0 for v in s["decode_vs_full"].values())
    assert s["decode_speedup"] == s["decode_vs_full"]["10"]
    assert "x50" in bench.table(result) and '"decode_vs_full"' in bench.summary_line(result, "tiny")


def test_timing_caches_carry_beta_on_their_compacted_slots_only():
    model = tiny_chat_llama()
    ids = torch.randint(3, 200, (1, 60))
    cache, _, _ = bench.prefill(model, ids, repeats=1)
    full = hf.CompactedCache.from_cache(cache, scalings=hf.attention_scalings(model))
    comp = bench.with_beta(bench.compact(model, full, ids, ratio=10, method="truncate"))
    for idx in comp.full_layers():
        layer = comp.layers[idx]
        assert layer.has_beta and layer.physical_length == 6 and bool((layer.bias != 0).all())


def test_ratio_one_matches_the_full_cache():
    (row,) = run_small(["am"], ratios=(1,))["rows"]
    assert row["kl"] == pytest.approx(0.0, abs=1e-5) and row["attn_err"] < 1e-4


def test_unknown_method_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="unknown method.*choose from"):
        bench.check_methods(["am", "magic"])


@pytest.mark.skipif(HAVE_KVPRESS, reason="kvpress is installed here")
def test_kvpress_methods_without_kvpress_say_how_to_install_it():
    assert bench.default_methods() == bench.DEFAULT_METHODS
    with pytest.raises(ConfigError, match=r'pip install "agentmem\[kvpress\]"'):
        bench.check_methods(["kvpress-snapkv"])


def test_dropping_masked_slots_gives_the_same_attention_as_masking_them():
    torch.manual_seed(0)
    keys, values = torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8)
    masked = (torch.tensor([0, 0, 0]), torch.tensor([0, 0, 1]), torch.tensor([2, 7, 9]))
    k, v, bias = kvpress_peers._drop_masked(keys, values, masked)
    assert k.shape[-2] == 9  # head 0 keeps 8 of 10, head 1 keeps 9: as wide as the widest head
    q = torch.randn(1, 2, 3, 8)
    full_logits = q @ keys.transpose(-1, -2)
    full_logits[0, 0, :, [2, 7]] = float("-inf")
    full_logits[0, 1, :, 9] = float("-inf")
    want = torch.softmax(full_logits, -1) @ values
    got = torch.softmax(q @ k.transpose(-1, -2) + bias.unsqueeze(2), -1) @ v
    torch.testing.assert_close(got, want)
    assert torch.isinf(bias).sum() == 1  # only head 0's spare slot is padding


def test_nothing_masked_keeps_every_slot_in_order():
    keys, values = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    none = (torch.tensor([], dtype=torch.long),) * 3
    k, v, bias = kvpress_peers._drop_masked(keys, values, none)
    assert torch.equal(k, keys) and torch.equal(v, values) and not bias.any()


@pytest.mark.skipif(not HAVE_KVPRESS, reason="needs kvpress (pip install 'agentmem[kvpress]', transformers < 5.3)")
@pytest.mark.parametrize("build", [tiny_chat_llama, tiny_chat_gemma3], ids=["llama", "gemma3"])
def test_kvpress_streaming_matches_our_streaming_at_equal_budget(build):
    model = build()
    methods = ["streaming", "kvpress-streaming", "kvpress-snapkv", "kvpress-expected", "kvpress-kvzip"]
    result = run_small(methods, ratios=(4,), model=model)
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["kvpress-streaming"]["bytes_after"] == rows["streaming"]["bytes_after"]
    assert rows["kvpress-streaming"]["kl"] == pytest.approx(rows["streaming"]["kl"], abs=1e-5)
    ran = ["kvpress-snapkv", "kvpress-expected"] + (["kvpress-kvzip"] if build is tiny_chat_llama else [])
    for name in ran:
        assert rows[name]["bytes_after"] < rows[name]["bytes_before"] and math.isfinite(rows[name]["kl"])
    if build is tiny_chat_gemma3:  # kvpress 0.5.5 refuses KVzip on Gemma3ForCausalLM: reported, not fatal
        assert "kvpress-kvzip@4" in result["summary"]["failed"]
    # a press's per-head evictions are taken off the modules, so they cannot leak into later runs
    assert all(getattr(m, "masked_key_indices", None) is None for m in hf.attention_modules(model).values())


def test_time_breakdown_per_phase_and_captured_queries():
    """Each agentmem row splits its time by phase (over the prefill); METHOD:captured skips the
    repeat pass and reads the prefill's own queries instead."""
    result = run_small(["am-fast", "am-fast:captured", "truncate"])
    rows = {r["method"]: r for r in result["rows"]}
    repeat, captured = rows["am-fast"]["phases"], rows["am-fast:captured"]["phases"]
    assert {"queries", "budgets", "beta", "values"} <= set(repeat) and "captured" not in repeat
    assert "captured" in captured and captured.get("queries", 0.0) == 0.0
    for phases, row in ((repeat, rows["am-fast"]), (captured, rows["am-fast:captured"])):
        assert all(v >= 0 for v in phases.values())
        assert sum(phases.values()) <= row["time_ratio"] * 1.01 + 1e-6  # the phases are parts of the whole
    # within the uniform bytes (truncate's); the records of borrowed slots vary with the queries
    ragged = max(rows["am-fast:captured"]["bytes_after"], rows["am-fast"]["bytes_after"])
    assert ragged <= rows["truncate"]["bytes_after"]
    assert "time / prefill" in bench.table(result)
    with pytest.raises(ConfigError, match="captured"):
        bench.check_methods(["truncate:captured"])  # a method that asks no reference queries
