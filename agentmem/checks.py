"""The checks `compact()` makes before it changes anything: arguments, options, the cache.

Each raises `ConfigError` (or `ModelMismatchError`, `UnsupportedModelError`) with a message
that says what to pass instead; `finite` is the one check made after the fit.
"""

from __future__ import annotations

import logging
import numbers
import os

import torch

from . import hf, queries
from .captured import REFERENCE_MODES, QuerySample
from .errors import CompactionError, ConfigError, ModelMismatchError, UnsupportedModelError

log = logging.getLogger("agentmem.compaction")


def cap_ratio(ratio: float, spans: dict[int, tuple[int, int]], stats: dict) -> float:
    """Cap `ratio` at the span's widest layer: past it, every head already keeps one slot."""
    slots = max(b - a for a, b in spans.values())
    if ratio <= max(1, slots):
        return ratio
    capped = float(max(1, slots))
    log.info("ratio x%.3g is above the span's %d slots per head: capped at x%.3g (one slot per head)",
             ratio, slots, capped)
    stats["requested_ratio"] = ratio
    return capped


def index(name: str, value) -> int:
    """A token index: a Python (or numpy) int, not a bool, float or tensor."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an int token index, got {value!r} ({type(value).__name__}); "
                          f"pass int({name})")
    return int(value)


def check_model(model, view: hf.CompactedCache) -> list[int]:
    config = hf.text_config(model)
    layers = view.full_layers()
    if len(view.layers) != config.num_hidden_layers:
        raise ModelMismatchError(
            f"the cache has {len(view.layers)} layers but the model has {config.num_hidden_layers}; "
            "pass the model that produced the cache"
        )
    sliding = hf.sliding_layers(model)
    layers = [i for i in layers if i not in sliding and view.layers[i].physical_length > 0]
    if not layers:
        raise ConfigError("the cache holds no tokens in a full-attention layer; run the model on some input first")
    geometry = hf.kv_geometry(model)
    kv_heads, head_dim = geometry.kv_heads, geometry.head_dim
    for i in layers:
        shape = view.layers[i].keys.shape
        if shape[1] != kv_heads or shape[-1] != head_dim:
            raise ModelMismatchError(
                f"cache layer {i} has {shape[1]} KV heads of size {shape[-1]}, the model {kv_heads} of size "
                f"{head_dim}; pass the model that produced the cache"
            )
    if view.layers[layers[0]].keys.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise UnsupportedModelError(f"unsupported cache dtype {view.layers[layers[0]].keys.dtype}")
    return layers


def check_span(input_ids: torch.Tensor, length: int, start: int, end: int) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ConfigError("input_ids must be a (batch, tokens) tensor of the ids that produced the cache")
    if input_ids.shape[-1] != length:
        raise ConfigError(
            f"input_ids has {input_ids.shape[-1]} tokens but the cache holds {length}; pass the ids of every "
            "cached token (prompt and generated)"
        )
    if not (0 <= start < end <= length):
        raise ConfigError(f"span [{start}, {end}) is empty or outside the {length} cached tokens")


def check_ids(input_ids: torch.Tensor, model, batch: int) -> None:
    """Integer ids the model's embedding can look up, one row per cached sequence."""
    if input_ids.dtype == torch.bool or input_ids.is_floating_point() or input_ids.is_complex():
        raise ConfigError(f"input_ids must hold integer token ids (torch.long), got dtype {input_ids.dtype}; "
                          "pass the ids the tokenizer returned")
    if input_ids.shape[0] != batch:
        raise ConfigError(f"input_ids has {input_ids.shape[0]} rows but the cache holds {batch} sequences; pass "
                          "one row of ids per cached sequence")
    vocab = vocab_size(model)
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab:
        bad = low if low < 0 else high
        raise ConfigError(f"input_ids holds token id {bad}, outside the model's vocabulary [0, {vocab}); pass the "
                          "ids this model's tokenizer produced")


def vocab_size(model) -> int:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    size = getattr(embeddings, "num_embeddings", None)
    return int(size) if size is not None else int(hf.text_config(model).vocab_size)


def check_options(opts, model, view: hf.CompactedCache, layers: list[int]) -> None:
    """Types and ranges of the `compact` options (they would fail deep inside the algebra)."""
    def whole(name, value, low, *, optional=False):
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            none = " or None" if optional else ""
            raise ConfigError(f"{name} must be an int >= {low}{none}, got {value!r}")

    if isinstance(opts.seed, bool) or not isinstance(opts.seed, numbers.Integral) or not -(2**63) <= opts.seed < 2**64:
        raise ConfigError(f"seed must be an int (a torch generator seed, e.g. 0), got {opts.seed!r}")
    whole("max_queries", opts.max_queries, 1, optional=True)
    whole("max_repeat_tokens", opts.max_repeat_tokens, 1, optional=True)
    whole("self_study_tokens", opts.self_study_tokens, 0, optional=True)
    if opts.repeat_mode not in ("auto", "whole", "local"):
        raise ConfigError(f"repeat_mode must be 'auto', 'whole' (the span re-read after the cache) or 'local' (each "
                          f"stretch re-read right after itself), got {opts.repeat_mode!r}")
    if opts.on_policy is not None and not isinstance(opts.on_policy, bool):
        raise ConfigError(f"on_policy must be True, False or None (the method's default), got {opts.on_policy!r}")
    if not isinstance(opts.stats, dict):
        raise ConfigError(f"stats must be a dict (it receives the seconds taken), got {type(opts.stats).__name__}")
    budgets = opts.head_budgets
    if budgets is not None and not isinstance(budgets, (str, os.PathLike, dict)):
        raise ConfigError(f"head_budgets must be 'auto', 'uniform', None, a dict {{'L{{layer}}H{{head}}': share}} or "
                          f"a profile JSON path, got {budgets!r}")
    if opts.query_dtype is not None and opts.query_dtype not in ("auto", *queries.QUERY_DTYPES):
        named = ", ".join(map(repr, queries.QUERY_DTYPES))
        raise ConfigError(f"query_dtype must be None (the model's), 'auto' or one of {named}, got {opts.query_dtype!r}")
    check_tokenizer(opts.tokenizer, vocab_size(model))
    check_recent_queries(opts.recent_queries, model, view, layers)
    check_captured(opts, model, view, layers)


def check_tokenizer(tokenizer, vocab: int) -> None:
    """The model's HF tokenizer: called as tokenizer(text, add_special_tokens=False, return_tensors="pt")."""
    if tokenizer is None:
        return
    expected = ("tokenizer must be the model's Hugging Face tokenizer (or None to skip the instruction "
                "prompts), got")
    if not callable(tokenizer):
        raise ConfigError(f"{expected} {tokenizer!r}")
    try:
        ids = queries.prompt_ids(tokenizer, queries.REPEAT_PROMPT, torch.device("cpu"))
    except Exception as exc:  # whatever the object is, it cannot tokenize
        raise ConfigError(f"{expected} {type(tokenizer).__name__}, which failed to tokenize a prompt: {exc}") from exc
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
        raise ConfigError(f"{expected} {type(tokenizer).__name__}, which returned no (1, n) id tensor")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ConfigError(f"the tokenizer produced token id {int(ids.max())}, outside the model's vocabulary "
                          f"[0, {vocab}); pass this model's own tokenizer")


def check_recent_queries(recent, model, view: hf.CompactedCache, layers: list[int]) -> None:
    """recent_queries: {layer: (B, H_q, n, D) float tensor} for layers of this model."""
    if recent is None:
        return
    config = hf.text_config(model)
    first = view.layers[layers[0]].keys  # (B, H_kv, T, D)
    shape = f"(batch {first.shape[0]}, {config.num_attention_heads} query heads, n, {first.shape[-1]})"
    what = f"recent_queries must be a dict {{layer index: tensor {shape}}}"
    if not isinstance(recent, dict):
        raise ConfigError(f"{what}, got {type(recent).__name__}")
    for idx, q in recent.items():
        if isinstance(idx, bool) or not isinstance(idx, numbers.Integral) or not 0 <= idx < len(view.layers):
            raise ConfigError(f"{what}; {idx!r} is not a layer index in [0, {len(view.layers)})")
        if not isinstance(q, torch.Tensor) or not q.is_floating_point() or q.dim() != 4:
            got = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
            raise ConfigError(f"{what}; layer {idx} has {got}")
        if idx not in layers:
            continue  # a sliding or empty layer: not compacted, its queries are not used
        keys = view.layers[idx].keys
        want = (keys.shape[0], config.num_attention_heads, keys.shape[-1])
        if (q.shape[0], q.shape[1], q.shape[3]) != want:
            raise ConfigError(f"{what}; layer {idx} has shape {tuple(q.shape)}")
        if not bool(torch.isfinite(q).all()):
            raise ConfigError(f"recent_queries of layer {idx} hold NaN or inf; capture them again")


def check_captured(opts, model, view: hf.CompactedCache, layers: list[int]) -> None:
    """`captured` is a `QuerySample` of this model's queries; `reference` names a source that exists."""
    if opts.reference is not None and opts.reference not in REFERENCE_MODES:
        raise ConfigError(f"reference must be one of {', '.join(REFERENCE_MODES)} or None, got {opts.reference!r}")
    sample = opts.captured
    if sample is None:
        if opts.reference in ("captured", "both"):
            raise ConfigError(f"reference={opts.reference!r} needs captured=QuerySample(...) holding the session's "
                              "queries; pass one or use reference='repeat'")
        return
    if not isinstance(sample, QuerySample):
        raise ConfigError(f"captured must be an agentmem.captured.QuerySample, got {type(sample).__name__}")
    config = hf.text_config(model)
    missing = [idx for idx in layers if idx not in sample.queries]
    if missing and len(sample):
        raise ConfigError(f"the captured query sample has no queries for layer(s) {missing}; it was kept for "
                          "another model or set of layers. Capture it with this model")
    for idx in layers:
        q = sample.queries.get(idx)
        keys = view.layers[idx].keys
        if q is not None and (q.shape[0], q.shape[1], q.shape[3]) != (keys.shape[0], config.num_attention_heads,
                                                                      keys.shape[-1]):
            raise ConfigError(f"captured queries of layer {idx} have shape {tuple(q.shape)}, this model asks "
                              f"(batch {keys.shape[0]}, {config.num_attention_heads} heads, n, {keys.shape[-1]}); "
                              "capture them with this model")


def check_input_finite(view: hf.CompactedCache, layers: list[int]) -> None:
    """NaN or inf anywhere in a compacted layer reaches the solvers (MKL errors, internal asserts).

    The whole layer, not only the span: the repeat pass attends to all of it.
    """
    for idx in layers:
        layer = view.layers[idx]
        ok = torch.isfinite(layer.keys).all() & torch.isfinite(layer.values).all()
        ok &= ~(torch.isnan(layer.bias).any() | torch.isposinf(layer.bias).any())  # -inf bias marks padding
        if not bool(ok):
            raise ConfigError(
                f"the input cache is not finite: layer {idx} holds NaN or inf keys or values; it was left "
                "untouched. Recompute the cache (in fp32 or bf16 if fp16 overflowed) before compacting"
            )


def check_finite(result: hf.CompactedCache, layers: list[int]) -> None:
    for idx in layers:
        layer = result.layers[idx]
        ok = torch.isfinite(layer.keys).all() and torch.isfinite(layer.values).all()
        ok = ok and not torch.isnan(layer.bias).any() and not torch.isposinf(layer.bias).any()
        if not bool(ok):
            raise CompactionError(
                f"compaction of layer {idx} produced non-finite numbers; the input cache is unchanged. Try a "
                "smaller ratio, method='am-fast', or fp32"
            )
