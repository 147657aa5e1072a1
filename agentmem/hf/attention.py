"""The "agentmem" attention function and its registration, and query capture.

The function is SDPA that adds a compacted layer's beta (see the package docstring);
`capture_queries` records the queries each layer is asked inside a block.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from packaging.version import Version
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from ..errors import UnsupportedModelError
from . import ragged
from .cache import _PADDING, BIAS_ATTRIBUTE, BORROWED_ATTRIBUTE
from .model import check_transformers_version

ATTENTION_NAME = "agentmem"
_SDPA_GQA = Version(torch.__version__.split("+")[0]) >= Version("2.5")

@dataclass
class QueryCapture:
    """Queries seen by each layer's attention call, post-norm and post-RoPE.

    `queries[layer]` is a list of (B, H_q, q_len, D) tensors (fp32, detached), one per call.
    With `normalisers`, `lse[layer]` holds each query's log-sum-exp over everything it
    attended to, (B, H_q, q_len) per call, from the same attention kernel.
    """

    layers: set[int] | None = None
    queries: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    scalings: dict[int, float] = field(default_factory=dict)
    normalisers: bool = False
    lse: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    # Optional hook (layer_idx, query, key, value, mask) -> (key, value, mask) that may swap
    # the keys a layer attends to (on-policy compaction swaps in the compacted span).
    transform: Callable | None = None

    def record(self, layer_idx: int, query: torch.Tensor, scaling: float) -> None:
        if self.layers is not None and layer_idx not in self.layers:
            return
        self.queries.setdefault(layer_idx, []).append(query.detach().float())
        self.scalings[layer_idx] = float(scaling)

    def wants(self, layer_idx: int | None) -> bool:
        return layer_idx is not None and (self.layers is None or layer_idx in self.layers)

    def stacked(self, layer_idx: int) -> torch.Tensor:
        """All queries of one layer concatenated along the sequence: (B, H_q, n, D)."""
        return torch.cat(self.queries[layer_idx], dim=2)

    def stacked_lse(self, layer_idx: int) -> torch.Tensor:
        """The log-sum-exps of `stacked(layer_idx)`'s queries: (B, H_q, n)."""
        return torch.cat(self.lse[layer_idx], dim=2)


_local = threading.local()


@contextlib.contextmanager
def capture_queries(layers: set[int] | None = None, transform: Callable | None = None,
                    normalisers: bool = False) -> Iterator[QueryCapture]:
    """Record the queries of every agentmem attention call made inside the block (this thread).

    With `normalisers`, also each query's log-sum-exp over all it attended to (`QueryCapture.lse`).
    """
    capture = QueryCapture(layers=layers, transform=transform, normalisers=normalisers)
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
    wanted = capture is not None and capture.wants(layer_idx)
    if capture is not None and layer_idx is not None:
        capture.record(layer_idx, query, scaling)
        if capture.transform is not None and wanted:
            key, value, attention_mask = capture.transform(layer_idx, query, key, value, attention_mask)
    with_lse = wanted and capture.normalisers
    value_dim = value.shape[-1]
    bias = getattr(key, BIAS_ATTRIBUTE, None)  # (B, H_kv, k) fp32, from CompactedLayer.attention_keys
    if bias is not None and bias.shape[-1] != key.shape[-2]:
        raise UnsupportedModelError(f"layer {layer_idx}: bias covers {bias.shape[-1]} slots, keys {key.shape[-2]}")
    borrowed = getattr(key, BORROWED_ATTRIBUTE, None)  # slots heads hold in other heads' rows
    if borrowed is not None:
        if query.shape[1] % key.shape[1]:
            raise UnsupportedModelError(f"layer {layer_idx}: {query.shape[1]} query heads over {key.shape[1]} KV heads")
        out, lse = ragged.attend(query, key, value, bias, borrowed, attention_mask, scaling, with_lse=with_lse)
        if with_lse:
            capture.lse.setdefault(layer_idx, []).append(lse.detach().float())
        return out.transpose(1, 2).contiguous(), None
    one_token, gqa = query.shape[-2] == 1, query.shape[1] > key.shape[1]
    if one_token and key.shape[-1] == query.shape[-1] and (bias is not None or gqa) and not with_lse:
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
    if with_lse:
        out, lse = _attend_with_lse(query, key, value, attention_mask, scaling, getattr(module, "is_causal", True))
        capture.lse.setdefault(layer_idx, []).append(lse.detach().float())
        return out[..., :value_dim].transpose(1, 2).contiguous(), None
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


def _attend_with_lse(query, key, value, mask, scaling: float, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output (B, H_q, q, Dv) and each query's log-sum-exp (B, H_q, q), in one kernel on CPU.

    Keys and values are already widened for beta; the mask is transformers' (bool or additive).
    PyTorch's CPU flash kernel returns the log-sum-exp beside the output; elsewhere the
    scores are formed once in fp32 (this path serves compaction's reference passes only).
    """
    if torch.is_autocast_enabled(query.device.type):  # a reference pass in bf16 (`queries.precision`):
        low = torch.get_autocast_dtype(query.device.type)  # this private kernel is not autocast's to cast
        query, key, value = query.to(low), key.to(low), value.to(low)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    q_len, kv_len = query.shape[-2], key.shape[-2]
    if mask is not None:
        mask = mask[..., -kv_len:]
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill_(~mask, _PADDING)
        mask = mask.to(query.dtype)
    is_causal = mask is None and q_len > 1 and q_len == kv_len and causal
    if query.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, is_causal, attn_mask=mask, scale=scaling)
        return out, lse
    logits = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling
    if mask is not None:
        logits = logits + mask.float()
    elif is_causal:
        logits = logits.masked_fill(torch.ones(q_len, kv_len, dtype=torch.bool, device=logits.device).triu(1),
                                    float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    out = torch.matmul((logits - lse.unsqueeze(-1)).exp(), value.float()).to(value.dtype)
    return out, lse


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
