"""What the benchmarks of the compaction methods share.

The real text they run on (the Python Language Reference shipped with CPython as
`pydoc_data.topics`), the list of methods (agentmem's, plus kvpress's presses where
kvpress is installed), a timed prefill, one call that compacts a prefilled context with
any of those methods, and teacher-forced scoring of a continuation.
"""

from __future__ import annotations

import math
import time

import torch

from .. import hf
from ..captured import REFERENCE_MODES, QuerySample
from ..compaction import METHODS, compact
from ..errors import ConfigError
from . import kvpress_peers

# The text-summary baseline writes text with the model (slow, full-attention models only):
# benchmarks run it when asked by name.
DEFAULT_METHODS = [name for name, spec in METHODS.items() if not spec.summary]


def default_methods() -> list[str]:
    """agentmem's methods, plus kvpress's presses when kvpress is installed."""
    return DEFAULT_METHODS + ([] if kvpress_peers.unavailable() else list(kvpress_peers.PRESSES))


# Suffixes that set a `compact` option of how reference queries are gathered: METHOD:bf16 under
# bfloat16 autocast; METHOD:local with each stretch of the span repeated right after itself,
# METHOD:whole with the whole span repeated after the cache (the default "auto" picks one).
OPTION_SUFFIXES = {"bf16": ("query_dtype", "bfloat16"), "local": ("repeat_mode", "local"),
                   "whole": ("repeat_mode", "whole")}


def split_method(name: str) -> tuple[str, str | None]:
    """"am-fast:captured" -> ("am-fast", "captured"): a method and where its reference queries come from
    ("am-fast:captured:bf16" too; `suffix_options` reads the :bf16)."""
    method, *suffixes = name.split(":")
    references = [s for s in suffixes if s not in OPTION_SUFFIXES]
    return method, (references[0] if len(references) == 1 else ":".join(references) or None)


def suffix_options(name: str) -> dict:
    """"am-fast:local:bf16" -> {"repeat_mode": "local", "query_dtype": "bfloat16"}: the `compact`
    options a bench method name asks for."""
    return dict(OPTION_SUFFIXES[s] for s in name.split(":")[1:] if s in OPTION_SUFFIXES)


def check_methods(methods: list[str]) -> None:
    """Refuse unknown names, and kvpress names when kvpress is missing, before any work.

    An agentmem method may name its reference queries as METHOD:REFERENCE, with REFERENCE
    one of repeat, captured (the prefill's own queries) or both, and add :bf16 to gather
    them under bfloat16 autocast (`compact`'s query_dtype), and :local or :whole to choose how the
    span is repeated (`compact`'s repeat_mode).
    """
    known = list(METHODS) + list(kvpress_peers.PRESSES)
    unknown = []
    for name in methods:
        method, reference = split_method(name)
        asks = method in METHODS and METHODS[method].repeat_queries
        if method not in known or (reference is not None and (reference not in REFERENCE_MODES or not asks)) or (
                suffix_options(name) and not asks):
            unknown.append(name)
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(known)} (a method that "
                          f"asks reference queries may add :{'|:'.join(REFERENCE_MODES)}, :bf16 and :local|:whole)")
    if any(m in kvpress_peers.PRESSES for m in methods) and (why := kvpress_peers.unavailable()):
        raise ConfigError(why)


def method_order(methods) -> list[str]:
    """`methods` in the order tables and plots list them: agentmem's, then kvpress's."""
    order = DEFAULT_METHODS + list(kvpress_peers.PRESSES)

    def rank(name: str) -> tuple[int, str]:
        method, reference = split_method(name)
        return (order.index(method) if method in order else len(order), reference or "")

    return sorted(set(methods), key=rank)


def reference_text() -> str:
    """Real long English text that ships with CPython: the language reference topics."""
    from pydoc_data import topics

    return "\n\n".join(topics.topics[key] for key in sorted(topics.topics))


@torch.no_grad()
def prefill(model, ids: torch.Tensor, *, repeats: int = 2, capture: QuerySample | None = None):
    """Prefill `ids` into a new cache, `repeats` times; (cache, last logits (1, 1, V) fp32, fastest seconds).

    The fastest prefill is the denominator of every time ratio; the cache and logits are
    those of the last run. With `capture`, the last run also records its queries into it
    (as a session does when it prefills), so the fastest is usually an uncaptured run.
    """
    seconds = math.inf
    for run in range(repeats):
        cache = hf.new_cache(model)
        recording = capture is not None and run == repeats - 1
        began = time.perf_counter()
        with hf.capture_queries(layers=set(hf.full_attention_layers(model)) if recording else set()) as captured:
            out = model(input_ids=ids, past_key_values=cache, use_cache=True, **hf.last_logits_only(model))
        if recording:
            capture.add({idx: captured.stacked(idx) for idx in captured.queries}, 0)
        seconds = min(seconds, time.perf_counter() - began)
    return cache, out.logits[:, -1:].float(), seconds


def compact_with(
    model, tokenizer, method: str, ratio: float, cache, full: hf.CompactedCache, ids: torch.Tensor,
    *, prefill_seconds: float, end: int | None = None, captured: QuerySample | None = None,
    stats: dict | None = None,
) -> tuple[hf.CompactedCache, float]:
    """Compact tokens [0, end) of a prefilled context with `method`; (compacted cache, seconds).

    agentmem's methods call `compact` on `cache`. A kvpress press prunes while it prefills,
    so it prefills `ids[:, :end]` under the press (its seconds are the extra time over a
    plain prefill); the tokens after `end` are then prefilled on top of the pruned cache.
    Raises whatever a press raises (callers report an outside peer's failure).
    """
    name, reference = split_method(method)
    if name not in kvpress_peers.PRESSES:
        stats = {} if stats is None else stats  # compact's: seconds, and seconds per phase
        extra = suffix_options(method)
        if reference and reference != "repeat":
            extra.update(captured=captured, reference=reference)
        comp = compact(model, cache, ids, ratio=ratio, method=name, end=end, tokenizer=tokenizer, stats=stats,
                       **extra)
        return comp, stats["seconds"]
    length = ids.shape[1]
    end = length if end is None else end
    if end == length:
        comp, pressed = kvpress_peers.press_cache(model, tokenizer, method, ratio, ids, full)
        return comp, max(0.0, pressed - prefill_seconds)
    head, _, plain = prefill(model, ids[:, :end], repeats=1)
    comp, pressed = kvpress_peers.press_cache(
        model, tokenizer, method, ratio, ids[:, :end],
        hf.CompactedCache.from_cache(head, scalings=hf.attention_scalings(model)))
    with torch.no_grad():
        model(input_ids=ids[:, end:], past_key_values=comp, use_cache=True, **hf.last_logits_only(model))
    return comp, max(0.0, pressed - plain)


@torch.no_grad()
def teacher_force(model, cache, ids_cont: torch.Tensor, last_logits: torch.Tensor, layers: set[int]):
    """Log-probs of the continuation on top of `cache` (a copy is used) and the queries seen."""
    cache = cache.copy() if hasattr(cache, "copy") else cache
    with hf.capture_queries(layers=layers) as capture:
        logits = model(input_ids=ids_cont[:, :-1], past_key_values=cache, use_cache=True).logits
    logits = torch.cat([last_logits, logits], dim=1).float()
    return logits.log_softmax(-1), capture


def nll(logprobs: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean negative log-likelihood of `ids` (B, n) under `logprobs` (B, n, V)."""
    return float(-logprobs.gather(-1, ids.unsqueeze(-1)).mean())


def kl(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Mean KL(ref || out) over positions, both log-probs (B, n, V)."""
    return float((ref.exp() * (ref - out)).sum(-1).mean())
