"""What agentmem reads from a transformers model: its config, attention modules, scalings,
sliding layers, the transformers version it was tested with, and a new cache for it."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
import transformers
from packaging.version import Version
from transformers.cache_utils import Cache

from ..errors import TransformersVersionError, UnsupportedModelError

TESTED_TRANSFORMERS = (Version("5.2.0"), Version("5.24.0"))  # [low, high)


def check_transformers_version() -> None:
    """Raise if the installed transformers is outside the tested range."""
    found = Version(transformers.__version__)
    low, high = TESTED_TRANSFORMERS
    if not (low <= Version(found.base_version) < high):
        raise TransformersVersionError(
            f"agentmem is tested with transformers >={low},<{high} but {found} is installed; "
            f"run: pip install 'transformers>={low},<{high}'"
        )


def text_config(model: torch.nn.Module):
    return model.config.get_text_config(decoder=True)


@dataclass(frozen=True)
class KVGeometry:
    """The shape of a model's KV cache, from its (text) config."""

    layers: int
    query_heads: int
    kv_heads: int
    head_dim: int


def kv_geometry(model: torch.nn.Module) -> KVGeometry:
    """Layers, query heads, KV heads and head size of `model` (GQA and explicit head_dim honoured)."""
    config = text_config(model)
    heads = config.num_attention_heads
    return KVGeometry(layers=config.num_hidden_layers, query_heads=heads,
                      kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                      head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads)


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


def full_attention_layers(model: torch.nn.Module) -> list[int]:
    """Indices of the layers that attend to the whole sequence (not a sliding window), in order."""
    sliding = sliding_layers(model)
    return [i for i in range(text_config(model).num_hidden_layers) if i not in sliding]


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
