"""The `agentmem` command: demo, bench compaction, profile-heads.

Errors agentmem raises on purpose print as one line (exit 2), not a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .errors import AgentmemError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentmem", description="Keep LLM agents inside a fixed KV-cache budget.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO lines (one per compaction)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="prefill real text, compact it, and continue from the compacted cache")
    demo.add_argument("--model", default="smollm2-135m", help="built-in name, HF id or local path")
    demo.add_argument("--ratio", type=float, default=10.0, help="compaction ratio (default 10)")
    demo.add_argument("--method", default="am-fast", help="compaction method (default am-fast)")
    demo.add_argument("--context", type=int, default=1024, help="tokens of context (default 1024)")
    demo.add_argument("--max-new-tokens", type=int, default=40)
    demo.set_defaults(func=_demo)

    bench = sub.add_parser("bench", help="benchmarks (programs that print a table and one JSON line)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    comp = bench_sub.add_parser("compaction", help="quality / speed / size of every method at several ratios")
    comp.add_argument("--model", default="smollm2-135m")
    comp.add_argument("--ratios", type=float, nargs="+", default=[5, 10, 20, 50])
    comp.add_argument("--methods", nargs="+", default=None, help="default: all methods")
    comp.add_argument("--context", type=int, default=3072, help="context tokens (default 3072)")
    comp.add_argument("--continuation", type=int, default=128, help="teacher-forced tokens (default 128)")
    comp.add_argument("--contexts", type=int, default=1, help="how many contexts to average (default 1)")
    comp.add_argument("--json", type=Path, default=None, help="write the full result here")
    comp.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to --json or ./)")
    comp.set_defaults(func=_bench_compaction)

    prof = sub.add_parser("profile-heads", help="measure per-head sensitivity and write a head-budget profile")
    prof.add_argument("--model", default="smollm2-135m")
    prof.add_argument("--ratio", type=float, default=10.0, help="ratio the profile is tuned at (default 10)")
    prof.add_argument("--context", type=int, default=1024)
    prof.add_argument("--continuation", type=int, default=64)
    prof.add_argument("--out", type=Path, default=None, help="JSON path (default: ./<model>.json)")
    prof.set_defaults(func=_profile_heads)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args) or 0
    except AgentmemError as exc:
        print(f"agentmem: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agentmem: interrupted", file=sys.stderr)
        return 130


def _load(name: str):
    from . import load_model

    began = time.perf_counter()
    model, tokenizer = load_model(name)
    print(f"loaded {name} in {time.perf_counter() - began:.1f}s", file=sys.stderr)
    return model, tokenizer


def _demo(args) -> int:
    import torch

    from . import compact, hf
    from .bench.compaction import reference_text

    model, tokenizer = _load(args.model)
    hf.enable(model)
    ids = tokenizer(reference_text(), add_special_tokens=False, return_tensors="pt").input_ids[:, : args.context]
    cache = hf.new_cache(model)
    began = time.perf_counter()
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache)
    prefill = time.perf_counter() - began
    full = hf.CompactedCache.from_cache(cache, scalings=hf.attention_scalings(model))
    stats: dict = {}
    small = compact(model, cache, ids, ratio=args.ratio, method=args.method, tokenizer=tokenizer, stats=stats)
    print(f"context: {ids.shape[1]} tokens of the Python language reference, prefilled in {prefill:.1f}s")
    print(f"compacted with {args.method} x{args.ratio:g} in {stats['seconds']:.1f}s: "
          f"{full.physical_length()} -> {small.physical_length()} slots per layer, "
          f"{full.nbytes() / 2**20:.1f} MB -> {small.nbytes() / 2**20:.2f} MB")
    prompt = tokenizer("\n\nIn short, the text above explains", add_special_tokens=False,
                       return_tensors="pt").input_ids
    for name, c in (("full cache", full), (f"{args.method} x{args.ratio:g}", small)):
        out = model.generate(torch.cat([ids, prompt], 1), past_key_values=c.copy(), max_new_tokens=args.max_new_tokens,
                             do_sample=False)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        print(f"\n[{name}] {text.strip()}")
    return 0


def _bench_compaction(args) -> int:
    from .bench import compaction as bench

    model, tokenizer = _load(args.model)
    result = bench.run(model, tokenizer, ratios=args.ratios, methods=args.methods or bench.DEFAULT_METHODS,
                       context=args.context, continuation=args.continuation, count=args.contexts,
                       progress=lambda s: print(s, file=sys.stderr, flush=True))
    result["summary"]["model"] = args.model
    print(bench.table(result))
    plot = args.plot or (args.json.with_suffix(".png") if args.json else Path(f"bench-compaction-{args.model}.png"))
    bench.plot(result, plot, f"{args.model}: {args.context}-token contexts")
    print(f"plot: {plot}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(bench.summary_line(result, args.model))
    return 0


def _profile_heads(args) -> int:
    from .bench import profile_heads

    model, tokenizer = _load(args.model)
    profile = profile_heads.run(model, tokenizer, ratio=args.ratio, context=args.context,
                                continuation=args.continuation, model_name=args.model,
                                progress=lambda s: print(s, file=sys.stderr, flush=True))
    out = args.out or Path(f"{args.model}.json")
    out.write_text(json.dumps(profile, indent=1))
    print(f"wrote {out}")
    print(json.dumps({"profile": str(out), "heads": len(profile["proportions"]), **profile["summary"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
