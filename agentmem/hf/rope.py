"""Rotary position embedding, read from a model: move a post-RoPE query along the sequence.

A query captured at position p was rotated by RoPE for p. Rotating it again by `delta`
gives the query the same content would ask from position p + delta: RoPE rotations
compose, R(p + delta) = R(delta) R(p), and the score against a key at j depends only on
p + delta - j. Captured queries use this to ask a span from after its end, where every
real later query stands (see `agentmem.captured`).
"""

from __future__ import annotations

import torch

from ..errors import UnsupportedModelError
from .model import text_config


def inverse_frequencies(model: torch.nn.Module, layer_idx: int) -> torch.Tensor:
    """The rotary inverse frequencies of layer `layer_idx`: (D / 2,) fp32.

    Reads the model's rotary module (`inv_freq`, or `{layer_type}_inv_freq` for models
    such as Gemma 3 whose layer types rotate at different bases).

    Raises:
        UnsupportedModelError: the model has no rotary module agentmem can read.
    """
    rotary = _rotary_module(model)
    if rotary is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no rotary embedding agentmem can read; captured queries need RoPE. "
            "Use reference='repeat' for this model"
        )
    freq = getattr(rotary, "inv_freq", None)
    if freq is None:
        types = getattr(text_config(model), "layer_types", None) or []
        kind = types[layer_idx] if layer_idx < len(types) else None
        freq = getattr(rotary, f"{kind}_inv_freq", None) if kind else None
    if not isinstance(freq, torch.Tensor):
        raise UnsupportedModelError(
            f"{type(rotary).__name__} of {type(model).__name__} exposes no inverse frequencies for layer {layer_idx}; "
            "use reference='repeat' for this model"
        )
    return freq.detach().float()


def rotate(queries: torch.Tensor, inv_freq: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Rotate post-RoPE `queries` (..., n, D) by `delta` (n,) positions each (HF's half-split layout)."""
    angles = delta.to(inv_freq.device).float().unsqueeze(-1) * inv_freq  # (n, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (n, D)
    cos, sin = angles.cos().to(queries.dtype), angles.sin().to(queries.dtype)
    half = queries.shape[-1] // 2
    turned = torch.cat([-queries[..., half:], queries[..., :half]], dim=-1)
    return queries * cos + turned * sin


def _rotary_module(model: torch.nn.Module) -> torch.nn.Module | None:
    for name, module in model.named_modules():
        if name.endswith("rotary_emb"):  # not "rotary_emb_local" (older Gemma 3: sliding layers)
            return module
    return None
