"""Key scores over the whole context: each reference query's log-sum-exp, recorded in its own
attention call, normalises the span's attention (KVzip's score; `am.reduce`)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from agentmem import am, compact, compaction, hf, queries

from conftest import prefill, tiny_llama


def _repeat_kv(keys: torch.Tensor, heads: int) -> torch.Tensor:
    return keys.repeat_interleave(heads // keys.shape[1], dim=1)


def _manual_lse(query, layer: hf.CompactedLayer, scaling: float) -> torch.Tensor:
    """log-sum-exp of every query over all the layer's slots (bias included), causal over the new tokens."""
    keys = _repeat_kv(layer.keys.float(), query.shape[1])
    bias = _repeat_kv(layer.bias.float().unsqueeze(-1), query.shape[1]).squeeze(-1)
    logits = query @ keys.transpose(-1, -2) * scaling + bias.unsqueeze(2)
    n, total = query.shape[-2], keys.shape[-2]
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    logits[..., total - n:] = logits[..., total - n:].masked_fill(future, float("-inf"))
    if layer.borrowed is not None:  # slots a head holds in another head's row (hf.ragged)
        lent, _ = layer.borrowed.gather(layer.keys, layer.values)
        lent = _repeat_kv(lent.float(), query.shape[1])
        lent_bias = _repeat_kv(layer.borrowed.bias.unsqueeze(-1), query.shape[1]).squeeze(-1)
        logits = torch.cat([logits, query @ lent.transpose(-1, -2) * scaling + lent_bias.unsqueeze(2)], dim=-1)
    return torch.logsumexp(logits, dim=-1)


@pytest.mark.parametrize("compacted", [False, True], ids=["plain", "compacted"])
def test_recorded_normaliser_is_the_log_sum_exp_over_everything_the_query_saw(tiny_model, ids, compacted):
    cache = prefill(tiny_model, ids)
    if compacted:  # earlier beta must count, as attention counts it
        cache = compact(tiny_model, cache, ids, ratio=4, method="am-fast", end=32)
    hf.enable(tiny_model)
    view = hf.CompactedCache.from_cache(cache, scalings=hf.attention_scalings(tiny_model))
    layers = set(view.full_layers())
    new = ids[:, :9]
    grown = view.copy()
    capture = queries.forward_pass(tiny_model, grown, new, layers=layers, normalisers=True)
    for idx in layers:
        expected = _manual_lse(capture.stacked(idx), grown.layers[idx], capture.scalings[idx])
        torch.testing.assert_close(capture.stacked_lse(idx), expected, atol=1e-4, rtol=1e-4)


def test_recording_normalisers_does_not_change_the_model_output(tiny_model, ids):
    cache = compact(tiny_model, prefill(tiny_model, ids), ids, ratio=4, method="am-fast", end=32)
    hf.enable(tiny_model)
    view = hf.CompactedCache.from_cache(cache, scalings=hf.attention_scalings(tiny_model))
    outputs = {}
    for normalisers in (False, True):
        grown = view.copy()
        with torch.no_grad(), hf.capture_queries(normalisers=normalisers):
            prompt = tiny_model(input_ids=ids[:, :5], past_key_values=grown).logits
            step = tiny_model(input_ids=ids[:, 5:6], past_key_values=grown).logits  # one token: the decode path
        outputs[normalisers] = torch.cat([prompt, step], dim=1)
    torch.testing.assert_close(outputs[True], outputs[False], atol=1e-5, rtol=1e-4)


def _span_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(3, 40, 8, generator=g), torch.randn(3, 24, 8, generator=g), torch.randn(3, 24, 5, generator=g)
    prior = torch.zeros(3, 24)
    prior[1, -4:] = float("-inf")  # padding
    return q, k, v, prior


def test_a_normaliser_equal_to_the_spans_own_changes_nothing():
    q, k, v, prior = _span_case()
    plain = am.reduce(q, k, v, prior, 0.35, block=16)
    own = torch.logsumexp(am.span_logits(q, k, prior, 0.35), dim=-1)
    same = am.reduce(q, k, v, prior, 0.35, normaliser=own, block=16)
    torch.testing.assert_close(same.peak, plain.peak)
    torch.testing.assert_close(same.rms, plain.rms)
    torch.testing.assert_close(same.outputs, plain.outputs)


def test_scores_shrink_by_the_share_of_attention_that_lands_on_the_span():
    q, k, v, prior = _span_case()
    plain = am.reduce(q, k, v, prior, 0.35, block=16)
    own = torch.logsumexp(am.span_logits(q, k, prior, 0.35), dim=-1)
    share = torch.rand(own.shape, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    whole = am.reduce(q, k, v, prior, 0.35, normaliser=own - share.log(), block=16)
    probs = torch.softmax(am.span_logits(q, k, prior, 0.35), dim=-1) * share.unsqueeze(-1)
    torch.testing.assert_close(whole.peak, probs.amax(1))
    torch.testing.assert_close(whole.rms, probs.square().mean(1).sqrt())
    torch.testing.assert_close(whole.mass, plain.mass)  # the fit's quantities are the span's
    torch.testing.assert_close(whole.outputs, plain.outputs)


def test_an_unknown_or_too_small_normaliser_falls_back_to_the_span():
    q, k, v, prior = _span_case()
    plain = am.reduce(q, k, v, prior, 0.35)
    unknown = torch.full(q.shape[:2], float("nan"))
    too_small = torch.full(q.shape[:2], -1e4)  # below the span's own mass: numerically impossible, never inflates
    for normaliser in (unknown, too_small):
        torch.testing.assert_close(am.reduce(q, k, v, prior, 0.35, normaliser=normaliser).peak, plain.peak)


def test_normalisers_ride_with_their_queries_through_grouping_and_sampling():
    g = torch.Generator().manual_seed(0)
    asked = torch.randn(1, 6, 50, 4, generator=g)
    lse = torch.arange(300.0).reshape(1, 6, 50)
    rows = queries.group_queries(queries.with_normaliser(asked, lse), 2)
    picked = queries.combine(rows, [], 40, torch.Generator().manual_seed(3), positions=50)
    q, norm = queries.split_normaliser(picked)
    flat_q = queries.group_queries(asked, 2)
    flat_lse = lse.reshape(1, 2, 3, 50).reshape(2, 150)
    for head in range(2):
        for i in range(q.shape[1]):
            row = (flat_lse[head] == norm[head, i]).nonzero().item()  # the normalisers are distinct labels
            torch.testing.assert_close(q[head, i], flat_q[head, row])


@pytest.fixture
def context_methods(monkeypatch):
    for name in ("am", "am-fast", "kvzip"):
        monkeypatch.setitem(compaction.METHODS, f"{name}@span", replace(compaction.METHODS[name], normaliser="span"))
        monkeypatch.setitem(compaction.METHODS, f"{name}@context",
                            replace(compaction.METHODS[name], normaliser="context"))


@pytest.mark.parametrize("method", ["am", "am-fast", "kvzip"])
def test_context_scores_reach_the_selection(tiny_model, ids, method, context_methods, monkeypatch):
    seen = []
    real = am.reduce

    def spy(*args, normaliser=None, **kwargs):
        seen.append(normaliser)
        return real(*args, normaliser=normaliser, **kwargs)

    monkeypatch.setattr(am, "reduce", spy)
    cache = prefill(tiny_model, ids)
    out = compact(tiny_model, cache, ids, ratio=4, method=f"{method}@context")
    assert seen and all(n is not None for n in seen)
    # every query has its own (am's 16 self-study tokens too): none falls back to the span
    assert torch.isfinite(torch.cat([n.flatten() for n in seen])).all()
    assert out.physical_length() == compact(tiny_model, cache, ids, ratio=4, method=f"{method}@span").physical_length()


def test_queries_without_a_normaliser_are_scored_over_the_span(ids, context_methods, monkeypatch):
    model = tiny_llama()
    cache = prefill(model, ids)
    hf.enable(model)
    with hf.capture_queries() as capture, torch.no_grad():
        model(input_ids=ids[:, -4:], past_key_values=prefill(model, ids))
    recent = {i: capture.stacked(i) for i in capture.queries}
    seen = []
    real = am.reduce
    monkeypatch.setattr(am, "reduce", lambda *a, normaliser=None, **k: seen.append(normaliser) or real(
        *a, normaliser=normaliser, **k))
    out = compact(model, cache, ids, ratio=4, method="am-fast@context", recent_queries=recent)
    assert all(torch.isnan(n).any() and torch.isfinite(n).any() for n in seen)
    assert torch.isfinite(out.layers[0].values).all()


def test_context_scores_at_ratio_one_change_nothing(tiny_model, ids, context_methods):
    cache = prefill(tiny_model, ids)
    view = hf.CompactedCache.from_cache(cache, scalings=hf.attention_scalings(tiny_model))
    out = compact(tiny_model, cache, ids, ratio=1, method="am-fast@context")
    for idx in view.full_layers():
        assert torch.equal(out.layers[idx].keys, view.layers[idx].keys)
