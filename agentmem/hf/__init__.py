"""Every touch of transformers internals lives here: cache layers, attention and mask
registration, and query capture.

A compacted layer holds, per KV head, a few physical slots (keys, values, fp32 bias =
beta) that stand for many logical tokens. The model sees it through two numbers:

- `get_seq_length()` is the *logical* length, so new tokens get the RoPE positions and
  `cache_position` they would have had without compaction;
- `get_mask_sizes()` returns `(physical + q_len, logical - physical)`, so transformers
  builds the causal mask in physical coordinates (the trick `DynamicSlidingWindowLayer`
  plays for its window).

beta reaches the logits without a forked modeling file: `update()` returns the layer's
keys as a view that carries the layer's bias (`BIAS_ATTRIBUTE`), and the registered
"agentmem" attention function applies it:

- one new token (decode): the bias is SDPA's additive float mask, and the query heads
  that share a KV head are folded into rows of one head, so the mask is (B, H_kv, 1, k)
  and nothing as large as the keys is copied per step;
- several new tokens (a prefill chunk): the keys get one extra column holding
  `beta / scaling` and the queries a column of ones, so `scaling * q'.k'` =
  `scaling * q.k + beta`, and the values a zero column (SDPA's fast CPU kernel needs
  equal key and value widths). A float mask there would be (B, H_q, q, k).

Both were measured against the full cache and against attending to the compacted slots
apart with a log-sum-exp merge; see docs/decode.md. Layers without beta return plain keys
and the function is plain SDPA (at decode with GQA, folded the same way: it is faster).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import transformers
from packaging.version import Version
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer, DynamicSlidingWindowLayer
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from ..errors import TransformersVersionError, UnsupportedModelError

ATTENTION_NAME = "agentmem"
TESTED_TRANSFORMERS = (Version("5.2.0"), Version("5.24.0"))  # [low, high)
_PADDING = float("-inf")
BIAS_ATTRIBUTE = "agentmem_bias"  # set on the keys `CompactedLayer.update` returns: (B, H_kv, k) fp32
_SDPA_GQA = Version(torch.__version__.split("+")[0]) >= Version("2.5")


def check_transformers_version() -> None:
    """Raise if the installed transformers is outside the tested range."""
    found = Version(transformers.__version__)
    low, high = TESTED_TRANSFORMERS
    if not (low <= Version(found.base_version) < high):
        raise TransformersVersionError(
            f"agentmem is tested with transformers >={low},<{high} but {found} is installed; "
            f"run: pip install 'transformers>={low},<{high}'"
        )


# --------------------------------------------------------------------------- cache layers


class CompactedLayer(CacheLayerMixin):
    """A full-attention cache layer whose slots may carry a log-weight (beta).

    Tensors: `keys` (B, H, P, D) post-RoPE, `values` (B, H, P, Dv), `bias` (B, H, P) fp32
    (0 for ordinary tokens, beta for compacted slots, -inf for padding of short heads).
    `logical_length` counts the tokens the slots stand for.
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
        this layer once did, copied every key and value each decode step.
        """
        if not self.has_beta:
            return self.keys
        keys = self.keys.view_as(self.keys)
        setattr(keys, BIAS_ATTRIBUTE, self.bias)
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
        self.is_initialized = False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.physical_length > 0:
            index = beam_idx.to(self.keys.device)
            self.keys = self.keys.index_select(0, index)
            self.values = self.values.index_select(0, index)
            self.bias = self.bias.index_select(0, index)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.physical_length > 0:
            self.keys = self.keys.repeat_interleave(repeats, dim=0)
            self.values = self.values.repeat_interleave(repeats, dim=0)
            self.bias = self.bias.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.physical_length > 0:
            self.keys, self.values, self.bias = self.keys[indices], self.values[indices], self.bias[indices]

    def effective_slots(self) -> torch.Tensor:
        """Slots that are not padding, per (batch, head): (B, H) long."""
        return torch.isfinite(self.bias).sum(-1)

    def nbytes(self) -> int:
        """Physical bytes of keys, values and bias, padding included."""
        if self.keys is None:
            return 0
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values, self.bias))


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
    )


def _copy_sliding(layer: DynamicSlidingWindowLayer) -> DynamicSlidingWindowLayer:
    twin = DynamicSlidingWindowLayer(sliding_window=layer.sliding_window)
    if layer.is_initialized:
        twin.lazy_initialization(layer.keys, layer.values)
        twin.keys, twin.values = layer.keys, layer.values
        twin.cumulative_length = layer.cumulative_length
    return twin


# --------------------------------------------------------------------- attention function


@dataclass
class QueryCapture:
    """Queries seen by each layer's attention call, post-norm and post-RoPE.

    `queries[layer]` is a list of (B, H_q, q_len, D) tensors (fp32, detached), one per call.
    """

    layers: set[int] | None = None
    queries: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    scalings: dict[int, float] = field(default_factory=dict)
    # Optional hook (layer_idx, query, key, value, mask) -> (key, value, mask) that may swap
    # the keys a layer attends to (on-policy compaction swaps in the compacted span).
    transform: Callable | None = None

    def record(self, layer_idx: int, query: torch.Tensor, scaling: float) -> None:
        if self.layers is not None and layer_idx not in self.layers:
            return
        self.queries.setdefault(layer_idx, []).append(query.detach().float())
        self.scalings[layer_idx] = float(scaling)

    def stacked(self, layer_idx: int) -> torch.Tensor:
        """All queries of one layer concatenated along the sequence: (B, H_q, n, D)."""
        return torch.cat(self.queries[layer_idx], dim=2)


_local = threading.local()


@contextlib.contextmanager
def capture_queries(layers: set[int] | None = None, transform: Callable | None = None) -> Iterator[QueryCapture]:
    """Record the queries of every agentmem attention call made inside the block (this thread)."""
    capture = QueryCapture(layers=layers, transform=transform)
    previous = getattr(_local, "capture", None)
    _local.capture = capture
    try:
        yield capture
    finally:
        _local.capture = previous


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA that honours a compacted layer's beta column (see the module docstring)."""
    # query (B, H_q, q, D); key (B, H_kv, k, D or D+1); value (B, H_kv, k, Dv)
    if kwargs.get("softcap") is not None:
        raise UnsupportedModelError("attention logit soft-capping is not supported by agentmem attention")
    capture = getattr(_local, "capture", None)
    layer_idx = getattr(module, "layer_idx", None)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if capture is not None and layer_idx is not None:
        capture.record(layer_idx, query, scaling)
        if capture.transform is not None and (capture.layers is None or layer_idx in capture.layers):
            key, value, attention_mask = capture.transform(layer_idx, query, key, value, attention_mask)
    value_dim = value.shape[-1]
    bias = getattr(key, BIAS_ATTRIBUTE, None)  # (B, H_kv, k) fp32, from CompactedLayer.attention_keys
    if bias is not None and bias.shape[-1] != key.shape[-2]:
        raise UnsupportedModelError(f"layer {layer_idx}: bias covers {bias.shape[-1]} slots, keys {key.shape[-2]}")
    one_token, gqa = query.shape[-2] == 1, query.shape[1] > key.shape[1]
    if one_token and key.shape[-1] == query.shape[-1] and (bias is not None or gqa):
        folded = _decode_step(module, query, key, value, bias, attention_mask, dropout, scaling)
        if folded is not None:
            return folded, None
    if bias is not None:
        # the beta column: scaling * [q, 1].[k, beta / scaling] = scaling * q.k + beta
        column = (bias / scaling).clamp(min=torch.finfo(key.dtype).min / 4).to(key.dtype).unsqueeze(-1)
        key = torch.cat([key, column], dim=-1)  # (B, H_kv, k, D+1)
    if key.shape[-1] == query.shape[-1] + 1:
        query = torch.cat([query, query.new_ones(query.shape[:-1] + (1,))], dim=-1)
        if value_dim == key.shape[-1] - 1:
            # PyTorch's fast (flash) CPU kernel needs equal key and value widths; without this
            # zero column SDPA falls back to its math path, 3-5x slower in prefill and decode.
            value = torch.cat([value, value.new_zeros(value.shape[:-1] + (1,))], dim=-1)
    groups = query.shape[1] // key.shape[1]
    gqa = {}
    if groups > 1 and _SDPA_GQA:
        gqa = {"enable_gqa": True}  # no copy of K and V per query head
    elif groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    q_len, kv_len = query.shape[-2], key.shape[-2]
    is_causal = False
    if attention_mask is not None:
        if attention_mask.shape[-1] > kv_len:  # a narrower layer than the one the mask was built for
            attention_mask = attention_mask[..., -kv_len:]
        elif attention_mask.shape[-1] < kv_len:
            raise UnsupportedModelError(
                f"attention mask covers {attention_mask.shape[-1]} keys but layer {layer_idx} has {kv_len}"
            )
    else:
        is_causal = q_len > 1 and q_len == kv_len and getattr(module, "is_causal", True)
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout if module.training else 0.0,
        scale=scaling,
        is_causal=is_causal,
        **gqa,
    )
    if out.shape[-1] != value_dim:
        out = out[..., :value_dim]
    return out.transpose(1, 2).contiguous(), None


def _decode_step(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bias: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    dropout: float,
    scaling: float,
) -> torch.Tensor | None:
    """One query position, beta (if any) as SDPA's float mask; None where the mask's shape does not allow it.

    The r query heads of a KV head become r query rows of that head (query head h uses KV
    head h // r, as transformers' `repeat_kv` has it), so the mask stays (B, H_kv, 1, k)
    and broadcasts over the rows: no (B, H_q, 1, k) copy and no repeat of K or V. SDPA's
    CPU kernel also reads each KV head once instead of r times: plain decode over 2k / 8k
    slots of SmolLM2's shapes took 401 / 2263 us folded against 513 / 4516 us with
    `enable_gqa` (docs/LOG.md).
    """
    # query (B, H_q, 1, D); key (B, H_kv, k, D); value (B, H_kv, k, Dv); bias (B, H_kv, k)
    batch, heads, _, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[-2]
    if heads % kv_heads:
        return None
    mask = None if bias is None else bias.unsqueeze(2).to(query.dtype)  # (B, H_kv, 1, k)
    if attention_mask is not None:
        if attention_mask.dim() != 4 or attention_mask.shape[1] != 1 or attention_mask.shape[-1] < kv_len:
            return None  # a per-head mask: let the general path have it
        attention_mask = attention_mask[..., -kv_len:]  # (B, 1, 1, k)
        if mask is None:
            mask = attention_mask
        elif attention_mask.dtype == torch.bool:
            mask = mask.masked_fill(~attention_mask, _PADDING)
        else:
            mask = mask + attention_mask.to(query.dtype)
    rows = query.reshape(batch, kv_heads, heads // kv_heads, dim)  # (B, H_kv, r, D)
    out = F.scaled_dot_product_attention(
        rows, key, value, attn_mask=mask, dropout_p=dropout if module.training else 0.0, scale=scaling
    )  # (B, H_kv, r, Dv)
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous()


def register() -> None:
    """Register the "agentmem" attention and mask functions with transformers (idempotent)."""
    check_transformers_version()
    AttentionInterface.register(ATTENTION_NAME, attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def enable(model: torch.nn.Module) -> str:
    """Switch `model` to agentmem attention; returns the implementation it had before.

    agentmem attention is exact SDPA for ordinary caches, so leaving it on is harmless.
    """
    register()
    previous = model.config._attn_implementation
    if previous != ATTENTION_NAME:
        _set_attention(model, ATTENTION_NAME)
    return previous


def disable(model: torch.nn.Module, previous: str = "sdpa") -> None:
    """Restore an attention implementation (e.g. the value `enable` returned)."""
    _set_attention(model, previous)


@contextlib.contextmanager
def agentmem_attention(model: torch.nn.Module) -> Iterator[None]:
    """Use agentmem attention inside the block and restore the previous one after."""
    previous = enable(model)
    try:
        yield
    finally:
        if previous != ATTENTION_NAME:
            disable(model, previous)


def _set_attention(model: torch.nn.Module, name: str) -> None:
    try:
        model.set_attn_implementation(name)
    except (ValueError, AttributeError, ImportError):
        model.config._attn_implementation = name
    if model.config._attn_implementation != name:
        model.config._attn_implementation = name


# --------------------------------------------------------------------- model introspection


def text_config(model: torch.nn.Module):
    return model.config.get_text_config(decoder=True)


def attention_modules(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """The self-attention module of each decoder layer, by layer index."""
    found: dict[int, torch.nn.Module] = {}
    for module in model.modules():
        idx = getattr(module, "layer_idx", None)
        if idx is not None and hasattr(module, "scaling") and hasattr(module, "k_proj"):
            found.setdefault(int(idx), module)
    if not found:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no attention modules with `layer_idx` and `scaling`; agentmem supports "
            "decoder-only transformers models that use the AttentionInterface (Llama, Qwen2, Gemma 3, Mistral...)"
        )
    return found


def attention_scalings(model: torch.nn.Module) -> dict[int, float]:
    """Each layer's own attention scaling, read from its module (not assumed 1/sqrt(d))."""
    return {idx: float(module.scaling) for idx, module in attention_modules(model).items()}


def sliding_layers(model: torch.nn.Module) -> set[int]:
    """Indices of sliding-window layers, which compaction leaves untouched."""
    config = text_config(model)
    types = getattr(config, "layer_types", None) or []
    return {i for i, kind in enumerate(types) if kind != "full_attention"}


def last_logits_only(model: torch.nn.Module) -> dict:
    """Keyword arguments that make a forward pass compute the last position's logits only.

    A prefill or a query-gathering pass needs at most the next-token logits; the LM head
    over every position took 11% of a 3k-token SmolLM2 prefill here (16.8 -> 14.9 s) and
    (tokens x vocab) fp32 of memory. Models whose forward has no `logits_to_keep` get {}.
    """
    return {"logits_to_keep": 1} if _takes_logits_to_keep(type(model)) else {}


@functools.cache
def _takes_logits_to_keep(cls: type) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False


def new_cache(model: torch.nn.Module) -> Cache:
    """An empty DynamicCache laid out for `model` (sliding layers where the config says so)."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


# Snapshots, copies, drops and sizes live in hf/state.py (imported last: it uses the classes above).
from .state import (  # noqa: E402
    cache_from_state,
    cache_size,
    cache_state,
    compacted_runs,
    copy_cache,
    drop_span,
    snap_span,
    span_slots,
)
