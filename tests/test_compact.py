"""`agentmem.compact`: every method through the same invariants, and bad input."""

import pytest
import torch

import agentmem
from agentmem import ConfigError, ModelMismatchError, compact, head_budgets

from conftest import prefill, tiny_llama


def logits_after(model, cache, new):
    with torch.no_grad():
        return model(input_ids=new, past_key_values=cache.copy() if hasattr(cache, "copy") else cache).logits


# Methods that compact any cache without a tokenizer; the text summary has its own tests (test_summary.py).
SELECTING = [name for name, spec in agentmem.METHODS.items() if not spec.summary]


def kl(out, ref):
    return torch.nn.functional.kl_div(out.log_softmax(-1), ref.log_softmax(-1), log_target=True,
                                      reduction="none").sum(-1).mean().item()


@pytest.mark.parametrize("method", SELECTING)
def test_ratio_one_changes_nothing(tiny_model, ids, method):
    new = torch.randint(3, 100, (1, 5))
    ref = logits_after(tiny_model, prefill(tiny_model, ids), new)
    out = logits_after(tiny_model, compact(tiny_model, prefill(tiny_model, ids), ids, ratio=1, method=method), new)
    assert (out - ref).abs().max() < 1e-4


@pytest.mark.parametrize("method", SELECTING)
def test_compaction_shrinks_and_keeps_positions(tiny_model, ids, method):
    cache = prefill(tiny_model, ids)
    result = compact(tiny_model, cache, ids, ratio=4, method=method)
    assert result.get_seq_length() == ids.shape[1]
    heads = sum(result.layers[i].keys.shape[1] for i in result.full_layers())
    assert result.effective_slots() <= heads * (ids.shape[1] // 4) + heads  # total budget (ties aside)
    if method != "kvzip":  # kvzip's global top-k lets one layer keep more than another
        assert result.physical_length() == ids.shape[1] // 4
    assert cache.get_seq_length() == ids.shape[1]  # the input is untouched
    out = tiny_model.generate(torch.cat([ids, ids[:, -1:]], 1), past_key_values=result, max_new_tokens=3,
                              do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4


@pytest.mark.parametrize("method", SELECTING)
def test_a_ratio_is_a_memory_promise(ids, method):
    """At ratio r no method stores more bytes than the uniform budget, padding included,
    even when a head profile (am) or a global ranking (kvzip) shares slots unevenly."""
    model = tiny_llama()
    skewed = {"L0H0": 0.85, "L0H1": 0.05, "L1H0": 0.05, "L1H1": 0.05}
    uniform = compact(model, prefill(model, ids), ids, ratio=6, method="streaming")
    options = {"head_budgets": skewed} if agentmem.METHODS[method].head_profile else {}
    out = compact(model, prefill(model, ids), ids, ratio=6, method=method, **options)
    assert out.nbytes() <= uniform.nbytes()
    for i in out.full_layers():  # no padding slot anywhere: a slot a head does not use is lent to another
        layer = out.layers[i]
        lent = 0 if layer.borrowed is None else layer.borrowed.count
        assert int((~torch.isfinite(layer.bias)).sum()) == lent
        assert int(layer.effective_slots().sum()) == layer.bias.numel()


def test_matching_beats_baselines_on_a_gqa_model():
    model = tiny_llama()
    torch.manual_seed(3)
    ids = torch.randint(3, 100, (1, 96))
    new = torch.randint(3, 100, (1, 16))
    ref = logits_after(model, prefill(model, ids), new)
    scores = {
        m: kl(logits_after(model, compact(model, prefill(model, ids), ids, ratio=6, method=m), new), ref)
        for m in ("am", "am-fast", "truncate", "streaming", "snapkv")
    }
    assert scores["am"] < min(scores["truncate"], scores["streaming"], scores["snapkv"]), scores
    assert scores["am-fast"] < min(scores["truncate"], scores["streaming"]), scores


def test_recompaction_of_a_middle_span_honours_earlier_beta(tiny_model, ids):
    first = compact(tiny_model, prefill(tiny_model, ids), ids, ratio=4, method="am-fast", start=0, end=24)
    layers = first.full_layers()
    assert [first.layers[i].runs[0][0] for i in layers] == [24] * len(layers)
    # shared between layers; a slot may go to the records of borrowed slots (hf.ragged)
    assert 6 * len(layers) - 1 <= sum(first.layers[i].runs[0][1] for i in layers) <= 6 * len(layers)
    second = compact(tiny_model, first, ids, ratio=2, method="am", start=0, end=36)
    assert [[tokens for tokens, _ in second.layers[i].runs] for i in layers] == [[36, 12]] * len(layers)
    assert 9 * len(layers) - 1 <= sum(second.layers[i].runs[0][1] for i in layers) <= 9 * len(layers)
    assert [second.layers[i].runs[1][1] for i in layers] == [12] * len(layers)
    assert second.get_seq_length() == ids.shape[1]
    with pytest.raises(ConfigError, match="inside a compacted run"):
        compact(tiny_model, first, ids, ratio=2, start=10, end=30)


def test_ratio_one_after_compaction_keeps_the_compacted_cache(tiny_model, ids):
    new = torch.randint(3, 100, (1, 5))
    first = compact(tiny_model, prefill(tiny_model, ids), ids, ratio=3, method="am-fast")
    again = compact(tiny_model, first, ids, ratio=1, method="am")
    assert (logits_after(tiny_model, again, new) - logits_after(tiny_model, first, new)).abs().max() < 1e-4


@pytest.mark.parametrize("ratio", [0.5, 0, -3, float("nan"), float("inf"), "ten"])
def test_bad_ratio(tiny_model, ids, ratio):
    cache = prefill(tiny_model, ids)
    with pytest.raises(ConfigError, match="ratio"):
        compact(tiny_model, cache, ids, ratio=ratio)
    assert cache.get_seq_length() == ids.shape[1]


@pytest.mark.parametrize("span", [(10, 10), (20, 5), (-1, 10), (0, 1000)])
def test_bad_span(tiny_model, ids, span):
    with pytest.raises(ConfigError, match="span"):
        compact(tiny_model, prefill(tiny_model, ids), ids, ratio=2, start=span[0], end=span[1])


def test_wrong_ids_unknown_method_and_option(tiny_model, ids):
    cache = prefill(tiny_model, ids)
    with pytest.raises(ConfigError, match="input_ids"):
        compact(tiny_model, cache, ids[:, :-3], ratio=2)
    with pytest.raises(ConfigError, match="unknown method"):
        compact(tiny_model, cache, ids, ratio=2, method="magic")
    with pytest.raises(ConfigError, match="unknown compaction option"):
        compact(tiny_model, cache, ids, ratio=2, windowz=3)
    assert isinstance(ConfigError("x"), ValueError)


def _nan_cache(cache):
    cache.layers[0].keys[0, 0, 3, 0] = float("nan")


def _inf_values(cache):
    cache.layers[1].values[0, 1, 40, 2] = float("inf")


def _no_tokenize(*args, **kwargs):
    raise RuntimeError("not a tokenizer")


Q = (1, 4, 8, 16)  # tiny_llama's recent queries: (B, H_q, n, D)
BAD_INPUT = {
    "float start": (dict(start=1.5), "start must be an int"),
    "float end": (dict(end=20.0), "end must be an int"),
    "tensor start": (dict(start=torch.tensor(2)), "start must be an int"),
    "tensor end": (dict(end=torch.tensor(20)), "end must be an int"),
    "float ids": (dict(ids=lambda ids: ids.float()), "integer token ids"),
    "bool ids": (dict(ids=lambda ids: ids > 50), "integer token ids"),
    "ids past the vocabulary": (dict(ids=lambda ids: ids.clone().fill_(500)), r"token id 500, outside .*\[0, 128\)"),
    "negative ids": (dict(ids=lambda ids: torch.cat([ids[:, :-1], -ids[:, -1:]], 1)), "outside the model's vocab"),
    "ids of two rows": (dict(ids=lambda ids: ids.expand(2, -1)), "2 rows but the cache holds 1"),
    "string seed": (dict(seed="x"), "seed must be an int"),
    "recent_queries a list": (dict(recent_queries=[torch.randn(Q)]), "recent_queries must be a dict"),
    "recent_queries not tensors": (dict(recent_queries={0: 3}), "layer 0 has int"),
    "recent_queries 3-D": (dict(recent_queries={0: torch.randn(4, 8, 16)}), r"layer 0 has \(4, 8, 16\)"),
    "recent_queries head dim": (dict(recent_queries={0: torch.randn(1, 4, 8, 7)}), r"4 query heads, n, 16\)"),
    "recent_queries batch": (dict(recent_queries={1: torch.randn(2, 4, 8, 16)}), r"layer 1 has shape \(2, 4"),
    "recent_queries heads": (dict(recent_queries={0: torch.randn(1, 3, 8, 16)}), "4 query heads"),
    "recent_queries layer": (dict(recent_queries={9: torch.randn(Q)}), r"9 is not a layer index in \[0, 2\)"),
    "recent_queries nan": (dict(recent_queries={0: torch.full(Q, float("nan"))}), "NaN or inf"),
    "tokenizer 42": (dict(tokenizer=42), "tokenizer must be the model's Hugging Face tokenizer"),
    "tokenizer that fails": (dict(tokenizer=_no_tokenize), "failed to tokenize"),
    "NaN in the cache": (dict(cache=_nan_cache), "input cache is not finite: layer 0"),
    "inf in the cache, am": (dict(cache=_inf_values, method="am"), "input cache is not finite: layer 1"),
    "bool ratio": (dict(ratio=True), "ratio must be a finite number >= 1"),
    "string ratio": (dict(ratio="5"), "ratio must be a finite number >= 1"),
    "tensor ratio": (dict(ratio=torch.tensor(5.0)), "ratio must be a finite number >= 1"),
    "max_queries 0": (dict(max_queries=0), "max_queries must be an int >= 1"),
    "max_repeat_tokens -1": (dict(max_repeat_tokens=-1), "max_repeat_tokens must be an int >= 1 or None"),
    "self_study_tokens -1": (dict(self_study_tokens=-1, method="am"), "self_study_tokens must be an int >= 0"),
    "on_policy string": (dict(on_policy="yes", method="am"), "on_policy must be True, False or None"),
    "stats not a dict": (dict(stats=3), "stats must be a dict"),
    "head_budgets int": (dict(head_budgets=5, method="am"), "head_budgets must be 'auto'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_raises_config_error_and_leaves_the_cache(ids, case):
    kwargs, match = BAD_INPUT[case]
    kwargs = dict(kwargs)
    model = tiny_llama()
    cache = prefill(model, ids)
    kwargs.pop("cache", lambda c: None)(cache)
    ids = kwargs.pop("ids", lambda ids: ids)(ids)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    with pytest.raises(ConfigError, match=match):
        compact(model, cache, ids, **{"ratio": 4, "method": "am-fast", **kwargs})
    for layer, (keys, values) in zip(cache.layers, before):
        torch.testing.assert_close(layer.keys, keys, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(layer.values, values, rtol=0, atol=0, equal_nan=True)


def test_a_ratio_past_the_span_is_capped_and_reported(ids, caplog):
    """x1e300 on 16 slots keeps one slot per head, like x16, and says it was capped."""
    model = tiny_llama()
    stats = {}
    with caplog.at_level("INFO", logger="agentmem.compaction"):
        out = compact(model, prefill(model, ids), ids, ratio=1e300, method="am-fast", end=16, stats=stats)
    assert stats["ratio"] == 16 and stats["requested_ratio"] == 1e300
    assert "capped at x16" in caplog.text
    assert out.physical_length() == 1 + 32
    with pytest.raises(ConfigError, match="ratio must be a finite number"):
        compact(model, prefill(model, ids), ids, ratio=float("inf"), end=16)


def test_cache_from_another_model(ids):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4)).eval()
    cache = prefill(other, ids)
    with pytest.raises(ModelMismatchError, match="KV heads"):
        compact(tiny_llama(), cache, ids, ratio=2)


def test_non_finite_result_raises_and_leaves_input(monkeypatch, ids):
    model = tiny_llama()
    cache = prefill(model, ids)
    before = cache.layers[0].keys.clone()
    from agentmem import am

    real = am.fit_values
    monkeypatch.setattr(am, "fit_values", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(agentmem.CompactionError, match="unchanged"):
        compact(model, cache, ids, ratio=4, method="am-fast")
    assert torch.equal(cache.layers[0].keys, before)


def test_recent_queries_are_used(ids):
    model = tiny_llama()
    cache = prefill(model, ids)
    with agentmem.capture_queries() as capture, torch.no_grad():
        agentmem.enable(model)
        model(input_ids=ids[:, -8:], past_key_values=cache.copy() if hasattr(cache, "copy") else prefill(model, ids))
    recent = {i: capture.stacked(i) for i in capture.queries}
    out = compact(model, prefill(model, ids), ids, ratio=4, method="am-fast", recent_queries=recent)
    assert out.physical_length() == ids.shape[1] // 4


def test_max_repeat_tokens_caps_the_repeat_pass(tiny_model, ids):
    cache = prefill(tiny_model, ids)
    layer = next(i for i, l in enumerate(cache.layers) if not getattr(l, "is_sliding", False))
    full = compact(tiny_model, cache, ids, ratio=4, method="am-fast", end=40)
    same = compact(tiny_model, cache, ids, ratio=4, method="am-fast", end=40, max_repeat_tokens=40)
    capped = compact(tiny_model, cache, ids, ratio=4, method="am-fast", end=40, max_repeat_tokens=8)
    torch.testing.assert_close(same.layers[layer].keys, full.layers[layer].keys, rtol=0, atol=0)
    assert capped.physical_length() == full.physical_length()
    assert torch.isfinite(capped.layers[layer].values).all()


@pytest.mark.parametrize("start, end, budget, piece", [(0, 5000, 2048, 256), (100, 1000, 300, 64), (0, 50, 64, 8),
                                                       (7, 307, 100, 128), (0, 10_000, 256, 256)])
def test_a_capped_repeat_pass_reads_pieces_spread_over_the_whole_span(start, end, budget, piece):
    from agentmem.queries import repeat_pieces

    pieces = repeat_pieces(start, end, budget, piece)
    if end - start <= budget:
        assert pieces == [(start, end)]
        return
    assert sum(b - a for a, b in pieces) <= budget
    assert pieces[0][0] == start and pieces[-1][1] == end  # the oldest tokens and the newest
    assert all(start <= a < b <= end for a, b in pieces)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(pieces, pieces[1:]))  # in order, no token twice


def test_the_engine_cap_repeats_the_oldest_tokens_of_a_long_span(tiny_model, ids, monkeypatch):
    from agentmem import queries

    seen = []
    original = queries.forward_pass
    monkeypatch.setattr(queries, "forward_pass", lambda model, cache, repeat, **kw: (
        seen.append(repeat), original(model, cache, repeat, **kw))[1])
    compact(tiny_model, prefill(tiny_model, ids), ids, ratio=4, method="am-fast", end=48, max_repeat_tokens=16)
    repeated = seen[0][0, -16:].tolist()  # after the repeat instruction (none without a tokenizer)
    assert repeated[:8] == ids[0, :8].tolist() and repeated[-8:] == ids[0, 40:48].tolist()


@pytest.mark.parametrize("chunk", [1, 7, 16])
def test_repeat_pass_in_pieces_sees_the_same_queries(tiny_model, ids, chunk):
    from agentmem import hf, queries

    hf.enable(tiny_model)
    view = hf.CompactedCache.from_cache(prefill(tiny_model, ids), scalings=hf.attention_scalings(tiny_model))
    layers = set(view.full_layers())
    whole = queries.forward_pass(tiny_model, view.copy(), ids, layers=layers)
    pieces = queries.forward_pass(tiny_model, view.copy(), ids, layers=layers, chunk=chunk)
    for idx in layers:
        torch.testing.assert_close(pieces.stacked(idx), whole.stacked(idx), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("seed", range(5))
def test_head_budgets_are_shared_within_bounds_and_keep_the_total(seed):
    g = torch.Generator().manual_seed(seed)
    n = 12
    weights = torch.rand(n, generator=g) ** 4  # skewed: a few heads want most of the budget
    weights[seed] = 0.0
    caps = torch.randint(2, 40, (n,), generator=g)
    for total in (n, n + 5, int(caps.sum()) // 2, int(caps.sum()) - 1):
        out = head_budgets.allocate(weights, caps, total)
        assert out.sum() == total and (out >= 1).all() and (out <= caps).all()
        # nobody below its cap is given less than a lighter head: the order follows the weights
        for i in range(n):
            for j in range(n):
                if weights[i] > weights[j] and out[i] < caps[i]:
                    assert out[i] >= out[j] - 1, (i, j, out.tolist())
    assert head_budgets.allocate(weights, caps, int(caps.sum()) + 7).tolist() == caps.tolist()
    assert head_budgets.allocate(weights, caps, 3).tolist() == [1] * n


def test_layer_widths_follow_one_ranking_and_keep_the_total():
    g = torch.Generator().manual_seed(0)
    sharp = torch.rand(2, 40, generator=g)  # layer 0: a few keys matter a lot
    sharp[:, :10] += 5
    flat = torch.rand(2, 40, generator=g) * 0.1  # layer 1: nothing stands out
    valid = {0: torch.ones(2, 40, dtype=torch.bool), 1: torch.ones(2, 40, dtype=torch.bool)}
    widths = head_budgets.neediest_head_widths({0: sharp, 1: flat}, valid, 10)
    assert sum(widths.values()) == 10 and widths[0] > widths[1] >= 1
    valid[0][:, 6:] = False  # layer 0 holds only 6 real slots: capped there, the rest goes to layer 1
    widths = head_budgets.neediest_head_widths({0: sharp, 1: flat}, valid, 10)
    assert widths == {0: 6, 1: 4}


def test_a_layer_gets_what_its_neediest_head_asks_for():
    """One head of layer 0 needs 12 slots, its other head none; layer 1's two heads need 6 each.
    A layer stores its heads at one width, so layer 0 needs 12 and layer 1 needs 6 (18 in all);
    sharing by the mean of the heads' needs would give layer 0 only 6 + 0 / 2 of them."""
    low = torch.full((2, 40), 0.01)
    needy, even = low.clone(), low.clone()
    needy[0, :12] = 0.9
    even[:, 20:26] = 0.5
    valid = {0: torch.ones(2, 40, dtype=torch.bool), 1: torch.ones(2, 40, dtype=torch.bool)}
    assert head_budgets.neediest_head_widths({0: needy, 1: even}, valid, 18) == {0: 12, 1: 6}


@pytest.mark.parametrize("seed", range(6))
def test_layer_widths_are_the_lowest_threshold_that_fits(seed):
    """Brute force: scan every threshold; the widths are max(1, the neediest head's count above it),
    capped at the layer's real slots, for the lowest threshold whose widths sum within `total`."""
    g = torch.Generator().manual_seed(seed)
    scores = {i: torch.rand(3, t, generator=g) ** (1 + i) for i, t in enumerate([20, 15, 30])}
    valid = {i: torch.rand(s.shape, generator=g) > 0.2 for i, s in scores.items()}
    caps = {i: max(1, int(v.sum(-1).min())) for i, v in valid.items()}
    total = int(torch.randint(3, sum(caps.values()), (1,), generator=g))

    def widths(threshold):
        return {i: min(caps[i], max(1, int(((s >= threshold) & valid[i]).sum(-1).max()))) for i, s in scores.items()}

    fits = [t for t in sorted(torch.cat([s.flatten() for s in scores.values()]).tolist()) + [2.0]
            if sum(widths(t).values()) <= total]
    expected = widths(fits[0])
    got = head_budgets.neediest_head_widths(scores, valid, total)
    assert sum(got.values()) <= total
    assert got == expected


def test_uncapped_budgets_follow_the_weights_exactly():
    out = head_budgets.allocate(torch.tensor([1.0, 2.0, 3.0, 2.0]), torch.full((4,), 100), 80)
    assert out.tolist() == [10, 20, 30, 20]


def test_a_skewed_head_profile_moves_slots_between_layers_at_the_uniform_bytes(ids):
    """A ratio is a memory promise: a profile shares the uniform total between layers, and
    every head of a layer keeps the same number of slots, so nothing is padding."""
    model = tiny_llama()
    skewed = {"L0H0": 0.85, "L0H1": 0.05, "L1H0": 0.05, "L1H1": 0.05}  # layer 0 holds 90% of the shares
    uniform = compact(model, prefill(model, ids), ids, ratio=6, method="am-omp", head_budgets=None)
    shaped = compact(model, prefill(model, ids), ids, ratio=6, method="am-omp", head_budgets=skewed)
    assert shaped.effective_slots() == uniform.effective_slots() == 4 * (48 // 6)
    assert shaped.nbytes() == uniform.nbytes()
    per_head = [[int(torch.isfinite(shaped.layers[i].bias[0, h]).sum()) for h in (0, 1)] for i in (0, 1)]
    assert per_head == [[14, 14], [2, 2]]  # 0.9 : 0.1 of 16 slots per head, largest remainders first


def test_spread_asks_every_position_once_before_any_twice():
    from agentmem import queries

    g = torch.Generator().manual_seed(0)
    positions, heads = 50, 3
    rows = torch.arange(heads * positions).float().view(1, -1, 1).expand(2, -1, 1)  # row = head * 50 + position
    for limit in (50, 80, 149):
        out = queries.spread(rows, limit, g, positions)
        assert out.shape == (2, limit, 1) and torch.equal(out[0], out[1])  # the same rows for every KV head
        asked = torch.bincount(out[0, :, 0].long() % positions, minlength=positions)
        assert int(asked.min()) >= 1 and int(asked.max()) - int(asked.min()) <= 1
        assert out[0, :, 0].unique().numel() == limit  # no row twice
    assert queries.spread(rows, 500, g, positions).shape[1] == heads * positions  # under the limit: all of them


def test_recent_and_self_study_queries_are_kept_whole_up_to_half_the_limit():
    from agentmem import queries

    g = torch.Generator().manual_seed(0)
    repeat, recent = torch.randn(2, 5000, 8), torch.randn(2, 100, 8) + 10  # recent ones are told apart by +10
    out = queries.combine(repeat, [recent], 1000, g)
    assert out.shape == (2, 1000, 8) and int((out[0, :, 0] > 5).sum()) == 100  # every recent query, 900 repeat
    out = queries.combine(repeat, [torch.randn(2, 3000, 8) + 10], 1000, g)
    assert out.shape == (2, 1000, 8) and int((out[0, :, 0] > 5).sum()) == 500  # extras capped at half
    assert queries.combine(repeat[:, :300], [recent], 1000, g).shape[1] == 400  # under the limit: all of both
    assert queries.combine(None, [recent, recent], 150, g).shape[1] == 150
    assert queries.combine(repeat, [], 1000, g).shape[1] == 1000
