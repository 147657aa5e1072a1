# Experiment script (see docs/LOG.md); run from the repository root: python docs/experiments/NAME.py ...
"""am-fast / am with the queries of the context's last N tokens as recent_queries (as the engine passes
decode queries), mixed the old way (all concatenated, then sampled) or the new way (extras kept whole)."""
import json, sys
import torch
import agentmem
from agentmem import hf, queries
from agentmem.bench import compaction as bench

mix = sys.argv[1]  # "old" or "new"
ratios = [float(r) for r in sys.argv[2].split(",")]
methods = sys.argv[3].split(",")
recent = int(sys.argv[4]) if len(sys.argv) > 4 else 64
if mix == "old":
    def combine(repeat, extras, limit, generator):
        parts = ([] if repeat is None else [repeat]) + list(extras)
        return queries.subsample(torch.cat(parts, dim=1), limit, generator)
    queries.combine = combine
import os
if os.environ.get("SMOKE"):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "tests"))
    from conftest import tiny_chat_llama, tiny_tokenizer
    model, tok = tiny_chat_llama(), tiny_tokenizer()
else:
    model, tok = agentmem.load_model("smollm2-135m")
hf.enable(model)
plain = bench.compact
memo = {}

def with_recent(model_, cache, ctx, **kw):
    key = id(ctx)
    if key not in memo:
        head = hf.new_cache(model_)
        with torch.no_grad():
            model_(input_ids=ctx[:, :-recent], past_key_values=head, use_cache=True, **hf.last_logits_only(model_))
            layers = set(hf.CompactedCache.from_cache(head).full_layers())
            with hf.capture_queries(layers) as cap:
                model_(input_ids=ctx[:, -recent:], past_key_values=head, use_cache=True, **hf.last_logits_only(model_))
        memo[key] = {idx: cap.stacked(idx) for idx in cap.queries}
    return plain(model_, cache, ctx, recent_queries=memo[key], **kw)

bench.compact = with_recent
res = bench.run(model, tok, ratios=ratios, methods=methods, decode_steps=0, **({'context': 256, 'continuation': 16} if os.environ.get('SMOKE') else {}))
for r in res["rows"]:
    print(mix, recent, r["method"], r["ratio"], f"kl {r['kl']:.4f} gap {r['nll_gap']:+.4f} err {r['attn_err']:.3f} "
          f"t/prefill {r['time_ratio']:.2f}")
json.dump(res, open(f"./recentq_{mix}_{recent}.json", "w"))
