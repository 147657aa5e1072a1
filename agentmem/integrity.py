"""Checks that a stored session is consistent before a `Session` is rebuilt from it.

A blob whose sha256 matches can still hold values the engine must not run on: NaN
tensors, token ids outside the vocabulary, segments that point past the messages, a
checkpoint missing a layer. Each would surface later as a raw `IndexError`, a PyTorch
assert or silently wrong logits. `check_session` and `rebuild_cache` turn every such
defect into one `CorruptSessionError` that names the session and what to do; nothing in
the store is changed by a failed check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from . import hf
from .captured import QuerySample
from .errors import CorruptSessionError
from .segments import ROLES

CACHE_KINDS = ("compacted", "sliding", "dynamic")
REPAIR = ("export what is readable with `agentmem sessions export`, then delete the session, or drop its "
          "checkpoint (Store.drop_checkpoints) if only the KV cache is damaged")


def corrupt(session_id: str, problem: str) -> CorruptSessionError:
    return CorruptSessionError(f"session {session_id!r}: {problem}; other sessions are unaffected. {REPAIR}")


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_session(loaded, vocab_size: int | None) -> tuple[list[int], int]:
    """Validate a `LoadedSession`'s messages, segments and state; return (ids, cached).

    Raises:
        CorruptSessionError: the first inconsistency found.
    """
    sid = loaded.id
    ids: list[int] = []
    for position, message in enumerate(loaded.messages):
        if message.get("index") != position:
            raise corrupt(sid, f"message {position} is stored with index {message.get('index')!r} (a gap or "
                               f"a duplicate)")
        if message.get("role") not in ROLES:
            raise corrupt(sid, f"message {position} has the unknown role {message.get('role')!r}")
        tokens = message.get("token_ids")
        if not isinstance(tokens, list) or not all(_int(t) for t in tokens):
            raise corrupt(sid, f"message {position}'s token ids are not a list of integers")
        bad = [t for t in tokens if t < 0 or (vocab_size is not None and t >= vocab_size)]
        if bad:
            raise corrupt(sid, f"message {position} holds token id {bad[0]}, outside this model's vocabulary "
                               f"of {vocab_size}")
        segment = message.get("segment")
        if segment is not None and (not _int(segment) or not 0 <= segment < len(loaded.segments)):
            raise corrupt(sid, f"message {position} points at segment {segment!r}, which does not exist")
        ids.extend(tokens)
    end = 0
    for position, segment in enumerate(loaded.segments):
        fields = (segment.index, segment.start, segment.end, segment.compactions)
        if not all(_int(v) for v in fields) or segment.index != position:
            raise corrupt(sid, f"segment {position} has malformed fields {fields}")
        if not end <= segment.start <= segment.end <= len(ids):
            raise corrupt(sid, f"segment {position} spans tokens [{segment.start}, {segment.end}), which overlaps "
                               f"the segment before it or lies beyond the {len(ids)} tokens of the messages")
        if not isinstance(segment.messages, list) or not all(
                _int(m) and 0 <= m < len(loaded.messages) for m in segment.messages):
            raise corrupt(sid, f"segment {position} lists messages {segment.messages!r}, which do not exist")
        end = segment.end
    state = loaded.state if isinstance(loaded.state, Mapping) else None
    if state is None:
        raise corrupt(sid, f"its saved state is {type(loaded.state).__name__}, not a JSON object")
    cached, tokens = state.get("cached", 0), state.get("tokens", len(ids))
    for name, value in (("cached", cached), ("tokens", tokens), ("blocked_until", state.get("blocked_until", -1)),
                        ("last_compaction_turn", state.get("last_compaction_turn", -1))):
        if not _int(value):
            raise corrupt(sid, f"its saved state's {name!r} is {value!r}, not an integer")
    if tokens != len(ids) or not 0 <= cached <= len(ids):
        raise corrupt(sid, f"its messages hold {len(ids)} tokens but the saved state says {tokens} "
                           f"({cached} cached)")
    return ids, cached


def rebuild_cache(loaded, model, cached: int):
    """The cache of `loaded`'s checkpoint, checked against `model`; and the recent-query entries.

    Returns:
        (cache, queries): the rebuilt cache, and `{layer: (B, H_q, n, D)}` decode queries.

    Raises:
        CorruptSessionError: a missing or extra layer, an unknown kind, malformed meta,
            non-finite or misshapen tensors, or a length that disagrees with the state.
    """
    sid = loaded.id
    config = hf.text_config(model)
    n_layers = config.num_hidden_layers
    layers = [c for c in loaded.checkpoint if c.get("kind") not in ("queries", "captured")]
    if len(layers) != n_layers:
        raise corrupt(sid, f"its KV checkpoint has {len(layers)} layers, the model has {n_layers} (a layer row "
                           f"is missing or extra)")
    kv_heads = hf.kv_geometry(model).kv_heads
    for idx, layer in enumerate(layers):
        if layer.get("kind") not in CACHE_KINDS or not isinstance(layer.get("meta"), Mapping):
            raise corrupt(sid, f"KV checkpoint layer {idx} has kind {layer.get('kind')!r} and meta "
                               f"{type(layer.get('meta')).__name__} (expected one of {CACHE_KINDS} and an object)")
        for block in layer.get("blocks", []):
            for name, tensor in block.items():
                _check_tensor(sid, f"KV checkpoint layer {idx} {name}", tensor, kv_heads, bias=name == "bias")
    try:
        cache = hf.cache_from_state(layers, model)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise corrupt(sid, f"its KV checkpoint cannot be rebuilt ({type(exc).__name__}: {exc})") from exc
    if cache.get_seq_length() != cached:
        raise corrupt(sid, f"the KV checkpoint holds {cache.get_seq_length()} tokens, the state says {cached}")
    queries = {}
    for entry in loaded.checkpoint:
        if entry.get("kind") != "queries":
            continue
        layer = (entry.get("meta") or {}).get("layer")
        blocks = entry.get("blocks") or [{}]
        tensor = blocks[0].get("queries")
        if not _int(layer) or not 0 <= layer < n_layers or tensor is None:
            raise corrupt(sid, f"a stored recent-query entry names layer {layer!r} or has no tensor")
        _check_tensor(sid, f"recent queries of layer {layer}", tensor, None, bias=False)
        queries[layer] = tensor
    return cache, queries


def captured_sample(loaded, capacity: int, cached: int) -> QuerySample:
    """The captured query sample of `loaded`'s checkpoint (empty when it has none).

    Raises:
        CorruptSessionError: the stored sample is damaged or reaches past the cache.
    """
    entries = [c for c in loaded.checkpoint if c.get("kind") == "captured"]
    sample = QuerySample.from_state(entries, session=loaded.id, capacity=capacity)
    if len(sample) and int(sample.positions[-1]) >= cached:
        raise corrupt(loaded.id, f"its captured queries reach token {int(sample.positions[-1])}, the cache holds "
                                 f"{cached}")
    return sample


def _check_tensor(sid: str, what: str, tensor: object, kv_heads: int | None, *, bias: bool) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise corrupt(sid, f"{what} is not a tensor")
    if tensor.dim() != (3 if bias else 4):
        raise corrupt(sid, f"{what} has shape {tuple(tensor.shape)}, expected {3 if bias else 4} dimensions")
    if kv_heads is not None and tensor.shape[1] != kv_heads:
        raise corrupt(sid, f"{what} has {tensor.shape[1]} heads, the model has {kv_heads} KV heads")
    values = tensor.float()
    # bias may hold -inf (padding of a short head); nothing may be NaN or +inf.
    finite = ~torch.isnan(values) & (values != math.inf) if bias else torch.isfinite(values)
    if not bool(finite.all()):
        raise corrupt(sid, f"{what} holds NaN or infinite values")
