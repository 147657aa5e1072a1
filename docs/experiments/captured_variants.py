# Experiment script (see docs/LOG.md, "Captured reference queries"); run from the repository root:
#   python docs/experiments/captured_variants.py VARIANT [--contexts 2] [--context 2048] [--ratio 10] [--capacity 1024]
# Fits am-fast on the prefill's own captured queries, moved along the sequence by one of
# several rules, and prints retained recall (bench fidelity's measurement) per variant.
#   span:   queries inside the span ask from a repeat of it after the cache (delta = length - start)
#   raw:    no rotation (each query asks from where it was asked)
#   end:    every query asks from the cache's end (delta = length - p; the default since)
#   repeat: the repeat pass (reference), for the same contexts
#   both:   repeat pass + captured (end), with --repeat-tokens N repeating only the span's last N tokens
# --repeat-mode local [--local-chunk N] re-reads each piece of the span right after itself (compact's repeat_mode option).
# --max-queries N caps the fitting queries per KV head (compact's max_queries option).
# --query-dtype bfloat16 runs the reference-query passes under autocast (compact's query_dtype option).
import argparse, json, sys

import torch

import agentmem
from agentmem import captured as cap
from agentmem.bench import fidelity
from agentmem.hf import rope

p = argparse.ArgumentParser()
p.add_argument("variant")
p.add_argument("--contexts", type=int, default=2)
p.add_argument("--ratio", type=float, default=10.0)
p.add_argument("--capacity", type=int, default=1024)
p.add_argument("--method", default="am-fast")
p.add_argument("--repeat-tokens", type=int, default=None)
p.add_argument("--query-dtype", default=None)
p.add_argument("--max-queries", type=int, default=None)
p.add_argument("--context", type=int, default=2048)
p.add_argument("--repeat-mode", default=None)
p.add_argument("--local-chunk", type=int, default=None)
args = p.parse_args()


def moved(rule):
    def reference(self, model, start, end, length, layers):
        mask = (self.positions >= start) & (self.positions < length)
        positions = self.positions[mask]
        if rule == "span":
            delta = torch.where(positions < end, torch.full_like(positions, length - start), torch.zeros_like(positions))
        elif rule == "raw":
            delta = torch.zeros_like(positions)
        elif rule == "end":
            delta = length - positions
        else:
            raise SystemExit(f"unknown rule {rule}")
        return {idx: rope.rotate(self.queries[idx][:, :, mask].float(), rope.inverse_frequencies(model, idx), delta)
                for idx in layers if idx in self.queries}
    return reference


if args.variant in ("raw", "span"):
    cap.QuerySample.reference = moved(args.variant)
extra = {k: v for k, v in (("max_repeat_tokens", args.repeat_tokens), ("query_dtype", args.query_dtype),
                            ("max_queries", args.max_queries), ("repeat_mode", args.repeat_mode)) if v}
if args.local_chunk:
    from agentmem import queries
    queries.LOCAL_CHUNK = args.local_chunk
if extra:
    import agentmem.bench.common as common
    real = common.compact
    common.compact = lambda *a, **k: real(*a, **{**k, **extra})
method = {"repeat": args.method, "both": f"{args.method}:both"}.get(args.variant, f"{args.method}:captured")
model, tok = agentmem.load_model("smollm2-135m")
result = fidelity.run(model, tok, ratios=[args.ratio], methods=[method], count=args.contexts, context=args.context,
                      capture=args.capacity, progress=lambda line: print(line, file=sys.stderr))
row = next(r for r in result["rows"] if r["method"] == method)
line = {"variant": args.variant, "repeat_tokens": args.repeat_tokens, "query_dtype": args.query_dtype, "max_queries": args.max_queries, "repeat_mode": args.repeat_mode, "local_chunk": args.local_chunk, "context": args.context, "capacity": args.capacity, "method": method, "ratio": args.ratio,
        "contexts": args.contexts, "retained_recall": row["retained"]["recall"], "retained_ref": row["retained"]["ref_nll"],
        "exact": row["exact"], "choice": row["choice"], "time_ratio": row["time_ratio"]}
print(json.dumps(line))
