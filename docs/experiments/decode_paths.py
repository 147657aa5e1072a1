# Experiment script (see docs/LOG.md); run from the repository root: python docs/experiments/NAME.py ...
"""Decode tokens/s on compacted caches vs the full cache, for several ways of applying beta.

python docs/experiments/decode_paths.py MODEL CONTEXT ROUNDS STEPS VARIANTS...
  e.g. smollm2-135m 2048 5 24 column mask fold split ext

Each variant monkeypatches `CompactedLayer.update` and registers its own "agentmem"
attention function (`column` is the path before this experiment, `lib` the library's now);
the full cache is a CompactedCache without beta (plain SDPA) and a
DynamicCache with transformers' own "sdpa" (`dyn`). Caches are `truncate` compactions at
5/10/20/50x with a synthetic beta (N(0, 1), fp32) on every compacted slot. Measurements are
interleaved (every variant and ratio once per round) and the medians printed, as tok/s and
as the ratio to the full cache measured in the same round. PROFILE=1 prints a profile of
one decode step instead.
"""
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from transformers.modeling_utils import AttentionInterface

import agentmem
from agentmem import compact, hf
from agentmem.bench.common import reference_text

MODEL, CONTEXT, ROUNDS, STEPS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
VARIANTS = sys.argv[5:] or ["column", "mask"]
RATIOS = [5, 10, 20, 50]
original_update = hf.CompactedLayer.update
original_attention = hf.attention_forward
library_decode_step = hf.attention._decode_step


# ---------------------------------------------------------------- cache-layer variants
def update_column(self, key_states, value_states, *args, **kwargs):
    """The path before this experiment: keys widened by a `beta / scaling` column on every update."""
    original_update(self, key_states, value_states)
    if not self.has_beta:
        return self.keys, self.values
    column = (self.bias / self.scaling).clamp(min=torch.finfo(self.keys.dtype).min / 4)
    return torch.cat([self.keys, column.to(self.keys.dtype).unsqueeze(-1)], dim=-1), self.values


def update_plain(self, key_states, value_states, *args, **kwargs):
    """Plain keys; the layer's bias rides on the returned tensor (no D+1 column)."""
    original_update(self, key_states, value_states)
    keys = self.keys.view_as(self.keys)
    if self.has_beta:
        keys.agentmem_bias = self.bias
    return keys, self.values


def update_ext(self, key_states, value_states, *args, **kwargs):
    """Keep a persistent D+1 layout: one cat per step, no re-cat of the column or the zero value column."""
    if not self.has_beta:
        return original_update(self, key_states, value_states)
    if getattr(self, "_kext", None) is None:
        column = (self.bias / self.scaling).unsqueeze(-1).to(self.keys.dtype)
        self._kext = torch.cat([self.keys, column], -1)
        self._vext = torch.cat([self.values, self.values.new_zeros(self.values.shape[:-1] + (1,))], -1)
    new = key_states.shape[-2]
    zero = key_states.new_zeros(key_states.shape[:-1] + (1,))
    self._kext = torch.cat([self._kext, torch.cat([key_states, zero], -1)], -2)
    self._vext = torch.cat([self._vext, torch.cat([value_states, zero.to(value_states.dtype)], -1)], -2)
    self.logical_length += new
    return self._kext, self._vext


# ---------------------------------------------------------------- attention variants
def _mask_of(bias, attention_mask, kv_len, dtype):
    """bias (B, H, S) fp32 -> float mask (B, H, 1, S) that also carries `attention_mask`."""
    mask = bias[:, :, None, :].to(dtype)
    if attention_mask is not None:
        attention_mask = attention_mask[..., -kv_len:]
        if attention_mask.dtype == torch.bool:
            mask = mask.masked_fill(~attention_mask, float("-inf"))
        else:
            mask = mask + attention_mask
    return mask


def attention_mask_variant(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    bias = getattr(key, "agentmem_bias", None)
    if bias is None:
        return original_attention(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    groups = query.shape[1] // key.shape[1]
    mask = _mask_of(bias.repeat_interleave(groups, dim=1), attention_mask, key.shape[-2], query.dtype)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=groups > 1)
    return out.transpose(1, 2).contiguous(), None


def attention_fold_variant(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Decode only: fold the r query heads of a KV head into r query rows (no GQA expansion of the mask)."""
    bias = getattr(key, "agentmem_bias", None)
    if bias is None or query.shape[-2] != 1:
        return original_attention(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    b, hq, _, d = query.shape
    hk = key.shape[1]
    q = query.reshape(b, hk, hq // hk, d)
    mask = _mask_of(bias, attention_mask, key.shape[-2], query.dtype)  # (B, H_kv, 1, S) broadcast over rows
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(b, hq, 1, -1).transpose(1, 2).contiguous(), None


_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def attention_split_variant(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Decode only: the biased (compacted) slots and the plain slots attended apart, merged by log-sum-exp."""
    bias = getattr(key, "agentmem_bias", None)
    if bias is None or query.shape[-2] != 1:
        return original_attention(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    b, hq, _, d = query.shape
    hk = key.shape[1]
    q = query.reshape(b, hk, hq // hk, d)
    nz = (bias != 0).any(0).any(0).nonzero()
    p = int(nz[-1]) + 1 if len(nz) else 0  # slots [0, p) carry beta
    mask = _mask_of(bias[..., :p], None, p, query.dtype)
    o1, l1 = _flash(q, key[..., :p, :], value[..., :p, :], attn_mask=mask, scale=scaling)
    o2, l2 = _flash(q, key[..., p:, :], value[..., p:, :], scale=scaling)
    w = torch.sigmoid(l1 - l2).unsqueeze(-1)  # exp(l1) / (exp(l1) + exp(l2))
    out = o2 + w * (o1 - o2)
    return out.reshape(b, hq, 1, -1).transpose(1, 2).contiguous(), None


def attention_ext_variant(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    out, _ = original_attention(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    return out[..., : query.shape[-1]], None


VARIANT = {
    "column": (update_column, original_attention),  # hf.attention_forward on D+1 keys: the old path
    "lib": (original_update, original_attention),  # whatever agentmem.hf does now
    "ext": (update_ext, attention_ext_variant),
    "mask": (update_plain, attention_mask_variant),
    "fold": (update_plain, attention_fold_variant),
    "split": (update_plain, attention_split_variant),
}


def use(variant):
    update, attention = VARIANT[variant]
    # `column` is the code before this experiment: no folded decode step at all
    hf.attention._decode_step = (lambda *args: None) if variant == "column" else library_decode_step
    hf.CompactedLayer.update = update
    AttentionInterface.register(hf.ATTENTION_NAME, attention)


# ---------------------------------------------------------------- caches and timing
def with_beta(cache):
    g = torch.Generator().manual_seed(0)
    for idx in cache.full_layers():
        layer = cache.layers[idx]
        compacted = sum(s for t, s in layer.runs if t != s)
        bias = layer.bias.clone()
        bias[..., :compacted] = torch.randn(bias[..., :compacted].shape, generator=g)
        layer.bias, layer.has_beta = bias, True
    return cache


@torch.no_grad()
def rate(model, cache, first, steps):
    token = first
    for _ in range(2):
        token = model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
    began = time.perf_counter()
    for _ in range(steps):
        token = model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
    return steps / (time.perf_counter() - began)


def fresh(cache):
    if isinstance(cache, hf.CompactedCache):
        c = cache.copy()
        for layer in c.layers:
            layer._kext = None
        return c
    import copy
    return copy.deepcopy(cache)


class _Module(torch.nn.Module):
    layer_idx = None
    is_causal = True


def micro():
    """One layer's update + attention per decode step, SmolLM2's shapes, no model: microseconds per step.

    MICRO=1 ... CONTEXT ROUNDS STEPS: for a full layer of CONTEXT slots and compacted layers of
    CONTEXT / 5, 10, 20, 50 slots, STEPS decode steps per measurement, ROUNDS interleaved rounds.
    """
    heads, kv_heads, dim, scaling = 9, 3, 64, 0.125
    g = torch.Generator().manual_seed(0)
    module = _Module().eval()

    def layer(slots, beta):
        keys = torch.randn(1, kv_heads, slots, dim, generator=g)
        values = torch.randn(1, kv_heads, slots, dim, generator=g)
        bias = torch.randn(1, kv_heads, slots, generator=g) if beta else None
        return hf.CompactedLayer.from_tensors(keys, values, bias, scaling=scaling, logical_length=CONTEXT,
                                              runs=[[CONTEXT, slots]])

    layers = {"full": layer(CONTEXT, False), **{r: layer(CONTEXT // r, True) for r in RATIOS}}
    new_k = [torch.randn(1, kv_heads, 1, dim, generator=g) for _ in range(STEPS)]
    new_v = [torch.randn(1, kv_heads, 1, dim, generator=g) for _ in range(STEPS)]
    query = [torch.randn(1, 1, heads, dim, generator=g).transpose(1, 2) for _ in range(STEPS)]
    got: dict[tuple, list[float]] = {}
    with torch.no_grad():
        for _ in range(ROUNDS):
            for variant in VARIANTS:
                update, attention = VARIANT[variant]
                use(variant)
                for name, base in layers.items():
                    if name == "full" and variant not in ("column", "lib"):
                        continue
                    lay = hf.CompactedLayer.from_tensors(base.keys, base.values, base.bias, scaling=scaling,
                                                         logical_length=base.logical_length, runs=base.runs)
                    lay._kext = None
                    began = time.perf_counter()
                    for i in range(STEPS):
                        k, v = update(lay, new_k[i], new_v[i])
                        attention(module, query[i], k, v, None, scaling=scaling)
                    got.setdefault((variant, name), []).append((time.perf_counter() - began) / STEPS * 1e6)
    print(f"one layer, update + attention per decode step, us (median of {ROUNDS}), context {CONTEXT}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"{'variant':8s} {f'full ({CONTEXT})':>12s} " + " ".join(f"{f'{r}x ({CONTEXT // r})':>12s}" for r in RATIOS))
    for variant in VARIANTS:
        full = f"{statistics.median(got[(variant, 'full')]):12.0f}" if (variant, "full") in got else f"{'':12s}"
        print(f"{variant:8s} {full} " + " ".join(f"{statistics.median(got[(variant, r)]):12.0f}" for r in RATIOS))


def main():
    if os.environ.get("MICRO"):
        return micro()
    model, tok = agentmem.load_model(MODEL)
    model.eval()
    ids = tok(reference_text(), add_special_tokens=False, return_tensors="pt").input_ids[:, 5000:5000 + CONTEXT + 1]
    ctx, first = ids[:, :CONTEXT], ids[:, CONTEXT:]
    dyn = hf.new_cache(model)
    with torch.no_grad():
        t = time.perf_counter()
        model(input_ids=ctx, past_key_values=dyn, use_cache=True, **hf.last_logits_only(model))
        print(f"prefill {CONTEXT} tokens {time.perf_counter() - t:.1f}s", flush=True)
    hf.enable(model)
    scal = hf.attention_scalings(model)
    full = hf.CompactedCache.from_cache(dyn, scalings=scal)
    comp = {r: with_beta(compact(model, full, ctx, ratio=r, method="truncate")) for r in RATIOS}
    print({r: c.physical_length() for r, c in comp.items()}, flush=True)
    if os.environ.get("PROFILE"):
        from torch.profiler import ProfilerActivity, profile
        for variant in VARIANTS:
            use(variant)
            for name, cache in (("full", full), ("x10", comp[10])):
                c = fresh(cache)
                rate(model, c, first, 2)
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    rate(model, c, first, 4)
                print(f"== {variant} {name}")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        return
    got: dict[tuple, list[float]] = {}
    for rnd in range(ROUNDS):
        for variant in VARIANTS:
            hf.enable(model)
            use(variant)  # after enable: enable re-registers the library's own function
            full_rate = rate(model, fresh(full), first, STEPS)
            got.setdefault((variant, "full"), []).append(full_rate)
            for r in RATIOS:
                x = rate(model, fresh(comp[r]), first, STEPS)
                got.setdefault((variant, r), []).append(x)
                got.setdefault((variant, f"ratio{r}"), []).append(x / full_rate)
        hf.disable(model, "sdpa")
        got.setdefault(("dyn", "full"), []).append(rate(model, fresh(dyn), first, STEPS))
        print(f"round {rnd + 1}/{ROUNDS}", {k: round(v[-1], 2) for k, v in got.items()}, flush=True)
    print(f"\n{MODEL}, context {CONTEXT}, {ROUNDS} rounds x {STEPS} steps, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}; medians: tok/s (compacted/full in the same round)")
    print(f"{'variant':8s} {'full':>7s} " + " ".join(f"{f'{r}x':>14s}" for r in RATIOS))
    for variant in VARIANTS:
        cells = [f"{statistics.median(got[(variant, r)]):6.1f} ({statistics.median(got[(variant, f'ratio{r}')]):.2f}x)"
                 for r in RATIOS]
        print(f"{variant:8s} {statistics.median(got[(variant, 'full')]):7.1f} " + " ".join(f"{c:>14s}" for c in cells))
    print(f"dyn/sdpa {statistics.median(got[('dyn', 'full')]):7.1f}")


if __name__ == "__main__":
    main()
