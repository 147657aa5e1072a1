"""Heads of one layer at different widths stored without padding (borrowed slots, hf/ragged.py).

The invariant: a run packed at its heads' mean width answers every query exactly as the
same run stored padded to its widest head, through decode, prefill chunks, crops, drops,
replacements, snapshots and recompaction; and it takes fewer bytes.
"""

from __future__ import annotations

import pytest
import torch

from agentmem import compact, head_budgets, hf

from conftest import VOCAB, prefill, tiny_llama

RUN = 24  # tokens [0, RUN) become one ragged run
COUNTS = [9, 1, 2]  # slots per KV head: mean 4, widest 9


@pytest.fixture(scope="module")
def model():
    """GQA with 3 KV heads of 2 query heads each, so a head can borrow from two others."""
    return tiny_llama(kv_heads=3)


@pytest.fixture(scope="module")
def ids():
    torch.manual_seed(1)
    return torch.randint(3, VOCAB, (1, 48))


def ragged_caches(model, ids, counts=COUNTS):
    """The same ragged run of tokens [0, RUN) stored padded to its widest head, and packed."""
    view = hf.CompactedCache.from_cache(prefill(model, ids), scalings=hf.attention_scalings(model))
    generator = torch.Generator().manual_seed(2)
    padded, packed = view.copy(), view.copy()
    widest = max(counts)
    for idx in view.full_layers():
        layer = view.layers[idx]
        batch, heads, _, dim = layer.keys.shape
        keys = torch.zeros(batch, heads, widest, dim)
        values = torch.zeros(batch, heads, widest, layer.values.shape[-1])
        bias = torch.full((batch, heads, widest), float("-inf"))
        for h, count in enumerate(counts):
            pick = torch.randperm(RUN, generator=generator)[:count]
            keys[:, h, :count] = layer.keys[:, h, pick]
            values[:, h, :count] = layer.values[:, h, pick] * 1.5
            bias[:, h, :count] = torch.randn(count, generator=generator)
        runs = hf.splice_runs(layer.runs, 0, RUN, widest)
        padded.layers[idx] = hf.CompactedLayer.from_tensors(
            torch.cat([keys, layer.keys[:, :, RUN:]], 2), torch.cat([values, layer.values[:, :, RUN:]], 2),
            torch.cat([bias, layer.bias[..., RUN:]], -1), logical_length=layer.logical_length,
            scaling=layer.scaling, runs=runs)
        k, v, b, borrowed = hf.pack(keys, values, bias, 0)
        packed.layers[idx] = hf.CompactedLayer.from_tensors(
            torch.cat([k, layer.keys[:, :, RUN:]], 2), torch.cat([v, layer.values[:, :, RUN:]], 2),
            torch.cat([b, layer.bias[..., RUN:]], -1), logical_length=layer.logical_length,
            scaling=layer.scaling, runs=hf.splice_runs(layer.runs, 0, RUN, k.shape[2]), borrowed=borrowed)
    return padded, packed


def logits(model, cache, new):
    hf.enable(model)
    with torch.no_grad():
        return model(input_ids=new, past_key_values=cache.copy()).logits


def decode_logits(model, cache, new):
    """Logits of `new` fed one token at a time (the decode path)."""
    hf.enable(model)
    cache, out = cache.copy(), []
    with torch.no_grad():
        for t in range(new.shape[1]):
            out.append(model(input_ids=new[:, t : t + 1], past_key_values=cache).logits)
    return torch.cat(out, dim=1)


def test_a_packed_run_attends_exactly_as_the_padded_one(model, ids):
    padded, packed = ragged_caches(model, ids)
    new = torch.randint(3, VOCAB, (1, 6))
    torch.testing.assert_close(logits(model, packed, new), logits(model, padded, new), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(decode_logits(model, packed, new), decode_logits(model, padded, new),
                               atol=1e-5, rtol=1e-5)
    # and the borrowed slots matter: without them the answer changes
    stripped = packed.copy()
    for idx in stripped.full_layers():
        stripped.layers[idx].borrowed = None
    assert (logits(model, stripped, new) - logits(model, padded, new)).abs().max() > 1e-3


def test_a_packed_run_stores_the_mean_width_and_no_padding(model, ids):
    padded, packed = ragged_caches(model, ids)
    for idx in packed.full_layers():
        layer = packed.layers[idx]
        assert layer.runs[0] == [RUN, 4]  # mean of 9, 1, 2
        assert padded.layers[idx].runs[0] == [RUN, 9]
        assert layer.effective_slots().tolist() == padded.layers[idx].effective_slots().tolist()
        assert int(layer.effective_slots().sum()) == layer.bias.numel()  # every stored slot is someone's
    assert packed.nbytes() < padded.nbytes()


@pytest.mark.parametrize("operation", ["crop", "drop-after", "drop-run", "snapshot", "replace-after"])
def test_cache_operations_keep_the_borrowed_slots(model, ids, operation):
    padded, packed = ragged_caches(model, ids)

    def apply(cache):
        if operation == "crop":
            return hf.crop_cache(cache, 40, model)
        if operation == "drop-after":
            return hf.drop_span(cache, 30, 36)
        if operation == "drop-run":
            return hf.drop_span(cache, 0, RUN)
        if operation == "snapshot":
            return hf.cache_from_state(hf.cache_state(cache, block=3), model)
        return hf.replace_span(model, cache, 30, 40, [5, 6, 7])

    new = torch.randint(3, VOCAB, (1, 4))
    out_packed, out_padded = apply(packed), apply(padded)
    torch.testing.assert_close(logits(model, out_packed, new), logits(model, out_padded, new), atol=1e-5, rtol=1e-5)
    kept = [out_packed.layers[i].borrowed for i in out_packed.full_layers()]
    assert all(b is None for b in kept) if operation == "drop-run" else all(b is not None for b in kept)


def test_recompaction_reads_each_heads_borrowed_slots(model, ids):
    """The span a recompaction fits holds, per head, the same (key, beta) rows in both layouts."""
    padded, packed = ragged_caches(model, ids)
    for idx in packed.full_layers():
        p, q = padded.layers[idx], packed.layers[idx]
        a_keys, _, a_bias = hf.unpack(p.keys, p.values, p.bias, p.borrowed, *p.physical_span(0, 30))
        b_keys, _, b_bias = hf.unpack(q.keys, q.values, q.bias, q.borrowed, *q.physical_span(0, 30))
        for h in range(len(COUNTS)):
            rows_a = torch.cat([a_keys[0, h], a_bias[0, h, :, None]], -1)[torch.isfinite(a_bias[0, h])]
            rows_b = torch.cat([b_keys[0, h], b_bias[0, h, :, None]], -1)[torch.isfinite(b_bias[0, h])]
            assert rows_a.shape == rows_b.shape
            torch.testing.assert_close(rows_a[rows_a[:, -1].argsort()], rows_b[rows_b[:, -1].argsort()])
    new = torch.randint(3, VOCAB, (1, 4))
    again = [compact(model, cache, ids, ratio=2, method="am-fast", start=0, end=36) for cache in (padded, packed)]
    assert all(torch.isfinite(logits(model, c, new)).all() for c in again)


def test_a_corrupt_borrowed_record_is_refused(model, ids):
    _, packed = ragged_caches(model, ids)
    state = hf.cache_state(packed)
    entry = state[0]["meta"]["borrowed"][0]
    for bad in ([entry[0], entry[1], entry[2], 10_000, entry[4]],  # outside the layer
                [entry[0], entry[1], entry[2], RUN, entry[4]],  # on a slot the lender uses itself
                [entry[0], 7, entry[2], entry[3], entry[4]],  # no such owner head
                [entry[0], entry[1], entry[2], entry[3], float("nan")]):
        broken = [dict(layer, meta=dict(layer["meta"])) for layer in state]
        broken[0]["meta"]["borrowed"] = [bad] + state[0]["meta"]["borrowed"][1:]
        with pytest.raises(ValueError, match="borrowed"):
            hf.cache_from_state(broken, model)


def test_compaction_uses_per_head_counts_within_the_uniform_bytes(model, ids):
    out = compact(model, prefill(model, ids), ids, ratio=4, method="am-fast", end=40)
    uniform = compact(model, prefill(model, ids), ids, ratio=4, method="streaming", end=40)
    assert out.nbytes() <= uniform.nbytes()
    counts = torch.stack([out.layers[i].effective_slots()[0] for i in out.full_layers()])
    assert len(set(counts.flatten().tolist())) > 1  # heads (or layers) at different counts


def test_per_head_counts_fit_the_total_and_follow_the_scores():
    torch.manual_seed(0)
    scores = {0: torch.rand(3, 50) ** 4, 1: torch.rand(3, 50) ** 4}
    scores[0][0] += 1.0  # head 0 of layer 0 wants everything
    scores[0][0] /= 2
    valid = {i: torch.ones_like(s, dtype=torch.bool) for i, s in scores.items()}
    valid[1][2, 10:] = False  # a head with 10 valid keys keeps at most 10
    counts = head_budgets.per_head_counts(scores, valid, total=20, heads=3, record_cost=0.1)
    widths = {i: -(-int(c.sum()) // 3) for i, c in counts.items()}
    borrowed = {i: max(0, int(c.max()) - widths[i]) for i, c in counts.items()}
    assert sum(widths.values()) + 0.1 * sum(borrowed.values()) <= 20
    assert int(counts[1][2]) <= 10 and all(int(c.min()) >= 1 for c in counts.values())
    assert int(counts[0][0]) == int(counts[0].max()) and int(counts[0][0]) > widths[0]  # it borrows


def test_the_benchmark_attention_error_reads_borrowed_slots(model, ids):
    from agentmem.bench.compaction import attention_error

    padded, packed = ragged_caches(model, ids)
    hf.enable(model)
    with hf.capture_queries() as capture, torch.no_grad():
        model(input_ids=torch.randint(3, VOCAB, (1, 5)), past_key_values=prefill(model, ids))
    assert attention_error(padded, packed, capture) < 1e-5
    stripped = packed.copy()
    for idx in stripped.full_layers():
        stripped.layers[idx].borrowed = None
    assert attention_error(padded, stripped, capture) > 1e-3
