"""Reference queries: the queries the future is expected to ask of a span.

- repeat-prefill: the model reads "Repeat the previous context." and the span again on top
  of (a view of) the cache; the queries of that pass are kept (cheap, the default);
- self-study: the model writes a few tokens after the span and the queries of that
  generation are kept (slower, closer to what decoding asks);
- recent: queries the caller captured during the latest decode steps (free online);
- on-policy: compaction happens layer by layer inside the repeat-prefill pass, so layer l's
  queries already see layers < l compacted (see `compaction.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from . import hf

REPEAT_PROMPT = "\n\nRepeat the previous context.\n\n"
SELF_STUDY_PROMPT = "\n\nKey facts from the text above:\n"
# Repeat-prefill runs in pieces of this many tokens: each piece attends to the cache and
# the pieces before it, so the causal upper half of the repeat is never computed (about
# 1.6 T^2 instead of 2 T^2 attention scores for a T-token span on a T-token cache).
REPEAT_CHUNK = 512
REPEAT_PIECE = 256  # tokens per piece when a capped repeat pass is spread over a long span
LOCAL_CHUNK = 2048  # tokens re-read at a time by a local repeat (`local_repeat`)


def repeat_pieces(start: int, end: int, budget: int | None, piece: int = REPEAT_PIECE) -> list[tuple[int, int]]:
    """Token ranges the repeat pass re-reads of span [start, end), at most `budget` tokens.

    The whole span when it fits; else pieces of `piece` tokens spread evenly from its start
    to its end (the last ends at `end`), so that every part of a long span, its oldest
    facts too, is asked about. (Only the span's newest `budget` tokens, as before, left a
    session's oldest turns unasked at every re-compaction.)
    """
    if budget is None or end - start <= budget:
        return [(start, end)]
    piece = max(1, min(piece, budget // 2))  # at least the oldest piece and the newest
    count = budget // piece
    if count == 1:
        return [(end - budget, end)]
    stride = (end - start - piece) / (count - 1)
    return [(start + round(i * stride), start + round(i * stride) + piece) for i in range(count)]


def prompt_ids(tokenizer, text: str, device: torch.device) -> torch.Tensor:
    """Token ids of an instruction without special tokens: (1, n) long; empty without a tokenizer."""
    if tokenizer is None:
        return torch.zeros(1, 0, dtype=torch.long, device=device)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    return ids.to(device)


QUERY_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def fast_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 where this device multiplies it faster than float32 (a CUDA GPU with bf16,
    a CPU with AMX tiles or AVX512-BF16); None elsewhere (an older CPU runs bf16 slower)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        # private probes (torch 2.x); a torch without them gets the model's dtype
        probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
        return torch.bfloat16 if any(probe is not None and probe() for probe in probes) else None
    return None


def resolve_query_dtype(name: str | None, model: torch.nn.Module) -> torch.dtype | None:
    """The dtype reference-query passes run in (`Options.query_dtype`): None keeps the model's own."""
    if name is None:
        return None
    param = next(model.parameters())
    dtype = fast_dtype(param.device) if name == "auto" else QUERY_DTYPES[name]
    return None if dtype is None or dtype == param.dtype else dtype


def precision(model: torch.nn.Module, dtype: torch.dtype | None):
    """A context in which the model's matrix products run in `dtype` (autocast), or as they are."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=dtype)


@torch.no_grad()
def forward_pass(
    model: torch.nn.Module,
    cache: hf.CompactedCache,
    ids: torch.Tensor,
    *,
    layers: set[int],
    transform: Callable | None = None,
    chunk: int | None = None,
    normalisers: bool = False,
    dtype: torch.dtype | None = None,
) -> hf.QueryCapture:
    """Run `ids` on top of `cache` (which grows) and return the queries each layer saw.

    With `chunk`, the ids go in pieces of that many tokens (same queries, less attention
    work). A `transform` needs the whole pass in one call, so it ignores `chunk`. With
    `normalisers`, each query's log-sum-exp over all it saw is kept too (`capture.lse`).
    With `dtype`, the pass runs under autocast to it (the queries come back as float32):
    reference queries are samples of what the future may ask, and bfloat16 asks nearly the
    same at a fraction of the time where the hardware multiplies it natively.
    """
    pieces = ids.split(chunk, dim=1) if chunk and transform is None else (ids,)
    with hf.capture_queries(layers=layers, transform=transform, normalisers=normalisers) as capture, \
            precision(model, dtype):
        for piece in pieces:
            model(input_ids=piece, past_key_values=cache, use_cache=True, **hf.last_logits_only(model))
    return capture


class UncuttableCache(ValueError):
    """A local repeat cannot cut the cache where a stretch ends (`local_repeat`)."""


@torch.no_grad()
def local_repeat(
    model: torch.nn.Module,
    cache: hf.CompactedCache,
    input_ids: torch.Tensor,
    pieces: list[tuple[int, int]],
    prompt: torch.Tensor,
    *,
    layers: set[int],
    normalisers: bool = False,
    dtype: torch.dtype | None = None,
    chunk: int = LOCAL_CHUNK,
) -> hf.QueryCapture:
    """Repeat-prefill, each stretch of at most `chunk` tokens of the span re-read right after itself.

    The `pieces` are grouped into stretches (`local_groups`); a stretch's pieces are read as
    `prompt` + their tokens on top of the cache cut at the stretch's end (in `REPEAT_CHUNK`-
    token calls, as `forward_pass`), so a repeated token asks for its original from at most
    about `chunk` tokens away. A whole-span repeat after the cache asks from a whole cache
    away, and past a model's trained context (SmolLM2's 8k) its queries no longer find the
    span. `cache` is not modified.

    Raises:
        UncuttableCache: the cache cannot be cut at a stretch's end (a sliding-window layer
            that no longer holds that window); raised before the model runs.
    """
    last = hf.last_logits_only(model)
    stretches = []
    for cut, parts in local_groups(cache, pieces, chunk):
        try:
            view = hf.crop_cache(cache, cut, model)  # shares the cache's tensors
        except ValueError as exc:
            raise UncuttableCache(str(exc)) from exc
        stretches.append((view, torch.cat([prompt] + [input_ids[:, a:b] for a, b in parts], dim=1)))
    with hf.capture_queries(layers=layers, normalisers=normalisers) as capture, precision(model, dtype):
        for view, ids in stretches:
            for piece in ids.split(REPEAT_CHUNK, dim=1):
                model(input_ids=piece, past_key_values=view, use_cache=True, **last)
    return capture


def local_groups(cache: hf.CompactedCache, pieces: list[tuple[int, int]], chunk: int
                 ) -> list[tuple[int, list[tuple[int, int]]]]:
    """(cut, pieces) per stretch: `pieces` in order, a longer one split, grouped so that each group
    spans at most `chunk` tokens from its first piece's start to `cut`, its last piece's end.

    An end that would fall inside an earlier compacted run moves to the run's end (the
    cache can only be cut between runs), so such a group may span more.
    """
    parts = []
    for a, b in pieces:
        while a < b:
            _, end = hf.snap_span(cache, min(b, a + chunk), min(b, a + chunk))
            parts.append((a, end))
            a = end
    groups: list[list[tuple[int, int]]] = []
    for a, b in parts:
        if groups and b - groups[-1][0][0] <= chunk:
            groups[-1].append((a, b))
        else:
            groups.append([(a, b)])
    return [(group[-1][1], group) for group in groups]


@torch.no_grad()
def self_study(
    model: torch.nn.Module,
    cache: hf.CompactedCache,
    *,
    layers: set[int],
    tokens: int,
    prompt: torch.Tensor,
    batch_size: int,
    normalisers: bool = False,
    dtype: torch.dtype | None = None,
) -> hf.QueryCapture:
    """Greedy-generate `tokens` tokens after `prompt` on top of `cache`; keep their queries
    (and their log-sum-exps with `normalisers`; `dtype` as in `forward_pass`)."""
    device = next(model.parameters()).device
    if prompt.shape[-1] == 0:
        # No tokenizer: continue the text itself (the model's own next tokens).
        prompt = torch.zeros(1, 0, dtype=torch.long, device=device)
    last = hf.last_logits_only(model)
    with hf.capture_queries(layers=layers, normalisers=normalisers) as capture, precision(model, dtype):
        step = prompt.expand(batch_size, -1) if prompt.shape[-1] else None
        logits = None
        if step is not None:
            logits = model(input_ids=step, past_key_values=cache, use_cache=True, **last).logits
        for _ in range(tokens):
            if logits is None:
                break
            step = logits[:, -1:].argmax(-1)
            logits = model(input_ids=step, past_key_values=cache, use_cache=True).logits
    return capture


def with_normaliser(queries: torch.Tensor, lse: torch.Tensor | None) -> torch.Tensor:
    """(..., n, D) queries and their (..., n) log-sum-exps -> (..., n, D + 1), the log-sum-exp last.

    Grouping and subsampling pick whole rows, so a query's normaliser rides along with it
    as a last column (`split_normaliser` takes it off again). NaN marks an unknown one.
    """
    if lse is None:
        lse = queries.new_full(queries.shape[:-1], float("nan"))
    return torch.cat([queries, lse.to(queries.dtype).unsqueeze(-1)], dim=-1)


def split_normaliser(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`with_normaliser`'s inverse: (G, n, D + 1) -> queries (G, n, D), log-sum-exps (G, n)."""
    return rows[..., :-1], rows[..., -1]


def group_queries(queries: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """(B, H_q, n, D) -> (B * H_kv, r * n, D): the r query heads of a KV head pool their queries."""
    B, Hq, n, D = queries.shape
    r = Hq // num_kv_heads
    return queries.reshape(B, num_kv_heads, r, n, D).reshape(B * num_kv_heads, r * n, D)


def subsample(queries: torch.Tensor, limit: int, generator: torch.Generator) -> torch.Tensor:
    """Keep at most `limit` queries per head (the same random rows for all heads): (G, <=limit, D)."""
    n = queries.shape[1]
    if n <= limit:
        return queries
    keep = torch.randperm(n, generator=generator)[:limit].sort().values.to(queries.device)
    return queries[:, keep]


def spread(queries: torch.Tensor, limit: int, generator: torch.Generator, positions: int) -> torch.Tensor:
    """Keep at most `limit` rows of grouped queries (G, r * positions, D), covering positions evenly.

    The rows are r query heads x `positions` token positions (`group_queries`' layout).
    Rounds of one randomly chosen head per position are taken until `limit` is reached, so
    every position of the span asks its question once before any asks twice; a random
    sample would leave about a third of the positions unasked at r = 3 and limit = n.
    """
    total = queries.shape[1]
    if total <= limit or positions <= 0 or total % positions:
        return subsample(queries, limit, generator)
    heads = total // positions
    order = torch.rand(positions, heads, generator=generator).argsort(dim=1)  # per position: heads in random order
    rows = order * positions + torch.arange(positions).unsqueeze(1)  # (positions, heads) row indices
    rounds = rows.T[:, torch.randperm(positions, generator=generator)].reshape(-1)  # round 0 covers every position
    keep = rounds[:limit].sort().values.to(queries.device)
    return queries[:, keep]


def combine(repeat: torch.Tensor | None, extras: list[torch.Tensor], limit: int,
            generator: torch.Generator, *, positions: int = 0) -> torch.Tensor:
    """At most `limit` fitting queries per head from the repeat pass and the extras, (G, n, D).

    The extras (recent decode queries, self-study) are few and closest to what the model
    will ask next, so they are kept whole up to half the limit; the repeat pass's many
    queries fill the rest, spread over its `positions` token positions when given.
    """
    extra = torch.cat(extras, dim=1) if extras else None
    if extra is not None:
        extra = subsample(extra, limit if repeat is None else max(1, limit // 2), generator)
    if repeat is None:
        return extra
    rows = limit if extra is None else limit - extra.shape[1]
    sampled = spread(repeat, rows, generator, positions) if positions else subsample(repeat, rows, generator)
    return sampled if extra is None else torch.cat([sampled, extra], dim=1)
