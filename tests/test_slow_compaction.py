"""Slow tier: compaction on the real SmolLM2-135M (run with -m slow)."""

import pytest
import torch

import agentmem
from agentmem import hf
from agentmem.bench import compaction as bench

pytestmark = pytest.mark.slow



def test_am_beats_streaming_at_10x_on_real_text(smollm2):
    model, tokenizer = smollm2
    (ctx, cont), = bench.contexts(tokenizer, count=1, context=768, continuation=64)
    cache = hf.new_cache(model)
    with torch.no_grad():
        out = model(input_ids=ctx, past_key_values=cache)
    last = out.logits[:, -1:].float()
    full = hf.CompactedCache.from_cache(cache, scalings=hf.attention_scalings(model))
    layers = set(full.full_layers())
    ref, _ = bench.teacher_force(model, full, cont, last, layers)
    kls = {}
    for method in ("am-fast", "streaming"):
        small = agentmem.compact(model, cache, ctx, ratio=10, method=method, tokenizer=tokenizer)
        kls[method] = bench.kl(ref, bench.teacher_force(model, small, cont, last, layers)[0])
    assert kls["am-fast"] < 2 * kls["streaming"], kls  # loose: one short context
    assert cache.get_seq_length() == ctx.shape[1]


def test_ratio_one_is_exact_on_the_real_model(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer("The quick brown fox jumps over the lazy dog. " * 20, return_tensors="pt").input_ids
    cache = hf.new_cache(model)
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache)
        new = tokenizer(" And then", add_special_tokens=False, return_tensors="pt").input_ids
        same = agentmem.compact(model, cache, ids, ratio=1, method="am")
        a = model(input_ids=new, past_key_values=same).logits
        b = model(input_ids=new, past_key_values=cache).logits
    assert (a - b).abs().max() < 1e-3
