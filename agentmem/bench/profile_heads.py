"""Measure per-head sensitivity to compaction and turn it into a head-budget profile.

Procedure (one real-text context, its real continuation teacher-forced):
1. compact every full-attention layer uniformly at `ratio` with `am-fast`; record the
   KL of the continuation's next-token distributions to the full cache's (the uniform
   baseline; KL is the log-perplexity gap to the model's own predictions, with far less
   noise than the NLL of one continuation);
2. for each (layer, KV head), restore that head's uncompacted slots (others stay
   compacted) and record how much the KL drops: that head's sensitivity;
3. greedy exchange: repeatedly move a slice of budget from the head with the lowest
   sensitivity per slot to the one with the highest, until moves stop paying off under
   a diminishing-returns model (gain ~ sensitivity * log budget); no head keeps more than
   4x the uniform share.

The output is `{"model", "signature", "ratio", "proportions": {"L{l}H{h}": p}, "summary"}`
with proportions summing to 1, ready for `compact(..., head_budgets=path)`.
"""

from __future__ import annotations

import math

import torch

from .. import head_budgets, hf
from ..compaction import compact
from .compaction import contexts, kl, nll, teacher_force


def run(model, tokenizer, *, ratio: float, context: int, continuation: int, model_name: str, progress=print) -> dict:
    hf.enable(model)
    pairs = contexts(tokenizer, count=2, context=context, continuation=continuation)
    ctx, cont = pairs[-1]  # the benchmark uses the first context; profile on another one
    cache = hf.new_cache(model)
    with torch.no_grad():
        out = model(input_ids=ctx, past_key_values=cache, use_cache=True, **hf.last_logits_only(model))
    last = out.logits[:, -1:].float()
    full = hf.CompactedCache.from_cache(cache, scalings=hf.attention_scalings(model))
    layers = set(full.full_layers())
    uniform = compact(model, cache, ctx, ratio=ratio, method="am-fast", head_budgets=None)
    ref = teacher_force(model, full, cont, last, layers)[0]
    small = teacher_force(model, uniform, cont, last, layers)[0]
    base = kl(ref, small)
    progress(f"NLL full {nll(ref, cont):.4f}, uniform x{ratio:g} {nll(small, cont):.4f}, KL {base:.4f}")
    gains: dict[str, float] = {}
    for idx in sorted(layers):
        heads = full.layers[idx].keys.shape[1]
        for h in range(heads):
            probe = uniform.copy()
            probe.layers[idx] = _restore_head(uniform.layers[idx], full.layers[idx], h)
            gains[f"L{idx}H{h}"] = base - kl(ref, teacher_force(model, probe, cont, last, layers)[0])
        progress(f"layer {idx}: " + " ".join(f"{gains[f'L{idx}H{h}']:+.4f}" for h in range(heads)))
    proportions = exchange(gains)
    return {
        "model": model_name,
        "signature": head_budgets.signature(model),
        "ratio": ratio,
        "proportions": proportions,
        "summary": {"kl_uniform": base, "context": context, "continuation": continuation},
    }


def _restore_head(small: hf.CompactedLayer, big: hf.CompactedLayer, head: int) -> hf.CompactedLayer:
    """`small` with head `head` replaced by its uncompacted slots; other heads padded (and holding
    their borrowed slots in their own rows, `hf.unpack`)."""
    own = hf.unpack(small.keys, small.values, small.bias, small.borrowed, 0, small.physical_length)
    width = max(own[0].shape[2], big.physical_length)

    def pad(t: torch.Tensor, fill: float) -> torch.Tensor:
        extra = width - t.shape[2]
        if extra == 0:
            return t
        shape = list(t.shape)
        shape[2] = extra
        return torch.cat([t.new_full(shape, fill), t], dim=2)

    keys, values, bias = pad(own[0], 0.0), pad(own[1], 0.0), pad(own[2], float("-inf"))
    keys[:, head], values[:, head], bias[:, head] = pad(big.keys, 0.0)[:, head], pad(big.values, 0.0)[:, head], \
        pad(big.bias, float("-inf"))[:, head]
    return hf.CompactedLayer.from_tensors(keys, values, bias, logical_length=small.logical_length,
                                          scaling=small.scaling, runs=[[small.logical_length, width]])


def exchange(gains: dict[str, float], *, steps: int = 400, cap: float = 4.0, floor: float = 0.25) -> dict[str, float]:
    """Greedy budget exchange under gain(head, b) = s_head * log(b) (diminishing returns)."""
    names = list(gains)
    n = len(names)
    sens = torch.tensor([max(gains[k], 0.0) for k in names]) + 1e-6
    budget = torch.ones(n)  # in units of the uniform share
    delta = 0.05
    for _ in range(steps):
        marginal = sens / budget  # d/db of s log b
        give = torch.where(budget - delta >= floor, marginal, torch.full_like(marginal, math.inf)).argmin()
        take = torch.where(budget + delta <= cap, marginal, torch.full_like(marginal, -math.inf)).argmax()
        if give == take:
            break
        loss = sens[give] * math.log(budget[give] / (budget[give] - delta))
        gain = sens[take] * math.log((budget[take] + delta) / budget[take])
        if gain <= loss:
            break
        budget[give] -= delta
        budget[take] += delta
    shares = budget / budget.sum()
    return {k: float(v) for k, v in zip(names, shares)}
