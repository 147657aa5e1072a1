"""Invariants of CompactedCache and the agentmem attention function."""

import math

import pytest
import torch

from agentmem import CompactedCache, CompactedLayer, hf

from conftest import prefill


def next_logits(model, cache, ids):
    with torch.no_grad():
        return model(input_ids=ids, past_key_values=cache).logits


def test_wrapping_changes_nothing(tiny_model, ids):
    new = torch.randint(3, 100, (1, 5))
    ref = next_logits(tiny_model, prefill(tiny_model, ids), new)
    with hf.agentmem_attention(tiny_model):
        wrapped = CompactedCache.from_cache(prefill(tiny_model, ids), scalings=hf.attention_scalings(tiny_model))
        out = next_logits(tiny_model, wrapped, new)
    assert (out - ref).abs().max() < 1e-4


def test_duplicated_keys_with_half_weight_change_nothing(tiny_model, ids):
    new = torch.randint(3, 100, (1, 5))
    ref = next_logits(tiny_model, prefill(tiny_model, ids), new)
    with hf.agentmem_attention(tiny_model):
        cache = CompactedCache.from_cache(prefill(tiny_model, ids), scalings=hf.attention_scalings(tiny_model))
        for i in cache.full_layers():
            layer = cache.layers[i]
            keys = torch.cat([layer.keys, layer.keys], dim=2)
            values = torch.cat([layer.values, layer.values], dim=2)
            bias = torch.full(keys.shape[:-1], -math.log(2.0))
            cache.layers[i] = CompactedLayer.from_tensors(
                keys, values, bias, logical_length=layer.logical_length, scaling=layer.scaling,
                runs=[[layer.logical_length, keys.shape[2]]],
            )
        assert cache.physical_length() == 2 * ids.shape[1]
        out = next_logits(tiny_model, cache, new)
    assert (out - ref).abs().max() < 1e-4


def test_padding_slots_are_invisible(tiny_model, ids):
    """Slots with bias -inf (padding of short heads) must not change anything."""
    new = torch.randint(3, 100, (1, 4))
    ref = next_logits(tiny_model, prefill(tiny_model, ids), new)
    with hf.agentmem_attention(tiny_model):
        cache = CompactedCache.from_cache(prefill(tiny_model, ids), scalings=hf.attention_scalings(tiny_model))
        for i in cache.full_layers():
            layer = cache.layers[i]
            junk = torch.randn_like(layer.keys[:, :, :7]) * 10
            keys = torch.cat([junk, layer.keys], dim=2)
            values = torch.cat([junk, layer.values], dim=2)
            bias = torch.cat([torch.full(junk.shape[:-1], float("-inf")), layer.bias], dim=-1)
            cache.layers[i] = CompactedLayer.from_tensors(
                keys, values, bias, logical_length=layer.logical_length, scaling=layer.scaling,
                runs=[[layer.logical_length, keys.shape[2]]],
            )
        out = next_logits(tiny_model, cache, new)
    assert (out - ref).abs().max() < 1e-4


def test_positions_continue_at_logical_length(tiny_model, ids):
    """After dropping slots, new tokens still get the positions of the uncompacted run."""
    with hf.agentmem_attention(tiny_model):
        cache = CompactedCache.from_cache(prefill(tiny_model, ids), scalings=hf.attention_scalings(tiny_model))
        for i in cache.full_layers():
            layer = cache.layers[i]
            cache.layers[i] = CompactedLayer.from_tensors(
                layer.keys[:, :, -10:], layer.values[:, :, -10:], logical_length=layer.logical_length,
                scaling=layer.scaling, runs=[[layer.logical_length - 10, 0], [10, 10]],
            )
        assert cache.get_seq_length() == ids.shape[1]
        positions = []
        hook = tiny_model.model.rotary_emb.register_forward_hook(
            lambda mod, args, kwargs, out: positions.append((args[1] if len(args) > 1 else kwargs["position_ids"])),
            with_kwargs=True,
        )
        try:
            next_logits(tiny_model, cache, torch.randint(3, 100, (1, 3)))
        finally:
            hook.remove()
    assert positions[0].flatten().tolist() == [ids.shape[1], ids.shape[1] + 1, ids.shape[1] + 2]
    assert cache.get_seq_length() == ids.shape[1] + 3
    assert cache.physical_length() == 13


def test_generate_runs_on_a_compacted_cache(tiny_model, ids):
    with hf.agentmem_attention(tiny_model):
        cache = CompactedCache.from_cache(prefill(tiny_model, ids), scalings=hf.attention_scalings(tiny_model))
        out = tiny_model.generate(torch.cat([ids, ids[:, -1:]], 1), past_key_values=cache, max_new_tokens=4,
                                  do_sample=False)
    ref = tiny_model.generate(torch.cat([ids, ids[:, -1:]], 1), max_new_tokens=4, do_sample=False)
    assert out.tolist() == ref.tolist()


def test_nbytes_counts_padding_and_effective_slots(tiny_model, ids):
    cache = CompactedCache.from_cache(prefill(tiny_model, ids), scalings=hf.attention_scalings(tiny_model))
    idx = cache.full_layers()[0]
    layer = cache.layers[idx]
    before = layer.nbytes()
    bias = layer.bias.clone()
    bias[:, 0, :5] = float("-inf")
    cache.layers[idx] = CompactedLayer.from_tensors(layer.keys, layer.values, bias, scaling=layer.scaling)
    assert cache.layers[idx].nbytes() == before
    heads = layer.keys.shape[1]
    assert cache.layers[idx].effective_slots().sum() == heads * ids.shape[1] - 5


def test_physical_span_refuses_cutting_a_compacted_run():
    layer = CompactedLayer.from_tensors(
        torch.zeros(1, 1, 14, 4), torch.zeros(1, 1, 14, 4), logical_length=30, scaling=0.5, runs=[[20, 4], [10, 10]]
    )
    assert layer.physical_span(0, 30) == (0, 14)
    assert layer.physical_span(20, 25) == (4, 9)
    with pytest.raises(ValueError, match="inside a compacted run"):
        layer.physical_span(5, 25)


def test_last_logits_only_gives_the_last_row_of_the_full_logits(tiny_model, ids):
    kwargs = hf.last_logits_only(tiny_model)
    assert kwargs == {"logits_to_keep": 1}
    with torch.no_grad():
        full = tiny_model(input_ids=ids).logits
        last = tiny_model(input_ids=ids, **kwargs).logits
    assert last.shape[1] == 1
    torch.testing.assert_close(last[:, -1], full[:, -1])


def test_last_logits_only_is_empty_for_a_forward_without_logits_to_keep():
    class Plain(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=True):
            return input_ids

    assert hf.last_logits_only(Plain()) == {}
