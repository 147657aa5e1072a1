"""`agentmem compact`: prefill real text, compact it, and continue from the compacted cache."""

from __future__ import annotations

import argparse
import time

from .common import Activity, add_method, add_model, add_ratio, load, positive_int

# Compaction seconds over the same span's prefill seconds, for the ETA shown while `compact`
# runs (compaction reports no progress of its own). Measured with this command on SmolLM2,
# 1024 tokens, x10, one thread on a shared 2-core CPU: am 2.3, am-fast 1.9, am-omp-fast 4.6,
# kvzip 2.0, h2o 1.1; am-omp (self-study, on-policy) is a guess above that. Longer spans cost more
# per token (attention over the span grows with its square), so the ETA is a rough guide.
PREFILLS = {"am": 2.5, "am-fast": 2.0, "am-omp": 6.0, "am-omp-fast": 4.5, "kvzip": 2.0, "h2o": 1.2,
            "truncate": 0.0, "streaming": 0.0, "snapkv": 0.1}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `compact`."""
    demo = sub.add_parser(
        "compact", help="prefill real text, compact it, and continue from the compacted cache",
        description="Prefill part of the Python language reference, compact the cache with Attention Matching "
                    "(or another method), and greedily continue the same prompt from the full and the compacted "
                    "cache, side by side, with the sizes and times of both.")
    add_model(demo)
    add_ratio(demo, 10)
    add_method(demo)
    demo.add_argument("--context", type=positive_int, default=1024, help="tokens of context (default 1024)")
    demo.add_argument("--max-new-tokens", type=positive_int, default=40, help="tokens to continue (default 40)")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`agentmem compact`."""
    import torch

    from .. import compact, hf
    from ..bench.compaction import reference_text

    model, tokenizer = load(args.model)
    hf.enable(model)
    ids = tokenizer(reference_text(), add_special_tokens=False, return_tensors="pt").input_ids[:, : args.context]
    cache = hf.new_cache(model)
    began = time.perf_counter()
    with torch.no_grad(), Activity(f"prefilling {ids.shape[1]} tokens"):
        model(input_ids=ids, past_key_values=cache)
    prefill = time.perf_counter() - began
    full = hf.CompactedCache.from_cache(cache, scalings=hf.attention_scalings(model))
    stats: dict = {}
    expected = PREFILLS.get(args.method, 2.5) * prefill
    with Activity(f"compacting with {args.method} x{args.ratio:g}", expected=expected):
        small = compact(model, cache, ids, ratio=args.ratio, method=args.method, tokenizer=tokenizer, stats=stats)
    print(f"context: {ids.shape[1]} tokens of the Python language reference, prefilled in {prefill:.1f}s")
    print(f"compacted with {args.method} x{args.ratio:g} in {stats['seconds']:.1f}s: "
          f"{full.physical_length()} -> {small.physical_length()} slots per layer (mean), "
          f"{full.nbytes() / 2**20:.1f} MB -> {small.nbytes() / 2**20:.2f} MB")
    prompt = tokenizer("\n\nIn short, the text above explains", add_special_tokens=False,
                       return_tensors="pt").input_ids
    for name, c in (("full cache", full), (f"{args.method} x{args.ratio:g}", small)):
        with Activity(f"generating from the {name}"):
            out = model.generate(torch.cat([ids, prompt], 1), past_key_values=c.copy(),
                                 max_new_tokens=args.max_new_tokens, do_sample=False)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        print(f"\n[{name}] {text.strip()}")
    return 0
