"""The decode path (beta as SDPA's float mask, query heads folded per KV head) gives what the
beta-column path gives: end to end on tiny models and call by call on random tensors."""

import math

import pytest
import torch

from agentmem import CompactedCache, CompactedLayer, hf

from conftest import prefill, tiny_llama


def column_keys(self):
    """`CompactedLayer.attention_keys` as it was: keys widened by a `beta / scaling` column."""
    if not self.has_beta:
        return self.keys
    column = (self.bias / self.scaling).clamp(min=torch.finfo(self.keys.dtype).min / 4)
    return torch.cat([self.keys, column.to(self.keys.dtype).unsqueeze(-1)], dim=-1)


def compacted(model, ids, *, seed=0):
    """A cache over `ids` whose full layers carry beta on their first slots and -inf padding on two."""
    cache = CompactedCache.from_cache(prefill(model, ids), scalings=hf.attention_scalings(model))
    g = torch.Generator().manual_seed(seed)
    for i in cache.full_layers():
        layer = cache.layers[i]
        bias = layer.bias.clone()
        bias[..., :20] = torch.randn(bias[..., :20].shape, generator=g)
        bias[:, 0, 3] = bias[:, -1, 7] = float("-inf")  # padding of short heads
        cache.layers[i] = CompactedLayer.from_tensors(layer.keys, layer.values, bias, scaling=layer.scaling,
                                                      logical_length=layer.logical_length + 30,
                                                      runs=[[50, 20], [layer.logical_length - 20, bias.shape[-1] - 20]])
    return cache


def run_steps(model, cache, chunks):
    """Logits of each chunk (a prefill chunk or one decode token) fed in turn."""
    outs = []
    with torch.no_grad():
        for chunk in chunks:
            outs.append(model(input_ids=chunk, past_key_values=cache).logits)
    return outs


def test_decode_and_prefill_chunks_match_the_beta_column_path(tiny_model, ids, monkeypatch):
    torch.manual_seed(2)
    new = torch.randint(3, 100, (1, 9))
    chunks = [new[:, :5], new[:, 5:6], new[:, 6:7], new[:, 7:9]]  # prefill chunk, two decode steps, a chunk
    folded = []
    real = hf.attention._decode_step
    def spy(*a):
        folded.append((a[4] is not None, real(*a)))
        return folded[-1][1]

    monkeypatch.setattr(hf.attention, "_decode_step", spy)
    with hf.agentmem_attention(tiny_model):
        got = run_steps(tiny_model, compacted(tiny_model, ids), chunks)
        with_beta = [out for biased, out in folded if biased]
        assert len(with_beta) == 2 * len(compacted(tiny_model, ids).full_layers())  # both decode steps took it
        assert all(out is not None for _, out in folded)
        monkeypatch.setattr(CompactedLayer, "attention_keys", column_keys)
        want = run_steps(tiny_model, compacted(tiny_model, ids), chunks)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_decode_with_the_fast_path_equals_generate_without_beta(tiny_model, ids):
    """A layer with no beta is plain SDPA: greedy decoding equals transformers' own."""
    with hf.agentmem_attention(tiny_model):
        cache = CompactedCache.from_cache(prefill(tiny_model, ids), scalings=hf.attention_scalings(tiny_model))
        assert not any(cache.layers[i].has_beta for i in cache.full_layers())
        out = tiny_model.generate(torch.cat([ids, ids[:, -1:]], 1), past_key_values=cache, max_new_tokens=5,
                                  do_sample=False)
    ref = tiny_model.generate(torch.cat([ids, ids[:, -1:]], 1), max_new_tokens=5, do_sample=False)
    assert out.tolist() == ref.tolist()


class _Module(torch.nn.Module):
    layer_idx = 0
    is_causal = True


def _call(query, keys, values, bias, mask, scaling, *, column):
    if bias is None:
        key = keys
    elif column:
        width = (bias / scaling).clamp(min=torch.finfo(keys.dtype).min / 4).unsqueeze(-1)
        key = torch.cat([keys, width], dim=-1)
    else:
        key = keys.view_as(keys)
        setattr(key, hf.BIAS_ATTRIBUTE, bias)
    out, _ = hf.attention_forward(_Module().eval(), query, key, values, mask, scaling=scaling)
    return out


@pytest.mark.parametrize("heads", [(6, 2), (3, 3), (4, 1)], ids=["gqa", "mha", "mqa"])
@pytest.mark.parametrize("q_len", [1, 4])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "wider"])
@pytest.mark.parametrize("beta", [True, False], ids=["beta", "plain"])
def test_attention_call_equals_the_beta_column(heads, q_len, mask_kind, beta):
    torch.manual_seed(0)
    hq, hk = heads
    batch, k, dim = 2, 23, 16
    query = torch.randn(batch, hq, q_len, dim)
    keys, values = torch.randn(batch, hk, k, dim), torch.randn(batch, hk, k, dim)
    bias = torch.zeros(batch, hk, k)
    bias[..., :12] = torch.randn(batch, hk, 12) * 2
    bias[0, 0, 5] = bias[1, -1, 0] = float("-inf")
    visible = torch.ones(batch, 1, q_len, k, dtype=torch.bool)
    visible[..., -q_len:] = torch.ones(q_len, q_len, dtype=torch.bool).tril()  # causal over the new tokens
    visible[1, ..., 14] = False  # a padded position of the second sequence
    mask = {
        "none": None,
        "bool": visible,
        "float": torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min),
        "wider": torch.cat([torch.ones(batch, 1, q_len, 5, dtype=torch.bool), visible], dim=-1),  # a wider layer's
    }[mask_kind]
    scaling = 0.3
    if not beta:
        bias = torch.zeros(batch, hk, k)
    got = _call(query, keys, values, bias if beta else None, mask, scaling, column=False)
    assert got.shape == (batch, q_len, hq, dim)
    if beta:
        want = _call(query, keys, values, bias, mask, scaling, column=True)
    else:  # transformers' own SDPA call: K and V repeated per query head
        m = None if mask is None else mask[..., -k:]
        want = torch.nn.functional.scaled_dot_product_attention(
            query, keys.repeat_interleave(hq // hk, 1), values.repeat_interleave(hq // hk, 1), attn_mask=m,
            scale=scaling).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # and both are softmax(scaling q.k + beta + mask) v
    logits = torch.einsum("bhqd,bhkd->bhqk", query, keys.repeat_interleave(hq // hk, 1)) * scaling
    logits = logits + bias.repeat_interleave(hq // hk, 1).unsqueeze(2)
    if mask is not None:
        m = mask[..., -k:]
        logits = logits.masked_fill(~m, -math.inf) if m.dtype == torch.bool else logits + m
    ref = (torch.softmax(logits, -1) @ values.repeat_interleave(hq // hk, 1)).transpose(1, 2)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_the_stored_keys_never_carry_the_bias():
    model = tiny_llama()
    torch.manual_seed(1)
    ids = torch.randint(3, 100, (1, 30))
    with hf.agentmem_attention(model):
        cache = compacted(model, ids)
        run_steps(model, cache, [ids[:, -1:]])
    for i in cache.full_layers():
        assert not hasattr(cache.layers[i].keys, hf.BIAS_ATTRIBUTE)
        assert cache.layers[i].keys.shape[-1] == model.config.head_dim
