"""Compacted cache layers: physical slots (keys, values, fp32 bias = beta) that stand for
many logical tokens (see the package docstring for how the model sees them)."""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer, DynamicSlidingWindowLayer

from ..errors import UnsupportedModelError
from .ragged import Borrowed

_PADDING = float("-inf")
BIAS_ATTRIBUTE = "agentmem_bias"  # set on the keys `CompactedLayer.update` returns: (B, H_kv, k) fp32
BORROWED_ATTRIBUTE = "agentmem_borrowed"  # and, with borrowed slots, their (keys, values, bias, owns)

class CompactedLayer(CacheLayerMixin):
    """A full-attention cache layer whose slots may carry a log-weight (beta).

    Tensors: `keys` (B, H, P, D) post-RoPE, `values` (B, H, P, Dv), `bias` (B, H, P) fp32
    (0 for ordinary tokens, beta for compacted slots, -inf for padding of short heads).
    `logical_length` counts the tokens the slots stand for. `borrowed` (or None) locates
    the slots a head holds in other heads' rows (`agentmem.hf.ragged`).
    """

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, scaling: float | None = None):
        super().__init__()
        self.bias: torch.Tensor | None = None
        self.logical_length = 0
        self.scaling = scaling
        self.has_beta = False  # any slot with a non-zero bias (beta or padding)
        # Contiguous runs [logical tokens, physical slots] in order; equal numbers = plain tokens.
        self.runs: list[list[int]] = []
        self.borrowed: Borrowed | None = None

    @classmethod
    def from_tensors(
        cls,
        keys: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        logical_length: int | None = None,
        scaling: float | None = None,
        runs: list[list[int]] | None = None,
        borrowed: Borrowed | None = None,
    ) -> CompactedLayer:
        layer = cls(scaling=scaling)
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        layer.bias = bias.float() if bias is not None else keys.new_zeros(keys.shape[:-1], dtype=torch.float32)
        layer.logical_length = keys.shape[-2] if logical_length is None else int(logical_length)
        layer.has_beta = bool(torch.any(layer.bias != 0))
        physical = keys.shape[-2]
        layer.runs = [list(r) for r in runs] if runs is not None else [[layer.logical_length, physical]]
        if sum(r[0] for r in layer.runs) != layer.logical_length or sum(r[1] for r in layer.runs) != physical:
            raise ValueError(f"runs {layer.runs} do not add up to {layer.logical_length} tokens / {physical} slots")
        if borrowed is not None:
            borrowed.check(tuple(keys.shape[:3]), layer.bias)
            layer.borrowed = borrowed
        return layer

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states[..., :0, :]
        self.values = value_states[..., :0, :]
        self.bias = key_states.new_zeros(key_states.shape[:-2] + (0,), dtype=torch.float32)
        self.is_initialized = True

    @property
    def physical_length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.bias = torch.cat([self.bias, self.bias.new_zeros(self.bias.shape[:-1] + (new,))], dim=-1)
        self.logical_length += new
        if self.runs and self.runs[-1][0] == self.runs[-1][1]:
            self.runs[-1] = [self.runs[-1][0] + new, self.runs[-1][1] + new]
        else:
            self.runs.append([new, new])
        return self.attention_keys(), self.values

    def attention_keys(self) -> torch.Tensor:
        """Keys as the attention function wants them: if any beta is set, a view carrying the bias.

        A view (no copy) so that the bias travels with this call's keys only; the stored
        tensor never carries it. Widening the keys here with a `beta / scaling` column, as
        this layer once did, copied every key and value each decode step. Borrowed slots
        travel the same way, gathered per call (a few slots per head).
        """
        if not self.has_beta:
            return self.keys
        keys = self.keys.view_as(self.keys)
        setattr(keys, BIAS_ATTRIBUTE, self.bias)
        if self.borrowed is not None:
            lent = self.borrowed
            setattr(keys, BORROWED_ATTRIBUTE, (*lent.gather(self.keys, self.values), lent.bias, lent.owns))
        return keys

    def physical_span(self, start: int, end: int) -> tuple[int, int]:
        """Physical slots [a, b) holding logical tokens [start, end).

        Raises ValueError when a boundary falls inside an earlier compacted run.
        """
        bounds = []
        for target in (start, end):
            logical = physical = 0
            for tokens, slots in self.runs:
                if logical <= target <= logical + tokens:
                    offset = target - logical
                    if tokens != slots and offset not in (0, tokens):
                        raise ValueError(
                            f"token {target} lies inside a compacted run of tokens [{logical}, {logical + tokens}); "
                            "move the span boundary to the run's start or end"
                        )
                    bounds.append(physical + (offset if tokens == slots else (0 if offset == 0 else slots)))
                    break
                logical, physical = logical + tokens, physical + slots
            else:
                raise ValueError(f"token {target} is beyond the {self.logical_length} cached tokens")
        return bounds[0], bounds[1]

    def slots_before(self, token: int) -> int:
        """Physical slots that stand only for logical tokens before `token`.

        A compacted run that `token` falls inside is left out whole, so the result never
        splits a run (unlike `physical_span`, it never raises for such a boundary).
        """
        logical = physical = 0
        for tokens, slots in self.runs:
            if logical + tokens > token:
                return physical + (token - logical if tokens == slots else 0)
            logical, physical = logical + tokens, physical + slots
        return physical

    def get_mask_sizes(self, query_length: int | torch.Tensor) -> tuple[int, int]:
        # transformers < 5.3 passes `cache_position` (a tensor of the new positions) here
        if isinstance(query_length, torch.Tensor):
            query_length = query_length.shape[0]
        physical = self.physical_length
        return physical + query_length, self.logical_length - physical

    def get_seq_length(self) -> int:
        return self.logical_length

    def get_max_length(self) -> int:
        return -1

    def get_max_cache_shape(self) -> int:  # the name of get_max_length in transformers < 5.3
        return -1

    def reset(self) -> None:
        self.keys = self.values = self.bias = None
        self.logical_length = 0
        self.has_beta = False
        self.runs = []
        self.borrowed = None
        self.is_initialized = False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.physical_length > 0:
            index = beam_idx.to(self.keys.device)
            self.keys = self.keys.index_select(0, index)
            self.values = self.values.index_select(0, index)
            self.bias = self.bias.index_select(0, index)
            if self.borrowed is not None:
                self.borrowed = self.borrowed.select_batch(index)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.physical_length > 0:
            self.keys = self.keys.repeat_interleave(repeats, dim=0)
            self.values = self.values.repeat_interleave(repeats, dim=0)
            self.bias = self.bias.repeat_interleave(repeats, dim=0)
            if self.borrowed is not None:
                self.borrowed = self.borrowed.repeat_batch(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.physical_length > 0:
            self.keys, self.values, self.bias = self.keys[indices], self.values[indices], self.bias[indices]
            if self.borrowed is not None:
                self.borrowed = self.borrowed.select_batch(indices)

    def effective_slots(self) -> torch.Tensor:
        """Slots each (batch, head) attends to, its own and borrowed, padding not counted: (B, H) long."""
        own = torch.isfinite(self.bias).sum(-1)
        return own if self.borrowed is None else own + self.borrowed.per_head()

    def nbytes(self) -> int:
        """Physical bytes of keys, values and bias, padding and borrowed-slot records included."""
        if self.keys is None:
            return 0
        extra = 0 if self.borrowed is None else self.borrowed.nbytes()
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values, self.bias)) + extra


class CompactedCache(Cache):
    """A transformers `Cache` whose full-attention layers may be compacted.

    Sliding-window layers (Gemma 3) are kept as the `DynamicSlidingWindowLayer` they were.
    Use `CompactedCache.from_cache(model, cache)` to wrap a `DynamicCache` (no copy) and
    `agentmem.compact` to compact it. `get_seq_length()` is logical; `physical_length()`
    and `nbytes()` say what is actually stored.
    """

    def __init__(self, layers: list[CacheLayerMixin]):
        super().__init__(layers=layers)

    @classmethod
    def from_cache(cls, cache: Cache, *, scalings: dict[int, float] | None = None) -> CompactedCache:
        """Wrap `cache` layer by layer; tensors are shared, never copied or modified."""
        if not isinstance(cache, Cache):
            raise UnsupportedModelError(f"expected a transformers Cache, got {type(cache).__name__}")
        layers: list[CacheLayerMixin] = []
        for idx, layer in enumerate(cache.layers):
            scaling = (scalings or {}).get(idx)
            if isinstance(layer, CompactedLayer):
                layers.append(_copy_compacted(layer, scaling))
            elif isinstance(layer, DynamicSlidingWindowLayer):
                layers.append(_copy_sliding(layer))
            elif type(layer) is DynamicLayer:
                if layer.is_initialized and layer.keys is not None and layer.keys.numel() > 0:
                    layers.append(CompactedLayer.from_tensors(layer.keys, layer.values, scaling=scaling))
                else:
                    layers.append(CompactedLayer(scaling=scaling))
            else:
                raise UnsupportedModelError(
                    f"cannot compact a cache layer of type {type(layer).__name__}; agentmem handles DynamicCache "
                    "(full and sliding-window layers) and its own CompactedCache"
                )
        return cls(layers)

    def copy(self) -> CompactedCache:
        """A new cache object sharing the tensors (updates never modify tensors in place)."""
        return CompactedCache.from_cache(self)

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        # One mask serves all full-attention layers; make it as wide as the widest and let
        # the attention function take the last columns that belong to a narrower layer.
        full = self.full_layers()
        if layer_idx < len(self.layers) and isinstance(self.layers[layer_idx], CompactedLayer) and full:
            widest = max(full, key=lambda i: self.layers[i].physical_length)
            return self.layers[widest].get_mask_sizes(query_length)
        return super().get_mask_sizes(query_length, layer_idx)

    def full_layers(self) -> list[int]:
        """Indices of the compactable (full-attention) layers."""
        return [i for i, layer in enumerate(self.layers) if isinstance(layer, CompactedLayer)]

    def physical_length(self) -> int:
        """Physical slots per full-attention layer, averaged over those layers and rounded up.

        A compaction may give layers different widths at the same total (a head profile,
        kvzip's global ranking), so the mean, not the widest layer, is what the bytes follow.
        """
        widths = [self.layers[i].physical_length for i in self.full_layers()]
        return -(-sum(widths) // len(widths)) if widths else 0

    def nbytes(self) -> int:
        """Physical bytes of all layers (padding and sliding windows included)."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, CompactedLayer):
                total += layer.nbytes()
            elif getattr(layer, "keys", None) is not None:
                total += layer.keys.numel() * layer.keys.element_size() * 2
        return total

    def effective_slots(self) -> int:
        """Non-padding slots summed over full layers, batch and KV heads."""
        return int(sum(self.layers[i].effective_slots().sum() for i in self.full_layers()))


def _copy_compacted(layer: CompactedLayer, scaling: float | None) -> CompactedLayer:
    if not layer.is_initialized:
        return CompactedLayer(scaling=scaling or layer.scaling)
    return CompactedLayer.from_tensors(
        layer.keys,
        layer.values,
        layer.bias,
        logical_length=layer.logical_length,
        scaling=scaling or layer.scaling,
        runs=layer.runs,
        borrowed=layer.borrowed,
    )


def _copy_sliding(layer: DynamicSlidingWindowLayer) -> DynamicSlidingWindowLayer:
    twin = DynamicSlidingWindowLayer(sliding_window=layer.sliding_window)
    if layer.is_initialized:
        twin.lazy_initialization(layer.keys, layer.values)
        twin.keys, twin.values = layer.keys, layer.values
        twin.cumulative_length = layer.cumulative_length
    return twin
