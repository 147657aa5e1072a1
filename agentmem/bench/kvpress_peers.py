"""kvpress's presses as outside peers in the compaction benchmark.

Optional: `pip install "agentmem[kvpress]"` (kvpress 0.5.5 pins transformers < 5.3, so
this resolves transformers 5.2). A press prunes the cache while the context is prefilled;
the pruned keys and values of every full-attention layer are then wrapped as compacted
layers standing for the whole context (so positions continue where the uncompacted run
would) and scored exactly like agentmem's own methods. Sliding-window layers (Gemma 3)
keep the uncompressed window, as kvpress does for Gemma 3 itself.
"""

from __future__ import annotations

import contextlib
import inspect
import tempfile
import time
from contextlib import contextmanager

import torch

from .. import hf

# bench name -> kvpress class name
PRESSES = {
    "kvpress-snapkv": "SnapKVPress",
    "kvpress-expected": "ExpectedAttentionPress",
    "kvpress-knorm": "KnormPress",
    "kvpress-streaming": "StreamingLLMPress",
    "kvpress-kvzip": "KVzipPress",
}


def unavailable() -> str | None:
    """Why the presses cannot run here, or None when they can."""
    try:
        import kvpress  # noqa: F401
    except ImportError as exc:
        return f"kvpress is not installed ({exc}); pip install \"agentmem[kvpress]\" (it needs transformers < 5.3)"
    return None


def make_press(name: str, ratio: float):
    """The kvpress press for bench method `name` keeping 1/ratio of the context."""
    import kvpress

    if name not in PRESSES:
        raise ValueError(f"unknown kvpress peer {name!r}; choose from {', '.join(PRESSES)}")
    return getattr(kvpress, PRESSES[name])(compression_ratio=1.0 - 1.0 / ratio)


@contextmanager
def _tokenizer_on_disk(model, tokenizer):
    """KVzipPress reloads the tokenizer from `model.config.name_or_path`, which for a
    built-in model is a name, not a directory: point it at a saved copy meanwhile."""
    with tempfile.TemporaryDirectory(prefix="agentmem-kvpress-") as tmp:
        tokenizer.save_pretrained(tmp)
        model.config.save_pretrained(tmp)
        before = model.config.name_or_path
        model.config.name_or_path = tmp
        try:
            yield
        finally:
            model.config.name_or_path = before


@torch.no_grad()
def press_cache(
    model, tokenizer, name: str, ratio: float, ids: torch.Tensor, full: hf.CompactedCache
) -> tuple[hf.CompactedCache, float]:
    """Prefill `ids` under the press; return the pruned cache and the prefill seconds it took."""
    press = make_press(name, ratio)
    _skip_sliding_layers(press, model)
    cache = hf.new_cache(model)
    with _tokenizer_on_disk(model, tokenizer) if name == "kvpress-kvzip" else contextlib.nullcontext():
        began = time.perf_counter()
        with press(model):
            model(input_ids=ids, past_key_values=cache, use_cache=True, **hf.last_logits_only(model))
        seconds = time.perf_counter() - began
    masked = _take_masks(model)
    length = ids.shape[1]
    layers = []
    for idx, layer in enumerate(full.layers):
        if not isinstance(layer, hf.CompactedLayer):
            layers.append(layer)
            continue
        keys, values = cache.layers[idx].keys, cache.layers[idx].values
        bias = None
        if idx in masked:
            keys, values, bias = _drop_masked(keys, values, masked[idx])
        layers.append(hf.CompactedLayer.from_tensors(
            keys, values, bias, logical_length=length, scaling=layer.scaling, runs=[[length, keys.shape[-2]]]))
    return hf.CompactedCache(layers), seconds


def _skip_sliding_layers(press, model) -> None:
    """Gemma 3 (text-only class) the way kvpress handles its multimodal class: leave the
    sliding-window layers alone (its hooks would prune or fail on them), and give presses
    that call `module.rotary_emb(x, positions)` the layer type Gemma 3's rotary needs."""
    sliding = hf.sliding_layers(model)
    if not sliding:
        return
    types = hf.text_config(model).layer_types
    hook = press.forward_hook

    def forward_hook(module, inputs, kwargs, output):
        idx = getattr(module, "layer_idx", None)
        if idx in sliding:
            return output
        rotary = getattr(module, "rotary_emb", None)
        if rotary is None or "layer_type" not in inspect.signature(rotary.forward).parameters:
            return hook(module, inputs, kwargs, output)
        module.rotary_emb = _TypedRotary(rotary, types[idx])
        try:
            return hook(module, inputs, kwargs, output)
        finally:
            module.rotary_emb = rotary

    press.forward_hook = forward_hook


class _TypedRotary(torch.nn.Module):
    """A Gemma 3 rotary embedding with its layer type bound."""

    def __init__(self, rotary: torch.nn.Module, layer_type: str):
        super().__init__()
        self.rotary, self.layer_type = rotary, layer_type

    def forward(self, x, position_ids):
        return self.rotary(x, position_ids, layer_type=self.layer_type)


def _take_masks(model) -> dict[int, tuple[torch.Tensor, ...]]:
    """Per-head evictions some presses (KVzip, AdaKV) leave on the attention modules for
    kvpress's patched attention to hide at decode time; taken off so later runs are clean."""
    masked = {}
    for idx, module in hf.attention_modules(model).items():
        if getattr(module, "masked_key_indices", None) is not None:
            masked[idx] = module.masked_key_indices
        module.masked_key_indices = None
    return masked


def _drop_masked(keys: torch.Tensor, values: torch.Tensor, indices) -> tuple[torch.Tensor, ...]:
    """Actually remove the masked (batch, head, position) slots: the kept slots of every
    head in order, short heads padded with bias -inf, as agentmem stores uneven heads."""
    batch, heads, length, _ = keys.shape
    keep = torch.ones(batch, heads, length, dtype=torch.bool, device=keys.device)
    keep[tuple(i.to(keys.device) for i in indices)] = False
    counts = keep.sum(-1, keepdim=True)
    width = int(counts.max())
    order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)[..., :width]
    slots = torch.arange(width, device=keys.device)
    bias = torch.where(slots < counts, 0.0, float("-inf"))
    gather = order.unsqueeze(-1)
    return (keys.gather(2, gather.expand(-1, -1, -1, keys.shape[-1])),
            values.gather(2, gather.expand(-1, -1, -1, values.shape[-1])), bias)
