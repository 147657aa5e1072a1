"""Cache state as plain data (snapshots), copies, drops and size accounting.

Part of `agentmem.hf`: it builds and reads transformers cache layers directly.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer, DynamicSlidingWindowLayer

from ..errors import UnsupportedModelError
from .cache import CompactedCache, CompactedLayer
from .ragged import Borrowed

__all__ = ["cache_from_state", "cache_size", "cache_state", "compacted_runs", "copy_cache", "crop_cache",
           "drop_span", "remapped", "replace_span", "snap_span", "span_slots", "splice_runs"]

def cache_state(cache: Cache, *, block: int = 64) -> list[dict]:
    """Describe every layer of `cache` as plain data: `kind`, `meta` and tensor `blocks`.

    Each layer's slots are cut into blocks of `block` slots (a dict of tensors each), so a
    store can deduplicate the unchanged blocks of consecutive snapshots.
    """
    if block < 1:
        raise ValueError("block must be >= 1")
    out = []
    for layer in cache.layers:
        if isinstance(layer, CompactedLayer):
            kind = "compacted"
            meta = {"logical_length": layer.logical_length, "runs": layer.runs, "scaling": layer.scaling}
            if layer.borrowed is not None:
                meta["borrowed"] = layer.borrowed.to_entries()
            tensors = {"keys": layer.keys, "values": layer.values, "bias": layer.bias}
        elif isinstance(layer, DynamicSlidingWindowLayer):
            kind = "sliding"
            meta = {"sliding_window": layer.sliding_window, "cumulative_length": layer.cumulative_length}
            tensors = {"keys": layer.keys, "values": layer.values}
        elif type(layer) is DynamicLayer:
            kind, meta = "dynamic", {}
            tensors = {"keys": layer.keys, "values": layer.values}
        else:
            raise UnsupportedModelError(f"cannot snapshot a cache layer of type {type(layer).__name__}")
        blocks = []
        if layer.is_initialized and tensors["keys"] is not None:
            slots = tensors["keys"].shape[-2]
            for lo in range(0, slots, block):
                blocks.append({
                    name: (t[..., lo : lo + block] if name == "bias" else t[..., lo : lo + block, :]).contiguous()
                    for name, t in tensors.items()
                })
            if not blocks:  # initialized but empty: keep the shapes
                blocks.append({name: t.contiguous() for name, t in tensors.items()})
        out.append({"kind": kind, "meta": meta, "blocks": blocks})
    return out


def cache_from_state(states: list[dict], model: torch.nn.Module) -> Cache:
    """Rebuild the cache `cache_state` described (a DynamicCache unless a layer is compacted)."""
    from transformers import DynamicCache

    layers: list[CacheLayerMixin] = []
    for state in states:
        kind, meta, blocks = state["kind"], state["meta"], state["blocks"]
        joined = {}
        if blocks:
            for name in blocks[0]:  # one block is shared as it is (`copy_cache` shares tensors)
                joined[name] = blocks[0][name] if len(blocks) == 1 else torch.cat(
                    [b[name] for b in blocks], dim=-1 if name == "bias" else -2)
        if kind == "compacted":
            layer = CompactedLayer(scaling=meta.get("scaling"))
            if joined:
                keys = joined["keys"]
                borrowed = Borrowed.from_entries(meta.get("borrowed"), keys.shape[0], keys.shape[1], keys.device)
                layer = CompactedLayer.from_tensors(keys, joined["values"], joined["bias"],
                                                    logical_length=meta["logical_length"], scaling=meta["scaling"],
                                                    runs=meta["runs"], borrowed=borrowed)
        elif kind == "sliding":
            layer = DynamicSlidingWindowLayer(sliding_window=meta["sliding_window"])
            if joined:
                layer.lazy_initialization(joined["keys"], joined["values"])
                layer.keys, layer.values = joined["keys"], joined["values"]
                layer.cumulative_length = meta["cumulative_length"]
        elif kind == "dynamic":
            layer = DynamicLayer()
            if joined:
                layer.lazy_initialization(joined["keys"], joined["values"])
                layer.keys, layer.values = joined["keys"], joined["values"]
        else:
            raise ValueError(f"unknown cache layer kind {kind!r}")
        layers.append(layer)
    if any(isinstance(layer, CompactedLayer) for layer in layers):
        return CompactedCache(layers)
    cache = DynamicCache(config=model.config)
    if len(cache.layers) != len(layers):
        raise ValueError(f"the snapshot has {len(layers)} layers but the model has {len(cache.layers)}")
    cache.layers = layers
    return cache


def drop_span(cache: Cache, start: int, end: int, *, scalings: dict[int, float] | None = None) -> CompactedCache:
    """A new cache without the slots of logical tokens [start, end) in full-attention layers.

    Positions of later tokens are unchanged (the dropped tokens keep counting logically);
    sliding-window layers are left as they are. The input cache is not modified.
    """
    view = CompactedCache.from_cache(cache, scalings=scalings)
    out = view.copy()
    for idx in view.full_layers():
        layer = view.layers[idx]
        if layer.physical_length == 0:
            continue
        a, b = layer.physical_span(start, end)
        runs = []
        logical = 0
        for tokens, slots in layer.runs:  # split plain runs at the span, then zero the span
            lo, hi = logical, logical + tokens
            pieces = [(lo, min(hi, start)), (max(lo, start), min(hi, end)), (max(lo, end), hi)]
            for p_lo, p_hi in pieces:
                if p_hi <= p_lo:
                    continue
                inside = start <= p_lo and p_hi <= end
                width = 0 if inside else (p_hi - p_lo if tokens == slots else slots)
                runs.append([p_hi - p_lo, width])
            logical = hi
        merged: list[list[int]] = []
        for tokens, slots in runs:
            if merged and merged[-1][1] == 0 and slots == 0:
                merged[-1][0] += tokens
            else:
                merged.append([tokens, slots])

        def cut(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t[..., :a], t[..., b:]], dim=-1)

        out.layers[idx] = CompactedLayer.from_tensors(
            torch.cat([layer.keys[:, :, :a], layer.keys[:, :, b:]], dim=2),
            torch.cat([layer.values[:, :, :a], layer.values[:, :, b:]], dim=2),
            cut(layer.bias), logical_length=layer.logical_length, scaling=layer.scaling, runs=merged,
            borrowed=remapped(layer, a, b, 0),
        )
    return out


def cache_size(cache: Cache) -> tuple[int, int, int]:
    """(logical tokens, physical slots per full layer (mean over layers), bytes of all layers)."""
    if isinstance(cache, CompactedCache):
        return cache.get_seq_length(), cache.physical_length(), cache.nbytes()
    physical = total = 0
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if keys is None or not getattr(layer, "is_initialized", False):
            continue
        total += keys.numel() * keys.element_size() + layer.values.numel() * layer.values.element_size()
        if not isinstance(layer, DynamicSlidingWindowLayer):
            physical = max(physical, keys.shape[-2])
    return cache.get_seq_length(), physical, total


def span_slots(cache: Cache, start: int, end: int) -> float:
    """Physical slots that logical tokens [start, end) occupy in the first full layer.

    A compacted run that the span covers only partly counts in proportion to its tokens.
    """
    total = 0.0
    for lo, hi, slots in compacted_runs(cache):
        overlap = min(hi, end) - max(lo, start)
        if overlap > 0:
            total += slots * overlap / (hi - lo)
    return total


def compacted_runs(cache: Cache) -> list[tuple[int, int, int]]:
    """(logical start, logical end, physical slots) of each run of the first full layer."""
    for layer in cache.layers:
        if isinstance(layer, CompactedLayer) and layer.is_initialized:
            out, logical = [], 0
            for tokens, slots in layer.runs:
                out.append((logical, logical + tokens, slots))
                logical += tokens
            return out
    length = cache.get_seq_length()
    return [(0, length, length)] if length else []


def snap_span(cache: Cache, start: int, end: int) -> tuple[int, int]:
    """Widen [start, end) so it does not cut an earlier compacted run."""
    for lo, hi, slots in compacted_runs(cache):
        if slots == hi - lo:
            continue  # plain tokens can be cut anywhere
        if lo < start < hi:
            start = lo
        if lo < end < hi:
            end = hi
    return start, end


def copy_cache(cache: Cache, model: torch.nn.Module) -> Cache:
    """A cache that shares tensors with `cache` but grows independently (cache updates never write in place)."""
    return cache_from_state(cache_state(cache, block=1 << 30), model)


def crop_cache(cache: Cache, tokens: int, model: torch.nn.Module) -> Cache:
    """A cache holding only logical tokens [0, tokens) of `cache`, sharing its tensors (`cache` is not modified).

    Full-attention layers are cut at `tokens`, compacted runs before it kept whole; a
    sliding-window layer keeps the window that ends at `tokens`.

    Raises:
        ValueError: `tokens` is out of range, lies inside a compacted run (its slots stand
            for tokens on both sides of it), or a sliding-window layer has slid past the
            window that ends at `tokens` (it no longer holds those tokens).
    """
    from .model import new_cache

    length = cache.get_seq_length()
    if not 0 <= tokens <= length:
        raise ValueError(f"cannot crop a cache of {length} tokens to {tokens}")
    if tokens == 0:
        return new_cache(model)
    out = copy_cache(cache, model)
    for idx, layer in enumerate(out.layers):
        if not layer.is_initialized or layer.keys is None:
            continue
        if isinstance(layer, CompactedLayer):
            _, end = layer.physical_span(0, tokens)  # raises inside a compacted run
            runs, logical = [], 0
            for run_tokens, slots in layer.runs:
                if logical >= tokens:
                    break
                runs.append([run_tokens, slots] if logical + run_tokens <= tokens else [tokens - logical] * 2)
                logical += run_tokens
            out.layers[idx] = CompactedLayer.from_tensors(
                layer.keys[:, :, :end], layer.values[:, :, :end], layer.bias[..., :end], logical_length=tokens,
                scaling=layer.scaling, runs=runs, borrowed=remapped(layer, end, layer.physical_length, 0))
        elif isinstance(layer, DynamicSlidingWindowLayer):
            first = layer.cumulative_length - layer.keys.shape[-2]  # the oldest token the layer holds
            need = max(0, tokens - layer.sliding_window + 1)  # the oldest token the window at `tokens` reads
            if first > need:
                raise ValueError(f"layer {idx} slides over {layer.sliding_window} tokens and holds tokens from "
                                 f"{first} on; the window before token {tokens} starts at {need}")
            layer.keys = layer.keys[:, :, need - first : tokens - first]  # (B, H_kv, window, D)
            layer.values = layer.values[:, :, need - first : tokens - first]
            layer.cumulative_length = tokens
        else:
            layer.keys = layer.keys[:, :, :tokens]  # (B, H_kv, tokens, D)
            layer.values = layer.values[:, :, :tokens]
    return out


def splice_runs(runs: list[list[int]], start: int, end: int, width: int) -> list[list[int]]:
    """Replace logical tokens [start, end) by one run of `width` slots."""
    before: list[list[int]] = []
    after: list[list[int]] = []
    logical = 0
    for tokens, slots in runs:
        lo, hi = logical, logical + tokens
        if hi <= start:
            before.append([tokens, slots])
        elif lo >= end:
            after.append([tokens, slots])
        else:  # overlaps the span; only plain runs can be cut (checked by physical_span)
            if lo < start:
                before.append([start - lo, start - lo])
            if hi > end:
                after.append([hi - end, hi - end])
        logical = hi
    return before + [[end - start, width]] + after


def replace_span(model: torch.nn.Module, cache: Cache, start: int, end: int, ids: list[int]) -> CompactedCache:
    """A new cache in which logical tokens [start, end) of every full-attention layer are
    held by the slots of `ids`, encoded after the tokens before `start`.

    The new slots sit at RoPE positions start, start + 1, ...; later tokens keep their
    slots and positions, and the logical length is unchanged. `cache` is not modified.

    Raises:
        ValueError: the model has sliding-window layers (they no longer hold the tokens
            before `start`), `ids` is empty, or `start` / `end` cut a compacted run.
    """
    from .model import attention_scalings, sliding_layers

    if sliding_layers(model):
        raise ValueError("cannot encode new slots inside a cache with sliding-window layers")
    if not ids:
        raise ValueError("replace_span needs at least one token id")
    scalings = attention_scalings(model)
    view = CompactedCache.from_cache(cache, scalings=scalings)
    prefix = crop_cache(view, start, model)
    device = next(model.parameters()).device
    with torch.no_grad():
        model(input_ids=torch.tensor([ids], device=device), past_key_values=prefix, use_cache=True)
    head = CompactedCache.from_cache(prefix, scalings=scalings)
    out = view.copy()
    width = len(ids)
    for idx in view.full_layers():
        layer, new = view.layers[idx], head.layers[idx]
        _, b = layer.physical_span(start, end)
        later = remapped(layer, 0, b, new.physical_length)  # the prefix's own are in `new`
        out.layers[idx] = CompactedLayer.from_tensors(
            torch.cat([new.keys, layer.keys[:, :, b:]], dim=2),
            torch.cat([new.values, layer.values[:, :, b:]], dim=2),
            torch.cat([new.bias, layer.bias[..., b:]], dim=-1),
            logical_length=layer.logical_length, scaling=layer.scaling,
            runs=splice_runs(layer.runs, start, end, width),
            borrowed=later if new.borrowed is None else new.borrowed.joined(later),
        )
    return out


def remapped(layer: CompactedLayer, start: int, end: int, width: int) -> Borrowed | None:
    """`layer`'s borrowed slots after its physical slots [start, end) are replaced by `width` new ones."""
    return None if layer.borrowed is None else layer.borrowed.remap(start, end, width)
