"""The `agentmem` command: demo, bench compaction, scenario aime, profile-heads.

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
    parser.add_argument("--low-memory", action="store_true",
                        help="return freed tensor memory to the OS (glibc): flat RSS over long sessions, ~35%% "
                             "slower turns in the soak benchmark")
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

    over = bench_sub.add_parser("engine", help="decode tokens/s of the engine vs plain model.generate")
    over.add_argument("--model", default="smollm2-135m")
    over.add_argument("--prompt-tokens", type=int, default=512)
    over.add_argument("--new-tokens", type=int, default=128)
    over.add_argument("--repeats", type=int, default=3)
    over.add_argument("--json", type=Path, default=None)
    over.set_defaults(func=_bench_engine)

    soak = bench_sub.add_parser("soak", help="hundreds of scripted tool turns under a KV limit, all in SQLite")
    soak.add_argument("--model", default="smollm2-135m")
    soak.add_argument("--turns", type=int, default=500)
    soak.add_argument("--limit", type=int, default=2048, help="physical KV slots (default 2048)")
    soak.add_argument("--ratio", type=float, default=5.0)
    soak.add_argument("--method", default="am-fast")
    soak.add_argument("--reply-tokens", type=int, default=8, help="generated tokens per turn (default 8)")
    soak.add_argument("--db", type=Path, default=Path("agentmem-soak.db"))
    soak.add_argument("--json", type=Path, default=None)
    soak.set_defaults(func=_bench_soak)

    rec = bench_sub.add_parser("recall", help="facts from early turns asked after 1, 3 and 6 compactions")
    rec.add_argument("--model", default="smollm2-135m")
    rec.add_argument("--limit", type=int, default=2048)
    rec.add_argument("--ratio", type=float, default=5.0)
    rec.add_argument("--method", default="am-fast")
    rec.add_argument("--checkpoints", type=int, nargs="+", default=[1, 3, 6])
    rec.add_argument("--json", type=Path, default=None)
    rec.set_defaults(func=_bench_recall)

    scen = sub.add_parser("scenario", help="end-to-end scenarios of the memory engine")
    scen_sub = scen.add_subparsers(dest="scenario", required=True)
    aime = scen_sub.add_parser(
        "aime", help="long step-by-step reasoning under a physical KV limit vs the same model without one",
        description="Each problem is decoded twice with the same seed: with a physical KV limit (compacting "
        "everything but the prompt and the most recent tokens each time the limit is reached) and without one. "
        "Prints a table, writes a plot of logical vs physical KV, ends with one JSON line.")
    aime.add_argument("--model", default="smollm2-135m")
    aime.add_argument("--limit", type=int, default=2048, help="physical KV slots (default 2048)")
    aime.add_argument("--ratio", type=float, default=5.0, help="compaction ratio per round (default 5)")
    aime.add_argument("--rounds", type=int, default=8, help="most compactions per problem (default 8)")
    aime.add_argument("--problems", type=int, default=4, help="how many problems (default 4)")
    aime.add_argument("--problems-file", type=Path, default=None,
                      help="JSONL with question/answer per line (e.g. a real AIME set); default: built-in problems")
    aime.add_argument("--max-new-tokens", type=int, default=None,
                      help="default: enough to refill the limit --rounds times")
    aime.add_argument("--method", default="am-fast", help="compaction method (default am-fast)")
    aime.add_argument("--protect-recent", type=int, default=64, help="recent tokens never compacted (default 64)")
    aime.add_argument("--pin-question", action="store_true",
                      help="keep the question verbatim (default: only the system prompt and recent tokens are kept)")
    aime.add_argument("--min-new-tokens", type=int, default=0,
                      help="suppress the end of turn before this many tokens, to force long generations (default 0)")
    aime.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    aime.add_argument("--seed", type=int, default=0)
    aime.add_argument("--json", type=Path, default=None, help="write the full result here")
    aime.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to --json or ./)")
    aime.set_defaults(func=_scenario_aime)

    prof = sub.add_parser("profile-heads", help="measure per-head sensitivity and write a head-budget profile")
    prof.add_argument("--model", default="smollm2-135m")
    prof.add_argument("--ratio", type=float, default=10.0, help="ratio the profile is tuned at (default 10)")
    prof.add_argument("--context", type=int, default=1024)
    prof.add_argument("--continuation", type=int, default=64)
    prof.add_argument("--out", type=Path, default=None, help="JSON path (default: ./<model>.json)")
    prof.set_defaults(func=_profile_heads)

    args = parser.parse_args(argv)
    if args.low_memory:
        _tame_allocator()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args) or 0
    except AgentmemError as exc:
        print(f"agentmem: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agentmem: interrupted", file=sys.stderr)
        return 130


def _tame_allocator() -> None:
    """Return freed tensor memory to the OS (glibc): long sessions otherwise fragment the heap.

    The same as MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=65536; a no-op elsewhere.
    """
    import ctypes
    import ctypes.util
    import os

    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD: big buffers get their own mapping, freed on release
        libc.mallopt(-1, 65536)  # M_TRIM_THRESHOLD: give back the heap's free top
    except (OSError, AttributeError):
        pass


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
                       progress=_progress)
    result["summary"]["model"] = args.model
    print(bench.table(result))
    plot = args.plot or (args.json.with_suffix(".png") if args.json else Path(f"bench-compaction-{args.model}.png"))
    bench.plot(result, plot, f"{args.model}: {args.context}-token contexts")
    print(f"plot: {plot}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(bench.summary_line(result, args.model))
    return 0


def _finish(result: dict, args, text: str, summary: dict) -> int:
    print(text)
    if getattr(args, "json", None):
        args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(summary))
    return 0


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _bench_engine(args) -> int:
    from .bench import overhead

    model, tokenizer = _load(args.model)
    result = overhead.run(model, tokenizer, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                          repeats=args.repeats, progress=_progress)
    summary = {k: v for k, v in result.items() if k != "runs"} | {"model": args.model}
    return _finish(result, args, overhead.table(result), summary)


def _bench_soak(args) -> int:
    from .bench import soak

    model, tokenizer = _load(args.model)
    result = soak.run(model, tokenizer, db=args.db, turns=args.turns, limit=args.limit, ratio=args.ratio,
                      method=args.method, reply_tokens=args.reply_tokens, progress=_progress)
    return _finish(result, args, soak.table(result), result["summary"] | {"model": args.model})


def _bench_recall(args) -> int:
    from .bench import recall

    model, tokenizer = _load(args.model)
    result = recall.run(model, tokenizer, limit=args.limit, ratio=args.ratio, method=args.method,
                        checkpoints=tuple(args.checkpoints), progress=_progress)
    return _finish(result, args, recall.table(result), result["summary"] | {"model": args.model})


def _scenario_aime(args) -> int:
    from .errors import ConfigError
    from .scenarios import aime, problems

    if args.limit < 2 * args.protect_recent:
        raise ConfigError(f"--limit {args.limit} leaves no room: it must be at least twice --protect-recent "
                          f"({args.protect_recent})")
    chosen = (problems.load_jsonl(args.problems_file, limit=args.problems) if args.problems_file
              else problems.builtin(args.problems, seed=args.seed))
    model, tokenizer = _load(args.model)
    result = aime.run(model, tokenizer, chosen, limit=args.limit, ratio=args.ratio, rounds=args.rounds,
                      max_new_tokens=args.max_new_tokens, method=args.method, protect_recent=args.protect_recent,
                      pin_question=args.pin_question, min_new_tokens=args.min_new_tokens,
                      temperature=args.temperature, seed=args.seed,
                      progress=_progress)
    result["summary"]["model"] = args.model
    print(aime.table(result))
    plot = args.plot or (args.json.with_suffix(".png") if args.json else Path("scenario-aime.png"))
    aime.plot(result, plot)
    print(f"plot: {plot}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"]))
    return 0


def _profile_heads(args) -> int:
    from .bench import profile_heads

    model, tokenizer = _load(args.model)
    profile = profile_heads.run(model, tokenizer, ratio=args.ratio, context=args.context,
                                continuation=args.continuation, model_name=args.model,
                                progress=_progress)
    out = args.out or Path(f"{args.model}.json")
    out.write_text(json.dumps(profile, indent=1))
    print(f"wrote {out}")
    print(json.dumps({"profile": str(out), "heads": len(profile["proportions"]), **profile["summary"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
